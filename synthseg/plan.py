"""Dry runs: what a make-dataset or make-triplets job would write, in seconds and without loading a model.

Sizes come from the model's config files alone (a local folder, a bundled name, or a hub id already
in the Hugging Face cache); the UNet is built on PyTorch's "meta" device, which allocates nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .registry import resolve_pipeline


def model_config(model: str, subfolder: str, name: str = "config.json") -> dict | None:
    """A pipeline part's config file, from a folder or the Hugging Face cache; None where neither has it."""
    local = Path(resolve_pipeline(model)) / subfolder / name
    if local.is_file():
        return json.loads(local.read_text())
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, f"{subfolder}/{name}") if model.count("/") == 1 else None
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def image_size(model: str) -> int | None:
    """Generated image side in pixels: the UNet's sample size times the VAE's downsampling."""
    unet, vae = model_config(model, "unet"), model_config(model, "vae")
    if unet is None or vae is None:
        return None
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def dataset_item_bytes(model: str) -> int | None:
    """At most what one dataset image costs: an RGB image and a label map uncompressed, and its records."""
    size = image_size(model)
    return None if size is None else size * size * 4 + 4096


def triplet_bytes(model: str, dtype_bytes: int, cross_attention: bool) -> int | None:
    """What one triplet costs: every captured block output, the masks and, with `cross_attention`, the
    per-token attention maps at each attention resolution."""
    import torch
    from diffusers import UNet2DConditionModel

    from .capture.unet import unet_attention_strides, unet_feature_layout

    config, size = model_config(model, "unet"), image_size(model)
    if config is None or size is None:
        return None
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    latent = int(config["sample_size"])
    channels, strides = unet_feature_layout(unet)
    total = sum(c * (latent // s) ** 2 for c, s in zip(channels, strides)) * dtype_bytes + 2 * size * size
    if cross_attention:
        tokens = (model_config(model, "tokenizer", "tokenizer_config.json") or {}).get("model_max_length", 77)
        total += sum(tokens * (latent // s) ** 2 for s in unet_attention_strides(unet)) * dtype_bytes
    return total


def _human(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def plan_text(kind: str, prompts, bytes_per_item: int | None, note: str = "") -> str:
    """The dry-run report: total, counts per class (one-class prompts) and per pair, and disk."""
    singles = Counter(p.classes[0] for p in prompts if len(p.classes) == 1)
    pairs = Counter(" + ".join(sorted(p.classes)) for p in prompts if len(p.classes) == 2)
    lines = [f"{len(prompts)} {kind}: {sum(singles.values())} one-class and {sum(pairs.values())} two-class prompts"]
    lines.append(f"per class ({len(singles)}): " + ", ".join(f"{c} {n}" for c, n in singles.items()))
    if pairs:
        lines.append(f"per pair ({len(pairs)}): " + ", ".join(f"{c} {n}" for c, n in pairs.items()))
    if bytes_per_item is None:
        lines.append("disk: unknown (the model's config files are not on this machine)")
    else:
        lines.append(f"disk: about {_human(bytes_per_item * len(prompts))} ({_human(bytes_per_item)} per item{note})")
    return "\n".join(lines)
