"""Does a world-layout export use its boxes? Its denoising loss on held-out layouts, with the layout's boxes,
with null tokens (no boxes), with another image's boxes, and without caption or boxes.

A model that reads its boxes has a lower loss with them than with null tokens, and a higher one with
another image's boxes. This is the quick check to run on a training run before sampling
(`bench_layouts.py` judges the images). Layouts: the export's training stream far past any training
step (`layout_batch` at steps 10^6 + i), rendered exactly; fixed noise per batch; v or epsilon target as the
scheduler predicts. Writes the "world-layout conditioning" section of benchmarks/RESULTS.md.

    python benchmarks/bench_layout_conditioning.py [--model world-layout] [--batches 2] [--recipe world-layout]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from results import export_digest, write_section

TIMESTEPS = (650, 800, 950)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="world-layout", help="the shipped world-layout, or an export folder (train-world-layout --out)")
    parser.add_argument("--recipe", default="world-layout", help="the recipe whose layouts and tokens to use")
    parser.add_argument("--batches", type=int, default=2, help="batches of the recipe's batch size")
    args = parser.parse_args()

    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from synthseg.pipeline import load_pipeline
    from synthseg.registry import resolve_pipeline
    from synthseg.train.world_layout import layout_batch, load_layout_recipe, phrase_embeddings
    from synthseg.train.world_t2i import caption_states
    from synthseg.world import WORLD_CLASSES

    torch.set_grad_enabled(False)
    pipe = load_pipeline(args.model, torch_dtype=torch.float32)
    recipe = load_layout_recipe(args.recipe)
    pipe.tokenizer.model_max_length = recipe.max_tokens
    phrases = dict(zip(WORLD_CLASSES, phrase_embeddings(pipe.tokenizer, pipe.text_encoder, list(WORLD_CLASSES))))
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    losses: dict[tuple[int, str], list[float]] = {}
    for b in range(args.batches):
        images, captions, boxes, embeds, masks = layout_batch(recipe, 10**6 + b, phrases, pipe.vae.config.sample_size)
        generator = torch.Generator().manual_seed(b)
        latents = pipe.vae.encode(images).latent_dist.sample(generator=generator) * pipe.vae.config.scaling_factor
        text = caption_states(pipe.tokenizer, pipe.text_encoder, captions)
        empty = caption_states(pipe.tokenizer, pipe.text_encoder, [""] * len(captions))
        other = torch.roll(torch.arange(len(latents)), 1)
        conditions = {
            "the layout's boxes": (text, dict(boxes=boxes, positive_embeddings=embeds, masks=masks)),
            "null tokens (no boxes)": (text, dict(boxes=boxes, positive_embeddings=embeds, masks=torch.zeros_like(masks))),
            "another image's boxes": (text, dict(boxes=boxes[other], positive_embeddings=embeds[other], masks=masks[other])),
            "no caption, no boxes": (empty, dict(boxes=boxes, positive_embeddings=embeds, masks=torch.zeros_like(masks))),
        }
        for t in TIMESTEPS:
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.full((len(latents),), t)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
            for name, (states, gligen) in conditions.items():
                output = pipe.unet(noisy, timesteps, encoder_hidden_states=states, cross_attention_kwargs={"gligen": gligen}).sample
                losses.setdefault((t, name), []).append(F.mse_loss(output, target).item())
    mean = {key: sum(values) / len(values) for key, values in losses.items()}
    names = list(conditions)
    rows = [f"| {name} | " + " | ".join(f"{mean[(t, name)]:.4f}" for t in TIMESTEPS) + " |" for name in names]
    gain = " | ".join(f"{100 * (1 - mean[(t, names[0])] / mean[(t, names[1])]):+.1f}%" for t in TIMESTEPS)
    digest, record = export_digest(Path(resolve_pipeline(args.model)))
    steps = ", ".join(f"{stage} {r['steps']:,} steps" for stage, r in record.items())
    body = f"""Export `{args.model}` {digest} ({steps}), {args.batches * recipe.batch_size} held-out layouts of the `{args.recipe}` recipe,
denoising loss (MSE against the scheduler's target) at three timesteps:

| conditioning | t {" | t ".join(map(str, TIMESTEPS))} |
|---|---|---|---|
{chr(10).join(rows)}
| loss with boxes below null tokens | {gain} |
"""
    print(body)
    write_section("world-layout conditioning", body)


if __name__ == "__main__":
    main()
