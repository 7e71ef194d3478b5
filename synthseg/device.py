"""`--device` values: "auto" (CUDA where present, else CPU), "cpu", "cuda", "cuda:N" or "mps", checked
against this machine before any work."""

from __future__ import annotations

import re

import torch

from .errors import SynthsegError

DEVICE_HELP = "auto (CUDA where present), cpu, cuda, cuda:N or mps"


def resolve_device(spec: str) -> torch.device:
    """A `torch.device` for `spec`, or a one-line error saying why this machine cannot give it."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SynthsegError("--device mps: this machine has no Apple GPU; use --device auto or cpu")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise SynthsegError(f"unknown device {spec!r}; use {DEVICE_HELP}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise SynthsegError(f"--device {spec}: this machine has no CUDA GPU; use --device auto or cpu")
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise SynthsegError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device(spec)
