import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.models.attention_processor import AttnProcessor2_0

from synthseg import CaptureStep, FeatureCapture, SynthsegError, unet_feature_layout
from synthseg.capture import unet_feature_blocks
from synthseg.tiny import SD_SCHEDULER

PROMPTS = ["a photograph of a dog", "a photograph of a cat and a dog", "a photograph of a train"]


def run(pipe, n, cfg, step_index=-1, steps=4):
    timestep = CaptureStep(index=step_index).resolve(pipe.scheduler, steps).timestep
    generators = [torch.Generator().manual_seed(i) for i in range(n)]
    with FeatureCapture(pipe.unet, timestep, classifier_free_guidance=cfg) as capture:
        pipe(PROMPTS[:n], num_inference_steps=steps, guidance_scale=7.5 if cfg else 1.0, generator=generators, output_type="latent")
    return capture.features


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("cfg", [True, False])
def test_capture_shapes(pipe, batch, cfg):
    features = run(pipe, batch, cfg)
    channels, strides = unet_feature_layout(pipe.unet)
    latent = pipe.unet.config.sample_size
    assert list(features.blocks) == list(unet_feature_blocks(pipe.unet))
    for tensor, c, s in zip(features.block_list(), channels, strides):
        assert tensor.shape == (batch, c, latent // s, latent // s)
    cross = [m for m in pipe.unet.attn_processors if "attn2" in m]
    assert len(features.cross_attention) == len(cross) > 0
    for probs in features.cross_attention.values():
        assert probs.shape[0] == batch and probs.shape[-1] == pipe.tokenizer.model_max_length
        assert probs.shape[1] * probs.shape[2] in {latent**2 // 4, latent**2 // 16, latent**2 // 64, latent**2}
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


def test_cfg_keeps_the_conditional_half_of_each_image(pipe):
    """Chunking, not the reference's (2B,C)->(B,2C) reshape: a 2B CFG batch gives the B conditional rows."""
    torch.manual_seed(1)
    latent = pipe.unet.config.sample_size
    cond, uncond = torch.randn(3, 4, latent, latent), torch.randn(3, 4, latent, latent)
    text_cond, text_uncond = torch.randn(3, 77, 32), torch.randn(3, 77, 32)
    t = torch.tensor(1)
    with torch.no_grad(), FeatureCapture(pipe.unet, 1, classifier_free_guidance=True) as joint:
        pipe.unet(torch.cat([uncond, cond]), t, encoder_hidden_states=torch.cat([text_uncond, text_cond]))
    with torch.no_grad(), FeatureCapture(pipe.unet, 1, classifier_free_guidance=False) as alone:
        pipe.unet(cond, t, encoder_hidden_states=text_cond)
    for name, tensor in alone.features.blocks.items():
        torch.testing.assert_close(joint.features.blocks[name], tensor, atol=1e-4, rtol=1e-4)
    for name, tensor in alone.features.cross_attention.items():
        torch.testing.assert_close(joint.features.cross_attention[name], tensor, atol=1e-5, rtol=1e-4)


def test_batch_of_three_matches_three_single_runs(pipe):
    batch = run(pipe, 3, cfg=True)
    for i in range(3):
        timestep = CaptureStep(index=-1).resolve(pipe.scheduler, 4).timestep
        with FeatureCapture(pipe.unet, timestep, classifier_free_guidance=True) as single:
            pipe(PROMPTS[i], num_inference_steps=4, guidance_scale=7.5, generator=torch.Generator().manual_seed(i), output_type="latent")
        for name, tensor in single.features.blocks.items():
            torch.testing.assert_close(batch.blocks[name][i : i + 1], tensor, atol=1e-4, rtol=1e-3)


def test_keeps_exactly_the_chosen_step(pipe):
    seen = []
    handle = pipe.unet.up_blocks[-1].register_forward_hook(lambda m, a, out: seen.append(out.chunk(2)[1].clone()))
    try:
        features = run(pipe, 2, cfg=True, step_index=1, steps=4)
    finally:
        handle.remove()
    assert len(seen) == 4
    torch.testing.assert_close(features.blocks[f"up_blocks.{len(pipe.unet.up_blocks) - 1}"], seen[1])
    assert not torch.allclose(seen[1], seen[3])
    assert features.timestep == CaptureStep(index=1).resolve(pipe.scheduler, 4).timestep


def test_sdpa_stays_on_every_step_but_the_captured_one(pipe):
    name, attn = next((n, m) for n, m in pipe.unet.named_modules() if n.endswith("attn2"))
    kinds = []
    handle = attn.register_forward_pre_hook(lambda m, a: kinds.append(type(m.processor).__name__))
    try:
        run(pipe, 1, cfg=True, step_index=2, steps=5)
    finally:
        handle.remove()
    assert kinds == ["AttnProcessor2_0"] * 2 + ["_RecordingAttnProcessor"] + ["AttnProcessor2_0"] * 2


def test_processors_restored_identically_after_exit_and_after_errors(pipe):
    before = dict(pipe.unet.attn_processors)
    assert all(isinstance(p, AttnProcessor2_0) for p in before.values())
    run(pipe, 1, cfg=True)
    assert all(pipe.unet.attn_processors[k] is v for k, v in before.items())

    def explode(module, args, output):
        raise RuntimeError("boom in the captured step")

    timestep = CaptureStep(index=0).resolve(pipe.scheduler, 3).timestep
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureCapture(pipe.unet, timestep, classifier_free_guidance=False):
            # The recording processors are installed when this hook fires.
            pipe.unet.mid_block.register_forward_hook(explode)
            try:
                pipe("a dog", num_inference_steps=3, guidance_scale=1.0, output_type="latent")
            finally:
                pipe.unet.mid_block._forward_hooks.clear()
    assert all(pipe.unet.attn_processors[k] is v for k, v in before.items())
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks
    assert all(not b._forward_hooks for b in unet_feature_blocks(pipe.unet).values())


def test_capture_step_resolution():
    leading = DDIMScheduler(**SD_SCHEDULER)
    step = CaptureStep().resolve(leading, 50)
    assert (step.index, step.timestep) == (49, 1)
    trailing = DDIMScheduler(**{**SD_SCHEDULER, "timestep_spacing": "trailing"})
    step = CaptureStep(timestep=5).resolve(trailing, 50)
    assert (step.index, step.timestep) == (49, 19)
    step = CaptureStep(timestep=500).resolve(leading, 50)
    assert (step.index, step.timestep) == (24, 501)
    step = CaptureStep(timestep=491).resolve(leading, 50)  # a tie between 501 and 481: the later step
    assert (step.index, step.timestep) == (25, 481)
    assert CaptureStep(index=-2).resolve(leading, 10).index == 8
    reference = DDIMScheduler(**SD_SCHEDULER)
    reference.set_timesteps(10)
    assert CaptureStep(index=3).resolve(leading, 10).timestep == int(reference.timesteps[3]) == 601
    with pytest.raises(SynthsegError, match="outside the 10 denoising steps"):
        CaptureStep(index=10).resolve(leading, 10)
    # The caller's scheduler is not touched.
    assert leading.num_inference_steps is None


def test_class_attention_sums_each_names_tokens_then_the_resolutions():
    from synthseg.capture import CapturedFeatures

    def layer(h, values):  # (B=2, h, h, T=5), each token's map constant over space
        return torch.tensor(values, dtype=torch.float32)[:, None, None, :].expand(2, h, h, 5).clone()

    features = CapturedFeatures(cross_attention={
        "a": layer(2, [[0, 1, 2, 3, 4], [1, 1, 1, 1, 1]]),
        "b": layer(2, [[0, 3, 2, 1, 0], [3, 3, 3, 3, 3]]),  # averaged with "a" at 2x2
        "c": layer(4, [[1, 0, 0, 0, 5], [0, 0, 0, 0, 0]]),
    })
    spans = [[slice(1, 3), slice(4, 5)], [slice(2, 3)]]
    maps = features.class_attention(spans, (4, 4))
    assert maps.shape == (2, 2, 4, 4)
    # image 0: class 0 = tokens 1-2: (1+3)/2 + (2+2)/2 at 2x2, 0 at 4x4; class 1 = token 4: (4+0)/2 + 5
    torch.testing.assert_close(maps[0, :, 0, 0], torch.tensor([4.0, 7.0]))
    torch.testing.assert_close(maps[1, 0], torch.full((4, 4), 2.0))
    assert (maps[1, 1] == 0).all()  # padding row
    assert features.class_attention(spans, (4, 4), width=3).shape == (2, 3, 4, 4)
    with pytest.raises(SynthsegError, match="no cross-attention maps were captured"):
        CapturedFeatures().class_attention(spans, (4, 4))


@pytest.mark.parametrize("cross", [True, False])
def test_recording_processor_computes_what_the_installed_diffusers_computes(cross):
    """The recorder re-implements diffusers' eager AttnProcessor so that it can keep the probabilities;
    an upgrade of diffusers that changed that math would fail here, not drift silently."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    from synthseg.capture.unet import _RecordingAttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=24 if cross else None, heads=4, dim_head=8).eval()
    hidden, context = torch.randn(2, 16, 32), torch.randn(2, 7, 24) if cross else None

    class Sink:
        def _record_attention(self, name, probs, heads):
            self.probs, self.heads = probs, heads

    sink = Sink()
    with torch.no_grad():
        expected = AttnProcessor()(attn, hidden, context)
        recorded = _RecordingAttnProcessor([sink], "layer")(attn, hidden, context)
    torch.testing.assert_close(recorded, expected, rtol=0, atol=0)
    assert sink.heads == 4 and sink.probs.shape == (2 * 4, 16, 7 if cross else 16)
    torch.testing.assert_close(sink.probs.sum(-1), torch.ones(8, 16))
