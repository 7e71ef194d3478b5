"""Counting guidance (`synthseg.guidance`): a guided step moves each image's predicted x0 up the counter's
log-probability of its own counts, on DDPM-type and flow schedules, only in the steps asked, and unhooks."""

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from synthseg import SynthsegError
from synthseg.guidance import CountGuidance, check_guidable, count_steering

T5 = Path(__file__).parent / "fixtures" / "t5-tiny.model"
PHRASES = [["dog", "dog", "cat"], ["cat"]]  # two images: two dogs and a cat; one cat


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_count_guidance_moves_the_early_steps_toward_each_image_s_counts_and_unhooks(prediction_type, make_counter):
    """On a DDPM-type schedule: a guided step's predicted x0 is one the counter finds likelier to hold each image's
    counts, only the first `steps` steps are guided, and the scheduler is as it was after the call."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from synthseg.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    torch.manual_seed(0)
    counter = make_counter(["dog", "cat"], max_count=2)

    def x0_log_p(output, x, a):
        x0 = a.sqrt() * x - (1 - a).sqrt() * output if prediction_type == "v_prediction" else (x - (1 - a).sqrt() * output) / a.sqrt()
        pixels = (pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample + 1) / 2
        return counter.log_probability_torch(pixels, PHRASES)

    x, output = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)), torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        moved = CountGuidance(pipe, counter, PHRASES, scale=0.5, steps=2).guide(output, torch.tensor(501), x)
        a = pipe.scheduler.alphas_cumprod[501]
        before, after = x0_log_p(output, x, a), x0_log_p(moved, x, a)
    assert (after > before).all() and not torch.equal(moved, output)  # each image's x0 moves up its own counts' gradient

    guidance, seen = CountGuidance(pipe, counter, PHRASES[:1], scale=0.5, steps=2), []
    original = guidance.guide
    guidance.guide = lambda out, t, sample: seen.append(int(t)) or original(out, t, sample)
    kwargs = dict(num_inference_steps=4, guidance_scale=2.0, output_type="np")
    plain = pipe("two dogs and a cat", generator=torch.Generator().manual_seed(7), **kwargs).images
    with guidance:
        guided = pipe("two dogs and a cat", generator=torch.Generator().manual_seed(7), **kwargs).images
    assert seen == [int(t) for t in pipe.scheduler.timesteps[:2]]  # the first two of four steps
    assert not np.allclose(guided, plain) and "step" not in vars(pipe.scheduler)  # it steered, and is unhooked
    assert np.array_equal(pipe("two dogs and a cat", generator=torch.Generator().manual_seed(7), **kwargs).images, plain)
    with guidance:  # contexts nest: the inner one's exit puts the outer one's step back
        outer = pipe.scheduler.step
        with CountGuidance(pipe, counter, PHRASES[:1], scale=1.0, steps=1):
            assert pipe.scheduler.step is not outer
        assert pipe.scheduler.step is outer
    assert "step" not in vars(pipe.scheduler)
    assert isinstance(count_steering(pipe, counter, PHRASES, 0.0, 2), contextlib.nullcontext)  # scale 0: nothing installed
    with pytest.raises(SynthsegError, match="the counter does not know bird"):
        CountGuidance(pipe, counter, [["bird"]], 1.0, 2)
    with pytest.raises(SynthsegError, match="count guidance was given 2 images' phrases for a batch of 1"):
        CountGuidance(pipe, counter, PHRASES, 1.0, 2).guide(output[:1], torch.tensor(501), x[:1])
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(SynthsegError, match="count guidance needs flow matching, or a DDPM-type scheduler.*not EulerDiscreteScheduler"):
        check_guidable(pipe)


def test_count_guidance_on_flux_s_flow_moves_the_velocity_up_the_counter_s_gradient_on_unpacked_latents(make_counter):
    """On FLUX (flow matching, packed 2x2 tokens): v' = v - scale * grad of the counts' log-probability at x0 = x_t -
    sigma v, read on the unpacked latents of the call's token grid; the forward hook that reads the grid is removed."""
    from synthseg.text import encode_prompts
    from synthseg.tiny import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(T5)
    pipe.set_progress_bar_config(disable=True)
    check_guidable(pipe)  # flow matching reads x0 as it is
    torch.manual_seed(0)
    counter = make_counter(["dog", "cat"], max_count=2)
    guidance, seen = CountGuidance(pipe, counter, PHRASES, scale=0.5, steps=2), []
    original = guidance.guide
    guidance.guide = lambda out, t, sample: seen.append(float(t)) or original(out, t, sample)
    call = dict(**encode_prompts(pipe, ["two dogs and a cat", "a cat"], 1.0).call, num_inference_steps=3, height=32, width=24,
                output_type="np")
    plain = pipe(**call, generator=[torch.Generator().manual_seed(s) for s in (3, 4)]).images
    with guidance:
        guided = pipe(**call, generator=[torch.Generator().manual_seed(s) for s in (3, 4)]).images
    assert seen == [float(t) for t in pipe.scheduler.timesteps[:2]] and not np.allclose(guided, plain)
    assert "step" not in vars(pipe.scheduler) and not pipe.transformer._forward_pre_hooks  # unhooked
    assert guidance._grid == (32 // (2 * pipe.vae_scale_factor), 24 // (2 * pipe.vae_scale_factor))  # tokens of 2x2 latents

    def x0_log_p(v, x, sigma):
        latents = pipe._unpack_latents(x - sigma * v, 32, 24, pipe.vae_scale_factor)
        latents = latents / pipe.vae.config.scaling_factor + (pipe.vae.config.shift_factor or 0.0)
        return counter.log_probability_torch((pipe.vae.decode(latents).sample + 1) / 2, PHRASES)

    tokens = (32 // (2 * pipe.vae_scale_factor)) * (24 // (2 * pipe.vae_scale_factor))
    width = pipe.transformer.config.in_channels  # a token: 2x2 latents of 4 channels
    x, v = torch.randn(2, tokens, width, generator=torch.Generator().manual_seed(1)), torch.randn(2, tokens, width)
    with torch.no_grad():
        moved = guidance.guide(v, torch.tensor(600.0), x)
        gain = x0_log_p(moved, x, 0.6) - x0_log_p(v, x, 0.6)
    assert (gain > 0).all()  # each image's x0 is likelier to hold its own counts


def test_generate_grounded_guides_every_step_before_the_captured_one_toward_one_object_of_each_class(pipe, grounding, make_counter,
                                                                                                      make_chooser, monkeypatch):
    """A text prompt's count guidance: each image (each candidate too) is steered toward one object of each of its
    classes in the steps before the captured one, so the features the module reads are the kept image's own."""
    from synthseg.capture import CaptureStep
    from synthseg.generate import generate_grounded

    counter = make_counter(["dog", "cat"], max_count=2)
    prompts, names, seeds = ["a photo of a dog and a cat", "a photo of a cat"], [["dog", "cat"], ["cat"]], [5, 9]
    options = dict(guidance_scale=2.0, num_inference_steps=4)
    guided_rows, original = [], CountGuidance.guide

    def spy(self, output, timestep, sample):
        guided_rows.append((int(timestep), [tuple(row) for row in self.phrases]))
        return original(self, output, timestep, sample)

    monkeypatch.setattr(CountGuidance, "guide", spy)
    plain = generate_grounded(pipe, grounding, prompts, names, seeds, **options)
    assert not guided_rows  # no guidance asked: none installed
    guided = generate_grounded(pipe, grounding, prompts, names, seeds, counter=counter, count_guidance=50.0, **options)
    captured = CaptureStep().resolve(pipe.scheduler, 4)
    assert guided.step == plain.step and [t for t, _ in guided_rows] == [int(t) for t in pipe.scheduler.timesteps[: captured.index % 4]]
    assert guided_rows[0][1] == [("dog", "cat"), ("cat",)]  # one of each prompted class, per image
    assert all(np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max() > 1 for a, b in zip(guided.images, plain.images))
    guided_rows.clear()
    late = generate_grounded(pipe, grounding, prompts[:1], names[:1], seeds[:1], counter=counter, count_guidance=2.0,
                             capture_step=CaptureStep(index=1), **options)
    assert late.step.index == 1 and len(guided_rows) == 1  # an earlier capture step: only the step before it is guided
    guided_rows.clear()
    generate_grounded(pipe, grounding, prompts[:1], names[:1], seeds[:1], counter=counter, count_guidance=2.0, candidates=2,
                      recogniser=make_chooser(pipe, ["dog", "cat"]), **options)
    assert guided_rows[0][1] == [("dog", "cat")] * 2  # each candidate steered alike
    with pytest.raises(SynthsegError, match="count guidance follows a counter's gradient: give a counter"):
        generate_grounded(pipe, grounding, prompts, names, seeds, count_guidance=1.0, **options)
    with pytest.raises(SynthsegError, match="the counter does not know bird"):
        generate_grounded(pipe, grounding, ["a bird"], [["bird"]], [1], counter=counter, count_guidance=1.0, **options)


def test_count_guidance_on_sd3_s_flow_reads_its_unpacked_latents(make_counter):
    """SD3 (flow matching on (B, C, h, w) latents): the guided step's x0 = x_t - sigma v is likelier to hold each
    image's counts, and a guided call differs from the plain one with the same seeds."""
    from synthseg.text import encode_prompts
    from synthseg.tiny import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline(T5)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    counter = make_counter(["dog", "cat"], max_count=2)
    guidance = CountGuidance(pipe, counter, PHRASES, scale=50.0, steps=2)
    call = dict(**encode_prompts(pipe, ["two dogs and a cat", "a cat"], 1.0).call, num_inference_steps=3, output_type="np")
    plain = pipe(**call, generator=[torch.Generator().manual_seed(s) for s in (3, 4)]).images
    with guidance:
        guided = pipe(**call, generator=[torch.Generator().manual_seed(s) for s in (3, 4)]).images
    assert not np.allclose(guided, plain) and "step" not in vars(pipe.scheduler)

    def x0_log_p(v, x, sigma):
        latents = (x - sigma * v) / pipe.vae.config.scaling_factor + (pipe.vae.config.shift_factor or 0.0)
        return counter.log_probability_torch((pipe.vae.decode(latents).sample + 1) / 2, PHRASES)

    channels = pipe.transformer.config.in_channels
    x, v = torch.randn(2, channels, 16, 16, generator=torch.Generator().manual_seed(1)), torch.randn(2, channels, 16, 16)
    with torch.no_grad():
        gain = x0_log_p(guidance.guide(v, torch.tensor(600.0), x), x, 0.6) - x0_log_p(v, x, 0.6)
    assert (gain > 0).all()
