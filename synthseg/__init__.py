"""synthseg: grounded generation of labelled segmentation data from text-to-image diffusion models.

The public API is imported on first use (PEP 562), so that `import synthseg` and the command line
start without loading torch and diffusers.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("synthseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

_EXPORTS = {
    "candidates": ("best_candidate", "candidate_seeds"),
    "captioner": ("CaptionerConfig", "ImplicitCaptioner", "Recogniser"),
    "capture": ("CaptureStep", "CapturedFeatures", "FeatureCapture", "ResolvedStep", "TransformerCapture", "feature_layout",
                "unet_feature_layout"),
    "counter": ("CountJudge",),
    "errors": ("SynthsegError",),
    "generate": ("CaptureRun", "GroundedGeneration", "capture_pass", "generate_grounded"),
    "grounding": ("GroundingConfig", "GroundingModule", "grounding_loss"),
    "pipeline": ("load_pipeline",),
    "segment": ("GroundingSegmenter", "segment_images", "segment_to_folder"),
    "text": ("class_queries", "class_token_span", "class_token_spans", "encode_prompts", "prompt_token_spans"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'synthseg' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
