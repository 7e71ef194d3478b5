"""Feature capture at one denoising step, with one backend per kind of denoiser:

- `unet`: `UNet2DConditionModel` (SD 1.x/2.x, SDXL): every down, mid and up block, cross-attention;
- `transformer`: MMDiT transformers (SD3/SD3.5, FLUX): chosen blocks' image tokens on the token grid,
  image->text attention.

Everything downstream (grounded generation, triplets, Protocol i, the grounding module's config) asks
this package, never a backend, so a new denoiser family is a new backend here and its text encoding
in `synthseg.text`.
"""

from __future__ import annotations

import torch

from ..errors import SynthsegError
from .core import CapturedFeatures, CaptureStep, ResolvedStep, class_maps, denoiser_arguments, is_shared_input, normalised_class_maps, unit_scaled
from .transformer import TransformerCapture, default_blocks, token_stride, transformer_feature_layout
from .unet import CrossAttentionMaps, FeatureCapture, unet_attention_strides, unet_feature_blocks, unet_feature_layout

__all__ = [
    "CaptureStep", "CapturedFeatures", "CrossAttentionMaps", "FeatureCapture", "ResolvedStep", "TransformerCapture",
    "attention_maps", "attention_strides", "class_maps", "default_blocks", "denoiser_arguments", "denoiser_of", "feature_capture", "feature_layout",
    "normalised_class_maps", "predict", "replay", "unit_scaled", "unet_attention_strides", "unet_feature_blocks", "unet_feature_layout",
]


def denoiser_of(pipe):
    """The pipeline's denoiser: its `unet` or its `transformer`."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def _is_unet(denoiser) -> bool:
    return hasattr(denoiser, "down_blocks")


def feature_layout(pipe, blocks: list[str] | None = None) -> tuple[list[int], list[int]]:
    """(channels, stride relative to the latent) of each captured block output, in capture order. `blocks`
    names transformer blocks (default: `default_blocks`); a UNet always gives all its blocks."""
    denoiser = denoiser_of(pipe)
    return unet_feature_layout(denoiser) if _is_unet(denoiser) else transformer_feature_layout(denoiser, blocks)


def attention_strides(pipe) -> list[int]:
    """Strides (relative to the latent) of the attention maps a capture records, finest first."""
    denoiser = denoiser_of(pipe)
    return unet_attention_strides(denoiser) if _is_unet(denoiser) else [token_stride(denoiser)]


def feature_capture(pipe, step: CaptureStep, num_inference_steps: int, *, classifier_free_guidance: bool, attention: bool = True,
                    dtype=None, blocks: list[str] | None = None, record_inputs: bool = False):
    """A capture context for `pipe`'s denoiser; after the run its `features` and `resolved` (the step).
    `record_inputs` also keeps the captured call's arguments, for `replay`."""
    denoiser = denoiser_of(pipe)
    if not _is_unet(denoiser):
        return TransformerCapture(denoiser, step, pipe.scheduler, classifier_free_guidance=classifier_free_guidance, attention=attention,
                                  dtype=dtype, blocks=blocks, record_inputs=record_inputs)
    resolved = step.resolve(pipe.scheduler, num_inference_steps)
    capture = FeatureCapture(denoiser, resolved.timestep, classifier_free_guidance=classifier_free_guidance, attention=attention, dtype=dtype,
                             record_inputs=record_inputs)
    capture.resolved = resolved
    return capture


def _denoiser_kwargs(pipe, inputs: dict) -> dict:
    """Recorded `inputs` as the denoiser's keyword arguments: shared inputs' row 0, "name.key" folded back
    into dicts, floating tensors (2-D and up) cast to the denoiser's dtype, everything on the pipeline's device."""
    denoiser = denoiser_of(pipe)
    kwargs: dict = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value[0] if is_shared_input(name) else value
            value = value.to(pipe.device, denoiser.dtype if value.is_floating_point() and value.ndim >= 2 else value.dtype)
        parent, _, key = name.partition(".")
        if key:
            kwargs.setdefault(parent, {})[key] = value
        else:
            kwargs[name] = value
    return kwargs


@torch.no_grad()
def replay(pipe, inputs: dict, *, attention: bool = True, dtype=None, blocks: list[str] | None = None) -> CapturedFeatures:
    """Run `pipe`'s denoiser once on recorded `inputs` (`CapturedFeatures.inputs`, batch first, any row
    count) and capture that call as `feature_capture` did at generation: one forward pass, no scheduler,
    no sampling. Floating tensors are cast to the denoiser's dtype, so inputs stored in fp16 replay
    into an fp32 model (at fp16 precision); stored at the model's dtype, the features are the captured ones."""
    denoiser = denoiser_of(pipe)
    kwargs = _denoiser_kwargs(pipe, inputs)
    if _is_unet(denoiser):
        timestep = int(torch.as_tensor(kwargs["timestep"]).flatten()[0])
        capture = FeatureCapture(denoiser, timestep, classifier_free_guidance=False, attention=attention, dtype=dtype)
    else:
        capture = TransformerCapture(denoiser, CaptureStep(), None, classifier_free_guidance=False, attention=attention, dtype=dtype, blocks=blocks)
    with capture:
        denoiser(**kwargs, return_dict=False)
    if not capture.captured:
        raise SynthsegError("the replayed denoiser call was not captured")
    return capture.features


@torch.no_grad()
def predict(pipe, inputs: dict) -> torch.Tensor:
    """The denoiser's output for recorded `inputs` (as `replay` takes them; each row may have its own
    timestep), with nothing captured: its noise, v or flow prediction, in its own layout (FLUX's packed)."""
    return denoiser_of(pipe)(**_denoiser_kwargs(pipe, inputs), return_dict=False)[0]


def attention_maps(pipe, *, classifier_free_guidance: bool):
    """The DAAM baseline's context for `pipe`'s denoiser: attention summed over every step and layer;
    `heat_maps()` gives (B, T, h, w)."""
    denoiser = denoiser_of(pipe)
    if _is_unet(denoiser):
        return CrossAttentionMaps(denoiser, classifier_free_guidance=classifier_free_guidance)
    return TransformerCapture(denoiser, CaptureStep(), pipe.scheduler, classifier_free_guidance=classifier_free_guidance, every_step=True)
