"""Output formats that standard tools open unchanged: COCO instances JSON (RLE) and VOC palette PNGs."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import jsonlines
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .errors import SynthsegError

IGNORE = 255


def voc_palette() -> list[int]:
    """PASCAL VOC's bit-interleaved colour map, 256 RGB triples flattened (255 -> (224, 224, 192))."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def label_image(labels: np.ndarray) -> Image.Image:
    """An HW uint8 label map as a mode "P" image with the VOC palette (255 = ignore)."""
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(voc_palette())
    return image


def save_label_png(path: str | Path, labels: np.ndarray) -> None:
    """Write an HW uint8 label map as a mode "P" PNG with the VOC palette (255 = ignore)."""
    label_image(labels).save(path)


def coco_annotation(annotation_id: int, image_id: int, category_id: int, mask: np.ndarray, score: float | None = None) -> dict:
    """One COCO instance from an HW bool mask: RLE segmentation, area and XYWH bbox from pycocotools."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    annotation = dict(
        id=annotation_id, image_id=image_id, category_id=category_id,
        segmentation=dict(size=[int(s) for s in rle["size"]], counts=rle["counts"].decode("ascii")),
        area=float(mask_utils.area(rle)), bbox=[float(v) for v in mask_utils.toBbox(rle)], iscrowd=0,
    )
    if score is not None:
        annotation["score"] = float(score)
    return annotation


def coco_document(images: list[dict], annotations: list[dict], class_names: list[str] | tuple[str, ...], description: str) -> dict:
    """A COCO instances document with categories 1..K in `class_names` order, `info` and `licenses`."""
    return dict(
        info=dict(description=description, version="1.0"),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory="object") for i, name in enumerate(class_names)],
    )


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write via a temporary file and rename, so a killed process never leaves a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, document) -> None:
    """`document` as JSON at `path`, all or nothing (`write_atomic`)."""
    write_atomic(path, json.dumps(document))


def png_bytes(image: Image.Image) -> bytes:
    """An image encoded as PNG, for `write_atomic`."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jsonl_text(rows) -> str:
    """JSON Lines text of `rows` (one object per line, keys sorted), for `write_atomic`."""
    buffer = io.StringIO()
    with jsonlines.Writer(buffer, sort_keys=True) as writer:
        writer.write_all(rows)
    return buffer.getvalue()


def read_jsonl(path: str | Path) -> list[dict]:
    """Every object of a JSON Lines file; a cut or corrupt file is a one-line error."""
    try:
        with jsonlines.open(path) as reader:
            return list(reader)
    except (jsonlines.InvalidLineError, UnicodeDecodeError) as error:
        raise SynthsegError(f"{path}: corrupt JSON Lines file ({str(error).splitlines()[0]})") from None


def safe_file_name(name: str) -> str:
    """A class name as a file-name part: letters, digits, '-', '_' and '.' kept, anything else '_'
    (so "../x" cannot leave its folder)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output folder that cannot be written, before any work and without creating anything:
    a path that is a file, or whose nearest existing folder is read-only or immutable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SynthsegError(f"{flag} {path} is a file, not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SynthsegError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SynthsegError(f"{flag} {path}: {existing} cannot be written (read-only file system, immutable folder or no permission)")
    return path
