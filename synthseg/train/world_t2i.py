"""Training the miniature world's text-to-image model (`synthseg.worldmodel`), in two stages: VAE, then UNet.

Recipes: `world-t2i` (from scratch) and, with `init_from`, fine-tuning an existing pipeline as diffusers'
train_text_to_image does: its VAE is kept and its UNet trains on, so a CPU extends a model in sittings
(the shipped model's stages 2 and 3, `world-t2i-finetune` and `world-t2i-finetune2`).
Data is rendered on the fly: the batch of step s comes from `default_rng([seed, s])`, so a run
resumed from a checkpoint sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from ..config import load_recipe
from ..errors import SynthsegError
from ..layouts import LayoutRecipe, sample_layout
from ..prompts import caption
from ..registry import MODEL_CARD
from ..world import WORLD_CLASSES, Scene, layout_scene, render_scene, scene_seed
from ..worldmodel import WorldDiTRecipe, WorldModelRecipe, build_unet, build_vae, load_text_encoder
from .loop import claim_workdir, load_init_pipeline, staged_export, train_loop, warmup_cosine, write_training_record


def load_world_model_recipe(spec: str | Path) -> WorldModelRecipe:
    """A world-model recipe by packaged name ("world-t2i") or path."""
    return load_recipe(WorldModelRecipe, spec, "world-model")


def sample_scenes(recipe: WorldModelRecipe | WorldDiTRecipe, step: int, batch_size: int):
    """The batch of `step`: scenes of one or two classes with their captions, deterministic."""
    rng = np.random.default_rng([recipe.seed, step])
    scenes, captions = [], []
    for i in range(batch_size):
        count = 2 if rng.random() < recipe.pair_fraction else 1
        names = [WORLD_CLASSES[j] for j in rng.choice(len(WORLD_CLASSES), size=count, replace=False)]
        scenes.append(render_scene(scene_seed(int(rng.integers(2**30)), held_out=False), names, recipe.image_size, recipe.min_visible))
        captions.append(caption(names, tuple(recipe.templates)))
    return scene_images(scenes), captions


def scene_images(scenes: list[Scene]) -> torch.Tensor:
    """(B, 3, H, W) the scenes' images in [-1, 1]."""
    return torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1


def sample_layout_scenes(layouts: LayoutRecipe, step: int, count: int, size: int) -> tuple[list[Scene], list[str]]:
    """Step `step`'s `count` layouts of the stream `layouts` (layouts step * count ...), rendered exactly
    (`world.layout_scene`), and their prompts: deterministic, so a resumed run sees the same scenes."""
    drawn = [sample_layout(layouts, list(WORLD_CLASSES), [], step * count + i) for i in range(count)]
    return [layout_scene(layout, held_out=False, fit=layouts.fit, size=size) for layout in drawn], [layout.prompt for layout in drawn]


def unet_batch(recipe: WorldModelRecipe, step: int) -> tuple[torch.Tensor, list[str]]:
    """The UNet's batch of `step`: `sample_scenes`, with its last `layout_fraction` share drawn from the
    recipe's layouts instead (several objects, same-class repeats, captions that count them)."""
    n_layouts = round(recipe.unet.batch_size * recipe.layout_fraction)
    parts = [sample_scenes(recipe, step, recipe.unet.batch_size - n_layouts)] if n_layouts < recipe.unet.batch_size else []
    if n_layouts:
        scenes, prompts = sample_layout_scenes(recipe.layouts, step, n_layouts, recipe.image_size)
        parts.append((scene_images(scenes), prompts))
    return torch.cat([images for images, _ in parts]), [c for _, captions in parts for c in captions]


def noise_scheduler(recipe: WorldModelRecipe) -> DDPMScheduler:
    return DDPMScheduler(beta_schedule=recipe.unet.beta_schedule, prediction_type=recipe.unet.prediction_type, clip_sample=False)


def train_vae(recipe: WorldModelRecipe | WorldDiTRecipe, workdir: Path, max_steps: int | None = None,
              device: torch.device | None = None) -> tuple[AutoencoderKL, list[float]]:
    """Stage 1: the autoencoder, L1 + MSE reconstruction with a small KL term, on `device` (default CPU).
    Resumes from workdir; returns the VAE, on the CPU, and its losses so far."""
    torch.manual_seed(recipe.seed)
    vae = build_vae(recipe).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae.lr)

    def step_loss(step: int) -> torch.Tensor:
        images = sample_scenes(recipe, 10_000_000 + step, recipe.vae.batch_size)[0].to(device)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(generator=torch.Generator().manual_seed(step))).sample
        return F.l1_loss(recon, images) + F.mse_loss(recon, images) + recipe.vae.kl_weight * posterior.kl().mean()

    losses = train_loop("vae", step_loss, model=vae, optimizer=optimizer, checkpoint=workdir / "vae.ckpt",
                        steps=recipe.vae.steps, checkpoint_every=recipe.checkpoint_every, max_steps=max_steps)
    return vae.cpu().eval(), losses


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, recipe: WorldModelRecipe | WorldDiTRecipe) -> float:
    """1 / std of the latents over 256 scenes: SD's `scaling_factor`, so latents are unit-variance."""
    images, _ = sample_scenes(recipe, 20_000_000, 256)
    return float(1.0 / vae.encode(images).latent_dist.mean.std())


@torch.no_grad()
def caption_states(tokenizer, encoder, captions: list[str]) -> torch.Tensor:
    """Token states exactly as `StableDiffusionPipeline.encode_prompt` computes them for a BERT encoder."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return encoder(ids)[0]


def captioned_latents(vae: AutoencoderKL, images: torch.Tensor, captions: list[str], dropout: float, generator: torch.Generator,
                      cache: dict, encode) -> tuple[torch.Tensor, list[str]]:
    """A training batch's scaled VAE latents (sampled) and its captions, `dropout` of them emptied for
    classifier-free guidance; captions not yet in `cache` are encoded first (`encode(captions)`: one
    cache entry per caption)."""
    drop = torch.rand(len(captions), generator=generator) < dropout
    captions = ["" if d else c for c, d in zip(captions, drop)]
    missing = sorted(c for c in set(captions) if c not in cache)
    if missing:
        with torch.no_grad():
            cache.update(zip(missing, encode(missing)))
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.sample(generator=generator) * vae.config.scaling_factor
    return latents, captions


def diffusion_loss(unet, scheduler: DDPMScheduler, latents: torch.Tensor, text: torch.Tensor, generator: torch.Generator,
                   cross_attention_kwargs: dict | None = None, min_timestep: int = 0) -> torch.Tensor:
    """MSE of the UNet's prediction (noise or v, per the scheduler) at random timesteps from `min_timestep`
    on; `cross_attention_kwargs` carry further conditioning (GLIGEN's boxes)."""
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)  # a CPU generator: the same draws on any device
    t = torch.randint(min_timestep, scheduler.config.num_train_timesteps, (len(latents),), generator=generator).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
    return F.mse_loss(unet(noisy, t, encoder_hidden_states=text, cross_attention_kwargs=cross_attention_kwargs).sample, target)


def load_init(recipe: WorldModelRecipe) -> tuple[AutoencoderKL, UNet2DConditionModel, dict]:
    """The VAE, UNet and training record of the pipeline named by `recipe.init_from`, loaded by
    `load_pipeline` like any other. Its weights go into the recipe's own architectures (a mismatch is an
    error), so that the fine-tuned model is the one the recipe describes and its configs are the recipe's."""
    source, pipe = load_init_pipeline(recipe.init_from)
    vae = build_vae(recipe)
    unet = build_unet(recipe, pipe.unet.config.cross_attention_dim, recipe.vae.latent_channels)
    for name, model, weights in (("VAE", vae, pipe.vae), ("UNet", unet, pipe.unet)):
        try:
            model.load_state_dict(weights.state_dict())
        except RuntimeError:
            raise SynthsegError(f"init_from {recipe.init_from}: its {name} has another architecture than the recipe's") from None
    vae.register_to_config(scaling_factor=pipe.vae.config.scaling_factor)
    record = Path(source) / "training.json"
    return vae, unet, json.loads(record.read_text()) if record.is_file() else {}


def train_unet(recipe: WorldModelRecipe, vae: AutoencoderKL, workdir: Path, max_steps: int | None = None,
               init: UNet2DConditionModel | None = None, device: torch.device | None = None):
    """Stage 2: the latent UNet on captioned scenes, with EMA weights, from `init`'s weights if given, on
    `device` (default CPU; the VAE and text encoder make batches on the CPU). Resumes from workdir; the
    UNet comes back on the CPU."""
    tokenizer, encoder = load_text_encoder(recipe.max_tokens)
    vae.requires_grad_(False)
    torch.manual_seed(recipe.seed + 1)
    unet = (init if init is not None else build_unet(recipe, encoder.config.hidden_size, recipe.vae.latent_channels)).to(device)
    ema = torch.optim.swa_utils.AveragedModel(unet, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(recipe.unet.ema_decay))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.unet.lr, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.unet.warmup_steps, recipe.unet.steps))
    scheduler = noise_scheduler(recipe)
    cache: dict[str, torch.Tensor] = {}
    unet.train()

    def step_batch(step: int):  # latents, text states and the generator the noise comes from (made ahead: train_loop)
        images, captions = unet_batch(recipe, step)
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        latents, captions = captioned_latents(vae, images, captions, recipe.unet.caption_dropout, g, cache,
                                              lambda missing: caption_states(tokenizer, encoder, missing))
        return latents, torch.stack([cache[c] for c in captions]), g

    losses = train_loop("unet", lambda step, batch: diffusion_loss(unet, scheduler, *batch), model=unet, optimizer=optimizer,
                        checkpoint=workdir / "unet.ckpt", steps=recipe.unet.steps, checkpoint_every=recipe.checkpoint_every,
                        max_steps=max_steps, schedule=lr, ema=ema, clip_norm=1.0, batches=step_batch, device=device)
    return ema.module.cpu().eval(), tokenizer, encoder, losses


def train_world_model(recipe: WorldModelRecipe, workdir: Path, output: Path, max_steps: int | None = None,
                      device: torch.device | None = None) -> Path:
    """Train (or resume) both stages in `workdir` on `device` (default CPU), then export the pipeline's own
    parts to `output`.

    `output` gets unet/ and vae/ (fp16 safetensors), scheduler/, tokenizer/, model_index.json and the
    model card (synthseg.json); the text encoder stays in its pip package (see `WorldPipeline`). With
    `recipe.init_from`, the VAE stage is that pipeline's VAE, and training.json counts its steps first.
    """
    vae, init, prior = load_init(recipe) if recipe.init_from else (None, None, {})
    claim_workdir(workdir, recipe)  # once init_from has loaded: a bad name leaves no workdir behind
    vae_losses = None
    if vae is None:
        vae, vae_losses = train_vae(recipe, workdir, max_steps, device)
        vae.register_to_config(scaling_factor=latent_scale(vae, recipe))
    unet, tokenizer, encoder, unet_losses = train_unet(recipe, vae, workdir, max_steps, init, device)
    sampler = DDIMScheduler(beta_schedule=recipe.unet.beta_schedule, prediction_type=recipe.unet.prediction_type,
                            clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=sampler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with staged_export(output) as staging:
        for part in ("vae", "unet"):  # the text encoder is not written: its pip package holds it
            getattr(pipe, part).half().save_pretrained(staging / part)
        for part in ("scheduler", "tokenizer"):
            getattr(pipe, part).save_pretrained(staging / part)
        pipe.save_config(staging)
        card = dict(classes=list(WORLD_CLASSES), num_inference_steps=recipe.num_inference_steps, guidance_scale=recipe.guidance_scale)
        (staging / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
        write_training_record(staging, prior, vae=vae_losses, unet=unet_losses)
    return output
