"""Reading labelled segmentation data: synthseg datasets, VOC layout, COCO JSON, rendered world scenes.

Every reader returns a `SegmentationData`: a sequence of (RGB PIL image, HW uint8 labels) where 0 is
background, k is `class_names[k - 1]` and 255 is ignore; `read_coco_instances` an `InstanceData`, one
mask per instance, for instance segmenters. Label PNGs are read as indices, never
converted to RGB. A missing or wrong layout is refused with the tree that was expected.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from .classes import VOC_CLASSES
from .errors import SynthsegError
from .formats import IGNORE

VOC_TREE = """expected a VOC layout:
  ROOT/JPEGImages/<id>.jpg
  ROOT/SegmentationClass/<id>.png          palette PNGs, 0..20 classes, 255 void
  ROOT/ImageSets/Segmentation/<split>.txt  one id per line"""
SYNTHSEG_TREE = """expected a synthseg dataset:
  ROOT/metadata.jsonl   ROOT/annotations.json   ROOT/images/   ROOT/masks/"""
COCO_TREE = """expected a COCO instances JSON (or a folder holding annotations.json) whose
  images[].file_name are relative to the JSON's folder or to its images/ folder"""


@dataclass
class SegmentationData:
    """`len(data)` items; `data[i]` is (RGB PIL image, HW uint8 labels). `ids[i]` names item i."""

    name: str
    class_names: tuple[str, ...]
    ids: list[str]
    load: Callable[[int], tuple[Image.Image, np.ndarray]]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        if not 0 <= index < len(self.ids):
            raise IndexError(index)
        return self.load(index)

    def classes_in(self, labels: np.ndarray) -> list[str]:
        """The class names a label map of this data holds, in class order (background and ignore left out)."""
        return [self.class_names[k - 1] for k in np.unique(labels) if 0 < k <= len(self.class_names)]


def read_labels(path: Path, classes: int) -> np.ndarray:
    """HW uint8 label indices of a palette ("P") or greyscale ("L") PNG, each 0..`classes` or 255 (ignore);
    anything else is refused, naming the file."""
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError) as error:
        raise SynthsegError(f"{path}: unreadable label image ({error})") from None
    if image.mode not in ("P", "L"):
        raise SynthsegError(f"{path}: label images must be palette or greyscale PNGs of class indices, got mode {image.mode}")
    labels = np.array(image)
    outside = labels[(labels > classes) & (labels != IGNORE)]
    if outside.size:
        raise SynthsegError(f"{path}: label {int(outside.max())} is outside 0..{classes} (and {IGNORE} = ignore) of this data's classes")
    return labels


EXIF_ORIENTATION = 0x0112  # the tag that says how a camera's pixels turn upright; 5 to 8 swap width and height
_UNREADABLE = (OSError, SyntaxError, Image.DecompressionBombError)  # what PIL raises for a missing, corrupt or oversized image


def read_image(path: str | Path) -> Image.Image:
    """An image file decoded in its own mode, turned upright by its EXIF orientation as viewers and detectron2's
    `read_image` turn it (so masks and COCO sizes match what they show); a missing, unreadable or corrupt file is
    a one-line error."""
    try:
        image = Image.open(path)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except _UNREADABLE as error:
        raise SynthsegError(f"{path}: unreadable image ({error})") from None
    image.filename = str(path)
    return image


def upright_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of the image `read_image` returns, from the file's header alone."""
    try:
        with Image.open(path) as image:
            turned = image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)
            return (image.width, image.height) if turned else (image.height, image.width)
    except _UNREADABLE as error:
        raise SynthsegError(f"{path}: unreadable image ({error})") from None


def image_files(paths: list[str | Path]) -> list[Path]:
    """Image files to read: each path as given, a folder as its image files (by extension, sorted, not
    recursing, as segment-anything's amg.py takes a folder). A missing path, a folder with no image, or a
    file that is no image (by its header, read before any work) is a one-line error."""
    known = {ext for ext, name in Image.registered_extensions().items() if name in Image.OPEN}
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in known)
            if not found:
                raise SynthsegError(f"{path}: a folder with no image files (none has an image extension such as .png or .jpg)")
            files += found
        elif not path.exists():
            raise SynthsegError(f"{path}: no such file or folder")
        else:
            files.append(path)
    for path in files:
        upright_size(path)
    return files


def _open_rgb(path: Path) -> Image.Image:
    return read_image(path).convert("RGB")


def read_voc(root: str | Path, split: str = "val", class_names: tuple[str, ...] = VOC_CLASSES) -> SegmentationData:
    """A VOC-layout folder (`VOC_TREE`): the ids of ImageSets/Segmentation/<split>.txt."""
    root = Path(root)
    ids_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    missing = [p for p in (root / "JPEGImages", root / "SegmentationClass", ids_file) if not p.exists()]
    if missing:
        raise SynthsegError(f"{root}: missing {', '.join(str(p.relative_to(root)) for p in missing)}; {VOC_TREE}")
    ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
    absent = [i for i in ids if not (root / "SegmentationClass" / f"{i}.png").is_file()]
    if not ids or absent:
        raise SynthsegError(f"{ids_file}: " + (f"{len(absent)} ids have no SegmentationClass PNG, e.g. {absent[0]}" if absent else "no ids") + f"; {VOC_TREE}")

    def load(index: int):
        stem = ids[index]
        image = _open_rgb(next((root / "JPEGImages").glob(f"{stem}.*"), root / "JPEGImages" / f"{stem}.jpg"))
        labels = read_labels(root / "SegmentationClass" / f"{stem}.png", len(class_names))
        if labels.shape != (image.height, image.width):
            raise SynthsegError(f"{stem}: label map {labels.shape} and image {image.height}x{image.width} differ in size")
        return image, labels

    return SegmentationData(f"voc-layout:{root}:{split}", tuple(class_names), ids, load)


def read_voc2012(root: str | Path, split: str = "val") -> SegmentationData:
    """PASCAL VOC 2012 from `root` = VOCdevkit/VOC2012, VOCdevkit, or the folder holding VOCdevkit."""
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            data = read_voc(candidate, split)
            data.name = f"voc2012:{split}"
            return data
    raise SynthsegError(f"{root}: no VOCdevkit/VOC2012 found; {VOC_TREE.replace('ROOT', 'VOCdevkit/VOC2012')}")


def read_synthseg(root: str | Path) -> SegmentationData:
    """A folder written by `synthseg make-dataset` (`SYNTHSEG_TREE`); dropped images are skipped."""
    root = Path(root)
    if not (root / "metadata.jsonl").is_file() or not (root / "annotations.json").is_file():
        raise SynthsegError(f"{root}: not a finished synthseg dataset; {SYNTHSEG_TREE}")
    try:
        records = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines() if line.strip()]
        categories = json.loads((root / "annotations.json").read_text())["categories"]
    except (json.JSONDecodeError, KeyError) as error:
        raise SynthsegError(f"{root}: corrupt metadata.jsonl or annotations.json ({error})") from None
    names = tuple(c["name"] for c in sorted(categories, key=lambda c: c["id"]))

    def load(index: int):
        record = records[index]
        return _open_rgb(root / record["file_name"]), read_labels(root / record["mask_file_name"], len(names))

    return SegmentationData(f"synthseg:{root}", names, [r["file_name"] for r in records], load)


def _open_coco(path: str | Path):
    """(COCO index, JSON path, category ids in id order, their names, image ids) of a COCO instances JSON
    or a folder holding annotations.json."""
    from pycocotools.coco import COCO

    path = Path(path)
    json_path = path / "annotations.json" if path.is_dir() else path
    if not json_path.is_file():
        raise SynthsegError(f"{path}: no COCO JSON; {COCO_TREE}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress ("loading annotations into memory...")
            coco = COCO(str(json_path))
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as error:
        raise SynthsegError(f"{json_path}: not a COCO instances JSON ({error})") from None
    category_ids = sorted(coco.getCatIds())
    return coco, json_path, category_ids, tuple(coco.loadCats(c)[0]["name"] for c in category_ids), sorted(coco.getImgIds())


def _coco_image(json_path: Path, info: dict) -> Image.Image:
    """The RGB image of a COCO `images` entry, beside the JSON or in its images/ folder."""
    folder = json_path.parent
    file = next((p for p in (folder / info["file_name"], folder / "images" / info["file_name"]) if p.is_file()), None)
    if file is None:
        raise SynthsegError(f"{json_path}: image {info['file_name']} not found; {COCO_TREE}")
    return _open_rgb(file)


def read_coco(path: str | Path) -> SegmentationData:
    """COCO instances as semantic maps: category k-th by id -> label k; larger instances are painted
    first so smaller ones stay visible; crowd regions are 255."""
    coco, json_path, category_ids, names, image_ids = _open_coco(path)
    label_of = {c: i + 1 for i, c in enumerate(category_ids)}

    def load(index: int):
        info = coco.loadImgs(image_ids[index])[0]
        image = _coco_image(json_path, info)
        labels = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        annotations = sorted(coco.loadAnns(coco.getAnnIds(imgIds=info["id"])), key=lambda a: -a["area"])
        for annotation in annotations:
            mask = coco.annToMask(annotation).astype(bool)
            labels[mask] = IGNORE if annotation.get("iscrowd", 0) else label_of[annotation["category_id"]]
        return image, labels

    return SegmentationData(f"coco-json:{json_path}", names, [str(i) for i in image_ids], load)


class InstanceData(SegmentationData):
    """`len(data)` items; `data[i]` is (RGB PIL image, (N, H, W) bool instance masks, (N,) labels), label k
    naming `class_names[k - 1]`; crowd regions are left out. `ids[i]` names item i."""


def read_coco_instances(path: str | Path) -> InstanceData:
    """COCO instances, one mask each (what instance segmenters train on): a COCO JSON, a folder holding
    annotations.json, or a synthseg dataset (whose annotations.json is COCO)."""
    coco, json_path, category_ids, names, image_ids = _open_coco(path)
    label_of = {c: i + 1 for i, c in enumerate(category_ids)}

    def load(index: int):
        info = coco.loadImgs(image_ids[index])[0]
        annotations = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=info["id"])) if not a.get("iscrowd", 0)]
        masks = np.array([coco.annToMask(a).astype(bool) for a in annotations]).reshape(-1, info["height"], info["width"])
        return _coco_image(json_path, info), masks, np.array([label_of[a["category_id"]] for a in annotations], dtype=np.int64)

    return InstanceData(f"coco-json:{json_path}", names, [str(i) for i in image_ids], load)


def read_world(count: int = 500, size: int = 64, held_out: bool = True, first: int = 0) -> SegmentationData:
    """`count` rendered scenes of the miniature world with exact masks, scenes `first` to `first + count - 1`
    of one side: held out (odd seeds, never trained on by the world's models) or training scenes (even seeds).
    The benches test on held-out scenes 0-499, so `first=500` gives scenes that no bench reads."""
    from .world import WORLD_CLASSES, render_scene, scene_seed

    seeds = [scene_seed(i, held_out) for i in range(first, first + count)]

    def load(index: int):
        scene = render_scene(seeds[index], size=size)
        return Image.fromarray(scene.image), scene.semantic()

    span = f"{count}" if not first else f"{first}-{first + count - 1}"
    return SegmentationData(f"world:{'held-out' if held_out else 'train'}:{span}", WORLD_CLASSES, [f"scene-{s}" for s in seeds], load)


def detect_layout(path: str | Path) -> str:
    """'synthseg', 'voc-layout' or 'coco-json' for a training-data folder; anything else is refused."""
    path = Path(path)
    if (path / "metadata.jsonl").is_file() and (path / "masks").is_dir():
        return "synthseg"
    if (path / "SegmentationClass").is_dir():
        return "voc-layout"
    if (path / "annotations.json").is_file() or path.suffix == ".json":
        return "coco-json"
    raise SynthsegError(f"{path}: not a synthseg, VOC-layout or COCO dataset;\n{SYNTHSEG_TREE}\n{VOC_TREE}\n{COCO_TREE}")


def open_data(kind: str, path: str | Path | None = None, split: str = "val", count: int = 500) -> SegmentationData:
    """One reader by name: voc2012, voc-layout, coco-json, synthseg, world, or 'auto' (`detect_layout`)."""
    if kind == "world":
        return read_world(count)
    if path is None:
        raise SynthsegError(f"--dataset {kind} needs --data-root (the folder that holds it)")
    if not Path(path).exists():
        raise SynthsegError(f"{path}: no such file or folder")
    kind = detect_layout(path) if kind == "auto" else kind
    readers = {"voc2012": lambda: read_voc2012(path, split), "voc-layout": lambda: read_voc(path, split),
               "coco-json": lambda: read_coco(path), "synthseg": lambda: read_synthseg(path)}
    if kind not in readers:
        raise SynthsegError(f"unknown dataset kind {kind!r}; known: {', '.join([*readers, 'world', 'auto'])}")
    return readers[kind]()


def concat_data(parts: list[SegmentationData]) -> SegmentationData:
    """Several datasets of one class list as one, in order (for training on more than one folder)."""
    if not parts:
        raise SynthsegError("no training data given")
    if len(parts) == 1:
        return parts[0]
    for part in parts[1:]:
        if part.class_names != parts[0].class_names:
            raise SynthsegError(f"{part.name} has classes {', '.join(part.class_names)}; {parts[0].name} has "
                                f"{', '.join(parts[0].class_names)}: datasets trained on together need one class list")
    index = [(part, i) for part in parts for i in range(len(part))]
    return SegmentationData("+".join(part.name for part in parts), parts[0].class_names, [part.ids[i] for part, i in index],
                            lambda k: index[k][0][index[k][1]])


def open_training_data(paths: list[Path]) -> SegmentationData:
    """The `--dataset` folders of a training command (each a synthseg, COCO or VOC-layout dataset), as one."""
    return concat_data([open_data("auto", path) for path in paths])


def open_dataset(spec: str, data_root: str | Path | None = None, image_set: str = "val", count: int = 500) -> SegmentationData:
    """A `--dataset` value: "voc2012" (at `data_root`), "world" (`count` held-out scenes), or a path,
    whose layout is detected."""
    if spec == "world" and count < 1:
        raise SynthsegError(f"--count must be at least 1, got {count}")
    if spec in ("voc2012", "world"):
        return open_data(spec, data_root, image_set, count)
    if data_root is not None:
        raise SynthsegError(f"--data-root is for --dataset voc2012; {spec!r} is read from its own path")
    return open_data("auto", spec)
