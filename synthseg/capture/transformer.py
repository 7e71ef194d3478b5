"""Capture from MMDiT transformers (SD3/SD3.5, FLUX) at one denoising step.

Both families attend jointly over text and image tokens: SD3 orders them [image; text] with no
positional rotation; FLUX orders them [text; image] with RoPE, and its single-stream blocks run one
sequence that is split at the text length. What is recorded at the capture step:

- Block outputs: the image tokens of chosen blocks (`blocks`; every block by default), unpacked to the
  token grid as (B, C, H/p, W/p) maps, p the patch size relative to the latent (SD3's patch size,
  FLUX's 2x2 packing).
- Image->text attention of the same blocks: per image token, a softmax over the prompt's text tokens
  of the image query against the text keys (after RoPE for FLUX), averaged over heads, as
  (B, H/p, W/p, T); the DAAM baseline sums every block's over every step. It is
  computed from image queries and text keys only, never the joint matrix. The joint softmax would also
  spread each token's mass over the image keys; dropping that per-token factor gives each pixel's
  distribution over the prompt, as DAAM's cross-attention maps are, so one set of consumers serves
  every family.

The recording processors wrap the processors in place (the originals, or a nested capture's recorders,
so that the DAAM sum and the feature capture both see the capture step) and call them for the block's
real output, so the attention backend (SDPA or diffusers' dispatch) computes every output. Recorders
and block hooks exist for the captured call only (the DAAM sum's recorders for the whole run), and
the originals come back on exit, also after an error. The step to capture is resolved on the
pipeline's live schedule at the first denoiser call, so custom sigmas and resolution shifts (FLUX)
are matched exactly.
"""

from __future__ import annotations

import torch

from ..errors import SynthsegError
from .core import CaptureStep, DenoiserHooks, normalised_class_maps


def transformer_kind(transformer) -> str:
    """"flux" or "sd3" for a diffusers transformer (or its `torch.compile` wrapper); anything else is refused."""
    name = type(getattr(transformer, "_orig_mod", transformer)).__name__
    if name.startswith("Flux"):
        return "flux"
    if name.startswith("SD3"):
        return "sd3"
    raise SynthsegError(f"no capture backend for a {name}: synthseg captures UNet2DConditionModel, SD3Transformer2DModel and FluxTransformer2DModel")


def transformer_feature_blocks(transformer) -> dict[str, torch.nn.Module]:
    """Every block whose image tokens can be captured, in forward order."""
    blocks = {f"transformer_blocks.{i}": b for i, b in enumerate(transformer.transformer_blocks)}
    blocks.update({f"single_transformer_blocks.{i}": b for i, b in enumerate(getattr(transformer, "single_transformer_blocks", []))})
    return blocks


def token_stride(transformer) -> int:
    """Side of the latent patch one image token covers: FLUX packs 2x2, SD3 patchifies by patch_size."""
    return 2 if transformer_kind(transformer) == "flux" else int(transformer.config.patch_size)


def default_blocks(transformer, count: int = 8) -> list[str]:
    """Up to `count` blocks evenly spaced over the forward order, the last included. FLUX.1 has 57 blocks;
    all of them at 1024^2 would be about 1.4 GB of fp16 features per image, eight about 0.2 GB."""
    names = list(transformer_feature_blocks(transformer))
    if len(names) <= count:
        return names
    return [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)]


def token_grid(kind: str, kwargs: dict, transformer) -> tuple[int, int]:
    """The image tokens' grid (rows, columns) of a denoiser call with keyword arguments `kwargs`: FLUX's from its
    img_ids (a token is a 2x2 latent patch), SD3's from the latents and the patch size."""
    if kind == "flux":
        ids = kwargs["img_ids"]
        return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    height, width = kwargs["hidden_states"].shape[-2:]
    return height // transformer.config.patch_size, width // transformer.config.patch_size


def transformer_feature_layout(transformer, blocks: list[str] | None = None) -> tuple[list[int], list[int]]:
    """(channels, stride relative to the latent) of each captured block output, in capture order."""
    names = blocks or default_blocks(transformer)
    known = transformer_feature_blocks(transformer)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SynthsegError(f"no transformer block {unknown[0]!r}; blocks are transformer_blocks.0-{len(transformer.transformer_blocks) - 1}"
                            + (f" and single_transformer_blocks.0-{len(known) - len(transformer.transformer_blocks) - 1}"
                               if len(known) > len(transformer.transformer_blocks) else ""))
    channels = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    return [channels] * len(names), [token_stride(transformer)] * len(names)


def _text_attention(kind: str, attn, hidden_states, encoder_hidden_states, image_rotary_emb, text_len: int) -> torch.Tensor:
    """(B, N, T) head-averaged softmax of image queries over text keys, as the block's processor forms them."""
    if kind == "sd3":
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states).view(batch, -1, attn.heads, attn.to_q.out_features // attn.heads).transpose(1, 2)
        key = attn.add_k_proj(encoder_hidden_states).view(batch, -1, attn.heads, query.shape[-1]).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_added_k is not None:
            key = attn.norm_added_k(key)
        scores = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5
        return scores.float().softmax(-1).mean(1)
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import _get_qkv_projections

    query, key, _, _, encoder_key, _ = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
    query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
    key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
    if encoder_hidden_states is not None:  # double-stream: text keys from the added projections
        text_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
        image_query = query
    else:  # single-stream: one [text; image] sequence
        text_key, image_query = key[:, :text_len], query[:, text_len:]
    if image_rotary_emb is not None:
        cos, sin = image_rotary_emb
        image_query = apply_rotary_emb(image_query, (cos[text_len:], sin[text_len:]), sequence_dim=1)
        text_key = apply_rotary_emb(text_key, (cos[:text_len], sin[:text_len]), sequence_dim=1)
    scores = torch.einsum("bnhd,bthd->bhnt", image_query, text_key) * attn.head_dim ** -0.5
    return scores.float().softmax(-1).mean(1)


class _TextAttentionRecorder:
    """Records image->text attention for `capture`, then runs `original` for the block's output."""

    def __init__(self, original, capture: "TransformerCapture", name: str):
        self.original, self.capture, self.name = original, capture, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None, **kwargs):
        probs = _text_attention(self.capture.kind, attn, hidden_states, encoder_hidden_states, image_rotary_emb, self.capture.text_len)
        self.capture._record_attention(self.name, probs)
        if image_rotary_emb is not None:
            kwargs["image_rotary_emb"] = image_rotary_emb
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask=attention_mask, **kwargs)


class TransformerCapture(DenoiserHooks):
    """Context manager recording one denoising step of an SD3 or FLUX transformer (module docstring).

    Args:
        transformer: an `SD3Transformer2DModel` or `FluxTransformer2DModel`.
        step: the step to capture, resolved on `scheduler.timesteps` at the first transformer call.
        scheduler: the pipeline's scheduler (its live schedule is read, never changed); None: capture
            the first call, whatever its timestep (a replay).
        classifier_free_guidance: whether the pipeline batches [unconditional, conditional] (SD3 does
            when guidance_scale > 1). FLUX's true CFG runs separate passes, the conditional one first:
            the first call at the chosen step is the one captured.
        attention: also record image->text attention. blocks: block names (`default_blocks` if None).
        every_step: record attention at every step, summed (the DAAM baseline), and no blocks.
        record_inputs: also keep the captured call's arguments, to replay it (`CapturedFeatures.inputs`).
    """

    def __init__(self, transformer, step: CaptureStep, scheduler, *, classifier_free_guidance: bool, attention: bool = True,
                 dtype: torch.dtype | None = None, blocks: list[str] | None = None, every_step: bool = False, record_inputs: bool = False):
        super().__init__(transformer, classifier_free_guidance, record_inputs)
        self.transformer, self.kind = self.denoiser, transformer_kind(self.denoiser)
        self.step, self.scheduler, self.resolved = step, scheduler, None
        self.attention, self.dtype, self.every_step = attention, dtype, every_step
        self.block_names = [] if every_step else (blocks or default_blocks(transformer))
        transformer_feature_layout(transformer, self.block_names or None)  # refuses unknown names
        blocks = transformer_feature_blocks(self.transformer)
        self._blocks = {name: blocks[name] for name in self.block_names}
        # the attention layers to record: each captured block's `attn` (every block's for the DAAM sum), the
        # ones that see text (SD3.5's image-only `attn2` does not)
        self._layers = {f"{name}.attn": block.attn for name, block in blocks.items() if every_step or name in self.block_names}
        self._replaced: dict = {}
        self.text_len, self.grid = 0, (0, 0)
        self._done = False
        self._sum: torch.Tensor | None = None
        self._last_timestep: float | None = None

    def install(self) -> None:
        self.hook(self.transformer.register_forward_pre_hook(self._before, with_kwargs=True))
        self.hook(self.transformer.register_forward_hook(self._after))
        if self.every_step and self.attention:
            self._wrap_layers()

    def _wrap_layers(self) -> None:
        """Put a recorder in front of each recorded layer's current processor (which may be another
        capture's recorder: nested captures each record)."""
        self._replaced = {name: layer.processor for name, layer in self._layers.items()}
        for name, layer in self._layers.items():
            layer.set_processor(_TextAttentionRecorder(layer.processor, self, name))

    def _timestep(self, kwargs) -> float:
        """The call's timestep on the scheduler's scale (FLUX's transformer takes sigma, timestep / 1000)."""
        return float(torch.as_tensor(kwargs["timestep"]).flatten()[0]) * (1000 if self.kind == "flux" else 1)

    def wants(self, args, kwargs) -> bool:
        """Every call when summing every step; else the first call at the chosen step."""
        if self.every_step:
            return True
        if self._done:
            return False
        timestep = self._timestep(kwargs)
        if self.resolved is None:
            self.resolved = self.step.choose(self.scheduler.timesteps if self.scheduler is not None else [timestep])
        return abs(timestep - self.resolved.timestep) <= 1e-3 * max(1.0, abs(self.resolved.timestep))

    def _before(self, module, args, kwargs):
        if not self.wants(args, kwargs):
            return
        timestep = self._timestep(kwargs)
        if self.every_step and timestep == self._last_timestep:
            return  # FLUX's true CFG: the second pass of a step is the unconditional one
        self._last_timestep = timestep
        self.text_len = kwargs["encoder_hidden_states"].shape[1]
        self.grid = token_grid(self.kind, kwargs, self.transformer)
        self._active = True
        self._record_inputs(args, kwargs)
        if not self.every_step:
            self.hook_step(self._blocks, self._block_hook)
            if self.attention:
                self._wrap_layers()

    def _after(self, module, args, output):
        if not self._active:
            return
        self._active = False
        if not self.every_step:
            self._done = True
            self.features.timestep = self.resolved.timestep
            self.end_step()
            for name, processor in self._replaced.items():
                self._layers[name].set_processor(processor)

    def _grid_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) image tokens -> (B, C, H/p, W/p)."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)

    def _block_hook(self, name: str):
        def hook(module, args, output):
            image = self._grid_map(self._conditional(output[1]))
            self.features.blocks[name] = image.to(self.dtype) if self.dtype is not None else image

        return hook

    def _record_attention(self, name: str, probs: torch.Tensor) -> None:
        """probs: (B, N, T) -> stored as (B, H/p, W/p, T), or summed over steps as (B, T, H/p, W/p). Only
        the calls `_before` activated count: true CFG's unconditional pass leaves the recorders installed."""
        if not self._active:
            return
        maps = self._conditional(probs).reshape(-1, *self.grid, probs.shape[-1])
        if self.every_step:
            maps = maps.permute(0, 3, 1, 2)
            self._sum = maps if self._sum is None else self._sum + maps
        else:
            self.features.cross_attention[name] = maps

    def normalised_maps(self, spans) -> list[torch.Tensor]:
        """With `every_step`: per image (K_i, H/p, W/p) DAAM maps of each class, in [0, 1]."""
        return normalised_class_maps(self.heat_maps(), spans)

    def heat_maps(self) -> torch.Tensor:
        """With `every_step`: (B, T, H/p, W/p) attention summed over steps and layers (DAAM's maps)."""
        if self._sum is None:
            raise SynthsegError("no attention was recorded: run the pipeline inside the context")
        return self._sum
