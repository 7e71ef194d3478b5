"""Feature capture at one denoising step, with one backend per kind of denoiser:

- `unet`: `UNet2DConditionModel` (SD 1.x/2.x, SDXL): every down, mid and up block, cross-attention;
- `transformer`: MMDiT transformers (SD3/SD3.5, FLUX): chosen blocks' image tokens on the token grid,
  image->text attention.

Everything downstream (grounded generation, triplets, Protocol i, the grounding module's config) asks
this package, never a backend, so a new denoiser family is a new backend here and its text encoding
in `synthseg.text`.
"""

from __future__ import annotations

from .core import CapturedFeatures, CaptureStep, ResolvedStep, class_maps, normalised_class_maps
from .transformer import TransformerCapture, default_blocks, token_stride, transformer_feature_layout
from .unet import CrossAttentionMaps, FeatureCapture, unet_attention_strides, unet_feature_blocks, unet_feature_layout

__all__ = [
    "CaptureStep", "CapturedFeatures", "CrossAttentionMaps", "FeatureCapture", "ResolvedStep", "TransformerCapture",
    "attention_maps", "attention_strides", "class_maps", "default_blocks", "denoiser_of", "feature_capture", "feature_layout",
    "normalised_class_maps", "unet_attention_strides", "unet_feature_blocks", "unet_feature_layout",
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
                    dtype=None, blocks: list[str] | None = None):
    """A capture context for `pipe`'s denoiser; after the run its `features` and `resolved` (the step)."""
    denoiser = denoiser_of(pipe)
    if not _is_unet(denoiser):
        return TransformerCapture(denoiser, step, pipe.scheduler, classifier_free_guidance=classifier_free_guidance, attention=attention,
                                  dtype=dtype, blocks=blocks)
    resolved = step.resolve(pipe.scheduler, num_inference_steps)
    capture = FeatureCapture(denoiser, resolved.timestep, classifier_free_guidance=classifier_free_guidance, attention=attention, dtype=dtype)
    capture.resolved = resolved
    return capture


def attention_maps(pipe, *, classifier_free_guidance: bool):
    """The DAAM baseline's context for `pipe`'s denoiser: attention summed over every step and layer;
    `heat_maps()` gives (B, T, h, w)."""
    denoiser = denoiser_of(pipe)
    if _is_unet(denoiser):
        return CrossAttentionMaps(denoiser, classifier_free_guidance=classifier_free_guidance)
    return TransformerCapture(denoiser, CaptureStep(), pipe.scheduler, classifier_free_guidance=classifier_free_guidance, every_step=True)
