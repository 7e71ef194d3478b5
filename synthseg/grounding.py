"""The grounding module: denoiser features (UNet or transformer) + class-name text embeddings -> one mask per class.

Architecture (Li et al. 2023, "Guiding Text-to-Image Diffusion Model Towards Grounded Generation"):

- Visual encoder. Each captured block output gets a 1x1 projection to `fuse_dim`; outputs of the
  same stride are summed, then the scales are fused coarse to fine (upsample, add, residual block)
  into a per-pixel map at the finest stride, projected to `mask_dim`: the per-pixel embedding.
  Optionally (VPD's idea, `cross_attention_strides`), the cross-attention maps of the capture step,
  one channel per prompt token, join the block outputs as extra inputs at their strides.
- Text queries: the class-name token states of the prompt (see `synthseg.text`), projected to
  `hidden_dim`. With `attention_pooling` (the default of the shipped recipes), each query also gets
  the fused map averaged under its own class's cross-attention map at the capture step
  (`class_attention_input`), projected to `hidden_dim` and added. The UNet binds every name it was
  prompted with to a place, seen class or not; the text embedding of an unseen class is new to the
  module, but this pooled feature says which object the query is about.
- Decoder: a `num_layers`-layer pre-norm transformer decoder. Queries are the text embeddings; keys
  and values are visual tokens, non-overlapping `token_patch` x `token_patch` patches of the fused
  map. Attention never mixes images of a batch (the reference code's `(b n)` flattening did).
- Mask: an MLP maps each query to a `mask_dim` mask embedding; its dot product with the per-pixel
  embedding is that class's mask logit map. Train with `grounding_loss` (BCE); predict with sigmoid.

Saved as a folder with `config.json` and `model.safetensors` (`save_pretrained`/`from_pretrained`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .capture import CapturedFeatures, attention_strides, default_blocks, feature_layout
from .config import load_config
from .errors import SynthsegError
from .registry import resolve_grounding
from .text import text_dim, text_tokens
from .weights import load_model, save_model

PIPELINE_FIELDS = ("feature_channels", "feature_strides", "text_dim", "feature_blocks")  # GroundingConfig fields the pipeline fixes
ATTENTION_FIELDS = ("cross_attention_strides", "text_tokens")  # ... and those of its cross-attention inputs


@dataclass
class GroundingArchitecture:
    """The module's own sizes, free to choose (a recipe's `model` section gives them).

    attention_pooling: each query also reads the fused map pooled under its class's cross-attention
        map (see the module docstring); forward then needs `class_attention`.
    """

    fuse_dim: int = 128
    mask_dim: int = 240
    hidden_dim: int = 512
    num_layers: int = 3
    num_heads: int = 8
    ffn_dim: int = 2048
    token_patch: int = 4
    attention_pooling: bool = False


@dataclass(kw_only=True)
class GroundingConfig(GroundingArchitecture):
    """Shape of a grounding module: its architecture plus what the pipeline it reads fixes.

    feature_channels / feature_strides: channels and stride (relative to the latent) of each
        captured block output, in capture order (see `capture.feature_layout`).
    text_dim: the width of the text states (768 for SD 1.x's CLIP, 4096 for SD3's and FLUX's).
    feature_blocks: a transformer's captured blocks, in order (empty: a UNet's, all of them).
    cross_attention_strides / text_tokens: with VPD's cross-attention inputs, the strides of the
        denoiser's text-attention maps (`capture.attention_strides`) and the prompt length T;
        empty / 0 without them.
    """

    feature_channels: list[int]
    feature_strides: list[int]
    text_dim: int
    feature_blocks: list[str] = field(default_factory=list)
    cross_attention_strides: list[int] = field(default_factory=list)
    text_tokens: int = 0

    @property
    def needs_attention(self) -> bool:
        """Whether the module reads the capture step's cross-attention (VPD inputs or pooling)."""
        return bool(self.cross_attention_strides) or self.attention_pooling

    def validate(self, source: str = "grounding config") -> None:
        if len(self.feature_channels) != len(self.feature_strides) or not self.feature_channels:
            raise SynthsegError(f"{source}: feature_channels and feature_strides must be non-empty and of equal length")
        optional = {"cross_attention_strides", "text_tokens", "attention_pooling", "feature_blocks"}
        bad = [k for k, v in asdict(self).items() if k not in optional and (min(v) if isinstance(v, list) else v) < 1]
        if self.cross_attention_strides and (self.text_tokens < 1 or min(self.cross_attention_strides) < 1):
            bad.append("cross_attention_strides/text_tokens")
        if bad:
            raise SynthsegError(f"{source}: {bad} must be positive")
        if self.fuse_dim % 8:
            raise SynthsegError(f"{source}: fuse_dim must be a multiple of 8 (GroupNorm with 8 groups)")
        if self.hidden_dim % self.num_heads:
            raise SynthsegError(f"{source}: hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def input_channels(self) -> list[int]:
        """Channels of every input map: block outputs, then cross-attention maps."""
        return list(self.feature_channels) + [self.text_tokens] * len(self.cross_attention_strides)

    @property
    def input_strides(self) -> list[int]:
        return list(self.feature_strides) + list(self.cross_attention_strides)

    @classmethod
    def for_pipeline(cls, pipe, cross_attention: bool = False, blocks: list[str] | None = None, **overrides) -> "GroundingConfig":
        """A config that matches `pipe`'s denoiser features and text states (and, with `cross_attention`,
        its attention maps and prompt length), for any family; `blocks` picks a transformer's captured
        blocks (default `capture.default_blocks`); other fields from `overrides`."""
        is_transformer = getattr(pipe, "unet", None) is None
        names = (blocks or default_blocks(pipe.transformer)) if is_transformer else []
        channels, strides = feature_layout(pipe, names or None)
        data = dict(feature_channels=channels, feature_strides=strides, text_dim=text_dim(pipe), feature_blocks=list(names))
        if cross_attention:
            data.update(cross_attention_strides=attention_strides(pipe), text_tokens=text_tokens(pipe))
        return load_config(cls, {**data, **overrides}, "grounding config")

    def check_pipeline(self, pipe) -> None:
        """Raise a one-line error if `pipe`'s denoiser or text states do not fit this config."""
        channels, strides = feature_layout(pipe, self.feature_blocks or None)
        if (channels, strides) != (list(self.feature_channels), list(self.feature_strides)):
            raise SynthsegError(
                f"grounding module expects feature channels {self.feature_channels} at strides "
                f"{self.feature_strides}, but the pipeline's denoiser gives {channels} at {strides}"
            )
        if self.cross_attention_strides:
            found = (attention_strides(pipe), text_tokens(pipe))
            if found != (list(self.cross_attention_strides), self.text_tokens):
                raise SynthsegError(f"grounding module expects cross-attention at strides {self.cross_attention_strides} over "
                                    f"{self.text_tokens} tokens, but the pipeline has {found[0]} over {found[1]}")
        width = text_dim(pipe)
        if width != self.text_dim:
            raise SynthsegError(f"grounding module expects text_dim {self.text_dim}, but the pipeline's text states have {width}")


class _ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1),
            nn.GroupNorm(8, dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1),
        )

    def forward(self, x):
        return x + self.body(x)


class GroundingModule(nn.Module):
    """See the module docstring. Build with a `GroundingConfig`; load with `from_pretrained`."""

    def __init__(self, config: GroundingConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.scales = sorted(set(config.input_strides), reverse=True)  # coarse to fine
        self.project = nn.ModuleList(nn.Conv2d(c, config.fuse_dim, 1) for c in config.input_channels)
        self.fuse = nn.ModuleList(_ResBlock(config.fuse_dim) for _ in self.scales)
        self.pixel_embed = nn.Conv2d(config.fuse_dim, config.mask_dim, 1)
        self.tokens = nn.Conv2d(config.fuse_dim, config.hidden_dim, config.token_patch, stride=config.token_patch)
        self.text_proj = nn.Linear(config.text_dim, config.hidden_dim)
        if config.attention_pooling:
            self.pool_proj = nn.Linear(config.fuse_dim, config.hidden_dim)
        layer = nn.TransformerDecoderLayer(
            config.hidden_dim, config.num_heads, config.ffn_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, config.num_layers, norm=nn.LayerNorm(config.hidden_dim))
        self.mask_mlp = nn.Sequential(
            nn.Linear(config.hidden_dim, config.hidden_dim), nn.ReLU(), nn.Linear(config.hidden_dim, config.mask_dim)
        )

    def fuse_features(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Input maps [(B, C_i, H_i, W_i)] (`grounding_inputs`) -> fused map (B, fuse_dim, H, W) at the finest stride."""
        if len(features) != len(self.project):
            raise SynthsegError(f"grounding module expects {len(self.project)} feature maps, got {len(features)}")
        fused = None
        for scale, block in zip(self.scales, self.fuse):
            level = sum(
                proj(f.to(proj.weight.dtype))
                for proj, f, s in zip(self.project, features, self.config.input_strides)
                if s == scale
            )
            if fused is not None:
                level = level + F.interpolate(fused, size=level.shape[-2:], mode="bilinear", align_corners=False)
            fused = block(level)
        return fused

    def forward(self, features: list[torch.Tensor], queries: torch.Tensor, query_mask: torch.Tensor,
                class_attention: torch.Tensor | None = None) -> torch.Tensor:
        """Mask logits (B, Q, H, W) at the finest feature resolution.

        features: `grounding_inputs` of a capture (block outputs in capture order, then any
        cross-attention maps). queries: (B, Q, text_dim) class-name
        embeddings. query_mask: (B, Q) bool, True where a query is a real class (not padding).
        class_attention: (B, Q, h, w) non-negative, each query's cross-attention map
        (`class_attention_input`); needed with `attention_pooling`, ignored without.
        """
        fused = self.fuse_features(features)
        pixels = self.pixel_embed(fused)
        memory = self.tokens(fused).flatten(2).transpose(1, 2)
        text = self.text_proj(queries.to(fused.dtype))
        if self.config.attention_pooling:
            text = text + self.pool_proj(self.pool(fused, class_attention))
        hidden = self.decoder(text, memory, tgt_key_padding_mask=~query_mask)
        return torch.einsum("bqc,bchw->bqhw", self.mask_mlp(hidden), pixels)

    def pool(self, fused: torch.Tensor, class_attention: torch.Tensor | None) -> torch.Tensor:
        """(B, C, H, W) fused map, (B, Q, h, w) attention -> (B, Q, C): the map's mean under each query's
        attention, taken as weights that sum to 1 (all-zero padding rows give zeros)."""
        if class_attention is None:
            raise SynthsegError("this grounding module pools under each class's cross-attention map (attention_pooling): "
                                "pass class_attention, e.g. from triplets made by this synthseg version")
        weights = F.interpolate(class_attention.to(fused.dtype), size=fused.shape[-2:], mode="bilinear", align_corners=False)
        weights = weights / weights.flatten(2).sum(-1).clamp(min=1e-8)[..., None, None]
        return torch.einsum("bqhw,bchw->bqc", weights, fused)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `config.json` and `model.safetensors` into `directory`."""
        save_model(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "GroundingModule":
        """Load a folder written by `save_pretrained`, or a bundled module by name ("world"); one-line
        errors for a missing or corrupt file."""
        return load_model(cls, GroundingConfig, resolve_grounding(directory), "grounding module")


def grounding_inputs(features: CapturedFeatures, config: GroundingConfig) -> list[torch.Tensor]:
    """The module's input maps from a capture: block outputs, then (VPD) cross-attention maps."""
    blocks = features.block_list()
    if not config.cross_attention_strides:
        return blocks
    latent = (blocks[0].shape[-2] * config.feature_strides[0], blocks[0].shape[-1] * config.feature_strides[0])
    return blocks + features.attention_maps(config.cross_attention_strides, latent)


def class_attention_input(features: CapturedFeatures, spans: list[list[slice]], width: int | None = None) -> torch.Tensor:
    """(B, Q, H, W) each class's cross-attention map (`CapturedFeatures.class_attention`) at the size of
    the finest captured block, the module's fused resolution."""
    size = max((tuple(b.shape[-2:]) for b in features.block_list()), key=lambda hw: hw[0] * hw[1])
    return features.class_attention(spans, size, width)


def grounding_loss(logits: torch.Tensor, targets: torch.Tensor, query_mask: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-pixel BCE over the (image, class) pairs that count.

    logits: (B, Q, h, w), upsampled to the targets' size if needed. targets: (B, Q, H, W) in [0, 1].
    query_mask: (B, Q) bool, real classes. missing: (B, Q) bool, classes the annotator did not find;
    they give no loss ("training without zero masks"). To train with zero masks instead, pass
    missing=None and all-zero targets for those classes.
    """
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    counts = query_mask if missing is None else query_mask & ~missing
    per_mask = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none").mean(dim=(-2, -1))
    return (per_mask * counts).sum() / counts.sum().clamp(min=1)
