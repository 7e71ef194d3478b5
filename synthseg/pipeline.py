"""The one loader of text-to-image pipelines: a bundled name, a hub id or a local folder, through
diffusers' `from_pretrained`."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from .errors import SynthsegError
from .registry import BUNDLES, resolve_pipeline


def looks_like_path(spec: str | Path) -> bool:
    """Whether `spec` names a folder rather than a hub id ("org/name"): it exists, is absolute or
    relative to `.`/`~`, or has more than one slash."""
    text = str(spec)
    return Path(text).exists() or text.startswith(("/", "./", "../", "~")) or text.count("/") > 1 or text.endswith("/")


def _not_hub_fallback(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Couldn't connect to the Hub")


@contextlib.contextmanager
def quiet_loading(load_report: bool = True):
    """diffusers' and transformers' per-component loading bars off while a model loads (they print
    several bars for a load of seconds), and diffusers' two-line warning that the hub is unreachable (a
    cached copy then loads silently; without one, `load_pipeline` says so in one line). With `load_report`
    False, transformers' report of the weights a load left out too (errors only). Each setting is restored afterwards."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    verbosity = transformers_logging.get_verbosity()
    hub_logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    for lib, _ in states:
        lib.disable_progress_bar()
    if not load_report:
        transformers_logging.set_verbosity_error()
    hub_logger.addFilter(_not_hub_fallback)
    try:
        yield
    finally:
        hub_logger.removeFilter(_not_hub_fallback)
        transformers_logging.set_verbosity(verbosity)
        for lib, enabled in states:
            if enabled:
                lib.enable_progress_bar()


def load_pipeline(
    model: str | Path,
    *,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
) -> DiffusionPipeline:
    """Load `model`: a bundled name ("world"), a hub id such as "stable-diffusion-v1-5/stable-diffusion-v1-5",
    or a folder holding a `model_index.json`, with `DiffusionPipeline.from_pretrained`. A world export
    (no text_encoder/) loads as a `WorldPipeline` or `WorldFluxPipeline`. The safety checker is not loaded: synthetic training
    data is filtered by the dataset's own quality checks.

    Offline with no cached copy, this fails with one line naming the model and how to supply it.
    """
    source = resolve_pipeline(model)
    local = Path(source).expanduser()
    if looks_like_path(source):
        if not local.exists():
            raise SynthsegError(f"no pipeline folder at {model}")
        if not (local / "model_index.json").is_file():
            raise SynthsegError(f"{model} is not a diffusers pipeline folder: it has no model_index.json")
    kwargs = dict(dtype=torch_dtype, revision=revision, safety_checker=None, requires_safety_checker=False)
    try:
        with quiet_loading():
            pipe = _from_pretrained(source, local, kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, AttributeError) as error:
        if looks_like_path(source):
            shown = model if str(model) in BUNDLES else local
            raise SynthsegError(f"cannot load pipeline {shown}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        raise SynthsegError(
            f"cannot load pipeline {model!r}: it is not a local folder and is not in the Hugging Face cache, "
            f"and the hub cannot be reached{' (HF_HUB_OFFLINE is set)' if os.environ.get('HF_HUB_OFFLINE') else ''}; "
            f"where there is network run `hf download {model} --local-dir DIR` and pass DIR instead (or point HF_HOME at a cache that holds it)"
        ) from None
    return pipe.to(device) if device is not None else pipe


def _from_pretrained(source: str, local: Path, kwargs: dict) -> DiffusionPipeline:
    from .worldmodel import world_pipeline_class

    world = world_pipeline_class(local) if looks_like_path(source) else None
    if world is not None:
        return world.from_export(local, **kwargs)
    return DiffusionPipeline.from_pretrained(str(local) if looks_like_path(source) else source, **kwargs)
