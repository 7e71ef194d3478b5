"""Shared by the Protocol ii ad hoc trials: Protocol ii's synthetic dataset and its prompts, subsets, and training
segmenter-world on some data, scored on two sets of held-out scenes."""

import json
from dataclasses import replace
from pathlib import Path

from synthseg.benchmark import benchmark
from synthseg.classes import get_split
from synthseg.readers import SegmentationData, read_world
from synthseg.segmenter import Segmenter, load_segmenter_recipe
from synthseg.train.segmenter import train_segmenter

SYNTHETIC = Path("runs/protocol-ii/synthetic")  # bench_protocol_ii.py's synthetic dataset


def prompted_classes(folder: Path = SYNTHETIC) -> list[list[str]]:
    """Per kept image of a make-dataset folder (as read_synthseg orders them), the classes its prompt named."""
    return [json.loads(line)["classes"] for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]


def subset(data: SegmentationData, indices: list[int], tag: str) -> SegmentationData:
    """The items `indices` of `data`, in that order."""
    return SegmentationData(f"{data.name}:{tag}", data.class_names, [data.ids[i] for i in indices], lambda k: data[indices[k]])


def train_and_score(label: str, data: SegmentationData, work: Path, steps: int | None = None, seed: int = 0, **fields) -> None:
    """Train (resumable, in WORK/segmenter-work) and print one row per scene set: Protocol ii's test scenes (0-499) and
    scenes 500-999, which no bench reads. `steps`: the recipe's unless given; `fields`: other recipe fields to set."""
    overrides = fields if steps is None else {"steps": steps, **fields}
    recipe = replace(load_segmenter_recipe("segmenter-world", **overrides), seed=seed)
    model = train_segmenter(recipe, data, work / "segmenter", work / "segmenter-work")
    split = get_split("world")
    for name, scenes in (("test 0-499", read_world(500)), ("scenes 500-999", read_world(500, first=500))):
        r = benchmark(Segmenter.from_pretrained(model), scenes, split, model_name=name)
        print(f"| {label} | {len(data)} | {name} | {100 * r.seen_miou:.1f} | {100 * r.unseen_miou:.1f} | {100 * r.harmonic_miou:.1f} |", flush=True)
