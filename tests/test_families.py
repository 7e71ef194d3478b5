"""Every model family on a tiny model built from configs, offline: SD 1.x, SDXL, SD3, FLUX (true CFG) and
FLUX-dev (guidance-distilled), through capture, text queries, grounded generation and DAAM maps."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from synthseg import CaptureStep, GroundingConfig, GroundingModule, SynthsegError, generate_grounded
from synthseg.capture import TransformerCapture, default_blocks, feature_capture
from synthseg.generate import capture_pass
from synthseg.text import pipeline_family, prompt_token_spans, text_tokens
from synthseg.tiny import tiny_flux_pipeline, tiny_pipeline, tiny_sd3_pipeline, tiny_sdxl_pipeline

T5 = Path(__file__).parent / "fixtures" / "t5-tiny.model"
FAMILIES = {
    "sd": lambda: tiny_pipeline(),
    "sdxl": lambda: tiny_sdxl_pipeline(),
    "sd3": lambda: tiny_sd3_pipeline(T5),
    "flux": lambda: tiny_flux_pipeline(T5),
    "flux-dev": lambda: tiny_flux_pipeline(T5, guidance_embeds=True),
}
SMALL = dict(fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64, token_patch=2)
PROMPTS = ["a photograph of a dog and a dining table", "a photograph of a cat"]
NAMES = [["dog", "dining table"], ["cat"]]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    pipe = FAMILIES[request.param]()
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe


def test_grounded_generation_works_for_every_family(family):
    name, pipe = family
    assert pipeline_family(pipe) == name.removesuffix("-dev")
    config = GroundingConfig.for_pipeline(pipe, cross_attention=True, attention_pooling=True, **SMALL)
    module = GroundingModule(config).eval()
    processors = dict((pipe.unet if name in ("sd", "sdxl") else pipe.transformer).attn_processors)
    result = generate_grounded(pipe, module, PROMPTS, NAMES, [0, 1], guidance_scale=2.0, num_inference_steps=4, return_features=True)
    assert [m.shape for m in result.masks] == [(2, 32, 32), (1, 32, 32)] and all(((m >= 0) & (m <= 1)).all() for m in result.masks)
    assert result.step.index == 3  # t=5 is the end of the trajectory on every scheduler
    assert set(result.features.blocks) == set(config.feature_blocks or result.features.blocks)
    assert all(probs.shape[-1] == text_tokens(pipe) for probs in result.features.cross_attention.values())
    assert all(torch.allclose(p.sum(-1), torch.ones(())) for p in result.features.cross_attention.values())  # a distribution over the prompt
    after = dict((pipe.unet if name in ("sd", "sdxl") else pipe.transformer).attn_processors)
    assert all(after[k] is processors[k] for k in processors)  # the original processor objects are back


def test_an_image_depends_on_its_prompt_and_seed_only(family):
    _, pipe = family
    kwargs = dict(guidance_scale=2.0, num_inference_steps=3)
    both = capture_pass(pipe, PROMPTS, NAMES, [5, 6], **kwargs)
    alone = capture_pass(pipe, PROMPTS[1:], NAMES[1:], [6], **kwargs)
    assert np.abs(np.asarray(both.images[1], dtype=float) - np.asarray(alone.images[0], dtype=float)).max() <= 2
    for name, block in alone.features.blocks.items():
        torch.testing.assert_close(both.features.blocks[name][1:], block, atol=1e-4, rtol=1e-3)


def test_daam_maps_for_every_family(family):
    _, pipe = family
    run = capture_pass(pipe, PROMPTS, NAMES, [0, 1], guidance_scale=2.0, num_inference_steps=3, daam=True)
    assert [m.shape[0] for m in run.heat_maps] == [2, 1]
    assert all(float(m.min()) == 0.0 and float(m.max()) == pytest.approx(1.0) for m in run.heat_maps)


def test_daam_sums_every_step_also_where_the_feature_capture_records(family):
    # the two contexts nest: at the capture step both record, each through its own wrapper
    _, pipe = family
    kwargs = dict(guidance_scale=2.0, num_inference_steps=3)
    alone = capture_pass(pipe, PROMPTS, NAMES, [0, 1], attention=False, blocks=None, **kwargs, daam=True)
    nested = capture_pass(pipe, PROMPTS, NAMES, [0, 1], attention=True, **kwargs, daam=True)
    assert nested.features.cross_attention
    for a, b in zip(alone.heat_maps, nested.heat_maps):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_block_hooks_live_for_the_captured_call_only(family):
    name, pipe = family
    denoiser = pipe.unet if name in ("sd", "sdxl") else pipe.transformer
    hooked = []
    original = denoiser.forward

    def counting(*args, **kwargs):
        hooked.append(sum(len(m._forward_hooks) for m in denoiser.modules()))
        return original(*args, **kwargs)

    denoiser.forward = counting
    try:
        capture_pass(pipe, PROMPTS, NAMES, [0, 1], guidance_scale=2.0, num_inference_steps=4, capture_step=CaptureStep(index=1))
    finally:
        del denoiser.forward
    captured = 2 if name == "flux" else 1  # step 1's first call (FLUX's true CFG: two passes a step, the conditional first)
    assert hooked[captured] > 1  # the recorded blocks are hooked in the captured call...
    assert hooked[:captured] + hooked[captured + 1 :] == [1] * (len(hooked) - 1)  # ...and every other has the context's post-call hook only
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in denoiser.modules()) == 0


def test_sd3_finds_a_class_in_both_text_streams():
    pipe = tiny_sd3_pipeline(T5)
    (row,) = prompt_token_spans(pipe, PROMPTS[:1], NAMES[:1])
    dog, table = row
    clip = pipe.tokenizer.model_max_length
    assert dog == [5, clip + 8]  # CLIP: <start> a photograph of a dog; T5: ▁a ▁photo g ra ph ▁ of ▁a ▁dog
    assert table[:2] == [8, 9] and [t - clip for t in table[2:]] == [12, 13]  # "dining table": two tokens in each stream


def test_a_prompt_over_a_tokenizer_s_limit_is_warned_and_a_cut_class_refused():
    pipe = tiny_flux_pipeline(T5)  # its T5 keeps 32 tokens
    long = "a photograph of a dog and " + "a very " * 20 + "small cat"
    with pytest.warns(UserWarning, match=r"is \d+ T5 tokens and 32 are kept: '.*small cat' is cut"):
        assert prompt_token_spans(pipe, [long], [["dog"]]) == [[[8]]]  # T5 has no start token
    with pytest.raises(SynthsegError, match="class 'cat' is cut off"), pytest.warns(UserWarning):
        prompt_token_spans(pipe, [long], [["cat"]])


def test_default_blocks_are_evenly_spaced_and_unknown_blocks_refused():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        flux = FluxTransformer2DModel(num_layers=19, num_single_layers=38, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                      pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))
    blocks = default_blocks(flux)
    assert len(blocks) == 8 and blocks[0] == "transformer_blocks.0" and blocks[-1] == "single_transformer_blocks.37"
    pipe = tiny_flux_pipeline(T5)
    with pytest.raises(SynthsegError, match="no transformer block 'single_transformer_blocks.9'"):
        GroundingConfig.for_pipeline(pipe, blocks=["single_transformer_blocks.9"])
    config = GroundingConfig.for_pipeline(pipe, blocks=["transformer_blocks.1"], **SMALL)
    run = capture_pass(pipe, PROMPTS, NAMES, [0, 1], guidance_scale=1.0, num_inference_steps=2, blocks=config.feature_blocks)
    assert list(run.features.blocks) == ["transformer_blocks.1"] and run.features.blocks["transformer_blocks.1"].shape == (2, 32, 8, 8)


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_recorded_attention_is_the_processors_own(kind, monkeypatch):
    """The recorder forms image queries and text keys itself; they must be the very q and k (after norms
    and RoPE) that diffusers' processor hands to SDPA, or the maps would drift from the model."""
    pipe = tiny_flux_pipeline(T5) if kind == "flux" else tiny_sd3_pipeline(T5)
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        seen.append((query.detach(), key.detach()))
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)

    class Schedule:
        timesteps = torch.tensor([500.0])

    capture = TransformerCapture(pipe.transformer, CaptureStep(), Schedule(), classifier_free_guidance=False)
    torch.manual_seed(0)
    text_len, batch = 7, 2
    inputs = dict(encoder_hidden_states=torch.randn(batch, text_len, pipe.transformer.config.joint_attention_dim),
                  pooled_projections=torch.randn(batch, pipe.transformer.config.pooled_projection_dim), return_dict=False)
    if kind == "flux":
        inputs.update(hidden_states=torch.randn(batch, 16, 16), timestep=torch.full((batch,), 0.5),
                      img_ids=pipe._prepare_latent_image_ids(batch, 4, 4, "cpu", torch.float32), txt_ids=torch.zeros(text_len, 3))
    else:
        inputs.update(hidden_states=torch.randn(batch, 4, 8, 8), timestep=torch.full((batch,), 500.0))
    with capture, torch.no_grad():
        pipe.transformer(**inputs)
    recorded = list(capture.features.cross_attention.values())
    assert len(recorded) == len(seen) == len(pipe.transformer.transformer_blocks) + len(getattr(pipe.transformer, "single_transformer_blocks", []))
    for probs, (query, key) in zip(recorded, seen):
        if query.shape[1] != pipe.transformer.config.num_attention_heads:
            query, key = query.transpose(1, 2), key.transpose(1, 2)  # diffusers' dispatch passes (B, S, H, D)
        joint = (query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5).softmax(-1)  # the whole joint matrix, for this test only
        image, text = (slice(text_len, None), slice(None, text_len)) if kind == "flux" else (slice(None, -text_len), slice(-text_len, None))
        expected = joint[:, :, image, text]
        expected = (expected / expected.sum(-1, keepdim=True)).mean(1)
        torch.testing.assert_close(probs.flatten(1, 2), expected, atol=1e-5, rtol=1e-4)


def test_the_capture_step_on_flow_schedules():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 28, 28))
    last = CaptureStep().choose(scheduler.timesteps)
    assert last.index == 27 and last.timestep == pytest.approx(float(scheduler.timesteps[-1]))
    assert CaptureStep(timestep=500).choose(scheduler.timesteps).timestep == pytest.approx(500, abs=40)
    assert CaptureStep(index=1).choose([1000.0, 750.0, 500.0, 250.0]).timestep == 750  # a 4-step model


def test_feature_capture_refuses_an_unknown_denoiser():
    class Pipe:
        unet = None
        transformer = torch.nn.Linear(2, 2)
        scheduler = None

    with pytest.raises(SynthsegError, match="no capture backend for a Linear"):
        feature_capture(Pipe(), CaptureStep(), 2, classifier_free_guidance=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sdxl", "sd3", "flux"])
def test_everything_downstream_takes_every_family(name, tmp_path):
    """A saved folder through the one loader, then triplets, train-grounding, evaluate-grounding with the
    DAAM baseline on the family's own attention, make-dataset and generate."""
    from safetensors.torch import load_file
    from test_evaluation import LeftHalf
    from test_triplets import FakeAnnotator
    from typer.testing import CliRunner

    from synthseg.classes import get_split
    from synthseg.cli import app
    from synthseg.dataset import DatasetRecipe, make_dataset
    from synthseg.evaluation import evaluate_grounding
    from synthseg.pipeline import load_pipeline
    from synthseg.plan import MAX_CLASSES, image_size, triplet_bytes
    from synthseg.train.grounding import GroundingModelRecipe, GroundingRecipe, TrainRecipe, train_grounding
    from synthseg.triplets import TripletRecipe, TripletShards, make_triplets

    FAMILIES[name]().save_pretrained(tmp_path / "pipe")
    pipe = load_pipeline(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    if name == "flux":
        pipe.default_sample_size = 16  # a saved FLUX pipeline assumes 1024 px
    triplets = TripletRecipe(seen=["dog", "cat", "bus", "horse"], count=4, shard_size=2, batch_size=2, num_inference_steps=2, guidance_scale=2.0,
                             cross_attention=True, feature_dtype="float32")
    make_triplets(pipe, FakeAnnotator(), triplets, tmp_path / "t")
    shards = TripletShards(tmp_path / "t")
    assert shards.layout()["feature_blocks"] == (default_blocks(pipe.transformer) if name != "sdxl" else [])
    if name != "flux":  # the dry run's estimate is what a triplet stores (a saved FLUX folder plans FLUX's 1024 px)
        data = load_file(tmp_path / "t" / "shard-00000.safetensors")
        stored = sum(v.nbytes for k, v in data.items() if k.startswith(("features.", "attention.", "class_attention"))) // len(data["queries"])
        size, config = image_size(str(tmp_path / "pipe")), (pipe.unet if name != "sd3" else pipe.transformer).config
        width = config.get("cross_attention_dim") or config.get("joint_attention_dim")
        assert triplet_bytes(str(tmp_path / "pipe"), 4, True) == (stored + MAX_CLASSES * (width * 4 + size * ((size + 7) // 8)), "features")
    recipe = GroundingRecipe(split="voc-15-5", pipeline=str(tmp_path / "pipe"), model=GroundingModelRecipe(**SMALL, attention_pooling=True),
                             train=TrainRecipe(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=2))
    module = train_grounding(recipe, shards, tmp_path / "w", tmp_path / "g")
    module.config.check_pipeline(pipe)
    if name != "sdxl":  # a block-choice ablation: a module reads a subset of the stored blocks, and records only those
        last = default_blocks(pipe.transformer)[-1:]
        narrow = train_grounding(replace(recipe, model=replace(recipe.model, blocks=last)), shards, tmp_path / "w1", tmp_path / "g1")
        assert narrow.config.feature_blocks == last and len(narrow.config.feature_channels) == 1
        run = generate_grounded(pipe, narrow, ["a photograph of a dog"], [["dog"]], [0], guidance_scale=2.0, num_inference_steps=2,
                                return_features=True)
        assert list(run.features.blocks) == last and run.masks[0].shape[0] == 1
        with pytest.raises(SynthsegError, match="not in the triplets"):
            train_grounding(replace(recipe, model=replace(recipe.model, blocks=["transformer_blocks.99"])), shards, tmp_path / "w2", tmp_path / "g2")
    scores = evaluate_grounding(pipe, module, LeftHalf(), get_split("voc-15-5"), per_class=1, pairs=1, templates=triplets.templates,
                                num_inference_steps=2, guidance_scale=2.0, batch_size=4)
    assert set(scores.table) == {"Grounding module", "Cross-attention (DAAM)"}
    dataset = DatasetRecipe(classes="dog,cat", model=str(tmp_path / "pipe"), per_class=1, num_inference_steps=2, guidance_scale=2.0,
                            require_all_classes=False)
    summary = make_dataset(pipe, module, dataset, tmp_path / "ds", dict(model=name))
    assert summary["planned"] == 2 and (tmp_path / "ds" / "annotations.json").is_file()
    args = ["generate", "--model", str(tmp_path / "pipe"), "--grounding", str(tmp_path / "g"), "--num-inference-steps", "2",
            "--guidance-scale", "2.0", "--prompt", "a photograph of a sofa", "--classes", "sofa", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "masks" / "00000_sofa.png").is_file()


def test_sd35_image_only_attention_is_not_read_as_text_attention():
    """SD3.5 adds an image-only attention (attn2) to some blocks; only each block's joint attention sees text."""
    from diffusers import SD3Transformer2DModel

    pipe = tiny_sd3_pipeline(T5)
    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    pipe.transformer = SD3Transformer2DModel(**dict(config, dual_attention_layers=(0,))).eval()
    pipe.set_progress_bar_config(disable=True)
    assert any(name.endswith("attn2.processor") for name in pipe.transformer.attn_processors)
    run = capture_pass(pipe, PROMPTS, NAMES, [0, 1], guidance_scale=2.0, num_inference_steps=2)
    assert sorted(run.features.cross_attention) == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]


@pytest.mark.parametrize("scheduler, steps", [("DPMSolverMultistepScheduler", 6), ("EulerDiscreteScheduler", 6), ("LCMScheduler", 2),
                                              ("DDIMScheduler", 1)])
def test_the_capture_step_on_timestep_schedulers_and_few_step_models(scheduler, steps):
    """SD 2.x-style v-prediction, DPM-Solver, Euler, and 1- and 2-step sampling all capture the step asked for."""
    import diffusers

    pipe = tiny_pipeline()
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config, prediction_type="v_prediction")
    pipe.set_progress_bar_config(disable=True)
    last = capture_pass(pipe, PROMPTS, NAMES, [0, 1], guidance_scale=1.0, num_inference_steps=steps)
    first = capture_pass(pipe, PROMPTS, NAMES, [0, 1], guidance_scale=1.0, num_inference_steps=steps, capture_step=CaptureStep(index=0))
    assert last.step.index == steps - 1 and first.step.index == 0
    assert last.features.timestep < first.features.timestep or steps == 1


def test_full_size_pipelines_have_the_published_sizes_and_draw_their_weights_where_asked():
    """The GPU bench's SDXL and FLUX.1-dev, built on the meta device (no memory): each module's weights in the dtype
    and on the device asked, the published parameter counts, and the default dtype left as it was."""
    from synthseg.tiny import flux_dev_pipeline, sdxl_pipeline

    sizes = {}
    for pipe in (sdxl_pipeline(device="meta", dtype=torch.bfloat16), flux_dev_pipeline(T5, device="meta", dtype=torch.bfloat16)):
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                assert {(p.device.type, p.dtype) for p in module.parameters()} == {("meta", torch.bfloat16)}, name
                sizes[type(module).__name__] = sum(p.numel() for p in module.parameters())
    assert torch.get_default_dtype() == torch.float32 and torch.empty(1).device.type == "cpu"
    assert round(sizes["UNet2DConditionModel"] / 1e9, 2) == 2.57  # SDXL base's UNet: 2.6B
    assert round(sizes["FluxTransformer2DModel"] / 1e9, 1) == 11.9  # FLUX.1-dev: 12B
    assert round(sizes["T5EncoderModel"] / 1e9, 2) == 4.76  # T5-XXL's encoder
