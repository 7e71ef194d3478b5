"""Choose the grounding module's options without looking at the unseen classes: hold out seen ones.

`--hold-out` seen classes of split "world" (drawn with `--seed`) are taken out of the triplet cache.
A module is trained on the rest for each option set, and Protocol i scores it on prompts that name
seen classes only, with the held-out classes in the part of the unseen ones. The shipped recipe's
options (cross-attention inputs, attention pooling, query dropout) were chosen on this table: its
first row; each other row turns options off. Writes the "Protocol i validation (held-out seen
classes)" section of benchmarks/RESULTS.md. Modules and checkpoints go to runs/validation/ (a rerun
resumes).

    python benchmarks/bench_grounding_validation.py [--triplets runs/world-triplets] [--hold-out 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from results import write_section

VARIANTS = {
    "cross-attention inputs, attention pooling, query dropout 0.3 (the shipped recipe)":
        dict(model=dict(cross_attention=True, attention_pooling=True), train=dict(query_dropout=0.3)),
    "attention pooling, query dropout 0.3": dict(model=dict(cross_attention=False, attention_pooling=True), train=dict(query_dropout=0.3)),
    "attention pooling": dict(model=dict(cross_attention=False, attention_pooling=True), train=dict(query_dropout=0.0)),
    "none of the three (the paper's module)": dict(model=dict(cross_attention=False, attention_pooling=False), train=dict(query_dropout=0.0)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="world-grounding")
    parser.add_argument("--triplets", default="runs/world-triplets")
    parser.add_argument("--hold-out", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=120)
    parser.add_argument("--work", default="runs/validation")
    args = parser.parse_args()

    from synthseg.annotators import load_annotator
    from synthseg.capture import CaptureStep
    from synthseg.classes import Split, get_split
    from synthseg.evaluation import COLUMNS, evaluate_grounding
    from synthseg.pipeline import load_pipeline
    from synthseg.train.grounding import load_grounding_recipe, train_grounding
    from synthseg.triplets import TripletShards

    base = load_grounding_recipe(args.recipe)
    recipe_split = get_split(base.split)
    seen = recipe_split.seen
    held = [seen[i] for i in sorted(np.random.default_rng(args.seed).choice(len(seen), args.hold_out, replace=False))]
    split = Split(classes=recipe_split.classes, unseen=held, name=f"{base.split}, seen classes {', '.join(held)} held out")
    split.validate("validation split")
    split.all_classes = tuple(seen)  # prompts name seen classes only; the held-out ones play the unseen part
    t = base.triplets
    pipe, annotator = load_pipeline(base.pipeline), load_annotator(base.annotator)
    rows, start = [], time.perf_counter()
    for name, overrides in VARIANTS.items():
        recipe = load_grounding_recipe(args.recipe, **overrides)
        folder = Path(args.work) / "-".join(f"{k}{v}" for part in overrides.values() for k, v in part.items())
        triplets = TripletShards(args.triplets, seed=recipe.train.seed, exclude=held)
        module = train_grounding(recipe, triplets, folder, folder / "module")
        result = evaluate_grounding(pipe, module, annotator, split, per_class=args.per_class, pairs=args.pairs, templates=t.templates,
                                    num_inference_steps=t.num_inference_steps, guidance_scale=t.guidance_scale,
                                    capture_step=CaptureStep(t.capture_timestep, t.capture_index), batch_size=t.batch_size)
        row = result.table["Grounding module"]
        s, u = (np.nanmean([row[f"{g}-{n}"] for n in (1, 2)]) for g in ("seen", "unseen"))
        cells = [f"{100 * row[f'{g}-{n}']:.1f}" for g, n in COLUMNS] + [f"{100 * s:.1f}", f"{100 * u:.1f}", f"{u / s:.2f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    head = "| options | " + " | ".join(f"{'held-out' if g == 'unseen' else g} {n}-class" for g, n in COLUMNS) + " | seen | held-out | ratio |"
    body = f"""Seen classes held out: **{', '.join(held)}** (rng seed {args.seed}). The triplets that name them are skipped, so
{len(triplets):,} of the {len(TripletShards(args.triplets)):,} triplets in `{args.triplets}` train each module ({base.train.steps:,} steps,
the recipe's other settings). Protocol i on {args.per_class} one-class prompts per seen class and {args.pairs} pairs of seen classes,
mIoU (%) against the bundled annotator's masks. {(time.perf_counter() - start) / 60:.1f} min.

{head}
|---|{"---|" * (len(COLUMNS) + 3)}
{chr(10).join(rows)}
"""
    print(body)
    write_section("Protocol i validation (held-out seen classes)", body, bundle="world")


if __name__ == "__main__":
    main()
