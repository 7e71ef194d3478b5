"""Class sets (voc, coco, world) and seen/unseen splits, read from the packaged recipes/splits.yaml and validated."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from .config import load_config, read_mapping
from .errors import SynthsegError
from .registry import RECIPES
from .world import WORLD_CLASSES

# PASCAL VOC 2012 object classes in label order (label k = VOC_CLASSES[k-1]; 0 is background).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# The 80 COCO "thing" categories, in id order.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

CLASS_SETS = {"voc": VOC_CLASSES, "coco": COCO_CLASSES, "world": WORLD_CLASSES}


def check_names(names: list[str] | tuple[str, ...], known: tuple[str, ...], what: str) -> None:
    """Refuse names not in `known`, suggesting close matches; refuse duplicates."""
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            listing = f"known: {', '.join(known)}" if len(known) <= 20 else f"none of the {len(known)} known names is close"
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; {listing}"
            raise SynthsegError(f"unknown {what + ' ' if what else ''}class {name!r}{hint}")
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise SynthsegError(f"{what + ' ' if what else ''}classes listed twice: {duplicates}")


KNOWN_CLASSES = tuple(dict.fromkeys(VOC_CLASSES + COCO_CLASSES + WORLD_CLASSES))


def resolve_classes(spec: str) -> tuple[str, ...]:
    """Comma-separated class names and set names ("voc", "coco", "world"), a set standing for all its
    classes in order: "world", "dog,cat", "voc,giraffe". Spaces around commas are ignored."""
    names: list[str] = []
    for part in (n.strip() for n in spec.split(",")):
        if part:
            names += CLASS_SETS.get(part, (part,))
    if not names:
        raise SynthsegError(f"no class names in {spec!r}")
    check_names(names, KNOWN_CLASSES, "")
    return tuple(names)


@dataclass
class Split:
    """A seen/unseen split of a class set. `classes` names a set (voc, coco, world)."""

    classes: str
    unseen: list[str]
    source: str = ""
    name: str = ""
    all_classes: tuple[str, ...] = field(default=(), init=False)

    def validate(self, source: str) -> None:
        if self.classes not in CLASS_SETS:
            raise SynthsegError(f"{source}: unknown class set {self.classes!r}; known: {', '.join(CLASS_SETS)}")
        self.all_classes = CLASS_SETS[self.classes]
        check_names(self.unseen, self.all_classes, f"{source}: unseen")
        if not self.unseen or len(self.unseen) == len(self.all_classes):
            raise SynthsegError(f"{source}: a split needs both seen and unseen classes")

    @property
    def seen(self) -> list[str]:
        return [c for c in self.all_classes if c not in self.unseen]


def load_splits(path: str | Path = RECIPES / "splits.yaml") -> dict[str, Split]:
    """All named splits of a splits file, validated."""
    splits = {}
    for name, data in read_mapping(path).items():
        split = load_config(Split, dict(data, name=name), f"{path}: {name}")
        splits[name] = split
    return splits


def get_split(name: str, path: str | Path = RECIPES / "splits.yaml") -> Split:
    """One named split; an unknown name is refused with the closest known names."""
    splits = load_splits(path)
    if name not in splits:
        close = difflib.get_close_matches(name, list(splits), n=3, cutoff=0.5)
        raise SynthsegError(f"unknown split {name!r}" + (f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(splits)}"))
    return splits[name]
