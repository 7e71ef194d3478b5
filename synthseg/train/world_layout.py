"""Training the world's GLIGEN (`worldmodel.LayoutModelRecipe`): gated self-attention layers and the
box-token projection in the frozen world UNet, as GLIGEN trains them into a frozen Stable Diffusion,
on rendered layouts whose boxes are exact.

The batch of step s is layouts s * batch_size ... of the recipe's layout stream (`layouts.sample_layout`)
rendered by `world.layout_scene`, so a resumed run sees the batches an uninterrupted one would. Each
object is one grounding token: its phrase's pooled text embedding (as `StableDiffusionGLIGENPipeline`
computes it) and its visible box, padded with null tokens to the pipeline's 30.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionGLIGENPipeline
from safetensors.torch import save_file

from ..config import load_recipe
from ..errors import SynthsegError
from ..layouts import MAX_GLIGEN_BOXES
from ..pipeline import load_pipeline
from ..registry import MODEL_CARD
from ..world import WORLD_CLASSES, Scene, mask_box
from ..worldmodel import GLIGEN_WEIGHTS, LayoutModelRecipe, build_gligen_unet, is_gligen_weight
from .loop import claim_workdir, load_init_pipeline, staged_export, train_loop, warmup_cosine, write_training_record
from .world_t2i import caption_states, captioned_latents, diffusion_loss, sample_layout_scenes, scene_images

# What the model card says about the layouts trained on and how to sample them: where a dataset's layouts section starts.
CARD_LAYOUT_LIMITS = ("min_objects", "max_objects", "min_size", "max_size", "max_aspect", "max_overlap", "templates", "scheduled_sampling_beta",
                     "box_attention", "candidates", "count_guidance", "fit")


def load_layout_recipe(spec: str | Path) -> LayoutModelRecipe:
    """A world-layout recipe by packaged name ("world-layout") or path."""
    return load_recipe(LayoutModelRecipe, spec, "world-layout")


@torch.no_grad()
def phrase_embeddings(tokenizer, encoder, phrases: list[str]) -> torch.Tensor:
    """(N, D) the pooled output of each phrase, as `StableDiffusionGLIGENPipeline` embeds box phrases."""
    return encoder(**tokenizer(phrases, padding=True, return_tensors="pt")).pooler_output


def gligen_inputs(scenes: list[Scene], phrases: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GLIGEN's inputs for rendered `scenes`, one token per visible object (its box, as the scene shows it, and
    `phrases[class]`, its phrase embedding): boxes (B, 30, 4), phrase embeddings (B, 30, D) and masks (B, 30), 1 for
    an object's token."""
    boxes = torch.zeros(len(scenes), MAX_GLIGEN_BOXES, 4)
    embeds = torch.zeros(len(scenes), MAX_GLIGEN_BOXES, next(iter(phrases.values())).shape[-1])
    masks = torch.zeros(len(scenes), MAX_GLIGEN_BOXES)
    for i, scene in enumerate(scenes):
        found = [(name, box) for name, box in zip(scene.classes, map(mask_box, scene.masks)) if box is not None]
        for k, (name, box) in enumerate(found):
            boxes[i, k], embeds[i, k], masks[i, k] = torch.tensor(box), phrases[name], 1
    return boxes, embeds, masks


def layout_batch(recipe: LayoutModelRecipe, step: int, phrases: dict[str, torch.Tensor], image_size: int):
    """Step `step`'s scenes: images (B, 3, H, W) in [-1, 1], captions, and `gligen_inputs`."""
    scenes, captions = sample_layout_scenes(recipe.layouts, step, recipe.batch_size, image_size)
    return scene_images(scenes), captions, *gligen_inputs(scenes, phrases)


def load_init(recipe: LayoutModelRecipe, unet) -> dict:
    """Load the GLIGEN weights of `recipe.init_from` (a world-layout export, loaded by `load_pipeline` like
    any other) into `unet`, the recipe's GLIGEN UNet over its base (another architecture is an error); the
    export's training record."""
    source, pipe = load_init_pipeline(recipe.init_from)
    weights = {k: v for k, v in pipe.unet.state_dict().items() if is_gligen_weight(k)}
    shapes = {k: v.shape for k, v in unet.state_dict().items() if is_gligen_weight(k)}
    if not weights or {k: v.shape for k, v in weights.items()} != shapes:
        raise SynthsegError(f"init_from {recipe.init_from}: not a GLIGEN export over the base {recipe.base!r}")
    unet.load_state_dict(weights, strict=False)
    record = Path(source) / "training.json"
    return json.loads(record.read_text()) if record.is_file() else {}


def train_world_layout(recipe: LayoutModelRecipe, workdir: Path, output: Path, max_steps: int | None = None,
                       device: torch.device | None = None) -> Path:
    """Train (or resume) GLIGEN's layers in `workdir` on `device` (default CPU; the frozen VAE and text
    encoder make batches on the CPU), then export them to `output`: unet/config.json (the
    GLIGEN UNet's), unet/gligen.safetensors (the added weights, fp16, of the EMA model), model_index.json,
    the model card (synthseg.json: classes, sampling defaults, the layout limits trained on, base) and
    training.json (counting `recipe.init_from`'s steps first)."""
    base = load_pipeline(recipe.base, torch_dtype=torch.float32)
    vae, tokenizer, encoder = base.vae.requires_grad_(False), base.tokenizer, base.text_encoder.requires_grad_(False)
    tokenizer.model_max_length = recipe.max_tokens
    torch.manual_seed(recipe.seed)
    unet = build_gligen_unet(base.unet)
    prior = load_init(recipe, unet) if recipe.init_from else {}
    unet.to(device)
    claim_workdir(workdir, recipe)  # once the base and init_from have loaded: a bad name leaves no workdir behind
    for name, parameter in unet.named_parameters():
        parameter.requires_grad_(is_gligen_weight(name))
    trained = [p for p in unet.parameters() if p.requires_grad]
    ema = torch.optim.swa_utils.AveragedModel(unet, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(recipe.ema_decay))
    optimizer = torch.optim.AdamW(trained, lr=recipe.lr, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.warmup_steps, recipe.steps))
    scheduler = DDPMScheduler.from_config(base.scheduler.config)
    phrases = dict(zip(WORLD_CLASSES, phrase_embeddings(tokenizer, encoder, list(WORLD_CLASSES))))
    image_size = vae.config.sample_size
    cache: dict[str, torch.Tensor] = {}
    unet.train()

    def step_batch(step: int):  # latents, text states, the noise's generator and the boxes (made ahead: train_loop)
        images, captions, boxes, embeds, masks = layout_batch(recipe, step, phrases, image_size)
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        latents, captions = captioned_latents(vae, images, captions, recipe.caption_dropout, g, cache,
                                              lambda missing: caption_states(tokenizer, encoder, missing))
        masks = masks * (torch.rand(len(masks), 1, generator=g) >= recipe.box_dropout)
        gligen = {"gligen": dict(boxes=boxes, positive_embeddings=embeds, masks=masks)}
        return latents, torch.stack([cache[c] for c in captions]), g, gligen

    losses = train_loop("gligen", lambda step, batch: diffusion_loss(unet, scheduler, *batch, recipe.min_timestep), model=unet,
                        optimizer=optimizer, checkpoint=workdir / "gligen.ckpt", steps=recipe.steps, checkpoint_every=recipe.checkpoint_every,
                        max_steps=max_steps, schedule=lr, ema=ema, clip_norm=1.0, batches=step_batch, device=device)
    trained_unet = ema.module.cpu().eval()
    with staged_export(output) as staging:
        trained_unet.save_config(staging / "unet")
        save_file({k: v.half().contiguous() for k, v in trained_unet.state_dict().items() if is_gligen_weight(k)}, staging / "unet" / GLIGEN_WEIGHTS)
        StableDiffusionGLIGENPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=trained_unet, scheduler=base.scheduler,
                                      safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_config(staging)
        limits = {k: v for k, v in asdict(recipe.layouts).items() if k in CARD_LAYOUT_LIMITS}
        card = dict(classes=list(WORLD_CLASSES), num_inference_steps=recipe.num_inference_steps, guidance_scale=recipe.guidance_scale,
                    layouts=limits, base=recipe.base)
        (staging / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
        write_training_record(staging, prior, gligen=losses)
    return output
