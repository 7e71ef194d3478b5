"""Ad hoc: a world model's fidelity against its sampling settings (guidance, steps, schedule shift).

Same prompts, seeds and annotator as bench_world_fidelity.py; prints one row per setting and writes nothing.
The shift applies to flow-matching schedules (world-dit); for the UNet world (`--model world`) it must be 1.

    cd benchmarks && python adhoc/dit_sampling_sweep.py --settings 2:25:1 4:25:1 [--count 200] [--stream 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_world_fidelity import found_classes, prompt_groups, sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", required=True, help="GUIDANCE:STEPS:SHIFT")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--model", default="world-dit")
    parser.add_argument("--stream", type=int, default=0, help="0: the bench's prompts and seeds; k: another draw of both")
    args = parser.parse_args()

    from diffusers import FlowMatchEulerDiscreteScheduler

    from synthseg.annotators import load_annotator
    from synthseg.pipeline import load_pipeline
    from synthseg.prompts import caption

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    base = dict(pipe.scheduler.config)
    flow = isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    settings = [setting.split(":") for setting in args.settings]
    if not flow and any(float(shift) != 1 for _, _, shift in settings):
        parser.error(f"--settings: a shift other than 1 needs a flow-matching schedule, and {args.model} has none")
    annotator = load_annotator("world")
    groups = prompt_groups(args.count, args.stream)
    prompts = [caption(g) for g in groups]
    seeds = [args.stream * 100_000 + i for i in range(len(prompts))]
    print("| guidance | steps | shift | one class | two classes |\n|---|---|---|---|---|", flush=True)
    for guidance, steps, shift in settings:
        if flow:
            pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config({**base, "shift": float(shift)})
        images = sample(pipe, prompts, seeds, int(steps), float(guidance), 25)
        found = found_classes(annotator, images, groups, 25)
        print(f"| {guidance} | {steps} | {shift} | {100 * found[: args.count].mean():.1f}% | "
              f"{100 * found[args.count :].mean():.1f}% |", flush=True)


if __name__ == "__main__":
    main()
