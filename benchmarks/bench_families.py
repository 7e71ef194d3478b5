"""Grounded generation on every model family: overhead against plain diffusers generation, and capture memory.

- CPU: each family's tiny pipeline (built from configs, `synthseg.tiny`), plain generation against grounded
  generation with the same seeds and settings, interleaved in one run. Two grounding modules: the paper's
  (block outputs only) and the shipped recipe's (also the capture step's text attention, for attention
  pooling and VPD inputs). Target: overhead <= 10%.
- Capture memory: bytes of captured tensors per image for SDXL and FLUX.1-dev at 1024^2 with the default
  blocks, from the architectures (fp16 block outputs, fp32 attention maps).
- GPU (`--gpu`): SDXL and FLUX.1-dev architectures with random weights drawn on the GPU, bf16, 1024^2, each at
  its published steps and guidance, img/s and overhead at batch 1 and 4; marked as not run where there is no CUDA.
  `--gpu-part-on-cpu` runs that part's code on the tiny SDXL and FLUX pipelines here, in bf16, and writes nothing.
  benchmarks/device_check.sh runs it on a lent GPU.

Writes the "Model families" section of benchmarks/RESULTS.md, or with `--gpu` the "Model families (GPU)" section.

    python benchmarks/bench_families.py [--repeats 25] [--steps 20]
    python benchmarks/bench_families.py --gpu [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from results import write_section

from synthseg import GroundingConfig, GroundingModule, generate_grounded
from synthseg.text import pipeline_family, text_tokens
from synthseg.tiny import (
    FLUX_DEV_TRANSFORMER,
    SDXL_UNET,
    flux_dev_pipeline,
    sdxl_pipeline,
    tiny_flux_pipeline,
    tiny_pipeline,
    tiny_sd3_pipeline,
    tiny_sdxl_pipeline,
)

T5 = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "t5-tiny.model"
PROMPTS = ["a photograph of a dog and a cat", "a photograph of a horse"]
NAMES = [["dog", "cat"], ["horse"]]
SMALL = dict(fuse_dim=32, mask_dim=32, hidden_dim=64, num_heads=4, ffn_dim=128, token_patch=2)
TINY_FAMILIES = {  # the CPU part's rows: each family's tiny pipeline, built from configs
    "SD 1.x": tiny_pipeline,
    "SDXL": tiny_sdxl_pipeline,
    "SD3": lambda: tiny_sd3_pipeline(T5),
    "FLUX (true CFG)": lambda: tiny_flux_pipeline(T5),
    "FLUX (distilled guidance)": lambda: tiny_flux_pipeline(T5, guidance_embeds=True),
}


def plain_call(pipe, batch: int, guidance: float) -> dict:
    """diffusers' own call for the same generation: true CFG for FLUX without distilled guidance."""
    kwargs = dict(prompt=(PROMPTS * batch)[:batch], guidance_scale=guidance)
    if pipeline_family(pipe) == "flux" and not pipe.transformer.config.guidance_embeds:
        kwargs.update(negative_prompt=[""] * batch, true_cfg_scale=guidance)
    if pipeline_family(pipe) in ("flux", "sd3"):
        kwargs["max_sequence_length"] = text_tokens(pipe) if pipeline_family(pipe) == "flux" else pipe.tokenizer_3.model_max_length
    return kwargs


def compare(pipe, module, batch: int, steps: int, repeats: int, sync=lambda: None, guidance: float = 2.0, **size) -> tuple[float, float]:
    """(median plain seconds, median grounded / plain ratio over `repeats` adjacent pairs). Each pair runs the two
    back to back, in alternating order, so that a slow spell of a shared machine falls on both halves of a pair;
    separate minima or medians of the two moved by +-10% between runs of the tiny models."""
    seeds, kwargs = list(range(batch)), plain_call(pipe, batch, guidance)

    def plain():
        pipe(**kwargs, generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], num_inference_steps=steps, output_type="pil", **size)

    def grounded():
        generate_grounded(pipe, module, kwargs["prompt"], (NAMES * batch)[:batch], seeds, guidance_scale=guidance, num_inference_steps=steps, **size)

    plain(), grounded()
    ratios, plains = [], []
    for i in range(repeats):
        times = {}
        for fn in (plain, grounded) if i % 2 == 0 else (grounded, plain):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[fn] = time.perf_counter() - start
        ratios.append(times[grounded] / times[plain])
        plains.append(times[plain])
    return statistics.median(plains), statistics.median(ratios)


def capture_bytes() -> list[tuple[str, int, int]]:
    """(model, block-output bytes, attention bytes) per image at 1024^2, default blocks."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

    from synthseg.capture import default_blocks, transformer_feature_layout, unet_feature_blocks, unet_feature_layout

    with torch.device("meta"):
        unet, flux = UNet2DConditionModel(**SDXL_UNET), FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)
    latent = 128
    channels, strides = unet_feature_layout(unet)
    blocks = sum(c * (latent // s) ** 2 for c, s in zip(channels, strides)) * 2
    attention, stride = 0, 1
    for name, block in unet_feature_blocks(unet).items():  # each cross-attention layer's (h, w, 77) map, at its block's stride
        layers = sum(isinstance(m, Attention) and m.is_cross_attention for m in block.modules())
        attention += layers * (latent // stride) ** 2 * 77 * 4
        stride = stride * 2 if name.startswith("down") and getattr(block, "downsamplers", None) else stride
        stride = stride // 2 if name.startswith("up") and getattr(block, "upsamplers", None) else stride
    rows = [("SDXL (every UNet block)", blocks, attention)]
    names = default_blocks(flux)
    channels, strides = transformer_feature_layout(flux, names)
    tokens = (latent // strides[0]) ** 2
    rows.append((f"FLUX.1-dev ({len(names)} of 57 blocks)", len(names) * tokens * channels[0] * 2, len(names) * tokens * 512 * 4))
    rows.append(("FLUX.1-dev (all 57 blocks)", 57 * tokens * channels[0] * 2, 57 * tokens * 512 * 4))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="back-to-back pairs a ratio is the median of (default: 25, 3 with --gpu)")
    parser.add_argument("--steps", type=int, default=20, help="the CPU part's sampling steps")
    parser.add_argument("--gpu", action="store_true", help="the GPU part alone, in its own section")
    parser.add_argument("--gpu-part-on-cpu", action="store_true", help="check the GPU part's code on the tiny SDXL and FLUX pipelines; writes nothing")
    args = parser.parse_args()
    if args.gpu_part_on_cpu:
        tiny = (("SDXL", lambda device, dtype: tiny_sdxl_pipeline(), 2, 5.0),
                ("FLUX.1-dev", lambda device, dtype: tiny_flux_pipeline(T5, guidance_embeds=True), 2, 3.5))
        print("\n".join(gpu_part(tiny, "cpu", torch.bfloat16, args.repeats or 1, 32)))
        return
    if args.gpu:
        write_section("Model families (GPU)", "\n".join(gpu_section(args.repeats or 3)))
        return
    args.repeats = args.repeats or 25

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    families = {name: build() for name, build in TINY_FAMILIES.items()}
    lines = ["| family | batch | paper's module: time ratio | shipped recipe's module: time ratio |", "|---|---|---|---|"]
    for name, pipe in families.items():
        pipe.set_progress_bar_config(disable=True)
        torch.manual_seed(0)
        paper = GroundingModule(GroundingConfig.for_pipeline(pipe, **SMALL)).eval()
        shipped = GroundingModule(GroundingConfig.for_pipeline(pipe, cross_attention=True, attention_pooling=True, **SMALL)).eval()
        for batch in (1, 4):
            ratios = [compare(pipe, m, batch, args.steps, args.repeats)[1] for m in (paper, shipped)]
            lines.append(f"| {name} | {batch} | {ratios[0]:.3f} ({100 * (ratios[0] - 1):+.1f}%) | {ratios[1]:.3f} ({100 * (ratios[1] - 1):+.1f}%) |")
            print(lines[-1])
    torch.set_num_threads(threads)
    memory = ["| model at 1024^2 | block outputs (fp16) | text attention (fp32) | total |", "|---|---|---|---|"]
    memory += [f"| {m} | {b / 1e6:,.0f} MB | {a / 1e6:,.0f} MB | {(a + b) / 1e6:,.0f} MB |" for m, b, a in capture_bytes()]
    print("\n".join(memory))
    body = [f"### CPU: tiny pipelines of each family (32x32 images, {args.steps} steps, guidance 2.0), grounded / plain time", "",
            f"Same seeds and settings, in one run, one CPU thread (the tiny models gain nothing from two, and the second core "
            f"takes the machine's other work); the median ratio of {args.repeats} back-to-back pairs. Target: overhead <= 10%.", "", *lines, "",
            "### Capture memory per image (computed from the architectures)", "", *memory, "",
            "The GPU figures are in \"Model families (GPU)\" (`--gpu`)."]
    write_section("Model families", "\n".join(body))


GPU_MODELS = (  # name, build(device, dtype), steps and guidance (each model's published defaults)
    ("SDXL", lambda device, dtype: sdxl_pipeline(device=device, dtype=dtype), 30, 5.0),
    ("FLUX.1-dev", lambda device, dtype: flux_dev_pipeline(T5, device=device, dtype=dtype), 28, 3.5),
)


def gpu_section(repeats: int) -> list[str]:
    """The GPU section's lines: the table on CUDA, else a line saying it was not run."""
    if not torch.cuda.is_available():
        print("GPU part not run: no CUDA device")
        return ["Not run: no CUDA device on this machine (benchmarks/device_check.sh runs it on a lent GPU). Anchor: SDXL at 1024^2, "
                "30 steps, A100, compiled, about 2.4 s per image."]
    lines = gpu_part(GPU_MODELS, "cuda", torch.bfloat16, repeats, 1024)
    return [f"SDXL and FLUX.1-dev architectures, random weights, bf16, 1024^2, on {torch.cuda.get_device_name()}; eager, SDPA; the shipped "
            f"recipe's module (block outputs and the capture step's text attention). Each ratio is the median of {repeats} back-to-back "
            "pairs. Anchor: SDXL at 1024^2, 30 steps, A100, compiled, about 2.4 s per image.", "", *lines]


def gpu_part(models, device: str, dtype: torch.dtype, repeats: int, side: int) -> list[str]:
    """A table of plain and grounded img/s at batch 1 and 4, the overhead, and the peak memory, for each of `models`
    (name, build(device, dtype), steps, guidance) at `side` px."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    lines = ["| model | steps, guidance | batch | plain img/s | grounded img/s | overhead | peak memory |", "|---|---|---|---|---|---|---|"]
    for name, build, steps, guidance in models:
        pipe = build(device, dtype).to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
        module = GroundingModule(GroundingConfig.for_pipeline(pipe, cross_attention=True, attention_pooling=True)).to(device, dtype).eval()
        for batch in (1, 4):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds, ratio = compare(pipe, module, batch, steps, repeats, sync, guidance, height=side, width=side)
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else "n/a"
            lines.append(f"| {name} | {steps}, {guidance} | {batch} | {batch / seconds:.3f} | {batch / (seconds * ratio):.3f} | "
                         f"{100 * (ratio - 1):+.1f}% | {peak} |")
            print(lines[-1], flush=True)
        del pipe, module
        if device == "cuda":
            torch.cuda.empty_cache()
    return lines


if __name__ == "__main__":
    main()
