"""torch.compile of the denoiser keeps the capture: the same features and attention as the eager model,
compiled in place (`module.compile()`) or wrapped (`torch.compile(module)`, as diffusers' docs do), also
when the graph was compiled before any capture hook existed, and without recompiling."""

from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from synthseg.generate import capture_pass
from synthseg.tiny import tiny_flux_pipeline, tiny_pipeline

T5 = Path(__file__).parent / "fixtures" / "t5-tiny.model"
BUILD = {"sd": ("unet", lambda: tiny_pipeline(seed=0)), "flux": ("transformer", lambda: tiny_flux_pipeline(T5))}
PROMPTS, NAMES = ["a photograph of a dog and a cat", "a photograph of a cat"], [["dog", "cat"], ["cat"]]


def captured(pipe, daam=False):
    return capture_pass(pipe, PROMPTS, NAMES, [3, 4], guidance_scale=2.0, num_inference_steps=3, record_inputs=True, daam=daam)


def compiled_pipe(family: str, wrapped: bool, backend):
    part, build = BUILD[family]
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    if wrapped:
        setattr(pipe, part, torch.compile(getattr(pipe, part), backend=backend))
    else:
        getattr(pipe, part).compile(backend=backend)
    return pipe, part


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("family, wrapped", [("sd", True), ("sd", False), ("flux", True)])
def test_a_compiled_denoiser_captures_what_the_eager_one_does(family, wrapped, backend):
    torch._dynamo.reset()
    eager = BUILD[family][1]()
    eager.set_progress_bar_config(disable=True)
    expected = captured(eager, daam=True)
    pipe, part = compiled_pipe(family, wrapped, backend)
    pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.0, output_type="latent")  # compiled before any hook exists
    processors = dict(getattr(pipe, part).attn_processors)
    for _ in range(2):  # the second run reuses the compiled graphs
        got = captured(pipe, daam=True)
        assert got.features.timestep == expected.features.timestep and list(got.features.blocks) == list(expected.features.blocks)
        for name, tensor in expected.features.blocks.items():
            torch.testing.assert_close(got.features.blocks[name], tensor, atol=1e-5, rtol=1e-4)
        assert list(got.features.cross_attention) == list(expected.features.cross_attention) and got.features.cross_attention
        for name, tensor in expected.features.cross_attention.items():
            torch.testing.assert_close(got.features.cross_attention[name], tensor, atol=1e-5, rtol=1e-4)
        for mine, theirs in zip(got.heat_maps, expected.heat_maps):  # the DAAM sum, a context open at every step
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.features.inputs["encoder_hidden_states"], expected.features.inputs["encoder_hidden_states"])
        assert all(getattr(pipe, part).attn_processors[k] is v for k, v in processors.items())
        assert "_synthseg_gate" not in vars(getattr(pipe, part).__dict__.get("_orig_mod", getattr(pipe, part)))


@pytest.mark.parametrize("wrapped", [True, False])
def test_capturing_runs_the_compiled_graph_without_recompiling(wrapped):
    """The capture step runs eagerly; every other step reuses the graph compiled before capture began."""
    torch._dynamo.reset()
    counter = CompileCounter()
    pipe, part = compiled_pipe("sd", wrapped, counter)
    pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.0, output_type="latent")
    compiles = counter.frame_count
    assert compiles >= 1
    run = captured(pipe)
    assert run.features.blocks and run.features.cross_attention
    assert counter.frame_count == compiles
