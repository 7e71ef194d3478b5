"""Training `world-dit` (`synthseg.worldmodel.WorldDiTRecipe`): FLUX's transformer by flow matching on
the frozen latents of the UNet world's VAE, resumably, with EMA weights.

Flow matching (rectified flow, as SD3 and FLUX): x_s = (1 - s) x_0 + s e for a sigma s in (0, 1), and
the transformer predicts the velocity e - x_0. Captions are encoded by the pipeline's own
`encode_prompt`, so training sees exactly the text states generation will.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

from ..config import load_config, read_mapping
from ..errors import SynthsegError
from ..pipeline import load_pipeline
from ..registry import MODEL_CARD, recipe_path, resolve_pipeline
from ..world import WORLD_CLASSES
from ..worldmodel import WorldDiTRecipe, WorldFluxPipeline, build_transformer, load_text_encoder
from .loop import claim_workdir, staged_export, train_loop, warmup_cosine, write_training_record
from .world_t2i import captioned_latents, sample_scenes


def load_dit_recipe(spec: str | Path) -> WorldDiTRecipe:
    """A world-dit recipe by packaged name ("world-dit") or path."""
    path = recipe_path(spec, "world-dit")
    return load_config(WorldDiTRecipe, read_mapping(path), str(path))


def world_flux_pipeline(recipe: WorldDiTRecipe, transformer=None) -> WorldFluxPipeline:
    """A `WorldFluxPipeline` of the recipe: `vae_from`'s VAE (frozen, shift 0 as FLUX decodes), MiniLM in
    both text slots, a flow-matching Euler sampler without resolution shift (64 px scenes)."""
    vae = load_pipeline(recipe.vae_from, torch_dtype=torch.float32).vae.requires_grad_(False).eval()
    vae.register_to_config(shift_factor=0.0)
    tokenizer, encoder = load_text_encoder(recipe.max_tokens)
    transformer = transformer if transformer is not None else build_transformer(recipe, encoder.config.hidden_size, vae.config.latent_channels)
    return WorldFluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=vae, text_encoder=encoder, tokenizer=tokenizer,
                             text_encoder_2=encoder, tokenizer_2=tokenizer, transformer=transformer)


def load_init(recipe: WorldDiTRecipe, transformer) -> dict:
    """Load the transformer weights of `recipe.init_from` (loaded by `load_pipeline` like any other
    pipeline) into `transformer`, the recipe's architecture (a mismatch is an error); its training record."""
    source = resolve_pipeline(recipe.init_from)
    weights = load_pipeline(source, torch_dtype=torch.float32).transformer.state_dict()
    try:
        transformer.load_state_dict(weights)
    except RuntimeError:
        raise SynthsegError(f"init_from {recipe.init_from}: its transformer has another architecture than the recipe's") from None
    record = Path(source) / "training.json"
    return json.loads(record.read_text()) if record.is_file() else {}


def flow_matching_loss(pipe: WorldFluxPipeline, latents: torch.Tensor, text: torch.Tensor, pooled: torch.Tensor,
                       generator: torch.Generator, recipe: WorldDiTRecipe) -> torch.Tensor:
    """MSE of the predicted velocity at logit-normal sigmas; latents (B, C, h, w) are packed 2x2 as FLUX reads them."""
    batch, channels, height, width = latents.shape
    noise = torch.randn(latents.shape, generator=generator)
    sigma = torch.sigmoid(recipe.transformer.logit_mean + recipe.transformer.logit_std * torch.randn(batch, generator=generator))
    noisy = (1 - sigma[:, None, None, None]) * latents + sigma[:, None, None, None] * noise
    packed = pack_latents(noisy)
    image_ids = pipe._prepare_latent_image_ids(batch, height // 2, width // 2, latents.device, latents.dtype)
    text_ids = torch.zeros(text.shape[1], 3)
    velocity = pipe.transformer(hidden_states=packed, timestep=sigma, pooled_projections=pooled, encoder_hidden_states=text,
                                txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
    return F.mse_loss(velocity, pack_latents(noise - latents))


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): FLUX's 2x2 patch packing."""
    batch, channels, height, width = latents.shape
    return WorldFluxPipeline._pack_latents(latents, batch, channels, height, width)


def train_world_dit(recipe: WorldDiTRecipe, workdir: Path, output: Path, max_steps: int | None = None) -> Path:
    """Train (or resume) the transformer in `workdir`, from `recipe.init_from`'s weights if given; export
    the pipeline's own parts to `output`: transformer/ and vae/ (fp16), scheduler/, both tokenizers,
    model_index.json, the model card and training.json (counting `init_from`'s steps first). The text
    encoder stays in its pip package (see `WorldFluxPipeline`)."""
    claim_workdir(workdir, recipe)
    torch.manual_seed(recipe.seed + 1)
    pipe = world_flux_pipeline(recipe)
    prior = load_init(recipe, pipe.transformer) if recipe.init_from else {}
    t = recipe.transformer
    transformer = pipe.transformer.train()
    ema = torch.optim.swa_utils.AveragedModel(transformer, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(t.ema_decay))
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=t.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t.warmup_steps, t.steps))
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def encode(captions: list[str]):
        embeds, pooled, _ = pipe.encode_prompt(captions, prompt_2=None, device="cpu", max_sequence_length=recipe.max_tokens)
        return zip(embeds, pooled)

    def step_loss(step: int) -> torch.Tensor:
        images, captions = sample_scenes(recipe, step, t.batch_size)
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        latents, captions = captioned_latents(pipe.vae, images, captions, t.caption_dropout, g, cache, encode)
        text = torch.stack([cache[c][0] for c in captions])
        pooled = torch.stack([cache[c][1] for c in captions])
        return flow_matching_loss(pipe, latents, text, pooled, g, recipe)

    losses = train_loop("transformer", step_loss, model=transformer, optimizer=optimizer, checkpoint=Path(workdir) / "transformer.ckpt",
                        steps=t.steps, checkpoint_every=recipe.checkpoint_every, max_steps=max_steps, schedule=schedule, ema=ema,
                        clip_norm=1.0)
    pipe.transformer = ema.module.eval()
    with staged_export(output) as staging:
        for part in ("vae", "transformer"):  # the text encoders are not written: their pip package holds them
            getattr(pipe, part).half().save_pretrained(staging / part)  # half(), not to(): no warning for FLUX
        for part in ("scheduler", "tokenizer", "tokenizer_2"):
            getattr(pipe, part).save_pretrained(staging / part)
        pipe.register_modules(transformer=pipe.transformer)
        pipe.save_config(staging)
        index = json.loads((staging / "model_index.json").read_text())  # diffusers' own class, as a standard FLUX folder
        (staging / "model_index.json").write_text(json.dumps(dict(index, _class_name="FluxPipeline"), indent=2) + "\n")
        card = dict(classes=list(WORLD_CLASSES), num_inference_steps=recipe.num_inference_steps, guidance_scale=recipe.guidance_scale)
        (staging / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
        write_training_record(staging, prior, transformer=losses)
    return output
