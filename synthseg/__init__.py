"""synthseg: grounded generation of labelled segmentation data from text-to-image diffusion models."""

from importlib.metadata import PackageNotFoundError, version

from .capture import CapturedFeatures, CaptureStep, FeatureCapture, ResolvedStep, unet_feature_layout
from .errors import SynthsegError
from .generate import GroundedGeneration, generate_grounded
from .grounding import GroundingConfig, GroundingModule, grounding_loss
from .pipeline import load_pipeline
from .text import class_queries, class_token_span, class_token_spans

try:
    __version__ = version("synthseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = [
    "CaptureStep", "CapturedFeatures", "FeatureCapture", "GroundedGeneration", "GroundingConfig",
    "GroundingModule", "ResolvedStep", "SynthsegError", "class_queries", "class_token_span",
    "class_token_spans", "generate_grounded", "grounding_loss", "load_pipeline", "unet_feature_layout",
]
