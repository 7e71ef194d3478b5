"""Ad hoc: a counter that has seen what counting guidance shows it.

Counting guidance reads the counter on the VAE's decoding of the predicted clean latents (x0_hat) at each guided
step, and candidates are chosen on the generator's finished images; the shipped counter learnt from rendered scenes
only (with a light blur). This makes a pool of the generator's views of rendered layout scenes with known counts:
each scene of the counter's stream (`counter-world`'s layouts, stream 30) is encoded by the world VAE, noised to one
of the sampling schedule's timesteps (the card's 25), and denoised once by `world-layout` given its own prompt and
boxes (classifier-free guidance at the card's scale); the decoded x0_hat keeps the scene's counts. The counter is then
trained as `counter-world` trains it, with SHARE of each batch from the pool.

    python benchmarks/adhoc/counter_denoised.py pool SCENES OUT.npz
    python benchmarks/adhoc/counter_denoised.py train POOL.npz SHARE OUT [STEPS]
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from synthseg.counter import object_counts
from synthseg.layouts import sample_layout
from synthseg.pipeline import load_pipeline
from synthseg.registry import model_card
from synthseg.train.backbone import classifier_config, count_batch, count_loss, load_backbone_recipe, random_flips
from synthseg.train.loop import train_loop, warmup_cosine
from synthseg.train.world_layout import gligen_inputs, phrase_embeddings
from synthseg.train.world_t2i import sample_layout_scenes, scene_images
from synthseg.world import WORLD_CLASSES, layout_scene

BATCH = 64


@torch.no_grad()
def pool(scenes: int, out: str) -> None:
    torch.set_num_threads(2)
    recipe = load_backbone_recipe("counter-world")
    pipe = load_pipeline("world-layout", torch_dtype=torch.float32)
    card = model_card("world-layout")
    scheduler = pipe.scheduler
    scheduler.set_timesteps(card.num_inference_steps)
    timesteps = scheduler.timesteps
    vae, unet = pipe.vae, pipe.unet
    phrases = dict(zip(WORLD_CLASSES, phrase_embeddings(pipe.tokenizer, pipe.text_encoder, list(WORLD_CLASSES))))
    uncond = pipe.encode_prompt([""], "cpu", 1, False)[0]
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    images, counts, steps = [], [], []
    start = time.time()
    for first in range(0, scenes, BATCH):
        layouts = [sample_layout(recipe.layouts, list(WORLD_CLASSES), [], i) for i in range(first, min(first + BATCH, scenes))]
        drawn = [layout_scene(lay, held_out=False, fit=recipe.layouts.fit, size=recipe.image_size) for lay in layouts]
        n = len(drawn)
        latents = vae.encode(scene_images(drawn)).latent_dist.sample(generator=g) * vae.config.scaling_factor
        boxes, embeds, masks = gligen_inputs(drawn, phrases)
        which = rng.integers(len(timesteps), size=n)
        t = timesteps[which]
        noise = torch.randn(latents.shape, generator=g)
        noisy = scheduler.add_noise(latents, noise, t)
        text = pipe.encode_prompt([lay.prompt for lay in layouts], "cpu", 1, False)[0]
        gligen = dict(boxes=torch.cat([boxes, boxes]), positive_embeddings=torch.cat([embeds, embeds]),
                      masks=torch.cat([torch.zeros_like(masks), masks]))
        out_v = unet(torch.cat([noisy, noisy]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond.expand(n, -1, -1), text]),
                     cross_attention_kwargs={"gligen": gligen}).sample
        v_u, v_c = out_v.chunk(2)
        v = v_u + card.guidance_scale * (v_c - v_u)
        a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        x0 = a.sqrt() * noisy - (1 - a).sqrt() * v
        decoded = ((vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1) + 1) * 127.5).round().byte()
        images.append(decoded.permute(0, 2, 3, 1).numpy())
        counts.extend(object_counts(s.classes, s.masks, WORLD_CLASSES) for s in drawn)
        steps.extend(which.tolist())
        print(first + n, f"{time.time() - start:.0f}s", flush=True)
    np.savez_compressed(out, images=np.concatenate(images), counts=np.stack(counts), steps=np.array(steps))


def train(pool_file: str, share: float, out: str, steps: int | None) -> None:
    from transformers import ResNetForImageClassification

    from synthseg.segmenter import normalised_pixels

    torch.set_num_threads(2)
    recipe = load_backbone_recipe("counter-world")
    steps = steps or recipe.steps
    data = np.load(pool_file)
    pool_images, pool_counts = data["images"], torch.from_numpy(data["counts"])
    torch.manual_seed(recipe.seed)
    model = ResNetForImageClassification(classifier_config(recipe)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.warmup_steps, steps))
    stream = replace(recipe.layouts, seed=recipe.layouts.seed + 10)  # rendered scenes other than the pool's
    from_pool = int(round(share * recipe.batch_size))

    def step_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([recipe.seed, step])
        rendered, rendered_counts = count_batch(sample_layout_scenes(stream, step, recipe.batch_size - from_pool, recipe.image_size)[0],
                                                rng, recipe.blur)
        pick = rng.integers(len(pool_images), size=from_pool)
        pooled = normalised_pixels(pool_images[pick])
        random_flips(pooled, rng)
        return torch.cat([rendered, pooled]), torch.cat([rendered_counts, pool_counts[pick]])

    def step_loss(step: int, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        pixels, counts = batch
        return count_loss(model(pixel_values=pixels).logits, counts, recipe.max_count)

    Path(out).mkdir(parents=True, exist_ok=True)
    train_loop("counter", step_loss, model=model, optimizer=optimizer, checkpoint=Path(out) / "counter.ckpt", steps=steps,
               checkpoint_every=recipe.checkpoint_every, schedule=schedule, batches=step_batch)
    model.eval().half().save_pretrained(out)


if __name__ == "__main__":
    if sys.argv[1] == "pool":
        pool(int(sys.argv[2]), sys.argv[3])
    else:
        train(sys.argv[2], float(sys.argv[3]), sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else None)
