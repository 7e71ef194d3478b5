"""Training speed of the world's generative models on a device: what a sitting of N steps costs there.

Each trainer runs its shipped recipe's architecture and batch as its command would (`train_loop` with `device`:
the model on the device, batches rendered and encoded on the CPU by worker processes), twice in fresh workdirs,
for K and 2K steps; the difference over K is the time a step takes once loading, the first batches and the export
are paid. On a GPU this is also the first run of the trainers' CUDA path.

- world UNet: recipe `world-t2i-finetune` from the shipped `world` (its VAE kept, the UNet trains);
- world-dit: recipe `world-dit` (flow matching from scratch on the world VAE's latents);
- world-dit, distilled: recipe `world-dit-finetune6` from the shipped `world-dit` (the UNet world as teacher, guided);
- GLIGEN: recipe `world-layout` (gated layers over the frozen world UNet).

Writes the "world training speed (DEVICE TYPE)" section of benchmarks/RESULTS.md: a GPU run keeps the CPU's beside it.

    python benchmarks/bench_training_speed.py [--device auto] [--steps 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from results import write_section

from synthseg.device import resolve_device
from synthseg.train.world_dit import load_dit_recipe, train_world_dit
from synthseg.train.world_layout import load_layout_recipe, train_world_layout
from synthseg.train.world_t2i import load_world_model_recipe, train_world_model

TRAINERS = {  # name: (train function, recipe)
    "world UNet (`world-t2i-finetune` from `world`)": (
        train_world_model, dataclasses.replace(load_world_model_recipe("world-t2i-finetune"), init_from="world")),
    "world-dit (`world-dit`, flow matching)": (train_world_dit, load_dit_recipe("world-dit")),
    "world-dit, distilled (`world-dit-finetune6` from `world-dit`)": (
        train_world_dit, dataclasses.replace(load_dit_recipe("world-dit-finetune6"), init_from="world-dit")),
    "GLIGEN (`world-layout`)": (train_world_layout, load_layout_recipe("world-layout")),
}


def batch_size(recipe) -> int:
    for part in ("unet", "transformer"):
        if hasattr(recipe, part):
            return getattr(recipe, part).batch_size
    return recipe.batch_size


def seconds_per_step(train, recipe, steps: int, device) -> float:
    times = []
    for count in (steps, 2 * steps):
        with tempfile.TemporaryDirectory() as work:
            start = time.perf_counter()
            train(recipe, Path(work) / "run", Path(work) / "out", count, device)
            times.append(time.perf_counter() - start)
    return (times[1] - times[0]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20, help="K: the runs train K and 2K steps")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    for name, (train, recipe) in TRAINERS.items():
        seconds = seconds_per_step(train, recipe, args.steps, device)
        rows.append(f"| {name} | {batch_size(recipe)} | {seconds:.3f} | {3600 / seconds:,.0f} |")
        print(rows[-1], flush=True)
    body = f"""Each trainer with its shipped recipe's architecture and batch, as its command runs it (`--device {args.device}`, here
{device}): the model on the device, batches rendered and encoded on the CPU by worker processes (one beside a CPU
step, up to 8 beside a GPU step). Runs of {args.steps} and {2 * args.steps} steps in fresh workdirs; the difference
over {args.steps} is a step's time, without loading and export.

| trainer | batch | seconds per step | steps per hour |
|---|---|---|---|
""" + "\n".join(rows)
    write_section(f"world training speed ({device.type})", body)


if __name__ == "__main__":
    main()
