"""Contact sheets: a grid of dataset images with their label maps overlaid and class names written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import SynthsegError
from .formats import IGNORE, voc_palette


def contact_sheet(directory: str | Path, output: str | Path | None = None, count: int = 16, columns: int = 4, scale: int = 2) -> Path:
    """Write a PNG of the first `count` images of a dataset (labels at 50% over the image, ignore in
    grey, prompt classes below). Default output: `<dataset>/contact_sheet.png`."""
    directory = Path(directory)
    index = directory / "metadata.jsonl"
    if not index.is_file():
        raise SynthsegError(f"{directory} is not a finished synthseg dataset: no metadata.jsonl")
    records = [json.loads(line) for line in index.read_text().splitlines()][:count]
    if not records:
        raise SynthsegError(f"{directory} has no images")
    palette = np.array(voc_palette(), dtype=np.float32).reshape(256, 3)
    tiles = []
    for record in records:
        image = np.asarray(Image.open(directory / record["file_name"]).convert("RGB"), dtype=np.float32)
        labels = np.array(Image.open(directory / record["mask_file_name"]))
        overlay = np.where((labels > 0)[..., None], 0.5 * image + 0.5 * palette[labels], image)
        overlay[labels == IGNORE] = 128
        tile = Image.fromarray(overlay.round().astype(np.uint8)).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
        canvas = Image.new("RGB", (tile.width, tile.height + 14), "white")
        canvas.paste(tile, (0, 0))
        ImageDraw.Draw(canvas).text((2, tile.height + 1), ", ".join(record["classes"]), fill="black")
        tiles.append(canvas)
    width, height = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * width, (i // columns) * height))
    output = Path(output or directory / "contact_sheet.png")
    sheet.save(output)
    return output
