"""The world's text-to-image model: recipes train, resume exactly, and load through the general loader."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from synthseg import SynthsegError, load_pipeline
from synthseg.train import loop, world_t2i
from synthseg.train.loop import prefetched, write_training_record
from synthseg.train.world_dit import FlowBatch
from synthseg.train.world_t2i import (
    caption_states,
    diffusion_loss,
    load_world_model_recipe,
    noise_scheduler,
    sample_scenes,
    train_unet,
    train_vae,
    train_world_model,
    unet_batch,
)
from synthseg.worldmodel import UNetRecipe, VAERecipe, WorldModelRecipe, WorldPipeline, build_unet, load_text_encoder


def tiny_recipe(**unet) -> WorldModelRecipe:
    return WorldModelRecipe(
        image_size=32, checkpoint_every=1000,
        vae=VAERecipe(block_out_channels=[16, 32, 32], steps=12, batch_size=4, lr=2e-3),
        unet=UNetRecipe(block_out_channels=[16, 32, 32], steps=12, batch_size=4, warmup_steps=2, **unet),
    )


def test_shipped_recipe_is_valid():
    recipe = load_world_model_recipe("world-t2i")
    assert recipe.image_size == 64 and recipe.unet.prediction_type == "v_prediction"
    stage2 = load_world_model_recipe("world-t2i-finetune")  # fine-tunes stage 1's default output, same architecture
    assert stage2.init_from == "runs/world-t2i/pipeline" and stage2.unet.block_out_channels == recipe.unet.block_out_channels
    stage3 = load_world_model_recipe("world-t2i-finetune2")  # fine-tunes stage 2's output on less occluded pairs
    assert stage3.init_from == "runs/world-t2i-ft/pipeline" and stage3.min_visible > recipe.min_visible
    layouts = load_world_model_recipe("world-t2i-layouts")  # world-layout's frozen UNet: the shipped world's, on layouts too
    assert layouts.init_from == "world" and layouts.layout_fraction == 0.5 and layouts.unet.block_out_channels == recipe.unet.block_out_channels


def test_bad_recipe_values(tmp_path):
    (tmp_path / "r.yaml").write_text("image_size: 30\n")
    with pytest.raises(SynthsegError, match="multiple of 4"):
        load_world_model_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("image_size: 36\nvae: {block_out_channels: [16, 32, 32, 64]}\n")  # f=8
    with pytest.raises(SynthsegError, match="multiple of 8"):
        load_world_model_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("min_visible: 0\n")
    with pytest.raises(SynthsegError, match="min_visible"):
        load_world_model_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("unet: {prediction_type: sample}\n")
    with pytest.raises(SynthsegError, match="epsilon or v_prediction"):
        load_world_model_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("vae: {block_out_channels: [8, 16]}\n")
    with pytest.raises(SynthsegError, match=r"r.yaml: vae: block_out_channels must be multiples of 16"):
        load_world_model_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("layout_fraction: 1.5\n")
    with pytest.raises(SynthsegError, match="layout_fraction must lie in"):
        load_world_model_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("layouts: {min_size: 0}\n")
    with pytest.raises(SynthsegError, match="min_size"):
        load_world_model_recipe(tmp_path / "r.yaml")


def test_the_unet_s_sample_size_follows_the_vae_s_factor():
    recipe = dataclasses.replace(tiny_recipe(), vae=VAERecipe(block_out_channels=[16, 32]))  # f=2: 32 px -> 16x16 latents
    assert build_unet(recipe, 384, 4).config.sample_size == 16


def test_training_scenes_keep_the_recipe_s_visible_share(monkeypatch):
    calls, render = [], world_t2i.render_scene

    def spy(seed, names, size, min_visible):
        calls.append((len(names), min_visible))
        return render(seed, names, size, min_visible)

    monkeypatch.setattr(world_t2i, "render_scene", spy)
    images, captions = sample_scenes(dataclasses.replace(tiny_recipe(), pair_fraction=1.0, min_visible=0.9), 3, 4)
    assert calls == [(2, 0.9)] * 4 and images.shape == (4, 3, 32, 32) and all(" and " in c for c in captions)


def test_a_layout_share_replaces_the_batch_s_tail_with_layout_scenes():
    plain = tiny_recipe()
    images, captions = unet_batch(plain, 5)
    assert torch.equal(images, sample_scenes(plain, 5, 4)[0])  # no layout share: the batches of every earlier recipe
    mixed = dataclasses.replace(plain, layout_fraction=0.5)
    assert mixed.layouts.templates == ["{}"] and mixed.layouts.max_objects == 4  # world-layout's own layouts by default
    mixed_images, mixed_captions = unet_batch(mixed, 5)
    assert torch.equal(mixed_images[:2], images[:2]) and mixed_captions[:2] == captions[:2]
    assert not any(c.startswith("a photograph") for c in mixed_captions[2:])  # the layouts' prompts list their objects
    again, _ = unet_batch(mixed, 5)
    assert torch.equal(again, mixed_images) and not torch.equal(unet_batch(mixed, 6)[0][2:], mixed_images[2:])
    only, only_captions = unet_batch(dataclasses.replace(plain, layout_fraction=1.0), 5)
    assert only.shape == (4, 3, 32, 32) and len(only_captions) == 4


def test_training_record_adds_the_fine_tuned_model_s_steps(tmp_path):
    write_training_record(tmp_path, {"vae": {"steps": 1000, "loss": 0.1}, "unet": {"steps": 15000, "loss": 0.3}},
                          vae=None, unet=[0.5, 0.25])
    assert json.loads((tmp_path / "training.json").read_text()) == {"vae": {"steps": 1000, "loss": 0.1},
                                                                   "unet": {"steps": 15002, "loss": 0.375}}
    write_training_record(tmp_path, {}, vae=None, unet=[0.5])  # an init without a record, e.g. a hub model
    assert json.loads((tmp_path / "training.json").read_text()) == {"unet": {"steps": 1, "loss": 0.5}}


@pytest.mark.parametrize("fork", [True, False])
def test_prefetched_batches_come_in_step_order_from_the_resumed_step(fork, monkeypatch):
    if not fork:
        monkeypatch.setattr(loop.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    made = list(prefetched(lambda step: torch.full((2,), step), 3, 7))
    assert [batch.tolist() for batch in made] == [[3, 3], [4, 4], [5, 5], [6, 6]]
    made = list(prefetched(lambda step: torch.full((2,), step), 3, 9, workers=2))  # a GPU's several workers: the same order
    assert [batch.tolist() for batch in made] == [[k, k] for k in range(3, 9)]


def test_a_batch_moves_to_the_training_device_whole(monkeypatch):
    g = torch.Generator().manual_seed(0)
    batch = (torch.ones(2), [torch.zeros(1)], g, {"gligen": {"boxes": torch.ones(3, 4)}}, (8, 8))
    moved = loop.to_device(batch, torch.device("meta"))
    assert [moved[0].device.type, moved[1][0].device.type, moved[3]["gligen"]["boxes"].device.type] == ["meta"] * 3
    assert moved[2] is g and moved[4] == (8, 8) and batch[0].device.type == "cpu"
    flow = FlowBatch(torch.ones(1, 4, 16), torch.ones(1), torch.ones(1, 4, 16), (4, 4), torch.ones(1, 3, 8), torch.ones(1, 8))
    assert {getattr(loop.to_device(flow, torch.device("meta")), f).device.type for f in ("packed", "sigma", "target", "text", "pooled")} == {"meta"}
    assert loop.to_device(batch, None) is batch
    monkeypatch.setattr(loop.os, "cpu_count", lambda: 16)
    assert (loop.batch_workers(None), loop.batch_workers(torch.device("cpu")), loop.batch_workers(torch.device("cuda"))) == (1, 1, 8)
    monkeypatch.setattr(loop.os, "cpu_count", lambda: 2)
    assert loop.batch_workers(torch.device("cuda")) == 1


@pytest.mark.slow
def test_vae_training_lowers_the_loss_and_resumes_exactly(tmp_path):
    recipe = tiny_recipe()
    straight, losses = train_vae(recipe, tmp_path / "a")
    assert losses == torch.load(tmp_path / "a" / "vae.ckpt", weights_only=True)["losses"]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    train_vae(recipe, tmp_path / "b", max_steps=5)
    resumed, _ = train_vae(recipe, tmp_path / "b")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_unet_training_lowers_the_loss(tmp_path):
    unet_recipe = UNetRecipe(block_out_channels=[16, 32, 32], steps=20, batch_size=8, warmup_steps=2, lr=2e-3, ema_decay=0.0)
    recipe = dataclasses.replace(tiny_recipe(), unet=unet_recipe)
    vae, _ = train_vae(recipe, tmp_path, max_steps=2)
    tokenizer, encoder = load_text_encoder(recipe.max_tokens)
    images, captions = sample_scenes(recipe, 12345, 16)
    latents = vae.encode(images).latent_dist.mean.detach() * vae.config.scaling_factor
    text = caption_states(tokenizer, encoder, captions)

    def held_out_loss(unet):  # fixed scenes, noise and timesteps
        with torch.no_grad():
            return diffusion_loss(unet, noise_scheduler(recipe), latents, text, torch.Generator().manual_seed(0)).item()

    torch.manual_seed(recipe.seed + 1)
    before = held_out_loss(build_unet(recipe, 384, 4))
    trained, _, _, _ = train_unet(recipe, vae, tmp_path)
    assert held_out_loss(trained) < 0.8 * before


@pytest.mark.slow
def test_trained_model_loads_through_the_general_loader(tmp_path):
    output = train_world_model(tiny_recipe(), tmp_path / "work", tmp_path / "t2i", max_steps=2)
    assert sorted(p.name for p in output.iterdir()) == ["model_index.json", "scheduler", "synthseg.json", "tokenizer", "training.json",
                                                        "unet", "vae"]  # no text encoder: its pip package holds it
    record = json.loads((output / "training.json").read_text())
    assert {stage: r["steps"] for stage, r in record.items()} == {"vae": 2, "unet": 2}  # which checkpoint the export is
    card = json.loads((output / "synthseg.json").read_text())
    assert card["num_inference_steps"] == 25 and card["guidance_scale"] == 2.0 and len(card["classes"]) == 12
    pipe = load_pipeline(output)
    assert isinstance(pipe, WorldPipeline) and type(pipe.text_encoder).__name__ == "BertModel" and pipe.text_encoder.config.hidden_size == 384
    pipe.set_progress_bar_config(disable=True)
    images = [pipe("a photograph of a star", num_inference_steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0), output_type="np").images
              for _ in range(2)]
    assert images[0].shape == (1, 32, 32, 3) and np.array_equal(images[0], images[1])
    (output / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"cut")  # a broken export is named as given
    with pytest.raises(SynthsegError, match=f"cannot load pipeline {output}"):
        load_pipeline(output)


@pytest.mark.slow
def test_fine_tuning_starts_from_the_init_pipeline_and_counts_its_steps(tmp_path, monkeypatch):
    export = train_world_model(tiny_recipe(), tmp_path / "work", tmp_path / "t2i", max_steps=2)
    base = export
    recipe = dataclasses.replace(tiny_recipe(), seed=1, init_from=str(export))  # an export, as train_world_model writes it
    tuned = train_world_model(recipe, tmp_path / "tune", tmp_path / "tuned", max_steps=3)
    record = json.loads((tuned / "training.json").read_text())
    assert {stage: r["steps"] for stage, r in record.items()} == {"vae": 2, "unet": 5}
    assert not (tmp_path / "tune" / "vae.ckpt").exists()  # the VAE is the init's, not retrained
    for part in ("vae", "unet"):  # the recipe's configs, with no trace of where the init was loaded from
        assert json.loads((tuned / part / "config.json").read_text()) == json.loads((base / part / "config.json").read_text())
    init, fresh = load_pipeline(base), load_pipeline(tuned)
    for a, b in zip(init.vae.state_dict().values(), fresh.vae.state_dict().values()):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    scratch = build_unet(recipe, 384, 4).half().state_dict()
    init_w, tuned_w = init.unet.state_dict(), fresh.unet.state_dict()
    moved = sum((tuned_w[k].float() - init_w[k].float()).abs().sum() for k in init_w)
    assert 0 < moved < 0.1 * sum((scratch[k].float() - init_w[k].float()).abs().sum() for k in init_w)
    wrong = dataclasses.replace(recipe, unet=UNetRecipe(block_out_channels=[16, 32, 64]))
    with pytest.raises(SynthsegError, match="its UNet has another architecture"):
        train_world_model(wrong, tmp_path / "wrong", tmp_path / "w")
