"""Protocol ii on the miniature world: a small MaskFormer trained on synthetic data, scored on exact masks.

Three trainings of the same tiny segmenter (`--recipe`: MaskFormer's segmenter-tiny by default, or
segmenter-tiny-mask2former), each scored on 500
held-out rendered scenes (split "world", background counted as a seen class):
  (a) a synthseg dataset from the world's grounded generation, all class names (the paper's setting);
  (b) the same number of rendered training scenes with exact masks (the oracle);
  (c) (a) without the images whose prompt names an unseen class (strict zero-shot; Grounded-Diffusion #8).
Each is trained once per `--seeds` entry and the table gives the means (the from-scratch segmenter varies
from seed to seed). A recipe's `copy_paste` applies to the generated rows; the oracle trains without it, at its
best: pasting lowers it (RESULTS.md, "Ad hoc trials (world)"). Target: (a) reaches >= 85% of (b)'s harmonic mIoU.
Writes the "Protocol ii (world)" section of
benchmarks/RESULTS.md (another --recipe: its own section); work files go under runs/protocol-ii (resumable).

    python benchmarks/bench_protocol_ii.py [--recipe segmenter-tiny] [--per-class 50] [--per-pair 4]
        [--steps N (default: the recipe's)] [--seeds 0 1] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from results import run_parallel, write_section

WORK = Path("runs/protocol-ii")
NAMES = {"a": "(a) grounded generation, all class names", "b": "(b) oracle: rendered scenes, exact masks",
         "c": "(c) grounded generation, seen-class images only"}


def training_data(key: str):
    """Row `key`'s training set: the synthetic dataset, rendered scenes as many, or the synthetic images
    whose prompt names no unseen class."""
    from synthseg.classes import get_split
    from synthseg.readers import SegmentationData, read_synthseg, read_world

    synthetic = read_synthseg(WORK / "synthetic")
    if key == "a":
        return synthetic
    if key == "b":
        return read_world(len(synthetic), held_out=False)
    unseen = set(get_split("world").unseen)
    prompted = [json.loads(line)["classes"] for line in (WORK / "synthetic" / "metadata.jsonl").read_text().splitlines()]
    records = [i for i, names in enumerate(prompted) if not set(names) & unseen]
    return SegmentationData(synthetic.name + ":seen-only", synthetic.class_names, [synthetic.ids[i] for i in records],
                            lambda i: synthetic[records[i]])


def train_row(key: str, seed: int, recipe, folder: Path, threads: int) -> Path:
    """Train row `key`'s segmenter with `seed` into `folder` (resumable), on `threads` CPU threads."""
    import torch

    from synthseg.train.segmenter import train_segmenter

    torch.set_num_threads(threads)
    if key == "b":
        recipe = replace(recipe, copy_paste=0.0)
    return train_segmenter(replace(recipe, seed=seed), training_data(key), folder, folder.with_name(folder.name + "-work"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--per-pair", type=int, default=4)
    parser.add_argument("--recipe", default="segmenter-tiny", help="segmenter recipe (segmenter-tiny-mask2former: Mask2Former)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eval-scenes", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="segmenter seeds; the table gives means over them")
    parser.add_argument("--jobs", type=int, default=1, help="segmenters trained at once, in processes that share the CPU cores")
    args = parser.parse_args()

    from synthseg.benchmark import benchmark
    from synthseg.classes import get_split
    from synthseg.dataset import load_dataset_recipe, make_dataset, provenance
    from synthseg.grounding import GroundingModule
    from synthseg.pipeline import load_pipeline
    from synthseg.readers import read_world
    from synthseg.segmenter import Segmenter, load_segmenter_recipe

    split = get_split("world")
    recipe = load_dataset_recipe("world", per_class=args.per_class, per_pair=args.per_pair)
    start = time.perf_counter()
    make_dataset(load_pipeline(recipe.model), GroundingModule.from_pretrained(recipe.grounding), recipe,
                 WORK / "synthetic", provenance(recipe.model, recipe.grounding))
    generation = time.perf_counter() - start
    segmenter_recipe = load_segmenter_recipe(args.recipe, steps=args.steps)
    variant = "" if args.recipe == "segmenter-tiny" else args.recipe  # another recipe: its own work folder and section
    folders = {(key, seed): WORK / variant / (f"segmenter-{key}" if seed == 0 else f"segmenter-{key}-seed{seed}")
               for key in NAMES for seed in args.seeds}
    models = run_parallel(train_row, {run: (*run, segmenter_recipe, folder) for run, folder in folders.items()}, args.jobs)
    test = read_world(args.eval_scenes)
    rows, results, harmonic = [], {}, {}
    for key, name in NAMES.items():
        results[key] = [benchmark(Segmenter.from_pretrained(models[key, seed]), test, split, model_name=f"{name}, seed {seed}")
                        for seed in args.seeds]
        seen, unseen, harmonic[key] = np.mean([(r.seen_miou, r.unseen_miou, r.harmonic_miou) for r in results[key]], axis=0)
        each = ", ".join(f"{100 * r.harmonic_miou:.1f}" for r in results[key])
        rows.append(f"| {name} | {len(training_data(key))} | {100 * seen:.1f} | {100 * unseen:.1f} | {100 * harmonic[key]:.1f} | {each} |")
    oracle = harmonic["b"]
    ratio = f"{harmonic['a'] / oracle:.2f}" if oracle > 0 else "n/a (the oracle's harmonic mIoU is 0)"
    if oracle < harmonic["a"]:
        ratio += (" - the oracle does not score above (a): the from-scratch segmenter, more than the labels, limits"
                  " both (compare the seeds' spread)")
    arch = {"maskformer": "MaskFormer", "mask2former": "Mask2Former"}[segmenter_recipe.arch]
    pasting = (f" (a) and (c) train with the recipe's copy_paste {segmenter_recipe.copy_paste:g} (Simple Copy-Paste), the oracle (b) "
               "without it, at its best: pasting lowers it." if segmenter_recipe.copy_paste else "")
    body = f"""Tiny {arch} (`recipes/{args.recipe}.yaml`, {segmenter_recipe.steps} steps) trained three ways, once per seed
({", ".join(map(str, args.seeds))}), scored on {args.eval_scenes} held-out rendered scenes with exact masks; mIoU are means over the seeds.{pasting}
Protocol: {results['a'][0].protocol()}.
Synthetic data: `make-dataset --classes world --per-class {args.per_class} --per-pair {args.per_pair}`
({generation / 60:.1f} min to generate in this run; a rerun reuses a finished dataset).

| training data | images | seen mIoU | unseen mIoU | harmonic mIoU | harmonic, each seed |
|---|---|---|---|---|---|
{chr(10).join(rows)}

(a) / (b) harmonic mIoU: **{ratio}** (target >= 0.85). In (c) the unseen classes are still labels
of the model but have no training pixels, so a closed-vocabulary segmenter cannot learn them.
"""
    print(body)
    write_section(f"Protocol ii (world, {variant})" if variant else "Protocol ii (world)", body, bundle="world")


if __name__ == "__main__":
    main()
