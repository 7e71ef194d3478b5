"""Ad hoc: where grounded generation's overhead on a tiny family pipeline goes (bench_families.py's CPU part).

Per family, batch 1, the shipped recipe's module: plain diffusers generation, `capture_pass` without and with the
capture step's text attention, timed in interleaved triples (one thread, the median of each against the plain call
of its triple), and the module's forward (`predict_masks`) alone. Prints one row per family and writes nothing.

    cd benchmarks && python adhoc/families_overhead_parts.py [--repeats 60] [--families "FLUX (distilled guidance)" SD3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_families import NAMES, SMALL, TINY_FAMILIES, plain_call  # noqa: E402

from synthseg import GroundingConfig, GroundingModule  # noqa: E402
from synthseg.generate import capture_pass, predict_masks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--families", nargs="+", default=list(TINY_FAMILIES), choices=list(TINY_FAMILIES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| family | capture pass, no attention | capture pass, text attention | module forward | plain generation |")
    print("|---|---|---|---|---|")
    for name in args.families:
        pipe = TINY_FAMILIES[name]()
        pipe.set_progress_bar_config(disable=True)
        torch.manual_seed(0)
        module = GroundingModule(GroundingConfig.for_pipeline(pipe, cross_attention=True, attention_pooling=True, **SMALL)).eval()
        kwargs = plain_call(pipe, 1, 2.0)
        prompt, names = kwargs["prompt"], NAMES[:1]

        def plain():
            pipe(**kwargs, generator=[torch.Generator("cpu").manual_seed(0)], num_inference_steps=args.steps, output_type="pil")

        def capture(attention: bool):
            return capture_pass(pipe, prompt, names, [0], guidance_scale=2.0, num_inference_steps=args.steps, attention=attention,
                                blocks=module.config.feature_blocks or None)

        run = capture(True)
        calls = {"plain": plain, "no attention": lambda: capture(False), "attention": lambda: capture(True),
                 "module": lambda: predict_masks(module, run.features, run.prompt_embeds, run.spans, run.images[0].size[::-1])}
        times = {key: [] for key in calls}
        for _ in range(args.repeats):
            for key, call in calls.items():
                start = time.perf_counter()
                call()
                times[key].append(time.perf_counter() - start)
        ratio = {key: statistics.median(t / p for t, p in zip(times[key], times["plain"])) for key in calls}
        print(f"| {name} | {100 * (ratio['no attention'] - 1):+.1f}% | {100 * (ratio['attention'] - 1):+.1f}% | "
              f"{1000 * statistics.median(times['module']):.1f} ms ({100 * ratio['module']:.1f}%) | "
              f"{1000 * statistics.median(times['plain']):.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
