"""Ad hoc: more candidates per layout under count guidance, chosen by the captioner with and without the counter.

`world-layout` at its card (box attention, count guidance by its counter, beta), N images per layout of the choice streams
(5 and 6, COUNT layouts each), made once; `best_candidate` then chooses among the first 1, 4, 6 and N of them, and the
world annotator judges the kept image as bench_layouts.py does (boxes hit, right counts of 2-4 objects, all classes
found of 2+ classes). SCALES (comma-separated, default the card's) repeats it at other count-guidance strengths,
on the same seeds; MODEL, another GLIGEN export (train-world-layout --out) in its place, at its own card; COUNTER, another
counter (a folder) guiding and choosing in place of the bundle's; CHOOSER, another counter choosing (COUNTER still guides),
or "flip": COUNTER's log-probabilities averaged over each image and its mirror image.
Prints one row per choice and writes nothing.

    cd benchmarks && python adhoc/layout_candidates_guided.py [COUNT] [N] [SCALES] [MODEL] [COUNTER] [CHOOSER]
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_layouts import CHOICE_SEEDS, annotated, candidate_images, chosen, judge  # noqa: E402

from synthseg.annotators import load_annotator  # noqa: E402
from synthseg.captioner import ImplicitCaptioner, Recogniser  # noqa: E402
from synthseg.counter import CountJudge  # noqa: E402
from synthseg.dataset import load_dataset_recipe  # noqa: E402
from synthseg.layouts import sample_layouts  # noqa: E402
from synthseg.pipeline import load_pipeline  # noqa: E402
from synthseg.registry import model_card  # noqa: E402
from synthseg.world import WORLD_CLASSES  # noqa: E402


class MirroredCounter:
    """A counter whose `log_probability` is the mean of its counter's over each image and its mirror image."""

    def __init__(self, counter: CountJudge):
        self.counter = counter

    def log_probability(self, images: np.ndarray, phrases: list[str]):
        return (self.counter.log_probability(images, phrases) + self.counter.log_probability(images[:, :, ::-1].copy(), phrases)) / 2


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    model = sys.argv[4] if len(sys.argv) > 4 else "world-layout"
    section = load_dataset_recipe("world", layouts=True, model=model, captioner="world", counter="world-layout").layouts
    card = model_card(model)
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    annotator, counter = load_annotator("world"), CountJudge.from_pretrained(sys.argv[5] if len(sys.argv) > 5 else "world-layout")
    chooser = counter
    if len(sys.argv) > 6:
        chooser = MirroredCounter(counter) if sys.argv[6] == "flip" else CountJudge.from_pretrained(sys.argv[6])
    recogniser = Recogniser(pipe, ImplicitCaptioner.from_pretrained("world"), list(WORLD_CLASSES))
    layouts = [lay for seed in CHOICE_SEEDS for lay in sample_layouts(replace(section, seed=seed), list(WORLD_CLASSES), [], count)]
    many = np.array([len(lay.phrases) >= 2 for lay in layouts])
    mixed = np.array([len(lay.classes) >= 2 for lay in layouts])
    scales = [float(s) for s in sys.argv[3].split(",")] if len(sys.argv) > 3 and sys.argv[3] else [section.count_guidance]
    print("| count guidance | candidates | chosen by | boxes hit | right counts (2-4 objects) | all classes found (2+ classes) |\n"
          "|---|---|---|---|---|---|", flush=True)
    for scale in scales:
        start = time.perf_counter()
        made = candidate_images(pipe, layouts, card.num_inference_steps, card.guidance_scale, section.scheduled_sampling_beta,
                                section.box_attention, n, counter, scale)
        print(f"<!-- {len(layouts)} layouts, {n} candidates each, made in {time.perf_counter() - start:.0f} s -->", flush=True)
        for first in sorted({k for k in (1, 4, 6, n) if k <= n}):
            for judge_counter in (chooser, None) if first > 1 else (None,):
                images = chosen(pipe, layouts, [m[:first] for m in made], recogniser if first > 1 else None, judge_counter)
                scores = judge(annotated(annotator, images, layouts), layouts)
                by = "its own seed's" if first == 1 else "the captioner" + (" and counter" if judge_counter is not None else "")
                print(f"| {scale:g} | {first} | {by} | {100 * scores['hits'].mean():.1f}% | {100 * scores['counts'][many].mean():.1f}% | "
                      f"{100 * scores['found'][mixed].mean():.1f}% |", flush=True)


if __name__ == "__main__":
    main()
