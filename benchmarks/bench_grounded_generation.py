"""Plain diffusers generation vs synthseg grounded generation, same pipeline, seeds and settings, same run.

CPU part: the tiny SD-architecture pipeline. GPU part (when CUDA is present): Stable Diffusion 1.5's
architecture from its configs with random weights (same speed as the real weights), bf16, 512x512,
50 steps, batch 1/8/16, against the H100 bound of ~12 img/s (83 TFLOP per image with CFG at 50 steps).
Writes the "Grounded generation overhead" section of benchmarks/RESULTS.md.

    python benchmarks/bench_grounded_generation.py [--repeats 3] [--steps 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from results import write_section

from synthseg import GroundingConfig, GroundingModule, generate_grounded
from synthseg.tiny import sd15_pipeline, tiny_pipeline

PROMPT = "a photograph of a dog and a cat"
H100_BOUND = 989e12 / 83e12  # img/s at dense bf16 peak


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def compare(pipe, grounding, batch: int, steps: int, repeats: int, sync, **size) -> dict:
    """Median seconds per batch for plain and grounded generation, interleaved to share drift."""
    prompts, seeds = [PROMPT] * batch, list(range(batch))

    def plain():
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        pipe(prompts, generator=generators, num_inference_steps=steps, guidance_scale=7.5, output_type="pil", **size)

    def grounded():
        generate_grounded(pipe, grounding, prompts, [["dog", "cat"]] * batch, seeds, num_inference_steps=steps, guidance_scale=7.5, **size)

    plain(), grounded()  # warm-up (allocator, kernels, compilation)
    times = {"plain": [], "grounded": []}
    for _ in range(repeats):
        times["plain"].append(timed(plain, sync))
        times["grounded"].append(timed(grounded, sync))
    p, g = statistics.median(times["plain"]), statistics.median(times["grounded"])
    return dict(batch=batch, plain=batch / p, grounded=batch / g, ratio=g / p)


def table(rows: list[dict], bound: float | None = None) -> str:
    head = "| batch | plain img/s | grounded img/s | time ratio (grounded/plain) | overhead |" + (" share of H100 bound |" if bound else "")
    lines = [head, "|" + "---|" * (6 if bound else 5)]
    for r in rows:
        line = f"| {r['batch']} | {r['plain']:.3f} | {r['grounded']:.3f} | {r['ratio']:.3f} | {100 * (r['ratio'] - 1):+.1f}% |"
        lines.append(line + (f" {100 * r['grounded'] / bound:.1f}% |" if bound else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    torch.manual_seed(0)
    cpu = tiny_pipeline(sample_size=32)
    cpu.set_progress_bar_config(disable=True)
    cpu_grounding = GroundingModule(GroundingConfig.for_pipeline(cpu, fuse_dim=64, mask_dim=64, hidden_dim=128, num_heads=4, ffn_dim=512)).eval()
    cpu_rows = [compare(cpu, cpu_grounding, b, args.steps, args.repeats, lambda: None) for b in (1, 4)]
    body = [
        f"### CPU: tiny SD-architecture pipeline (64x64 images, {args.steps} DDIM steps, CFG 7.5)",
        "Target: overhead <= 10%.", "", table(cpu_rows), "",
    ]
    print(body[0], "\n", table(cpu_rows))

    if torch.cuda.is_available():
        gpu_rows = gpu_part(args)
        body += [f"### GPU: SD 1.5 architecture, bf16, 512x512, {args.steps} steps, CFG 7.5", "",
                 "Target: overhead <= 3% at batch 8. Physical bound ~12 img/s on an H100.", "", table(gpu_rows, H100_BOUND)]
        print(table(gpu_rows, H100_BOUND))
    else:
        body += ["### GPU: SD 1.5 architecture, bf16, 512x512", "", "Not run: no CUDA device on this machine."]
        print("GPU part not run: no CUDA device")
    write_section("Grounded generation overhead", "\n".join(body))


def gpu_part(args) -> list[dict]:
    pipe = sd15_pipeline().to("cuda", torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.to(memory_format=torch.channels_last)
    grounding = GroundingModule(GroundingConfig.for_pipeline(pipe)).to("cuda", torch.bfloat16).eval()
    return [compare(pipe, grounding, b, args.steps, args.repeats, torch.cuda.synchronize) for b in (1, 8, 16)]


if __name__ == "__main__":
    main()
