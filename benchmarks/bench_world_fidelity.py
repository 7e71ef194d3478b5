"""Fidelity of the bundled world text-to-image model, judged by the bundled world annotator.

200 images from one-class prompts ("a photograph of a X", classes in turn) and 200 from two-class
prompts (random pairs). Reports the fraction where the annotator finds the prompted class (per
class too; default target >= 80%) and where it finds both classes (>= 60%), seconds per image on
this machine, and commits a contact sheet of samples with their prompts. The same class lists rendered
as held-out world scenes are the reference: how often the annotator finds them in the world itself.
Where the model card (or `--candidates`) asks for several images per prompt, the bundle's captioner (with its counter,
where it ships one) keeps one (`synthseg.candidates.best_candidate`), as make-dataset does, and the table also gives each
prompt's own first image. Where the card (or `--count-guidance`) asks for counting guidance, every image is sampled with it
(`synthseg.guidance`), and the table also gives each prompt's own image sampled without it.
Writes the "world fidelity" section of benchmarks/RESULTS.md and benchmarks/world_samples.png.

    python benchmarks/bench_world_fidelity.py [--count 200] [--model world] [--steps N] [--guidance G] [--candidates N]
        [--count-guidance S]
    (defaults: the model card's)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from results import write_section

SHEET = Path(__file__).with_name("world_samples.png")


def sample(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int, groups: list[list[str]] | None = None,
           counter=None, count_guidance: float = 0.0) -> list[Image.Image]:
    """Generation, classifier-free guided as the model's family is (doubled CFG batch, or FLUX's separate passes), and
    with `count_guidance` steered by `counter` toward one object of each class of `groups` (`guidance.prompt_steering`,
    as make-dataset steers)."""
    from synthseg.guidance import prompt_steering
    from synthseg.text import encode_prompts

    images = []
    for i in range(0, len(prompts), batch):
        generators = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        with prompt_steering(pipe, counter, (groups or [])[i : i + batch], count_guidance, steps):
            images += pipe(**encode_prompts(pipe, prompts[i : i + batch], guidance).call, generator=generators, num_inference_steps=steps).images
    return images


def best_of(pipe, recogniser, groups: list[list[str]], candidates: list[list[Image.Image]], counter=None) -> list[int]:
    """Per prompt, the index among its candidate images that `recogniser` (with `counter`) keeps (`candidates.best_candidate`)."""
    from synthseg.candidates import best_candidate

    return [best_candidate(pipe, recogniser, names, [images[i] for images in candidates], counter) for i, names in enumerate(groups)]


def prompt_groups(count: int, stream: int = 0) -> list[list[str]]:
    """The bench's class lists: `count` one-class lists (the world's classes in turn), then `count` random
    pairs drawn from `stream` (0: the bench's own)."""
    from synthseg.world import WORLD_CLASSES

    rng = np.random.default_rng(stream)
    singles = [[WORLD_CLASSES[i % len(WORLD_CLASSES)]] for i in range(count)]
    return singles + [list(rng.choice(WORLD_CLASSES, size=2, replace=False)) for _ in range(count)]


def found_classes(annotator, images, groups: list[list[str]], batch: int) -> np.ndarray:
    """(N,) bool: the annotator finds every class of `groups[i]` in `images[i]`."""
    found = []
    for i in range(0, len(images), batch):
        for names, instances in zip(groups[i : i + batch], annotator.annotate(images[i : i + batch], groups[i : i + batch])):
            seen = {inst.class_name for inst in instances}
            found.append(all(n in seen for n in names))
    return np.array(found)


def contact_sheet(images: list[Image.Image], prompts: list[str], columns: int = 8, scale: int = 2) -> Image.Image:
    width, height = images[0].width * scale, images[0].height * scale + 24
    sheet = Image.new("RGB", (columns * width, ((len(images) + columns - 1) // columns) * height), "white")
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        x, y = (i % columns) * width, (i // columns) * height
        sheet.paste(image.resize((image.width * scale, image.height * scale), Image.NEAREST), (x, y))
        words = prompt.removeprefix("a photograph of ")
        ImageDraw.Draw(sheet).text((x + 2, y + height - 22), words[:22] + ("\n" + words[22:44] if len(words) > 22 else ""), fill="black")
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model card's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model card's)")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--model", default="world", help="a world model: 'world', 'world-dit' or an export folder")
    parser.add_argument("--candidates", type=int, default=None, help="images per prompt, the captioner keeping one (default: the card's)")
    parser.add_argument("--count-guidance", type=float, default=None, help="counting guidance by the bundle's counter (default: the card's)")
    parser.add_argument("--targets", type=float, nargs=2, default=[80, 60], metavar=("ONE", "TWO"),
                        help="target %% for one-class and two-class prompts (the transformer world's issue asks 95 70)")
    args = parser.parse_args()

    from synthseg.annotators import load_annotator
    from synthseg.candidates import candidate_seeds
    from synthseg.captioner import ImplicitCaptioner, Recogniser
    from synthseg.counter import CountJudge
    from synthseg.pipeline import load_pipeline
    from synthseg.prompts import caption
    from synthseg.registry import judge_for, model_card
    from synthseg.world import WORLD_CLASSES, render_scene, scene_seed

    card = model_card(args.model)
    args.steps = card.num_inference_steps if args.steps is None else args.steps
    args.guidance = card.guidance_scale if args.guidance is None else args.guidance
    args.candidates = card.candidates if args.candidates is None else args.candidates
    args.count_guidance = card.count_guidance if args.count_guidance is None else args.count_guidance
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    chooser = judge_for(args.model, None) if args.candidates > 1 else None
    if args.candidates > 1 and chooser is None:
        parser.error(f"--candidates {args.candidates}: {args.model} is not a bundle with a captioner to choose")
    counter = judge_for(args.model, None, "counter") if args.candidates > 1 or args.count_guidance else None  # as make-dataset's
    if args.count_guidance and counter is None:
        parser.error(f"--count-guidance {args.count_guidance:g}: {args.model} is not a bundle with a counter to follow")
    counter = CountJudge.from_pretrained(counter) if counter else None
    annotator = load_annotator("world")
    groups = prompt_groups(args.count)
    singles = groups[: args.count]
    prompts = [caption(g) for g in groups]
    seeds = list(range(len(prompts)))
    start = time.perf_counter()
    drawn = [candidate_seeds(s, args.candidates) for s in seeds]
    candidates = [sample(pipe, prompts, [d[k] for d in drawn], args.steps, args.guidance, args.batch, groups, counter, args.count_guidance)
                  for k in range(args.candidates)]
    kept = best_of(pipe, Recogniser(pipe, ImplicitCaptioner.from_pretrained(chooser), list(WORLD_CLASSES)), groups, candidates, counter) \
        if chooser else [0] * len(prompts)
    seconds = (time.perf_counter() - start) / len(prompts)
    images = [candidates[k][i] for i, k in enumerate(kept)]
    found = found_classes(annotator, images, groups, args.batch)
    first = found_classes(annotator, candidates[0], groups, args.batch) if chooser else found
    unguided = found_classes(annotator, sample(pipe, prompts, seeds, args.steps, args.guidance, args.batch), groups, args.batch) \
        if args.count_guidance else None
    rendered = found_classes(annotator, [render_scene(scene_seed(s, held_out=True), g).image for s, g in zip(seeds, groups)], groups, args.batch)
    single, pair = found[: args.count], found[args.count :]
    world_single, world_pair = rendered[: args.count], rendered[args.count :]
    per_class = {c: float(np.mean([f for g, f in zip(singles, single) if g[0] == c])) for c in WORLD_CLASSES}
    picks = [i for c in range(len(WORLD_CLASSES)) for i in (c, c + len(WORLD_CLASSES))][:16] + list(range(args.count, args.count + 16))
    sheet = SHEET if args.model == "world" else SHEET.with_name(f"{Path(args.model).name}_samples.png")
    contact_sheet([images[i] for i in picks], [prompts[i] for i in picks]).save(sheet)

    rows = "\n".join(f"| {c} | {100 * v:.0f}% |" for c, v in per_class.items())
    judges = f"the captioner of `{chooser}`" + (f" and the counter of `{args.model}`" if counter else "")
    choice = (f"""; each prompt's image the best of {args.candidates} by {judges} (its model card's candidates;
`synthseg.candidates`, as make-dataset chooses), which never sees the annotator; the rows "its own seed" are each prompt's
first candidate, the image made without a choice""" if chooser else "")
    steering = (f"""; sampled with counting guidance {args.count_guidance:g} (`synthseg.guidance`, its model card's: every step before
the captured one follows the gradient of the counter of `{args.model}`, trained on rendered world scenes, toward one object of
each prompted class), and the rows "unguided" are each prompt's own seed sampled without it""" if args.count_guidance else "")
    plain = (f"""| one class, its own seed | {len(single)} | {100 * first[: args.count].mean():.1f}% | | |
| two classes, its own seed | {len(pair)} | {100 * first[args.count :].mean():.1f}% (both) | | |
""" if chooser else "") + (f"""| one class, its own seed, unguided | {len(single)} | {100 * unguided[: args.count].mean():.1f}% | | |
| two classes, its own seed, unguided | {len(pair)} | {100 * unguided[args.count :].mean():.1f}% (both) | | |
""" if unguided is not None else "")
    body = f"""The world model `{args.model}`, {args.steps} steps, guidance {args.guidance}{choice}{steering},
judged by the bundled world annotator. Samples: `benchmarks/{sheet.name}` (top: one-class prompts,
bottom: two-class prompts).

| prompts | images | annotator finds the prompted class(es) | target | same classes in rendered scenes (held out) |
|---|---|---|---|---|
| one class | {len(single)} | {100 * single.mean():.1f}% | >= {args.targets[0]:g}% | {100 * world_single.mean():.1f}% |
| two classes | {len(pair)} | {100 * pair.mean():.1f}% (both) | >= {args.targets[1]:g}% | {100 * world_pair.mean():.1f}% (both) |
{plain}
The last column is the annotator on the world itself: the same class lists rendered as held-out scenes
(odd seeds), where two objects may hide up to half of each other. Generated / rendered: one class
{single.mean() / world_single.mean():.2f}, two classes {pair.mean() / world_pair.mean():.2f}.

Sampling time: {seconds:.3f} s per kept image on this CPU (batch {args.batch}{f", {args.candidates} candidates each" if chooser else ""}).

| class (one-class prompts) | found |
|---|---|
{rows}
"""
    print(body)
    from synthseg.registry import BUNDLES

    write_section(f"{Path(args.model).name} fidelity", body, bundle=args.model if args.model in BUNDLES else None)


if __name__ == "__main__":
    main()
