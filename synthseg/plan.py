"""Dry runs: what a make-dataset or make-triplets job would write, and how long it would take, in
seconds and without loading a model.

Sizes come from the model's config files alone (a local folder, a bundled name, or a hub id already
in the Hugging Face cache), for every family (a UNet, SD3's or FLUX's transformer); the denoiser is
built on PyTorch's "meta" device, which allocates nothing. Times come from the rate that the last real
run of the same job, model, device, guidance and count guidance measured (`record_rate`), kept in the user's cache.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch

from .formats import write_atomic
from .registry import model_card, resolve_pipeline

MAX_CLASSES = 2  # a triplet's prompt names one or two classes


def model_config(model: str, subfolder: str, name: str = "config.json") -> dict | None:
    """A pipeline part's config file, from a folder or the Hugging Face cache; None where neither has it."""
    local = Path(resolve_pipeline(model)) / subfolder / name
    if local.is_file():
        return json.loads(local.read_text())
    base = model_card(model).base
    if base:  # an export of added layers (world-layout) takes its other parts from its base
        return model_config(base, subfolder, name)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, f"{subfolder}/{name}") if model.count("/") == 1 else None
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def _denoiser_config(model: str) -> tuple[str, dict] | tuple[None, None]:
    """("unet" or "transformer", its config) of a pipeline's denoiser; (None, None) where not on this machine."""
    for part in ("unet", "transformer"):
        config = model_config(model, part)
        if config is not None:
            return part, config
    return None, None


def image_size(model: str) -> int | None:
    """Generated image side in pixels, as the pipeline's default: the denoiser's sample size (a UNet's or
    SD3's) times the VAE's downsampling; FLUX's pipeline makes 1024 px, the world's export the VAE's size."""
    from .worldmodel import world_pipeline_class

    denoiser, vae = _denoiser_config(model)[1], model_config(model, "vae")
    if denoiser is None or vae is None:
        return None
    if "sample_size" in denoiser:
        return int(denoiser["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    return int(vae["sample_size"]) if world_pipeline_class(resolve_pipeline(model)) else 1024


def dataset_item_bytes(model: str) -> int | None:
    """At most what one dataset image costs: an RGB image and a label map uncompressed, and its records."""
    size = image_size(model)
    return None if size is None else size * size * 4 + 4096


def _text_tokens(model: str, kind: str) -> int:
    """T, the prompt length the denoiser reads (see `text.text_tokens`), from the tokenizers' configs."""
    def limit(folder: str, default: int) -> int:
        return int((model_config(model, folder, "tokenizer_config.json") or {}).get("model_max_length", default))

    if kind == "FluxTransformer2DModel":
        return min(512, limit("tokenizer_2", 512))
    if kind == "SD3Transformer2DModel":
        return limit("tokenizer", 77) + min(256, limit("tokenizer_3", 256))
    return limit("tokenizer", 77)


def feature_bytes(pipe, latent: int, tokens: int, dtype_bytes: int, cross_attention: bool, blocks: list[str] | None = None) -> int:
    """What one triplet's cached features cost at a `latent` x `latent` grid: every captured block output
    (a transformer's `blocks`, default `capture.default_blocks`), each class's attention map at the
    finest block's size and, with `cross_attention`, the per-token attention maps at each attention
    resolution. `pipe` may be a stand-in holding only the denoiser."""
    from .capture import attention_strides, feature_layout

    channels, strides = feature_layout(pipe, blocks)
    total = sum(c * (latent // s) ** 2 for c, s in zip(channels, strides)) + MAX_CLASSES * (latent // min(strides)) ** 2
    if cross_attention:
        total += sum(tokens * (latent // s) ** 2 for s in attention_strides(pipe))
    return total * dtype_bytes


def replay_bytes(denoiser, latent: int, tokens: int, dtype_bytes: int, replay_text: str) -> int:
    """What one replay triplet's denoiser inputs cost: the latent input (FLUX's packed 2x2), FLUX's
    positional ids, and with `replay_text` "embeddings" the text states and pooled vector."""
    config, flux = denoiser.config, type(denoiser).__name__.startswith("Flux")
    side = latent // 2 if flux else latent
    total = config.in_channels * side**2 + ((side**2 + tokens) * 3 if flux else 0)
    if replay_text == "embeddings":
        width = config.get("cross_attention_dim") or config.get("joint_attention_dim")
        pooled = config.get("pooled_projection_dim") or 0
        if config.get("addition_embed_type") == "text_time":  # SDXL: the pooled CLIP-G vector beside six size conditions
            pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        total += tokens * width + pooled
    return total * dtype_bytes


def triplet_bytes(model: str, dtype_bytes: int, cross_attention: bool, blocks: list[str] | None = None, storage: str = "features",
                  replay_text: str = "embeddings") -> tuple[int | None, str | None]:
    """(bytes, storage) of one triplet of `model` at its default size: features or replay inputs (`storage`
    "auto" chooses as `triplets.storage_kind` does), the class queries and bit-packed masks; (None, None)
    where the model's configs are not on this machine. The denoiser is built on the meta device."""
    import diffusers

    from .triplets import REPLAY_ABOVE

    (part, config), size = _denoiser_config(model), image_size(model)
    if config is None or size is None:
        return None, None
    with torch.device("meta"):
        denoiser = getattr(diffusers, config["_class_name"]).from_config(config)
    stand_in = SimpleNamespace(**{part: denoiser})  # all that feature_layout and attention_strides read of a pipeline
    latent = size // 2 ** (len(model_config(model, "vae")["block_out_channels"]) - 1)
    tokens = _text_tokens(model, config["_class_name"])
    cached = feature_bytes(stand_in, latent, tokens, dtype_bytes, cross_attention, blocks)
    if storage == "auto":
        storage = "replay" if cached > REPLAY_ABOVE else "features"
    stored = replay_bytes(denoiser, latent, tokens, dtype_bytes, replay_text) if storage == "replay" else cached
    width = config.get("cross_attention_dim") or config.get("joint_attention_dim")
    return stored + MAX_CLASSES * (width * dtype_bytes + size * ((size + 7) // 8)), storage


def rates_path() -> Path:
    """Where measured rates are kept: $SYNTHSEG_CACHE, else $XDG_CACHE_HOME/synthseg or ~/.cache/synthseg."""
    root = os.environ.get("SYNTHSEG_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "synthseg"
    return Path(root) / "throughput.json"


def device_name(device: str | torch.device) -> str:
    """What a rate was measured on: the GPU's name, or the CPU and its thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu, {torch.get_num_threads()} threads" if device.type == "cpu" else device.type


def _rate_key(kind: str, model: str, device, guidance_scale: float, count_guidance: float) -> str:
    folder = Path(resolve_pipeline(model))
    key = [kind, str(folder.resolve()) if folder.is_dir() else str(model), device_name(device), f"guidance {guidance_scale:g}"]
    return " | ".join(key + ([f"count guidance {count_guidance:g}"] if count_guidance else []))  # it costs a decoding and a judge a step


def record_rate(kind: str, pipe, guidance_scale: float, steps: int, seconds: float, items: int, count_guidance: float = 0.0) -> None:
    """Keep a run's measured seconds per item for later dry runs of the same job ("images" or "triplets"),
    model (the folder or hub id `pipe` was loaded from), device, guidance and count guidance. Best effort: a
    pipeline built in memory, or a cache that cannot be written, records nothing."""
    model, device = getattr(pipe, "name_or_path", None), getattr(pipe, "device", "cpu")
    if items < 1 or not model:
        return
    path = rates_path()
    try:
        rates = json.loads(path.read_text()) if path.is_file() else {}
        rates[_rate_key(kind, model, device, guidance_scale, count_guidance)] = dict(seconds_per_item=seconds / items, steps=steps,
                                                                                     items=items, date=time.strftime("%Y-%m-%d"))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(rates, indent=1, sort_keys=True) + "\n")
    except (OSError, ValueError):
        pass


def time_line(kind: str, model: str, device, guidance_scale: float, steps: int, count: int, count_guidance: float = 0.0) -> str:
    """The dry run's time: the recorded rate scaled to `steps` denoising steps, or how to get one."""
    try:
        rate = json.loads(rates_path().read_text()).get(_rate_key(kind, model, device, guidance_scale, count_guidance))
    except (OSError, ValueError):
        rate = None
    if rate is None:
        return f"time: unknown (no {kind} rate recorded for this model on {device_name(device)}; any run records one)"
    seconds = rate["seconds_per_item"] * steps / rate["steps"]
    scaled = f", scaled from {rate['steps']} steps" if rate["steps"] != steps else ""
    return (f"time: about {_duration(seconds * count)} ({seconds:.3g} s per item on {device_name(device)}, "
            f"measured {rate['date']} over {rate['items']} items{scaled})")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _human(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def plan_text(kind: str, items, bytes_per_item: int | None, note: str = "", time: str | None = None) -> str:
    """The dry-run report: total, counts per class (one-class prompts) and per pair, or for layouts the
    boxes per class and objects per image; disk and `time`."""
    if items and hasattr(items[0], "boxes"):
        boxes = Counter(phrase for layout in items for phrase in layout.phrases)
        sizes = Counter(len(layout.phrases) for layout in items)
        repeats = sum(len(layout.classes) < len(layout.phrases) for layout in items)
        lines = [f"{len(items)} {kind} from layouts: {sum(boxes.values())} boxes; objects per image "
                 + ", ".join(f"{n}: {sizes[n]}" for n in sorted(sizes)) + f"; {repeats} repeat a class"]
        lines.append(f"boxes per class ({len(boxes)}): " + ", ".join(f"{c} {n}" for c, n in boxes.items()))
    else:
        singles = Counter(p.classes[0] for p in items if len(p.classes) == 1)
        pairs = Counter(" + ".join(sorted(p.classes)) for p in items if len(p.classes) == 2)
        lines = [f"{len(items)} {kind}: {sum(singles.values())} one-class and {sum(pairs.values())} two-class prompts"]
        lines.append(f"per class ({len(singles)}): " + ", ".join(f"{c} {n}" for c, n in singles.items()))
        if pairs:
            lines.append(f"per pair ({len(pairs)}): " + ", ".join(f"{c} {n}" for c, n in pairs.items()))
    if bytes_per_item is None:
        lines.append("disk: unknown (the model's config files are not on this machine)")
    else:
        lines.append(f"disk: about {_human(bytes_per_item * len(items))} ({_human(bytes_per_item)} per item{note})")
    return "\n".join(lines + ([time] if time else []))
