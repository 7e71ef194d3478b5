"""Replay triplets against cached features: bytes per triplet, and the grounding training step's time.

- Bytes: per family at its default size (SD 1.5 at 512^2; SDXL, SD3.5 Large and FLUX.1-dev at 1024^2),
  fp16, default blocks, without cross-attention maps, from the architectures (`synthseg.plan`, the
  denoiser on the meta device); and measured on disk for SD 1.5's architecture (random weights,
  `synthseg.tiny.sd15_pipeline`) and the world, on triplets made both ways.
- Step time: `train_grounding` on the same triplets cached and replayed, interleaved in one run (the
  ratio is what counts on a shared CPU), on the world and on SD 1.5's architecture.

Writes the "Replay triplets" section of benchmarks/RESULTS.md.

    python benchmarks/bench_replay.py [--world-triplets 32] [--world-steps 20] [--sd15-steps 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from results import write_section

from synthseg.annotators import Instance
from synthseg.plan import feature_bytes, replay_bytes
from synthseg.tiny import FLUX_DEV_TRANSFORMER, SDXL_UNET
from synthseg.triplets import REPLAY_ABOVE, TripletShards, make_triplets

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8)
SD35_LARGE_TRANSFORMER = dict(  # stabilityai/stable-diffusion-3.5-large, transformer/config.json
    sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
    caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm",
)


class LeftHalf:
    """Labels the first prompted class as the image's left half: SD 1.5 with random weights draws noise."""

    def category_of(self, name):
        return 1

    def annotate(self, images, class_names):
        masks = [np.zeros(image.shape[:2], dtype=bool) for image in images]
        for mask in masks:
            mask[:, : mask.shape[1] // 2] = True
        return [[Instance(mask, names[0], 0.9)] for mask, names in zip(masks, class_names)]


def architecture_bytes() -> list[tuple[str, int, int]]:
    """(model, cached bytes, replay bytes) of one triplet's features or denoiser inputs, fp16, default blocks."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    with torch.device("meta"):
        models = [("SD 1.5, 512^2", "unet", UNet2DConditionModel(**SD15_UNET), 64, 77),
                  ("SDXL, 1024^2", "unet", UNet2DConditionModel(**SDXL_UNET), 128, 77),
                  ("SD3.5 Large, 1024^2", "transformer", SD3Transformer2DModel(**SD35_LARGE_TRANSFORMER), 128, 77 + 256),
                  ("FLUX.1-dev, 1024^2", "transformer", FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER), 128, 512)]
    rows = []
    for name, part, denoiser, latent, tokens in models:
        stand_in = SimpleNamespace(**{part: denoiser})
        rows.append((name, feature_bytes(stand_in, latent, tokens, 2, False), replay_bytes(denoiser, latent, tokens, 2, "embeddings")))
    return rows


def step_times(recipe, cached: TripletShards, replayed: TripletShards, workdir: Path, steps: int) -> tuple[float, float]:
    """Median seconds per training step on `cached` and on `replayed`, runs interleaved."""
    from synthseg.train.grounding import train_grounding

    recipe = replace(recipe, train=replace(recipe.train, steps=steps, checkpoint_every=steps + 1, warmup_steps=1))
    times = {"cached": [], "replay": []}
    for repeat in range(2):
        for name, source in (("cached", cached), ("replay", replayed)):
            start = time.perf_counter()
            train_grounding(recipe, source, workdir / f"{name}{repeat}", workdir / f"{name}{repeat}-out")
            times[name].append((time.perf_counter() - start) / steps)
    return float(np.median(times["cached"])), float(np.median(times["replay"]))


def human(count: float) -> str:
    return f"{count / 1e6:,.2f} MB" if count >= 1e5 else f"{count / 1e3:,.1f} KB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-triplets", type=int, default=32)
    parser.add_argument("--world-steps", type=int, default=20)
    parser.add_argument("--sd15-steps", type=int, default=3)
    args = parser.parse_args()

    from synthseg.annotators import load_annotator
    from synthseg.pipeline import load_pipeline
    from synthseg.tiny import sd15_pipeline
    from synthseg.train.grounding import load_grounding_recipe

    torch.manual_seed(0)
    lines = ["| model | cached features | replay inputs | cached / replay |", "|---|---|---|---|"]
    for name, cached, replayed in architecture_bytes():
        lines.append(f"| {name} | {human(cached)} | {human(replayed)} | {cached / replayed:.0f}x |")
    measured = ["| triplets | storage | bytes per triplet on disk | training step | replay / cached |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = load_grounding_recipe("world-grounding")
        runs = [("world", world, load_pipeline("world"), load_annotator("world"), args.world_triplets, args.world_steps)]
        sd15 = load_grounding_recipe("voc-grounding", train=dict(batch_size=2))
        sd15 = replace(sd15, triplets=replace(sd15.triplets, num_inference_steps=2, shard_size=2, batch_size=2))
        runs.append(("SD 1.5 architecture, 512^2", sd15, sd15_pipeline(), LeftHalf(), 2, args.sd15_steps))
        for name, recipe, pipe, annotator, count, steps in runs:
            pipe.set_progress_bar_config(disable=True)
            shards = {}
            for storage in ("features", "replay"):
                triplets = replace(recipe.triplets, count=count, storage=storage)
                make_triplets(pipe, annotator, triplets, tmp / f"{name}-{storage}")
                shards[storage] = TripletShards(tmp / f"{name}-{storage}", pipe=pipe)
            cached_step, replay_step = step_times(replace(recipe, triplets=replace(recipe.triplets, count=count)), shards["features"],
                                                  shards["replay"], tmp / f"{name}-train", steps)
            for storage, step in (("features", cached_step), ("replay", replay_step)):
                ratio = f"{replay_step / cached_step:.2f}" if storage == "replay" else ""
                measured.append(f"| {name} | {storage} | {human(shards[storage].bytes_per_triplet())} | {step:.3f} s | {ratio} |")
    body = f"""Bytes of one triplet's features against its denoiser inputs, from the architectures (fp16, default
blocks, no cross-attention maps; masks and queries, the same in both, left out):

{chr(10).join(lines)}

Measured: triplets made both ways on the same prompts and seeds, whole files on disk per triplet (masks
bit-packed, queries, records); grounding training steps on each, interleaved in one run (world: batch
{world.train.batch_size}, {args.world_steps} steps; SD 1.5's architecture with random weights: batch 2, {args.sd15_steps} steps,
2-step generation):

{chr(10).join(measured)}

`storage: auto` replays above {REPLAY_ABOVE / 1e6:.0f} MB of cached features per triplet: every real model above,
and the worlds cache.
"""
    print(body)
    write_section("Replay triplets", body)


if __name__ == "__main__":
    main()
