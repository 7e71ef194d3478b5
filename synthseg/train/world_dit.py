"""Training `world-dit` (`synthseg.worldmodel.WorldDiTRecipe`): FLUX's transformer by flow matching on
the frozen latents of the UNet world's VAE or of the recipe's own (trained first, as the UNet world's
is), resumably, with EMA weights.

Flow matching (rectified flow, as SD3 and FLUX): x_s = (1 - s) x_0 + s e for a sigma s in (0, 1), and
the transformer predicts the velocity e - x_0, or, with a recipe's `teacher`, the velocity a trained UNet
predicts at x_s (distillation). Captions are encoded by the pipeline's own `encode_prompt`, so training
sees exactly the text states generation will.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from ..config import load_recipe
from ..errors import SynthsegError
from ..pipeline import load_pipeline
from ..registry import MODEL_CARD
from ..world import WORLD_CLASSES
from ..worldmodel import WorldDiTRecipe, WorldFluxPipeline, build_transformer, build_vae, load_text_encoder
from .loop import claim_workdir, load_init_pipeline, staged_export, train_loop, warmup_cosine, write_training_record
from .world_t2i import caption_states, captioned_latents, latent_scale, sample_scenes, train_vae


def load_dit_recipe(spec: str | Path) -> WorldDiTRecipe:
    """A world-dit recipe by packaged name ("world-dit") or path."""
    return load_recipe(WorldDiTRecipe, spec, "world-dit")


def world_flux_pipeline(recipe: WorldDiTRecipe, transformer=None, vae=None) -> WorldFluxPipeline:
    """A `WorldFluxPipeline` of the recipe: `vae` or else `vae_from`'s VAE (frozen, shift 0 as FLUX
    decodes), MiniLM in both text slots, a flow-matching Euler sampler without resolution shift (64 px
    scenes)."""
    vae = vae if vae is not None else load_pipeline(recipe.vae_from, torch_dtype=torch.float32).vae
    vae.requires_grad_(False).eval()
    vae.register_to_config(shift_factor=0.0)
    tokenizer, encoder = load_text_encoder(recipe.max_tokens)
    transformer = transformer if transformer is not None else build_transformer(recipe, encoder.config.hidden_size, vae.config.latent_channels)
    return WorldFluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=vae, text_encoder=encoder, tokenizer=tokenizer,
                             text_encoder_2=encoder, tokenizer_2=tokenizer, transformer=transformer)


def load_init(recipe: WorldDiTRecipe, transformer) -> dict:
    """Load the transformer weights of `recipe.init_from` (loaded by `load_pipeline` like any other
    pipeline) into `transformer`, the recipe's architecture (a mismatch is an error); its training record."""
    source, pipe = load_init_pipeline(recipe.init_from)
    weights = pipe.transformer.state_dict()
    try:
        transformer.load_state_dict(weights)
    except RuntimeError:
        raise SynthsegError(f"init_from {recipe.init_from}: its transformer has another architecture than the recipe's") from None
    record = Path(source) / "training.json"
    return json.loads(record.read_text()) if record.is_file() else {}


def load_teacher(recipe: WorldDiTRecipe, vae) -> DiffusionPipeline:
    """`recipe.teacher`'s pipeline, which must be a v-prediction UNet on the latents of `vae` (the recipe's
    VAE). v, not epsilon: x_0 from an epsilon prediction divides by a, which vanishes at high noise."""
    teacher = load_pipeline(recipe.teacher, torch_dtype=torch.float32)
    same_latents = getattr(teacher, "vae", None) is not None and all(
        teacher.vae.config[key] == vae.config[key] for key in ("latent_channels", "scaling_factor"))
    if getattr(teacher, "unet", None) is None or not same_latents or teacher.scheduler.config.prediction_type != "v_prediction":
        raise SynthsegError(f"teacher {recipe.teacher}: not a v-prediction UNet pipeline on the latents of vae_from ({recipe.vae_from})")
    teacher.unet.eval().requires_grad_(False)
    return teacher


@torch.no_grad()
def teacher_velocity(teacher: DiffusionPipeline, noisy: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor,
                     guidance: float = 1.0, null_text: torch.Tensor | None = None) -> torch.Tensor:
    """The velocity e - x_0 that `teacher`'s DDPM-trained v-prediction UNet predicts at flow
    samples `noisy` (B, C, h, w) of sigmas (B,), for its text states (B, L, D); with `guidance` above 1,
    classifier-free guided against the empty caption's states `null_text` (1, L, D) (a row whose caption
    is the empty one gets its unguided velocity).

    The flow's x_s = (1 - s) x_0 + s e, divided by ((1 - s)^2 + s^2)^0.5, is the UNet's a x_0 + b e at
    the timestep whose b / a is nearest s / (1 - s). The result is the UNet's estimate of the expected
    velocity given x_s, where one draw's e - x_0 is that plus noise which, at high sigma, dwarfs it: the
    same regression function, with a lower-variance target.
    """
    alphas = teacher.scheduler.alphas_cumprod.to(noisy.device)
    log_ratio = 0.5 * torch.log((1 - alphas) / alphas)  # log b/a per timestep
    timesteps = (log_ratio[None] - torch.log(sigma / (1 - sigma))[:, None]).abs().argmin(dim=1)
    a, b = (v[:, None, None, None] for v in (alphas[timesteps].sqrt(), (1 - alphas[timesteps]).sqrt()))
    scale = ((1 - sigma) ** 2 + sigma**2).rsqrt()[:, None, None, None]
    x_t = noisy * scale
    if guidance == 1:
        v = teacher.unet(x_t, timesteps, encoder_hidden_states=text).sample
    else:  # guided in v, which the velocity is linear in: the same as guiding the velocities
        states = torch.cat([null_text.expand_as(text), text])
        v_null, v_text = teacher.unet(torch.cat([x_t, x_t]), timesteps.repeat(2), encoder_hidden_states=states).sample.chunk(2)
        v = v_null + guidance * (v_text - v_null)
    return (b - a) * x_t + (a + b) * v  # e - x_0, with e = b x_t + a v and x_0 = a x_t - b v


@dataclasses.dataclass
class FlowBatch:
    """One flow-matching training batch: the packed noisy latents (B, h/2 * w/2, 4C) at `sigma` (B,),
    their velocity targets (packed alike), the height and width of the unpacked latents (for the image
    ids), and the text states (B, L, D) and pooled vectors (B, D) the transformer reads."""

    packed: torch.Tensor
    sigma: torch.Tensor
    target: torch.Tensor
    size: tuple[int, int]
    text: torch.Tensor
    pooled: torch.Tensor


def flow_matching_batch(latents: torch.Tensor, text: torch.Tensor, pooled: torch.Tensor, generator: torch.Generator,
                        recipe: WorldDiTRecipe, teacher: DiffusionPipeline | None = None,
                        teacher_text: torch.Tensor | None = None, teacher_null: torch.Tensor | None = None) -> FlowBatch:
    """Latents (B, C, h, w) noised at logit-normal sigmas, with the target e - x_0 or `teacher`'s velocity
    (read with `teacher_text`, guided by the recipe's `teacher_guidance` against `teacher_null`)."""
    batch = len(latents)
    noise = torch.randn(latents.shape, generator=generator)
    sigma = torch.sigmoid(recipe.transformer.logit_mean + recipe.transformer.logit_std * torch.randn(batch, generator=generator))
    noisy = (1 - sigma[:, None, None, None]) * latents + sigma[:, None, None, None] * noise
    target = noise - latents if teacher is None else teacher_velocity(teacher, noisy, sigma, teacher_text, recipe.teacher_guidance, teacher_null)
    return FlowBatch(pack_latents(noisy), sigma, pack_latents(target), tuple(latents.shape[2:]), text, pooled)


def flow_matching_loss(pipe: WorldFluxPipeline, batch: FlowBatch) -> torch.Tensor:
    """MSE of the transformer's velocity against the batch's targets."""
    height, width = batch.size
    image_ids = pipe._prepare_latent_image_ids(len(batch.packed), height // 2, width // 2, batch.packed.device, batch.packed.dtype)
    text_ids = torch.zeros(batch.text.shape[1], 3, device=batch.text.device)
    velocity = pipe.transformer(hidden_states=batch.packed, timestep=batch.sigma, pooled_projections=batch.pooled,
                                encoder_hidden_states=batch.text, txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
    return F.mse_loss(velocity, batch.target)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): FLUX's 2x2 patch packing."""
    batch, channels, height, width = latents.shape
    return WorldFluxPipeline._pack_latents(latents, batch, channels, height, width)


def train_world_dit(recipe: WorldDiTRecipe, workdir: Path, output: Path, max_steps: int | None = None,
                    device: torch.device | None = None) -> Path:
    """Train (or resume) the recipe's own VAE, if it has one, then the transformer in `workdir` on `device`
    (default CPU; batches, the teacher's included, are made on the CPU), from `recipe.init_from`'s weights
    if given; export the pipeline's own parts to `output`: transformer/ and
    vae/ (fp16), scheduler/, both tokenizers, model_index.json, the model card and training.json
    (counting `init_from`'s steps first). The text encoder stays in its pip package (see
    `WorldFluxPipeline`)."""
    torch.manual_seed(recipe.seed + 1)
    pipe = world_flux_pipeline(recipe, vae=build_vae(recipe) if recipe.vae is not None else None)  # own VAE: trained below
    prior = load_init(recipe, pipe.transformer) if recipe.init_from else {}
    teacher = load_teacher(recipe, pipe.vae) if recipe.teacher else None
    claim_workdir(workdir, recipe)  # once the recipe's models have loaded: a bad name leaves no workdir behind
    vae_losses = None
    if recipe.vae is not None:
        vae, vae_losses = train_vae(recipe, workdir, max_steps, device)
        vae.register_to_config(scaling_factor=latent_scale(vae, recipe), shift_factor=0.0)
        pipe.register_modules(vae=vae.requires_grad_(False))
    t = recipe.transformer
    transformer = pipe.transformer.to(device).train()
    ema = torch.optim.swa_utils.AveragedModel(transformer, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(t.ema_decay))
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=t.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t.warmup_steps, t.steps))
    cache: dict[str, tuple[torch.Tensor, ...]] = {}
    teacher_null = None if teacher is None else caption_states(teacher.tokenizer, teacher.text_encoder, [""]).detach()

    def encode(captions: list[str]):
        embeds, pooled, _ = pipe.encode_prompt(captions, prompt_2=None, device="cpu", max_sequence_length=recipe.max_tokens)
        if teacher is None:
            return zip(embeds, pooled)
        return zip(embeds, pooled, caption_states(teacher.tokenizer, teacher.text_encoder, captions))

    def step_batch(step: int) -> FlowBatch:  # everything but the transformer: made beside the step before (train_loop)
        images, captions = sample_scenes(recipe, step, t.batch_size)
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        latents, captions = captioned_latents(pipe.vae, images, captions, t.caption_dropout, g, cache, encode)
        text = torch.stack([cache[c][0] for c in captions])
        pooled = torch.stack([cache[c][1] for c in captions])
        teacher_text = torch.stack([cache[c][2] for c in captions]) if teacher is not None else None
        return flow_matching_batch(latents, text, pooled, g, recipe, teacher, teacher_text, teacher_null)

    losses = train_loop("transformer", lambda step, batch: flow_matching_loss(pipe, batch), model=transformer, optimizer=optimizer,
                        checkpoint=Path(workdir) / "transformer.ckpt", steps=t.steps, checkpoint_every=recipe.checkpoint_every,
                        max_steps=max_steps, schedule=schedule, ema=ema, clip_norm=1.0, batches=step_batch, device=device)
    pipe.transformer = ema.module.cpu().eval()
    with staged_export(output) as staging:
        for part in ("vae", "transformer"):  # the text encoders are not written: their pip package holds them
            getattr(pipe, part).half().save_pretrained(staging / part)  # half(), not to(): no warning for FLUX
        for part in ("scheduler", "tokenizer", "tokenizer_2"):
            getattr(pipe, part).save_pretrained(staging / part)
        pipe.register_modules(transformer=pipe.transformer)
        pipe.save_config(staging)
        index = json.loads((staging / "model_index.json").read_text())  # diffusers' own class, as a standard FLUX folder
        (staging / "model_index.json").write_text(json.dumps(dict(index, _class_name="FluxPipeline"), indent=2) + "\n")
        card = dict(classes=list(WORLD_CLASSES), num_inference_steps=recipe.num_inference_steps, guidance_scale=recipe.guidance_scale,
                    candidates=recipe.candidates, count_guidance=recipe.count_guidance)
        (staging / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
        write_training_record(staging, prior, vae=vae_losses, transformer=losses)
    return output
