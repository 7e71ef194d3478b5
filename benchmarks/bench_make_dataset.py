"""make-dataset throughput, time spent writing vs generating, and peak memory at 100 and 1,000 images.

Default: the tiny SD-architecture pipeline (32x32 images) with a random grounding module, 5 denoising
steps, so that the dataset machinery, not the UNet, dominates. Each size runs in a fresh process, so
peak RSS is that run's own. Memory must stay flat: peak RSS at 1,000 within 10% of that at 100.
Writes the "make-dataset" section of benchmarks/RESULTS.md. With `--world`, the bundled world model
and module at their defaults (the quickstart's job), which writes "make-dataset (world)": the share of
time spent writing decides whether writing needs a thread of its own (above 5%).

    python benchmarks/bench_make_dataset.py [--sizes 100 1000] [--world]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

from results import write_section


def run(count: int, world: bool) -> dict:
    """One make-dataset run of `count` images (in this process); timings and peak RSS."""
    import torch

    import synthseg.dataset as dataset
    from synthseg import GroundingConfig, GroundingModule
    from synthseg.config import load_config
    from synthseg.tiny import tiny_pipeline

    if world:
        from synthseg.pipeline import load_pipeline

        recipe = dataset.load_dataset_recipe("world", per_class=count // 12, per_pair=0)
        pipe, grounding = load_pipeline(recipe.model), GroundingModule.from_pretrained(recipe.grounding).eval()
    else:
        pipe = tiny_pipeline()
        torch.manual_seed(0)
        grounding = GroundingModule(GroundingConfig.for_pipeline(pipe, fuse_dim=32, mask_dim=32, hidden_dim=64, num_heads=4, ffn_dim=128)).eval()
        classes = ["dog", "cat", "cow", "horse", "sheep", "bird", "boat", "bus", "car", "train"]
        recipe = load_config(dataset.DatasetRecipe, dict(model="bench", classes=",".join(classes), per_class=count // len(classes), num_inference_steps=5,
                                                         guidance_scale=2.0, require_all_classes=False, batch_size=10), "bench")
    count = len(dataset.plan(recipe))
    writing = [0.0]
    write_item = dataset.write_item

    def timed_write(*args, **kwargs):
        start = time.perf_counter()
        write_item(*args, **kwargs)
        writing[0] += time.perf_counter() - start

    dataset.write_item = timed_write
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        dataset.make_dataset(pipe, grounding, recipe, out, dict(model="tiny"))
        total = time.perf_counter() - start
        finalize_start = time.perf_counter()
        dataset.finalize(out, recipe)  # timed again alone: the end-of-job merge
        finalize = time.perf_counter() - finalize_start
    return dict(images=count, seconds=total, images_per_s=count / total, write_share=writing[0] / total,
                finalize_s=finalize, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--world", action="store_true", help="the bundled world model and module, at their defaults")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child, args.world)))
        return
    rows = []
    for size in args.sizes:
        command = [sys.executable, __file__, "--child", str(size)] + (["--world"] if args.world else [])
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1])
    lines = ["| images | seconds | images/s | share of time writing | finalize (s) | peak RSS (MB) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.2f} | {100 * r['write_share']:.1f}% | {r['finalize_s']:.2f} "
              f"| {r['peak_rss_mb']:.0f} |" for r in rows]
    growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1
    if args.world:
        share = max(r["write_share"] for r in rows)
        body = ("The bundled world model and module at the world recipe's defaults (64x64 images, 25 DDIM steps,\n"
                f"guidance 2.0, one-class prompts). Writing (PNG image and label map, COCO RLE, record) takes {100 * share:.1f}%\n"
                f"of the time at most: {'under' if share <= 0.05 else 'over'} the 5% above which writing would get a thread of "
                "its own.\n\n" + "\n".join(lines))
        write_section("make-dataset (world)", body, bundle="world")
        return
    body = ("Tiny SD-architecture pipeline, 32x32 images, 5 steps, batch 10, random grounding module.\n"
            f"Target: peak RSS flat within 10% from {rows[0]['images']} to {rows[-1]['images']} images. "
            f"Measured growth: {100 * growth:+.1f}%.\n\n" + "\n".join(lines))
    write_section("make-dataset", body)


if __name__ == "__main__":
    main()
