"""A counting judge: how many objects of each class an image holds, to choose among a layout's candidates.

The implicit captioner (`synthseg.captioner`) says which classes an image holds, not how many of each, so a
candidate that draws two of a layout's three circles scores as well as one that draws all three. The counter
is a ResNet classifier with one softmax per class over the counts 0 to `max_count` (the last: that many or
more), trained on rendered layout scenes (`train.backbone` with a `layouts` section; recipe `counter-world`).
Its config's labels read "circle=0" ... "circle=4". A candidate's score is the log-probability of exactly the
layout's count of every class the counter knows (`log_probability`), added to the captioner's
(`layouts.best_candidate`). On fresh world layout streams this chose better than the captioner alone
(RESULTS.md, "Ad hoc trials (world)", session 46).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SynthsegError


def count_labels(names, max_count: int) -> list[str]:
    """The counter's labels, class-major: "circle=0", ..., "circle=<max_count>", "square=0", ..."""
    return [f"{name}={n}" for name in names for n in range(max_count + 1)]


def object_counts(classes, masks, names) -> np.ndarray:
    """(len(names),) int64: how many of the objects `classes` (one name per object, with its HW bool mask in
    `masks`) are visible (a non-empty mask), per name."""
    visible = [name for name, mask in zip(classes, masks) if mask.any()]
    return np.array([visible.count(name) for name in names], dtype=np.int64)


class CountJudge:
    """A counter loaded from a save_pretrained folder: `names` (its classes, in label order) and `max_count`.
    Images of another size are resized to the size it was trained at."""

    def __init__(self, model, source: str = "counter"):
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        parts = [label.rpartition("=") for label in labels]
        if not labels or any(not sep or not n.isdigit() for _, sep, n in parts):
            raise SynthsegError(f"{source} is not a counter: its labels are not 'class=count' (train one with "
                                "train-backbone --recipe counter-world)")
        self.names = list(dict.fromkeys(name for name, _, _ in parts))
        self.max_count = len(labels) // len(self.names) - 1
        if labels != count_labels(self.names, self.max_count):
            raise SynthsegError(f"{source} is not a counter: its labels are not every class's counts 0..N in order")
        self.model = model.eval()
        self.image_size = getattr(model.config, "image_size", None)

    @classmethod
    def from_pretrained(cls, spec: str | Path) -> CountJudge:
        """A bundled name's counter ("world-layout") or a folder (train-backbone's --out with a counter recipe)."""
        from transformers import ResNetForImageClassification

        from .pipeline import quiet_loading
        from .registry import resolve_counter

        folder = resolve_counter(spec)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise SynthsegError(f"no counter at {folder}: expected a folder with config.json and model.safetensors (train-backbone "
                                "--recipe counter-world writes one)")
        try:
            with quiet_loading():
                model = ResNetForImageClassification.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise SynthsegError(f"cannot load the counter at {folder}: {str(error).splitlines()[0]}") from None
        return cls(model.float(), str(spec))

    def to(self, device) -> CountJudge:
        self.model.to(device)
        return self

    def wanted(self, phrases: list[str]) -> torch.Tensor:
        """(len(names),) int64: the count of each class that `phrases` (one class name per object) asks for,
        above max_count clamped to it."""
        unknown = sorted(set(phrases) - set(self.names))
        if unknown:
            raise SynthsegError(f"the counter does not know {', '.join(unknown)}")
        return torch.tensor([min(phrases.count(name), self.max_count) for name in self.names])

    def count_log_probs_torch(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float RGB in [0, 1], on the counter's device -> (B, len(names), max_count + 1) float32
        log-probabilities, differentiable in `pixels` (counting guidance follows their gradient)."""
        from .segmenter import normalise

        pixels = normalise(pixels)  # as train.backbone's batches (`segmenter.normalised_pixels`)
        if self.image_size and pixels.shape[-1] != self.image_size:
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        logits = self.model(pixel_values=pixels).logits.float()
        return F.log_softmax(logits.view(len(pixels), len(self.names), self.max_count + 1), -1)

    def log_probability_torch(self, pixels: torch.Tensor, phrases: list[str] | list[list[str]]) -> torch.Tensor:
        """(B,) `log_probability` of (B, 3, H, W) float RGB in [0, 1], differentiable in `pixels`; `phrases`: one
        list for every image, or one list per image."""
        rows = phrases if phrases and not isinstance(phrases[0], str) else [phrases] * len(pixels)
        if len(rows) != len(pixels):
            raise SynthsegError(f"the counter was given {len(rows)} images' phrases for {len(pixels)} images")
        want = torch.stack([self.wanted(list(row)) for row in rows]).to(pixels.device)
        return self.count_log_probs_torch(pixels).gather(2, want[:, :, None]).sum((1, 2))

    def _pixels(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1] on the counter's device."""
        from .segmenter import unit_pixels

        return unit_pixels(images).to(next(self.model.parameters()).device)

    @torch.no_grad()
    def count_log_probs(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 images -> (B, len(names), max_count + 1) float32 log-probabilities, on the CPU."""
        return self.count_log_probs_torch(self._pixels(images)).cpu()

    @torch.no_grad()
    def log_probability(self, images: np.ndarray, phrases: list[str]) -> torch.Tensor:
        """(B,) the log-probability that each uint8 image holds exactly as many objects of each class as `phrases`
        names (none of a class it does not name; more than max_count counts as max_count), on the CPU."""
        return self.log_probability_torch(self._pixels(images), phrases).cpu()
