"""Contact sheets: a grid of dataset images beside their label maps, with class names written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import SynthsegError


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
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * width, (i // columns) * height))
    output = Path(output or directory / "contact_sheet.png")
    sheet.save(output)
    return output
