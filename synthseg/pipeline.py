"""Load a text-to-image pipeline from a hub id or a local folder, through diffusers' `from_pretrained`."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from .errors import SynthsegError


def load_pipeline(
    model: str | Path,
    *,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
) -> DiffusionPipeline:
    """Load `model` (a hub id such as "runwayml/stable-diffusion-v1-5", or a folder holding a
    `model_index.json`) with `DiffusionPipeline.from_pretrained`. The safety checker is not loaded:
    synthetic training data is filtered by the dataset's own quality checks.

    Offline with no cached copy, this fails with one line naming the model and how to supply it.
    """
    local = Path(model)
    if local.exists() and not (local / "model_index.json").is_file():
        raise SynthsegError(f"{local} is not a diffusers pipeline folder: it has no model_index.json")
    try:
        pipe = DiffusionPipeline.from_pretrained(
            str(model), torch_dtype=torch_dtype, revision=revision, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as error:
        if local.exists():
            raise SynthsegError(f"cannot load pipeline from {local}: {str(error).splitlines()[0]}") from None
        raise SynthsegError(
            f"cannot load pipeline {model!r}: it is not a local folder and is not in the Hugging Face cache, "
            f"and the hub cannot be reached; where there is network run `hf download {model} --local-dir DIR` "
            f"and pass DIR instead (or point HF_HOME at a cache that holds it)"
        ) from None
    return pipe.to(device) if device is not None else pipe
