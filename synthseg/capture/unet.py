"""The UNet backend (SD 1.x/2.x, SDXL): a UNet's multi-scale block outputs and cross-attention maps at
one denoising step.

The grounding module reads features from late in denoising (the paper's t≈5). `FeatureCapture` is a
context manager around any pipeline call that runs a `UNet2DConditionModel`:

    step = CaptureStep(timestep=5).resolve(pipe.scheduler, num_inference_steps=50)
    with FeatureCapture(pipe.unet, step.timestep, classifier_free_guidance=True) as capture:
        pipe(prompt, num_inference_steps=50, guidance_scale=7.5)
    capture.features.blocks["up_blocks.2"]        # (B, C, H, W), conditional half only

How it works: a forward pre-hook on the UNet reads each call's timestep. Only on the call whose timestep
is the chosen one does it swap the cross-attention processors for recording ones (diffusers'
attention-processor seam) and turn on the block hooks; the post-hook swaps the original (SDPA)
processors back at once, so every other step runs the fast path. On exit every hook is removed and
the original processor objects are restored, also after an exception.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention

from ..errors import SynthsegError
from .core import DenoiserHooks, downsampled, normalised_class_maps


def unet_feature_blocks(unet) -> dict[str, torch.nn.Module]:
    """The UNet blocks whose outputs are captured, in forward order (down, mid, up)."""
    blocks = {f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks)}
    if getattr(unet, "mid_block", None) is not None:
        blocks["mid_block"] = unet.mid_block
    blocks.update({f"up_blocks.{i}": b for i, b in enumerate(unet.up_blocks)})
    return blocks


def unet_feature_layout(unet) -> tuple[list[int], list[int]]:
    """(channels, stride relative to the latent) of each captured block output, in capture order.

    Read off the modules, so it holds for any `UNet2DConditionModel` config without running it.
    """
    channels, strides, stride = [], [], 1
    for name, block in unet_feature_blocks(unet).items():
        if name.startswith("down") and getattr(block, "downsamplers", None):
            stride *= 2
        if name.startswith("up") and getattr(block, "upsamplers", None):
            stride //= 2
        channels.append(block.resnets[-1].out_channels)
        strides.append(stride)
    return channels, strides


def unet_attention_strides(unet) -> list[int]:
    """Strides (relative to the latent) at which the UNet runs cross-attention, finest first."""
    strides, stride = set(), 1
    for name, block in unet_feature_blocks(unet).items():
        if getattr(block, "has_cross_attention", False):
            strides.add(stride)  # attention runs before the block's down/upsampler
        if name.startswith("down") and getattr(block, "downsamplers", None):
            stride *= 2
        if name.startswith("up") and getattr(block, "upsamplers", None):
            stride //= 2
    return sorted(strides)


class _RecordingAttnProcessor:
    """Eager cross-attention that also records head-averaged probabilities (diffusers' AttnProcessor math).

    Each of `captures` receives `_record_attention(name, probs, heads)` with probs (batch * heads, h * w, T).
    A capture nested in another that records (FeatureCapture inside CrossAttentionMaps) installs one
    recorder for both, so the outer one still sees every step.
    """

    def __init__(self, captures: list, name: str):
        self.captures = captures
        self.name = name

    @classmethod
    def over(cls, current, capture, name: str) -> "_RecordingAttnProcessor":
        """A recorder for `capture` that also feeds the captures of `current`, if it is a recorder."""
        outer = current.captures if isinstance(current, cls) else []
        return cls([*outer, capture], name)

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)

        probs = attn.get_attention_scores(query, key, attention_mask)
        for capture in self.captures:
            capture._record_attention(self.name, probs, attn.heads)

        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class FeatureCapture(DenoiserHooks):
    """Context manager recording one denoising step's UNet features; see the module docstring.

    Args:
        unet: a diffusers `UNet2DConditionModel`.
        timestep: the scheduler timestep to capture (see `CaptureStep.resolve`). The first UNet call
            with this timestep is captured; later calls are left alone.
        classifier_free_guidance: whether the pipeline batches [unconditional, conditional] through
            the UNet (diffusers' SD pipelines do when guidance_scale > 1). Then the conditional half
            is kept, by chunking the batch in two.
        attention: also record cross-attention probabilities (costs one eager attention step).
        dtype: store tensors in this dtype (e.g. torch.float16 to halve memory); default unchanged.
        record_inputs: also keep the call's arguments, to replay it (`CapturedFeatures.inputs`).
    """

    def __init__(self, unet, timestep: int, *, classifier_free_guidance: bool, attention: bool = True, dtype: torch.dtype | None = None,
                 record_inputs: bool = False):
        super().__init__(unet, classifier_free_guidance, record_inputs)
        self.unet = self.denoiser
        self.timestep = int(timestep)
        self.attention = attention
        self.dtype = dtype
        self.resolved = None  # the ResolvedStep, where `synthseg.capture.feature_capture` made this capture
        self._latent_hw: tuple[int, int] | None = None
        self._cross_attention = {
            name: module
            for name, module in self.unet.named_modules()
            if isinstance(module, Attention) and module.is_cross_attention
        }

    def install(self) -> None:
        self.hook(self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True))
        self.hook(self.unet.register_forward_hook(self._after_unet))

    def wants(self, args, kwargs) -> bool:
        """The first call at the chosen timestep."""
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        return not self.captured and timestep is not None and int(torch.as_tensor(timestep).flatten()[0]) == self.timestep

    def _before_unet(self, module, args, kwargs):
        if not self.wants(args, kwargs):
            return
        sample = kwargs.get("sample", args[0] if args else None)
        self._latent_hw = tuple(sample.shape[-2:])
        self._active = True
        self._record_inputs(args, kwargs)
        self.hook_step(unet_feature_blocks(self.unet), self._block_hook)
        if self.attention:
            for name, attn in self._cross_attention.items():
                attn.set_processor(_RecordingAttnProcessor.over(attn.processor, self, name))

    def _after_unet(self, module, args, output):
        if not self._active:
            return
        self._active = False
        self.end_step()
        self.features.timestep = self.timestep
        if self.attention:
            for name, attn in self._cross_attention.items():
                attn.set_processor(self._original[name + ".processor"])

    def _block_hook(self, name: str):
        def hook(module, args, output):
            hidden = self._conditional(output[0] if isinstance(output, tuple) else output)
            self.features.blocks[name] = hidden.to(self.dtype) if self.dtype is not None else hidden

        return hook

    def _record_attention(self, name: str, probs: torch.Tensor, heads: int) -> None:
        """probs: (batch * heads, h * w, T) softmax over tokens -> stored as (B, h, w, T)."""
        batch_heads, positions, tokens = probs.shape
        probs = probs.reshape(batch_heads // heads, heads, positions, tokens)
        mean = self._conditional(probs).float().mean(dim=1)
        self.features.cross_attention[name] = mean.reshape(-1, *attention_grid(self._latent_hw, positions), tokens)


def attention_grid(latent_hw: tuple[int, int], positions: int) -> tuple[int, int]:
    """The (h, w) grid of an attention layer's `positions` queries in a UNet reading a latent of `latent_hw`
    (`downsampled` by the power of two that gives that many positions)."""
    for factor in (2**k for k in range(8)):
        grid = downsampled(latent_hw, factor)
        if grid[0] * grid[1] == positions:
            return grid
    raise SynthsegError(f"{positions} attention positions match no downsampling of a {latent_hw[0]}x{latent_hw[1]} latent")


class CrossAttentionMaps(DenoiserHooks):
    """Context manager: DAAM-style token heat maps, summed over every step, cross-attention layer and head.

    Unlike `FeatureCapture` it records at every denoising step (it is the training-free baseline, and
    replaces the SDPA processors for the whole run), but it keeps only a running sum at latent
    resolution, not per-step tensors, and it is correct for any batch size with or without CFG.

    heat_maps(): (B, T, H, W) float32, each layer's maps upsampled (bicubic, as DAAM) to the latent
    size before summing. `normalised_maps(token_spans)` turns them into per-class maps in [0, 1].
    """

    def __init__(self, unet, *, classifier_free_guidance: bool):
        super().__init__(unet, classifier_free_guidance)
        self.unet = self.denoiser
        self._sum: torch.Tensor | None = None
        self._latent_hw: tuple[int, int] | None = None

    def install(self) -> None:
        self.hook(self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True))
        for name, module in self.unet.named_modules():
            if isinstance(module, Attention) and module.is_cross_attention:
                module.set_processor(_RecordingAttnProcessor.over(module.processor, self, name))

    def _before_unet(self, module, args, kwargs):
        sample = kwargs.get("sample", args[0] if args else None)
        self._latent_hw = tuple(sample.shape[-2:])

    def _record_attention(self, name: str, probs: torch.Tensor, heads: int) -> None:
        batch_heads, positions, tokens = probs.shape
        probs = self._conditional(probs.reshape(batch_heads // heads, heads, positions, tokens))
        maps = probs.float().sum(dim=1).reshape(-1, *attention_grid(self._latent_hw, positions), tokens).permute(0, 3, 1, 2)
        maps = torch.nn.functional.interpolate(maps, size=self._latent_hw, mode="bicubic", align_corners=False).clamp_(min=0)
        self._sum = maps if self._sum is None else self._sum + maps

    def heat_maps(self) -> torch.Tensor:
        if self._sum is None:
            raise SynthsegError("no cross-attention was recorded: run the pipeline inside the context")
        return self._sum

    def normalised_maps(self, spans) -> list[torch.Tensor]:
        """Per image (K_i, H, W): each class's token maps summed over its sub-words, scaled to [0, 1]."""
        return normalised_class_maps(self.heat_maps(), spans)
