"""An existing image as the denoiser reads it: pixels -> VAE latents -> latents noised to a timestep on the
pipeline's schedule (DDPM-style or flow) -> one denoiser call on them, with the arguments the pipeline
itself would pass. `synthseg.segment` captures that call, `synthseg.classify` compares its prediction with
the noise, and `synthseg.triplets` makes triplets of finished images with it.
"""

from __future__ import annotations

import numpy as np
import torch

from .capture import denoiser_arguments, denoiser_of, is_shared_input, predict, replay
from .config import SEED_LIMIT
from .errors import SynthsegError
from .text import FLOW_FAMILIES, encode_prompts, pipeline_family


class _Recorded(Exception):
    """Stops a pipeline call at its first denoiser call, once that call's arguments are recorded."""


def recorded_call(pipe, prompt_count: int, height: int, width: int) -> dict:
    """The arguments `pipe` gives its denoiser at `height` x `width` for `prompt_count` prompts (no CFG),
    named as `replay` takes them (shared positional ids with a row dimension), from a pipeline call
    stopped before the denoiser runs."""
    denoiser = denoiser_of(pipe)

    def record(module, args, kwargs):
        raise _Recorded({name: value[None] if is_shared_input(name) else value
                         for name, value in denoiser_arguments(module, args, kwargs).items()})

    handle = denoiser.register_forward_pre_hook(record, with_kwargs=True)
    progress = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)  # a bar for a call that never steps is noise
    try:
        text = encode_prompts(pipe, [""] * prompt_count, guidance_scale=1.0)
        pipe(**text.call, num_inference_steps=1, height=height, width=width, output_type="latent")
    except _Recorded as recorded:
        return recorded.args[0]
    finally:
        handle.remove()
        pipe._progress_bar_config = progress
    raise SynthsegError("the pipeline never called its denoiser")


def pixel_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) or (N, H, W, 3) uint8 RGB -> (N, 3, H, W) float in [-1, 1], as a VAE reads images."""
    images = torch.from_numpy(np.array(pixels))
    return (images[None] if images.ndim == 3 else images).permute(0, 3, 1, 2).float() / 127.5 - 1


def encode_images(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) pixels in [-1, 1] -> (N, C, h, w) VAE latents as the denoiser reads them: the
    posterior's mean, shifted and scaled."""
    config = pipe.vae.config
    latents = pipe.vae.encode(pixels.to(pipe.device, pipe.vae.dtype)).latent_dist.mean
    return (latents - (config.get("shift_factor") or 0.0)) * config.scaling_factor


def schedule_point(pipe, timestep: int) -> tuple[float, float, float]:
    """(signal, noise scale, the value the denoiser takes) at `timestep` of 1000: x_t = sqrt(a_t) x_0 +
    sqrt(1 - a_t) e on a DDPM-style schedule (the input Euler-type schedulers also scale to); x = (1 - s) x_0
    + s e with s = t / 1000 on a flow schedule (SD3, FLUX; FLUX's transformer takes s, SD3's t)."""
    family = pipeline_family(pipe)
    if family in FLOW_FAMILIES:
        sigma = timestep / 1000
        return 1 - sigma, sigma, sigma if family == "flux" else float(timestep)
    alphas = getattr(pipe.scheduler, "alphas_cumprod", None)
    if alphas is None:
        raise SynthsegError(f"{type(pipe.scheduler).__name__} has no DDPM schedule to noise a real image with")
    alpha = float(alphas[timestep])
    return alpha ** 0.5, (1 - alpha) ** 0.5, timestep


def _schedule(pipe, timesteps: int | list[int], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`schedule_point` of each of `timesteps` (one, or one per row): signal and noise scale as (N, 1, 1, 1)
    tensors on `like`'s device and dtype, and the denoiser's timestep values (N,) float32."""
    points = [schedule_point(pipe, t) for t in ([timesteps] if isinstance(timesteps, int) else timesteps)]
    signal, scale, values = (torch.tensor([point[i] for point in points], dtype=torch.float32) for i in range(3))
    return signal.view(-1, 1, 1, 1).to(like.device, like.dtype), scale.view(-1, 1, 1, 1).to(like.device, like.dtype), values


def add_noise(pipe, latents: torch.Tensor, noise: torch.Tensor, timesteps: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents noised with `noise` at `timesteps`, the timestep values (N,) the denoiser takes): one timestep
    for every row, or one per row; `latents` (1 or N rows) broadcast against `noise` (N rows) (`schedule_point`)."""
    signal, scale, values = _schedule(pipe, timesteps, noise)
    return signal * latents + scale * noise, values


def noise_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of item `index`'s noise under `seed` (segment, the diffusion classifier, image
    triplets): one stream per (seed, index), folded into torch's 64-bit seed range."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % SEED_LIMIT)


def noise_latents(pipe, latents: torch.Tensor, timestep: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """(latents at `timestep`, the timestep value the denoiser takes), one draw per row from `generator`."""
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    noisy, values = add_noise(pipe, latents, noise, timestep)
    return noisy, float(values[0])


def prediction_target(pipe, latents: torch.Tensor, noise: torch.Tensor, timesteps: int | list[int]) -> torch.Tensor:
    """What the denoiser is trained to predict for `latents` noised with `noise` at `timesteps` (as
    `add_noise` takes them): the flow velocity e - x_0 (SD3, FLUX), or by the scheduler's `prediction_type`
    the noise, v = sqrt(a_t) e - sqrt(1 - a_t) x_0, or x_0."""
    if pipeline_family(pipe) in FLOW_FAMILIES:
        return noise - latents
    signal, scale, _ = _schedule(pipe, timesteps, noise)
    kind = pipe.scheduler.config.get("prediction_type", "epsilon")
    targets = {"epsilon": lambda: noise, "v_prediction": lambda: signal * noise - scale * latents, "sample": lambda: latents}
    if kind not in targets:
        raise SynthsegError(f"prediction_type {kind!r} of {type(pipe.scheduler).__name__} is not one synthseg can score")
    return targets[kind]().expand_as(noise)


def _noised_inputs(pipe, call: dict, noisy: torch.Tensor, values, texts: dict) -> dict:
    """`call` (`recorded_call` for N prompts) with the noised latents (N, C, h, w; packed for FLUX), the
    timestep values (one, or one per row) and the text arguments `texts` (N rows, `text_inputs`) put in."""
    if pipeline_family(pipe) == "flux":
        noisy = pipe._pack_latents(noisy, noisy.shape[0], *noisy.shape[1:])
    inputs = dict(call, **texts)
    inputs["hidden_states" if "hidden_states" in inputs else "sample"] = noisy
    inputs["timestep"] = torch.as_tensor(values, dtype=torch.float32).expand(noisy.shape[0]).clone()
    return inputs


def predict_noised(pipe, call: dict, noisy: torch.Tensor, values, texts: dict) -> torch.Tensor:
    """The denoiser's prediction (N, C, h, w) for noised latents (N, C, h, w) at timestep `values` (one,
    or one per row), as `replay_noised` calls it, nothing captured; FLUX's packed output unpacked."""
    out = predict(pipe, _noised_inputs(pipe, call, noisy, values, texts)).float()
    if pipeline_family(pipe) == "flux":
        out = pipe._unpack_latents(out, noisy.shape[2] * pipe.vae_scale_factor, noisy.shape[3] * pipe.vae_scale_factor, pipe.vae_scale_factor)
    return out


def replay_noised(pipe, call: dict, noisy: torch.Tensor, value: float, texts: dict, *, attention: bool, blocks: list[str] | None):
    """Capture one denoiser call on noised latents (N, C, h, w) at timestep `value`, with the text
    arguments `texts` (N rows, `text_inputs`) and the rest of `call` (`recorded_call` for N prompts at
    this size): the features a grounding module reads of an existing image."""
    return replay(pipe, _noised_inputs(pipe, call, noisy, value, texts), attention=attention, blocks=blocks)
