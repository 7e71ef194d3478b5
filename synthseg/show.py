"""Contact sheets: a grid of dataset images beside their label maps, class names below each, and a
colour key of every class on the sheet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import SynthsegError
from .formats import voc_palette


def contact_sheet(directory: str | Path, output: str | Path | None = None, count: int = 16, columns: int = 4, scale: int = 2) -> Path:
    """Write a PNG of `count` images spread evenly over a dataset (so every class shows), each beside
    its label map in VOC colours (void in cream), prompt classes below. Default output:
    `<dataset>/contact_sheet.png`."""
    directory = Path(directory)
    index = directory / "metadata.jsonl"
    if not index.is_file():
        raise SynthsegError(f"{directory} is not a finished synthseg dataset: no metadata.jsonl")
    records = [json.loads(line) for line in index.read_text().splitlines()]
    if not records:
        raise SynthsegError(f"{directory} has no images")
    picks = np.unique(np.linspace(0, len(records) - 1, min(count, len(records))).round().astype(int))
    tiles = []
    for record in (records[i] for i in picks):
        image = Image.open(directory / record["file_name"]).convert("RGB")
        labels = Image.open(directory / record["mask_file_name"]).convert("RGB")  # the palette PNG's own colours
        pair = Image.new("RGB", (2 * image.width, image.height))
        pair.paste(image, (0, 0))
        pair.paste(labels, (image.width, 0))
        pair = pair.resize((pair.width * scale, pair.height * scale), Image.NEAREST)
        canvas = Image.new("RGB", (pair.width, pair.height + 14), "white")
        canvas.paste(pair, (0, 0))
        ImageDraw.Draw(canvas).text((2, pair.height + 1), ", ".join(record["classes"]), fill="black")
        tiles.append(canvas)
    width, height = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    key = _colour_key(_class_names(directory), sorted({c for r in (records[i] for i in picks) for c in r["classes"]}), columns * width)
    sheet = Image.new("RGB", (columns * width, rows * height + key.height), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * width, (i // columns) * height))
    sheet.paste(key, (0, rows * height))
    output = Path(output or directory / "contact_sheet.png")
    sheet.save(output)
    return output


def _class_names(directory: Path) -> list[str]:
    """Label k's name is the k-th category of the dataset's COCO file (categories 1..K)."""
    document = json.loads((directory / "annotations.json").read_text())
    return [c["name"] for c in sorted(document["categories"], key=lambda c: c["id"])]


def _colour_key(names: list[str], shown: list[str], width: int, row: int = 14) -> Image.Image:
    """A strip of swatches in the label maps' VOC colours, one per class on the sheet, labelled."""
    palette = np.array(voc_palette()).reshape(-1, 3)
    entries = [(name, tuple(int(v) for v in palette[names.index(name) + 1])) for name in shown]
    entries.append(("ignore", tuple(int(v) for v in palette[255])))
    per_row = max(1, width // 110)
    key = Image.new("RGB", (width, row * ((len(entries) + per_row - 1) // per_row)), "white")
    draw = ImageDraw.Draw(key)
    for i, (name, colour) in enumerate(entries):
        x, y = (i % per_row) * 110, (i // per_row) * row
        draw.rectangle([x + 2, y + 2, x + 12, y + 12], fill=colour, outline="black")
        draw.text((x + 16, y + 1), name, fill="black")
    return key
