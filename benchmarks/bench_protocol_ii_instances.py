"""Instance-level Protocol ii on the world: the world annotator's Mask R-CNN architecture trained three
times on the same number of images, scored by mask AP (pycocotools) on 500 held-out rendered scenes.

- (a) a layout dataset: `make-dataset --layouts` with a world-layout export (GLIGEN; one COCO instance per box);
- (b) a text-only dataset: `make-dataset` (the world model; instances are connected components);
- (c) rendered scenes with exact instances (even seeds): the oracle.

(a) and (b) ask `--per-class` items per world class (no pairs), and (a) plans `--spare` more layouts
to stand in for the images its quality filter drops, so that all three keep the same number; (c)
renders as many scenes. Each annotator trains `--steps` steps of batch 8 from the same recipe
(recipes/world-annotator.yaml with `train_data`). Everything resumes: rerun the same command to go on (an annotator whose data changed retrains).
Targets: (a) >= 0.8 x (c), and (a) >= (b) + 10 AP points. Writes the "Protocol ii, instances (world)"
section of benchmarks/RESULTS.md.

    python benchmarks/bench_protocol_ii_instances.py [--layout-model world-layout] [--per-class 50] [--spare 0.5] [--steps 4000]
        [--counter none --count-guidance 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from results import write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--spare", type=float, default=0.5, help="extra layouts planned for (a), as a fraction of those asked")
    parser.add_argument("--steps", type=int, default=4000, help="annotator training steps, the world annotator's own (~65 min each at 2 threads)")
    parser.add_argument("--work", type=Path, default=Path("runs/pii-instances"))
    parser.add_argument("--layout-model", default="world-layout", help="the shipped world-layout, or an export folder (train-world-layout --out)")
    parser.add_argument("--captioner", default=None, help="the captioner choosing among a layout's candidates (default: the bundle's; "
                        "give one, such as world, with an export folder whose card asks candidates)")
    parser.add_argument("--counter", default=None, help="the counter that joins the captioner's choice and guides (a)'s sampling (default: "
                        "the bundle's; 'none': the captioner alone, with --count-guidance 0)")
    parser.add_argument("--count-guidance", type=float, default=None, help="counting guidance for (a) (default: the model card's; 0: off)")
    args = parser.parse_args()

    from dataclasses import replace

    from synthseg.annotators import MaskRCNNAnnotator
    from synthseg.dataset import build_dataset, file_hash, load_dataset_recipe
    from synthseg.formats import write_json_atomic
    from synthseg.train.annotator import load_annotator_recipe, train_world_annotator, world_mask_ap
    from synthseg.world import WORLD_CLASSES, export_scenes, scene_seed

    work = args.work
    planned = args.per_class * len(WORLD_CLASSES)
    if not (work / "rendered" / "annotations.json").is_file():
        export_scenes(work / "rendered", [scene_seed(i, held_out=False) for i in range(planned)])
    datasets, rows = {"rendered": (work / "rendered", planned)}, {}
    times_file = work / "generation.json"  # minutes each dataset took where this folder made it, for reruns to report
    minutes = json.loads(times_file.read_text()) if times_file.is_file() else {}
    for name in ("rendered", "text", "layouts"):  # the oracle first: it needs no generated data
        if name != "rendered":
            model = args.layout_model if name == "layouts" else "world"
            recipe = load_dataset_recipe("world", model=model, grounding="world", per_class=args.per_class, per_pair=0, layouts=name == "layouts",
                                         captioner=args.captioner if name == "layouts" else None,
                                         counter=args.counter if name == "layouts" else None,
                                         count_guidance=args.count_guidance if name == "layouts" else None,
                                         spare=args.spare if name == "layouts" else 0.0)
            complete, start = (work / name / "annotations.json").is_file(), time.perf_counter()
            summary = build_dataset(recipe, work / name)
            datasets[name] = (work / name, summary["images"])
            if not complete:  # made (or finished) by this run: timed
                minutes[name] = round((time.perf_counter() - start) / 60, 1)
                write_json_atomic(times_file, minutes)
            if name == "layouts":
                judges = f"the captioner {recipe.captioner}" + (f" and the counter {recipe.counter}" if recipe.counter else "")
                chooser = f" (a) keeps the best of {recipe.layouts.candidates} images per layout by {judges}." if recipe.chooses else ""
                chooser += (f" Its sampling follows the counter's gradient (count guidance {recipe.layouts.count_guidance:g})."
                            if recipe.count_guided else "")
        recipe = replace(load_annotator_recipe("world-annotator"), steps=args.steps, train_data=str(datasets[name][0].resolve()))
        out = work / f"annotator-{name}"
        metrics_file, data = out / "metrics.json", file_hash(datasets[name][0] / "annotations.json")
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        if metrics is None or (metrics.get("steps"), metrics.get("data")) != (args.steps, data):
            if metrics is not None:  # a finished training of other data or steps: start over, not from its checkpoint
                shutil.rmtree(work / f"annotator-{name}-work", ignore_errors=True)
            train_world_annotator(recipe, work / f"annotator-{name}-work", out)
            metrics = dict(world_mask_ap(MaskRCNNAnnotator.from_pretrained(out), 500), steps=args.steps, data=data)
            metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
        rows[name] = metrics

    a, b, c = (100 * rows[k]["mask_ap"] for k in ("layouts", "text", "rendered"))
    labels = {"layouts": f"(a) layout dataset (`{args.layout_model}`, one instance per box)", "text": "(b) text-only dataset (`world`, connected components)",
              "rendered": "(c) rendered scenes, exact instances (oracle)"}
    table = "\n".join(f"| {labels[k]} | {datasets[k][1]} | {100 * r['mask_ap']:.1f} | {100 * r['mask_ap50']:.1f} | {100 * r['mask_ap75']:.1f} |"
                      for k, r in sorted(rows.items(), key=lambda kv: list(labels).index(kv[0])))
    generation = ", ".join(f"{what} {f'{minutes[k]:.1f} min' if k in minutes else 'not timed (made outside this --work)'}"
                           for k, what in (("layouts", "layouts"), ("text", "text only")))
    body = f"""The world annotator's Mask R-CNN architecture (recipes/world-annotator.yaml), trained {args.steps} steps of
batch 8 on each dataset's COCO instances, scored by pycocotools mask AP on the same 500 held-out rendered
scenes. (a) and (b): `make-dataset` with {args.per_class} items asked per world class (no pairs); (a) plans
{args.spare:.0%} spare layouts (`--spare {args.spare}`), which stand in, in plan order, for the images its quality
filter drops.{chooser} (c) renders as many training scenes as (a) and (b) ask.

| training data | images | mask AP | AP50 | AP75 |
|---|---|---|---|---|
{table}

(a) / (c) = {a / max(c, 1e-9):.2f} (target >= 0.8); (a) - (b) = {a - b:+.1f} AP points (target >= +10).
Generation time: {generation}.
"""
    print(body)
    write_section("Protocol ii, instances (world)", body, bundle=("world", args.layout_model) if args.layout_model == "world-layout" else "world")


if __name__ == "__main__":
    main()
