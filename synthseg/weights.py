"""A small model's folder, as diffusers writes one: `config.json` (its config dataclass, stamped) and
`model.safetensors`. The grounding module and the implicit captioner are saved and loaded this way."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import load_config, read_mapping, stamped
from .errors import SynthsegError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_model(module: nn.Module, config, directory: str | Path) -> None:
    """Write `config` (a dataclass) as `config.json` and `module`'s weights as `model.safetensors`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(stamped(asdict(config), module), indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})


def load_model(cls, config_cls, directory: Path, what: str) -> nn.Module:
    """`cls(config)` with the weights of a folder written by `save_model`, in eval mode; one-line errors
    for a missing folder or file, a corrupt file, or weights that do not fit the config."""
    if not directory.is_dir():
        raise SynthsegError(f"no {what} at {directory}: expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = load_config(config_cls, read_mapping(directory / CONFIG_NAME), str(directory / CONFIG_NAME))
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise SynthsegError(f"{weights}: file not found")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as error:
        raise SynthsegError(f"{weights}: corrupt safetensors file ({error})") from None
    module = cls(config)
    try:
        module.load_state_dict(state)
    except RuntimeError:
        raise SynthsegError(f"{weights}: weights do not match {CONFIG_NAME} (missing, extra or mis-shaped tensors)") from None
    return module.eval()
