"""What every capture backend shares: which step to capture, and the container of what was captured."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from ..errors import SynthsegError


@dataclass(frozen=True)
class CaptureStep:
    """Which denoising step to capture, chosen by scheduler timestep or by step index.

    By timestep (the default, the paper's t=5): the step whose scheduler timestep is nearest to
    `timestep`, the later step on a tie. For DDIM with 50 steps and SD's "leading" spacing the
    timesteps are 981, 961, ..., 1, so t=5 picks the last step (t=1); with "trailing" spacing they
    end at 19, so it picks t=19. Flow-matching schedulers (SD3, FLUX) count timesteps as 1000 x sigma,
    the noise share of x = (1 - sigma) x0 + sigma noise, so t=5 means sigma = 0.005: the end of the
    trajectory, which every step count and shift reaches last. By index: `index` counts denoising
    steps from 0; negative values count from the end (-1 is the last step). `index` wins if set.
    """

    timestep: float = 5
    index: int | None = None

    def __post_init__(self):
        if not 0 <= self.timestep <= 1000:  # NaN included
            raise SynthsegError(f"the capture timestep must be in 0..1000 (a timestep of the 1000-step training schedule), got {self.timestep}")

    def resolve(self, scheduler, num_inference_steps: int) -> "ResolvedStep":
        """Map the choice onto the timesteps `scheduler` uses for `num_inference_steps` steps.

        The scheduler is copied from its config, so the caller's scheduler state is untouched. Pipelines
        that pass their own sigmas or shift (FLUX) are resolved by `choose` on the live schedule instead.
        """
        schedule = scheduler.__class__.from_config(scheduler.config)
        schedule.set_timesteps(num_inference_steps)
        return self.choose(schedule.timesteps)

    def choose(self, timesteps) -> "ResolvedStep":
        """The chosen step of a schedule (the scheduler's `timesteps`, in denoising order)."""
        timesteps = [_number(t) for t in timesteps]
        if self.index is not None:
            if not -len(timesteps) <= self.index < len(timesteps):
                raise SynthsegError(
                    f"capture step index {self.index} is outside the {len(timesteps)} denoising steps"
                )
            index = self.index % len(timesteps)
        else:
            distances = [abs(t - self.timestep) for t in timesteps]
            best = min(distances)
            index = max(i for i, d in enumerate(distances) if d == best)
        return ResolvedStep(index=index, timestep=timesteps[index])


def _number(t) -> int | float:
    """A timestep as a plain number: an int where it is whole (DDPM-style schedulers), else a float."""
    value = float(t)
    return int(value) if value.is_integer() else value


@dataclass(frozen=True)
class ResolvedStep:
    """A capture step as (step index, scheduler timestep) for one scheduler and step count."""

    index: int
    timestep: int | float


def downsampled(size: tuple[int, int], factor: int) -> tuple[int, int]:
    """A (h, w) map after a UNet's downsamplings by `factor` in all: each stride-2 convolution rounds an odd
    side up, so a side becomes ceil(side / factor)."""
    return (-(-size[0] // factor), -(-size[1] // factor))


@dataclass
class CapturedFeatures:
    """What one capture recorded, conditional half only (the unconditional CFG half is dropped).

    blocks: block outputs (B, C, H, W) in forward order: a UNet's {"down_blocks.0", ..., "mid_block",
        ..., "up_blocks.N"}, a transformer's chosen {"transformer_blocks.i", "single_transformer_blocks.j"}
        on its token grid.
    cross_attention: {layer name: (B, h, w, T) float32}: softmax probabilities of each latent
        position over the T prompt tokens, averaged over heads. Empty if attention was not captured.
    timestep: the scheduler timestep of the captured call.
    inputs: with `record_inputs`, the captured call's arguments, to run it again (`synthseg.capture.replay`):
        {name: (B, ...) tensor} batch first, conditional half; a dict argument's entries as "name.key"
        (SDXL's added_cond_kwargs); other non-None values (flags, numbers) as given.
    """

    blocks: dict[str, torch.Tensor] = field(default_factory=dict)
    cross_attention: dict[str, torch.Tensor] = field(default_factory=dict)
    timestep: int | float | None = None
    inputs: dict[str, object] = field(default_factory=dict)

    def select(self, rows: list[int]) -> CapturedFeatures:
        """The block outputs and cross-attention of batch `rows`, in that order (the kept candidates); the
        recorded inputs are not carried."""
        index = torch.tensor(rows, dtype=torch.long)
        return CapturedFeatures({k: v[index] for k, v in self.blocks.items()}, {k: v[index] for k, v in self.cross_attention.items()},
                                self.timestep)

    def block_list(self) -> list[torch.Tensor]:
        """Block outputs in forward order: the grounding module's input."""
        return list(self.blocks.values())

    def _maps_by_size(self) -> dict[tuple[int, int], torch.Tensor]:
        """{(h, w): (B, T, h, w)}: the cross-attention maps of all layers at each resolution, averaged."""
        by_size: dict[tuple[int, int], list[torch.Tensor]] = {}
        for probs in self.cross_attention.values():
            by_size.setdefault(tuple(probs.shape[1:3]), []).append(probs)
        return {size: torch.stack(maps).mean(0).permute(0, 3, 1, 2).contiguous() for size, maps in by_size.items()}

    def attention_maps(self, strides: list[int], latent_size: tuple[int, int]) -> list[torch.Tensor]:
        """VPD's extra inputs: per stride, the cross-attention maps of all layers at that resolution,
        averaged -> (B, T, H/stride, W/stride), one channel per prompt token."""
        by_size = self._maps_by_size()
        maps = []
        for stride in strides:
            size = downsampled(latent_size, stride)
            if size not in by_size:
                raise SynthsegError(f"no cross-attention maps at {size[0]}x{size[1]} were captured (attention=True needed)")
            maps.append(by_size[size])
        return maps

    def class_attention(self, spans: list[list[slice]], size: tuple[int, int], width: int | None = None) -> torch.Tensor:
        """Each class's cross-attention at the capture step -> (B, Q, H, W) float32 at `size`: per
        resolution, the layers' maps averaged and the class's sub-word maps summed, then upsampled
        (bilinear) and summed over resolutions. Q = `width` (default: the most classes of a row);
        padding rows are zero. This is where the denoiser itself puts each name (the grounding module's
        `attention_pooling`)."""
        if not self.cross_attention:
            raise SynthsegError("no cross-attention maps were captured (attention=True needed)")
        total = 0
        for maps in self._maps_by_size().values():
            per_class = class_maps(maps, spans, width)
            total = total + torch.nn.functional.interpolate(per_class, size=tuple(size), mode="bilinear", align_corners=False)
        return total


def class_maps(token_maps: torch.Tensor, spans: list[list[slice]], width: int | None = None) -> torch.Tensor:
    """(B, T, H, W) per-token maps -> (B, Q, H, W): each class's sub-word token maps summed, in span
    order; Q = `width` (default: the most classes of a row), padding rows zero."""
    width = width or max(len(row) for row in spans)
    out = token_maps.new_zeros(token_maps.shape[0], width, *token_maps.shape[2:])
    for b, row in enumerate(spans):
        for q, span in enumerate(row):
            out[b, q] = token_maps[b, span].sum(0)
    return out


def normalised_class_maps(heat: torch.Tensor, spans) -> list[torch.Tensor]:
    """(B, T, H, W) summed attention -> per image (K_i, H, W): each class's token maps summed over its
    tokens, min-max scaled to [0, 1] (DAAM's per-class heat maps)."""
    return [unit_scaled(per_class[: len(row)]) for per_class, row in zip(class_maps(heat, spans), spans)]


def unit_scaled(maps: torch.Tensor) -> torch.Tensor:
    """(..., H, W) maps, each min-max scaled to [0, 1] over its H x W (a constant map becomes 0): how DAAM
    scales its heat maps."""
    low = maps.flatten(-2).min(-1).values[..., None, None]
    high = maps.flatten(-2).max(-1).values[..., None, None]
    return (maps - low) / (high - low).clamp(min=1e-8)


def is_shared_input(name: str) -> bool:
    """Whether a denoiser argument has no batch dimension: positional ids (FLUX's `img_ids`, `txt_ids`),
    one sequence's for every row. Recorded inputs repeat them per row; a replay passes row 0."""
    return name in ("img_ids", "txt_ids")


def denoiser_arguments(denoiser, args, kwargs) -> dict:
    """A denoiser call's arguments by name, as `synthseg.capture.replay` takes them: dict arguments
    flattened to "name.key" (SDXL's `added_cond_kwargs`), None values and `return_dict` left out."""
    flat = {}
    for name, value in inspect.signature(denoiser.forward).bind(*args, **kwargs).arguments.items():
        for key, item in value.items() if isinstance(value, dict) else [(None, value)]:
            if item is not None and name != "return_dict":
                flat[name if key is None else f"{name}.{key}"] = item
    return flat


class DenoiserHooks:
    """Explicit hook and unhook for a capture context (daam's ObjectHooker): `install` registers forward
    hooks through `hook` (and may swap attention processors); on exit every hook is removed and the
    denoiser's original processor objects are put back, also after an error. Contexts nest: an inner
    one takes the outer one's processors as its originals. `classifier_free_guidance`: the denoiser's
    batch is [unconditional; conditional], and only the conditional half is kept. `record_inputs`: also
    keep the captured call's arguments (`CapturedFeatures.inputs`).

    A compiled denoiser (`module.compile()` or `torch.compile(module)`) is hooked only around the calls
    that a context `wants`, which `_EagerGate` runs eagerly; every other step runs the compiled code.
    """

    def __init__(self, denoiser, classifier_free_guidance: bool, record_inputs: bool = False):
        self.wrapper = denoiser
        self.denoiser = getattr(denoiser, "_orig_mod", denoiser)  # torch.compile's wrapper: the module inside
        self.classifier_free_guidance = classifier_free_guidance
        self.record_inputs = record_inputs
        self.features = CapturedFeatures()
        self._handles: list = []
        self._step_handles: list = []
        self._original: dict = {}
        self._active = False

    @property
    def captured(self) -> bool:
        """Whether the chosen step has been seen."""
        return self.features.timestep is not None

    def install(self) -> None:
        raise NotImplementedError

    def wants(self, args, kwargs) -> bool:
        """Whether the hooks act on this denoiser call (on a compiled denoiser, such calls run eagerly)."""
        return True

    def hook(self, handle) -> None:
        self._handles.append(handle)

    def hook_step(self, modules: dict[str, torch.nn.Module], make_hook) -> None:
        """Forward hooks `make_hook(name)` on `modules` for the captured call only (`end_step` removes them),
        so that every other denoising step runs without them."""
        self._step_handles += [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]

    def end_step(self) -> None:
        for handle in self._step_handles:
            handle.remove()
        self._step_handles.clear()

    def _conditional(self, tensor: torch.Tensor) -> torch.Tensor:
        """The conditional half of a CFG batch (batch dim 0), detached."""
        return (tensor.chunk(2)[1] if self.classifier_free_guidance else tensor).detach()

    def _record_inputs(self, args, kwargs) -> None:
        """Keep the captured call's arguments (see `CapturedFeatures.inputs`): per-row tensors' conditional
        half; a 0-d tensor (a timestep), a (1, ...) one and a shared one (`is_shared_input`) repeated per row."""
        if not self.record_inputs:
            return
        flat = denoiser_arguments(self.denoiser, args, kwargs)
        calls = next(v for v in flat.values() if isinstance(v, torch.Tensor)).shape[0]  # sample / hidden_states
        rows = calls // 2 if self.classifier_free_guidance else calls
        for name, value in flat.items():
            if isinstance(value, torch.Tensor):
                if is_shared_input(name) or value.ndim == 0:
                    value = value.detach()[None].expand(rows, *value.shape)
                elif value.shape[0] == calls:
                    value = self._conditional(value)
                elif value.shape[0] == 1:
                    value = value.detach().expand(rows, *value.shape[1:])
                else:
                    raise SynthsegError(f"cannot tell the batch rows of the denoiser's {name} {tuple(value.shape)} in a batch of {calls}")
            self.features.inputs[name] = value

    def __enter__(self):
        self._original = dict(self.denoiser.attn_processors)
        if _EagerGate.is_compiled(self.wrapper, self.denoiser):
            _EagerGate.join(self)
        else:
            self.install()
        return self

    def remove_hooks(self) -> None:
        self.end_step()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.remove_hooks()
        _EagerGate.leave(self)
        self._active = False
        self.denoiser.set_attn_processor(dict(self._original))


class _EagerGate:
    """Stands in for a compiled denoiser's compiled call while capture contexts are open: a call that one
    of them `wants` runs the eager module with every open context's hooks installed, and its attention
    processors put back after; any other call runs the compiled code, which never sees a hook. (Dynamo
    does not guard on hooks added after compilation: hooks on a compiled module would be skipped, or,
    traced, recompile at every timestep.)"""

    def __init__(self, wrapper, module):
        if wrapper is not module:  # torch.compile(module): the wrapper's forward is the compiled call
            self.owner, self.attribute, self.eager = wrapper, "forward", module.__call__
        else:  # module.compile()
            self.owner, self.attribute, self.eager = module, "_compiled_call_impl", module._call_impl
        self.module, self.compiled, self.contexts = module, getattr(self.owner, self.attribute), []

    @staticmethod
    def is_compiled(wrapper, module) -> bool:
        return wrapper is not module or getattr(module, "_compiled_call_impl", None) is not None

    @classmethod
    def join(cls, context: DenoiserHooks) -> None:
        gate = context.denoiser.__dict__.get("_synthseg_gate")
        if gate is None:
            gate = cls(context.wrapper, context.denoiser)
            object.__setattr__(context.denoiser, "_synthseg_gate", gate)
            object.__setattr__(gate.owner, gate.attribute, gate)
        gate.contexts.append(context)

    @staticmethod
    def leave(context: DenoiserHooks) -> None:
        gate = context.denoiser.__dict__.get("_synthseg_gate")
        if gate is None or context not in gate.contexts:
            return
        gate.contexts.remove(context)
        if not gate.contexts:
            object.__setattr__(gate.owner, gate.attribute, gate.compiled)
            del context.denoiser.__dict__["_synthseg_gate"]

    def __call__(self, *args, **kwargs):
        if not any(context.wants(args, kwargs) for context in self.contexts):
            return self.compiled(*args, **kwargs)
        processors = dict(self.module.attn_processors)
        for context in self.contexts:
            context.install()
        try:
            return self.eager(*args, **kwargs)
        finally:
            for context in self.contexts:
                context.remove_hooks()
            self.module.set_attn_processor(processors)
