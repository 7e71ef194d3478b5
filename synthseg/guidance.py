"""Counting guidance (Kang et al. 2023): sampling steered by a counter's gradient toward each image's count of each
class, so that a prompt's or a layout's objects are drawn, each once, while they are being settled.

The judges of `synthseg.candidates` can only choose among finished images; where a model draws one object for two
prompted classes, or one over two boxes, every candidate may be wrong. `CountGuidance` moves each of the first sampling
steps along the gradient of a `counter.CountJudge`'s log-probability of exactly the wanted counts, read on the VAE's
decoding of the predicted clean latents. On world-layout, guidance 3 raised the right counts from 48.8 to 55.8%
(RESULTS.md, "world-layout"); on world-dit's two-class text prompts, guidance 8 raised the images holding both classes
from 31 to 57%, and with the best of 4 candidates from 45 to 84.5% (RESULTS.md, "Ad hoc trials (world)", session 61).

It works on the schedules of every family of `synthseg.text`:
- DDPM-type schedules (`alphas_cumprod`, unscaled samples, epsilon or v prediction: DDIM, DDPM, PNDM, DPM-Solver,
  UniPC; SD 1.x/2.x, SDXL, GLIGEN): eps' = eps - scale * sqrt(1 - a_t) * grad.
- Flow matching (SD3, FLUX: the model predicts v = e - x0, and a timestep is 1000 x sigma): v' = v - scale * grad, so
  each Euler step also climbs the gradient by scale x its fall in sigma. FLUX's packed 2x2 tokens are unpacked to the
  latent grid for the decoder.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .capture import CaptureStep, denoiser_of
from .capture.transformer import token_grid
from .errors import SynthsegError
from .text import FLOW_FAMILIES, pipeline_family


def check_guidable(pipe) -> None:
    """Refuse a scheduler `CountGuidance` cannot read x0 from: it needs flow matching (SD3, FLUX) or a DDPM-type
    schedule (`alphas_cumprod`, samples unscaled) with an epsilon or v prediction."""
    if pipeline_family(pipe) in FLOW_FAMILIES:
        return
    scheduler = pipe.scheduler
    if getattr(scheduler, "alphas_cumprod", None) is None or getattr(scheduler, "init_noise_sigma", 1.0) != 1.0 \
            or scheduler.config.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction"):
        raise SynthsegError(f"count guidance needs flow matching, or a DDPM-type scheduler predicting epsilon or v (DDIM, DDPM, "
                            f"DPM-Solver), not {type(scheduler).__name__} ({scheduler.config.get('prediction_type')}): set "
                            "count_guidance to 0")


class CountGuidance:
    """Context manager: in the first `steps` sampling steps, the scheduler's step takes the model's prediction moved
    along the gradient of the counter's log-probability of exactly each image's counts, read on the VAE's decoding of
    the predicted clean latents (the denoiser's Jacobian left out, as in universal guidance's forward step, so nothing
    is backpropagated through it). Later steps, the captured one among them, run as they are, so the grounding module
    reads the features of the image that is kept.

    Args:
        pipe: a pipeline that `check_guidable` accepts.
        counter: the `counter.CountJudge`, on the pipeline's device.
        phrases: per image of the batch the scheduler steps (after classifier-free guidance), its objects' class
            names (one name per object: ["circle", "circle"] asks for two circles).
        scale: the guidance strength (0: off).
        steps: how many of the first sampling steps are guided.
    """

    def __init__(self, pipe, counter, phrases: list[list[str]], scale: float, steps: int):
        check_guidable(pipe)
        self.pipe, self.counter, self.scale, self.steps = pipe, counter, float(scale), int(steps)
        self.phrases = [list(row) for row in phrases]
        for row in self.phrases:
            self.counter.wanted(row)  # an unknown class fails before any generation work
        self.family = pipeline_family(pipe)
        self._taken, self._grid, self._hook = 0, None, None

    def __enter__(self) -> CountGuidance:
        scheduler = self.pipe.scheduler
        step, self._outer = scheduler.step, vars(scheduler).get("step")  # another wrapper's, if one is on
        self._taken = 0

        @functools.wraps(step)  # the pipeline reads the step's signature for its eta and generator
        def guided(model_output, timestep, sample, *args, **kwargs):
            if self._taken < self.steps:
                model_output = self.guide(model_output, timestep, sample)
            self._taken += 1
            return step(model_output, timestep, sample, *args, **kwargs)

        scheduler.step = guided
        if self.family == "flux":  # its samples are packed tokens: the call's img_ids give their grid
            denoiser = denoiser_of(self.pipe)
            self._hook = denoiser.register_forward_pre_hook(self._read_grid, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._outer is None:
            del self.pipe.scheduler.step  # the instance attribute: the class's step shows again
        else:
            self.pipe.scheduler.step = self._outer
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _read_grid(self, module, args, kwargs):
        self._grid = token_grid("flux", kwargs, module)

    def guide(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        """The scheduler's `model_output` (after classifier-free guidance) at `timestep`, moved by the guidance;
        `sample` is x_t. The x0 gradient stands for x_t's (the Jacobian taken as the identity). On a DDPM-type
        schedule, of the readings tried on world layout streams 5 and 6 (sqrt(a), as a v model's x0_hat = sqrt(a) x_t
        - sqrt(1 - a) v takes it with v held; 1 / sqrt(a), Tweedie's leading term; and 1), this one counted best, if
        by less than the noise (RESULTS.md, "Ad hoc trials (world)", session 48)."""
        x, out = sample.float(), model_output.float()
        if len(self.phrases) != len(x):
            raise SynthsegError(f"count guidance was given {len(self.phrases)} images' phrases for a batch of {len(x)}")
        if self.family in FLOW_FAMILIES:
            sigma = float(timestep) / 1000  # flow schedulers count timesteps as 1000 x sigma
            return (out - self.scale * self._gradient(x - sigma * out)).to(model_output.dtype)
        a = self.pipe.scheduler.alphas_cumprod[int(timestep)].to(sample.device, torch.float32)
        signal, noise = a.sqrt(), (1 - a).sqrt()
        v_prediction = self.pipe.scheduler.config.get("prediction_type") == "v_prediction"
        shift = self.scale * noise * self._gradient(signal * x - noise * out if v_prediction else (x - noise * out) / signal)
        return (out - (shift / signal if v_prediction else shift)).to(model_output.dtype)  # v = (eps - sqrt(1 - a) x_t) / sqrt(a)

    def _gradient(self, x0: torch.Tensor) -> torch.Tensor:
        """d/dx0 of the summed log-probabilities of every image's counts, on the VAE's decoding of `x0` (the
        scheduler's sample layout: FLUX's packed tokens, else (B, C, h, w))."""
        vae, config = self.pipe.vae, self.pipe.vae.config
        with torch.enable_grad():
            x0 = x0.detach().requires_grad_()
            latents = x0
            if self._grid is not None:
                size = [side * 2 * self.pipe.vae_scale_factor for side in self._grid]
                latents = self.pipe._unpack_latents(x0, *size, self.pipe.vae_scale_factor)
            latents = latents / config.scaling_factor + (config.get("shift_factor") or 0.0)
            pixels = (vae.decode(latents.to(vae.dtype)).sample.float() + 1) / 2
            grad, = torch.autograd.grad(self.counter.log_probability_torch(pixels, self.phrases).sum(), x0)
        return grad


def count_steering(pipe, counter, phrases: list[list[str]], scale: float, steps: int) -> contextlib.AbstractContextManager:
    """The context a call runs in: `CountGuidance` over each image's `phrases`, or nothing without a counter, at
    scale 0 or for no steps."""
    if counter is None or not scale or not steps:
        return contextlib.nullcontext()
    return CountGuidance(pipe, counter, phrases, scale, steps)


def prompt_steering(pipe, counter, class_names: list[list[str]], scale: float, num_inference_steps: int,
                    capture_step: CaptureStep = CaptureStep()) -> contextlib.AbstractContextManager:
    """The context a batch of text prompts' call runs in: `CountGuidance` toward one object of each of an image's
    `class_names` in every step before the captured one (`capture_step` of `num_inference_steps`), or nothing at scale 0."""
    if not scale:
        return contextlib.nullcontext()
    if counter is None:
        raise SynthsegError("count guidance follows a counter's gradient: give a counter, or set count_guidance to 0")
    return count_steering(pipe, counter, class_names, scale, capture_step.resolve(pipe.scheduler, num_inference_steps).index)
