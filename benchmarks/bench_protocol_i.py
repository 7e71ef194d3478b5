"""Protocol i on the miniature world: grounding module(s) vs the cross-attention baseline (DAAM).

Every module is scored on the same test prompts and seeds (all world classes, one- and two-class
prompts) against the bundled annotator's masks, seen vs unseen classes of split "world". The
baseline's threshold is tuned on seen classes only. Targets: the default module beats the baseline
by >= 15 mIoU points on seen and on unseen classes, and its unseen mIoU >= 0.9 x its seen mIoU.
Writes the "Protocol i (<model>)" section of benchmarks/RESULTS.md, <model> being the recipe's pipeline
(world, world-dit) unless --model names another.

    python benchmarks/bench_protocol_i.py [--recipe world-grounding] [--model DIR] [--module "NAME=DIR" ...]
                                          [--per-class 20] [--pairs 120]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from results import write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", default=[], help="NAME=DIR of a grounding module; the first is the default")
    parser.add_argument("--recipe", default="world-grounding")
    parser.add_argument("--model", help="the text-to-image pipeline (default: the recipe's)")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=120)
    args = parser.parse_args()

    from synthseg.annotators import load_annotator
    from synthseg.capture import CaptureStep
    from synthseg.classes import get_split
    from synthseg.evaluation import COLUMNS, evaluate_grounding
    from synthseg.grounding import GroundingModule
    from synthseg.pipeline import load_pipeline
    from synthseg.registry import BUNDLES
    from synthseg.train.grounding import capture_step_of, load_grounding_recipe

    modules = dict(m.split("=", 1) for m in args.module) or {"grounding module (shipped)": args.recipe.removesuffix("-grounding")}
    recipe = load_grounding_recipe(args.recipe)
    t = recipe.triplets
    model = args.model or recipe.pipeline
    pipe, annotator = load_pipeline(model), load_annotator(recipe.annotator)
    split = get_split(recipe.split)
    table, counts, threshold, start = {}, None, None, time.perf_counter()
    for name, directory in modules.items():
        result = evaluate_grounding(pipe, GroundingModule.from_pretrained(directory), annotator, split, per_class=args.per_class,
                                    pairs=args.pairs, templates=t.templates, num_inference_steps=t.num_inference_steps,
                                    guidance_scale=t.guidance_scale, capture_step=CaptureStep(*capture_step_of(directory, t)),
                                    batch_size=t.batch_size)
        table[name] = result.table["Grounding module"]
        baseline = result.table["Cross-attention (DAAM)"]
        counts, threshold = result.counts, result.threshold
    table["cross-attention baseline (DAAM)"] = baseline
    head = "| method | " + " | ".join(f"{s} {n}-class" for s, n in COLUMNS) + " | seen | unseen |"
    lines = [head, "|---|" + "---|" * (len(COLUMNS) + 2)]

    def mean(row, group):
        return float(np.nanmean([row[f"{group}-{n}"] for n in (1, 2)]))

    for method, row in table.items():
        cells = [f"{100 * row[f'{s}-{n}']:.1f}" for s, n in COLUMNS] + [f"{100 * mean(row, 'seen'):.1f}", f"{100 * mean(row, 'unseen'):.1f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("| scored masks | " + " | ".join(str(counts[f"{s}-{n}"]) for s, n in COLUMNS) + " | | |")
    default = table[next(iter(modules))]
    seen, unseen = mean(default, "seen"), mean(default, "unseen")
    margin_seen, margin_unseen = seen - mean(baseline, "seen"), unseen - mean(baseline, "unseen")
    body = f"""Split `{split.name}` (unseen: {', '.join(split.unseen)}); {args.per_class} one-class prompts per class and
{args.pairs} two-class prompts, {t.num_inference_steps} {type(pipe.scheduler).__name__} steps, guidance {t.guidance_scale};
mIoU (%) against the bundled annotator's masks (a class it does not find is not scored there). Each module is
evaluated at the capture step its triplets used (its recipe.json).
DAAM threshold {threshold} tuned on seen classes. {(time.perf_counter() - start) / 60:.1f} min.

{chr(10).join(lines)}

Targets for `{next(iter(modules))}`: beats the baseline by >= 15 points on seen (**{100 * margin_seen:+.1f}**) and on
unseen classes (**{100 * margin_unseen:+.1f}**); unseen / seen = **{unseen / seen:.2f}** (target >= 0.9).
"""
    print(body)
    write_section(f"Protocol i ({model})", body, bundle=model if model in BUNDLES else None)


if __name__ == "__main__":
    main()
