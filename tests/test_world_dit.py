"""The transformer world (world-dit): FLUX's transformer trained by flow matching, exported in FLUX's
standard layout, loaded by the one loader, fine-tuned from an export (`init_from`) and distilled from a
UNet world (`teacher`)."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from synthseg import SynthsegError
from synthseg.pipeline import load_pipeline
from synthseg.registry import model_card
from synthseg.train import loop
from synthseg.train.world_dit import load_dit_recipe, teacher_velocity, train_world_dit
from synthseg.worldmodel import DiTRecipe, VAERecipe

TINY = DiTRecipe(num_layers=1, num_single_layers=1, attention_heads=2, attention_head_dim=16, axes_dims_rope=[4, 6, 6], steps=4,
                 batch_size=2, warmup_steps=1)


def tiny_recipe(**changes):
    return dataclasses.replace(load_dit_recipe("world-dit"), **{"transformer": TINY, "checkpoint_every": 2, **changes})


def assert_trained_on_from(init_export, pipe):
    """`pipe`'s transformer moved from `init_export`'s weights, by less than half their size: trained on from them,
    not from scratch (a fresh init differs from them by more than their own size)."""
    init, tuned = load_pipeline(init_export).transformer.state_dict(), pipe.transformer.state_dict()
    assert 0 < sum((tuned[k] - init[k]).abs().sum() for k in init) < 0.5 * sum(init[k].abs().sum() for k in init)


@pytest.mark.slow
def test_world_dit_trains_exports_loads_and_fine_tunes(tmp_path):
    export = train_world_dit(tiny_recipe(), tmp_path / "work", tmp_path / "dit", max_steps=2)
    assert json.loads((export / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    assert not any(p.name.startswith("text_encoder") for p in export.iterdir())  # MiniLM comes from its pip package
    pipe = load_pipeline(export)
    assert type(pipe.transformer).__name__ == "FluxTransformer2DModel" and pipe.transformer.dtype == torch.float32
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photograph of a star", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)

    tuned = train_world_dit(tiny_recipe(seed=1, init_from=str(export), candidates=3), tmp_path / "tune", tmp_path / "tuned", max_steps=3)
    assert json.loads((tuned / "training.json").read_text())["transformer"]["steps"] == 5  # the init's 2, then 3
    assert (model_card(export).candidates, model_card(tuned).candidates) == (1, 3)  # the recipe's sampling default, on the card
    assert_trained_on_from(export, load_pipeline(tuned))

    wider = dataclasses.replace(TINY, attention_head_dim=32, axes_dims_rope=[8, 12, 12])
    with pytest.raises(SynthsegError, match="its transformer has another architecture"):
        train_world_dit(tiny_recipe(init_from=str(export), transformer=wider), tmp_path / "wrong", tmp_path / "w", max_steps=1)


def test_teacher_velocity_of_an_exact_unet_is_the_flow_velocity():
    """A UNet that predicts its target exactly, read at a flow sample x_s = (1 - s) x_0 + s e, gives e - x_0:
    the conversion between the two parameterisations is exact at the sigmas of the UNet's timesteps, and
    off them within the grid's spacing."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    timesteps = torch.tensor([0, 10, 250, 500, 900, 999])
    a, b = scheduler.alphas_cumprod[timesteps].sqrt(), (1 - scheduler.alphas_cumprod[timesteps]).sqrt()
    on_grid = b / (a + b)

    def exact_unet(x_t, t, encoder_hidden_states):
        alphas = scheduler.alphas_cumprod[t][:, None, None, None]
        return SimpleNamespace(sample=alphas.sqrt() * noise - (1 - alphas).sqrt() * x0)

    teacher = SimpleNamespace(scheduler=scheduler, unet=exact_unet)
    off_grid = torch.cat([on_grid[:1], on_grid[1:-1] * 1.01, on_grid[-1:]])
    for sigma, atol in ((on_grid, 1e-4), (off_grid, 2e-2)):
        s = sigma[:, None, None, None]
        velocity = teacher_velocity(teacher, (1 - s) * x0 + s * noise, sigma, None)
        assert torch.allclose(velocity, noise - x0, atol=atol)


def test_guided_teacher_velocity_extrapolates_from_the_empty_caption():
    """With guidance w the target is v(null) + w (v(text) - v(null)), from one UNet call on both; a row
    whose caption is the empty one keeps its unguided velocity."""
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    calls = []

    def text_unet(x_t, t, encoder_hidden_states):  # a v that depends on the text states and on x_t
        calls.append(len(x_t))
        return SimpleNamespace(sample=0.5 * x_t + encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None])

    teacher = SimpleNamespace(scheduler=scheduler, unet=text_unet)
    g = torch.Generator().manual_seed(0)
    noisy, sigma = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([0.2, 0.5, 0.9])
    null, text = torch.zeros(1, 5, 6), torch.randn(3, 5, 6, generator=g)
    text[2] = null[0]  # a dropped caption
    unguided = teacher_velocity(teacher, noisy, sigma, text)
    at_null = teacher_velocity(teacher, noisy, sigma, null.expand_as(text))
    guided = teacher_velocity(teacher, noisy, sigma, text, guidance=3.0, null_text=null)
    assert calls == [3, 3, 6]
    assert torch.allclose(guided, at_null + 3.0 * (unguided - at_null), atol=1e-5)
    assert torch.allclose(guided[2], unguided[2]) and not torch.allclose(guided[:2], unguided[:2], atol=1e-2)


@pytest.mark.slow
def test_world_dit_distils_the_unet_world(tmp_path, monkeypatch):
    """With `teacher: world` training runs on the UNet world's (guided) velocities, its batches made by a
    worker process as in-process; a teacher on other latents is refused."""
    export = train_world_dit(tiny_recipe(teacher="world", teacher_guidance=2.0), tmp_path / "work", tmp_path / "dit", max_steps=2)
    assert json.loads((export / "training.json").read_text())["transformer"]["steps"] == 2
    monkeypatch.setattr(loop.multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # no fork: no worker
    train_world_dit(tiny_recipe(teacher="world", teacher_guidance=2.0), tmp_path / "inline", tmp_path / "inline-dit", max_steps=2)
    losses = [torch.load(tmp_path / run / "transformer.ckpt", weights_only=True)["losses"] for run in ("work", "inline")]
    assert np.allclose(losses[0], losses[1], rtol=1e-5, atol=0)  # the same batches (up to BLAS rounding by alignment)
    with pytest.raises(SynthsegError, match="teacher world-dit: not a v-prediction UNet pipeline"):
        train_world_dit(tiny_recipe(teacher="world-dit"), tmp_path / "bad", tmp_path / "bad-dit", max_steps=1)
    assert not (tmp_path / "bad").exists()  # refused before the workdir is claimed


@pytest.mark.slow
def test_world_dit_trains_its_own_f2_vae_first(tmp_path):
    """With `vae_from` null the recipe's own VAE trains first in the same workdir; an f=2 VAE gives FLUX
    16x16 tokens of a 64 px scene (32x32 latents packed 2x2), and the export samples at 64 px. As stage 9
    (world-dit-finetune8) does, the transformer may train on from an 8x8-token export on the world's f=4 VAE:
    a token is 16 channels either way."""
    f4 = train_world_dit(tiny_recipe(), tmp_path / "f4-work", tmp_path / "f4", max_steps=2)
    recipe = tiny_recipe(seed=1, vae_from=None, vae=VAERecipe(block_out_channels=[16, 16], steps=2, batch_size=2), init_from=str(f4))
    export = train_world_dit(recipe, tmp_path / "work", tmp_path / "dit", max_steps=2)
    assert (tmp_path / "work" / "vae.ckpt").is_file()
    record = json.loads((export / "training.json").read_text())
    assert set(record) == {"vae", "transformer"} and record["transformer"]["steps"] == 4  # the init's 2, then 2
    pipe = load_pipeline(export)
    assert_trained_on_from(f4, pipe)
    assert pipe.vae_scale_factor == 2 and pipe.vae.config.shift_factor == 0.0
    pipe.set_progress_bar_config(disable=True)
    latents = pipe("a photograph of a star", num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert latents.shape == (1, 16 * 16, 16)  # 16x16 packed tokens of 4 x (2x2) channels
    assert pipe("a photograph of a star", num_inference_steps=1).images[0].size == (64, 64)


@pytest.mark.parametrize("changes, message", [
    (dict(vae_from=None), "give either vae_from"),
    (dict(vae=VAERecipe()), "give either vae_from"),
    (dict(vae_from=None, vae=VAERecipe(), teacher="world"), "a teacher needs vae_from"),
    (dict(teacher_guidance=2.0), "above 1 only with a teacher"),
    (dict(teacher="world", teacher_guidance=0.5), "teacher_guidance is 1 or more"),
    (dict(candidates=0), "candidates must be at least 1"),
    (dict(vae_from=None, vae=VAERecipe(block_out_channels=[16, 16, 16, 16]), image_size=40), "multiple of 16"),
])
def test_world_dit_recipe_checks_its_latents(changes, message):
    with pytest.raises(SynthsegError, match=message):
        dataclasses.replace(load_dit_recipe("world-dit"), **changes).validate("recipe")


def test_the_shipped_stages_chain_with_new_batches_and_add_up_to_the_export():
    """world-dit-finetune..6 (stages 2 to 7) each train on from the stage before's default export, on batches
    of their own seed; their steps sum to the shipped training.json's count, and the last one's guidance, candidates and
    count guidance are the card's."""
    from synthseg.registry import BUNDLES

    stages = [load_dit_recipe(name) for name in ["world-dit", "world-dit-finetune"] + [f"world-dit-finetune{k}" for k in range(2, 7)]]
    outs = ["runs/world-dit", "runs/world-dit-ft"] + [f"runs/world-dit-ft{k}" for k in range(2, 6)]
    assert [s.init_from for s in stages[1:]] == [f"{out}/pipeline" for out in outs]
    assert len({s.seed for s in stages}) == len(stages) and all(s.teacher == "world" for s in stages[1:])
    assert all(s.transformer.num_layers == stages[0].transformer.num_layers for s in stages)
    shipped = json.loads((BUNDLES["world-dit"].pipeline / "training.json").read_text())["transformer"]["steps"]
    assert sum(s.transformer.steps for s in stages) == shipped
    card = json.loads((BUNDLES["world-dit"].pipeline / "synthseg.json").read_text())
    assert (card["guidance_scale"], card["candidates"], card["count_guidance"]) == \
        (stages[-1].guidance_scale, stages[-1].candidates, stages[-1].count_guidance)


@pytest.mark.slow
def test_train_world_dit_command_trains_on_the_given_device_as_the_library_does(tmp_path):
    from typer.testing import CliRunner

    from synthseg.cli import app

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("extends: world-dit\ncheckpoint_every: 2\ntransformer: {num_layers: 1, num_single_layers: 1, attention_heads: 2, "
                      "attention_head_dim: 16, axes_dims_rope: [4, 6, 6], steps: 4, batch_size: 2, warmup_steps: 1}\n")
    result = CliRunner().invoke(app, ["train-world-dit", "--recipe", str(recipe), "--workdir", str(tmp_path / "cli"),
                                      "--out", str(tmp_path / "cli-dit"), "--device", "cpu", "--stop-at", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli-dit" / "training.json").read_text())["transformer"]["steps"] == 2
    train_world_dit(load_dit_recipe(recipe), tmp_path / "lib", tmp_path / "lib-dit", max_steps=2)
    losses = [torch.load(tmp_path / run / "transformer.ckpt", weights_only=True)["losses"] for run in ("cli", "lib")]
    assert losses[0] == losses[1] and len(losses[0]) == 2
