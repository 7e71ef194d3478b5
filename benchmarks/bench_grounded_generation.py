"""Plain diffusers generation vs synthseg grounded generation, same pipeline, seeds and settings, same run.

CPU part: the tiny SD-architecture pipeline. GPU part (when CUDA is present): Stable Diffusion 1.5's
architecture from its configs with random weights (same speed as the real weights), bf16, SDPA,
channels_last, 512x512, 50 steps, batch 1/8/16, against the H100 bound of ~12 img/s (83 TFLOP per
image with CFG at 50 steps); then the same with the UNet compiled (`unet.compile()`, inductor; the
capture hooks still record, tests/test_compile.py), and make-dataset's end-to-end img/s (masks,
PNG, RLE and records written). `--gpu-part-on-cpu` runs that part's code on the tiny pipeline, to
check it where there is no GPU (nothing is written).
Writes the "Grounded generation overhead" section of benchmarks/RESULTS.md.

    python benchmarks/bench_grounded_generation.py [--repeats 3] [--steps 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

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
    parser.add_argument("--gpu-part-on-cpu", action="store_true", help="check the GPU part's code on the tiny pipeline; writes nothing")
    args = parser.parse_args()
    if args.gpu_part_on_cpu:
        print(gpu_part(args, tiny_pipeline(sample_size=32), "cpu", torch.float32, (1, 2)))
        return

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
        gpu = gpu_part(args, sd15_pipeline(), "cuda", torch.bfloat16, (1, 8, 16))
        body += [f"### GPU: SD 1.5 architecture, bf16, 512x512, {args.steps} steps, CFG 7.5 ({torch.cuda.get_device_name()})", "",
                 "Target: grounded >= 5 img/s with overhead <= 3% (H100). Physical bound ~12 img/s on an H100.", "", gpu]
        print(gpu)
    else:
        body += ["### GPU: SD 1.5 architecture, bf16, 512x512", "", "Not run: no CUDA device on this machine."]
        print("GPU part not run: no CUDA device")
    write_section("Grounded generation overhead", "\n".join(body))


def gpu_part(args, pipe, device: str, dtype: torch.dtype, batches: tuple[int, ...]) -> str:
    """Eager and compiled tables, and make-dataset's end-to-end rate, for `pipe` on `device`."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    pipe = pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.to(memory_format=torch.channels_last)
    grounding = GroundingModule(GroundingConfig.for_pipeline(pipe)).to(device, dtype).eval()
    eager = [compare(pipe, grounding, b, args.steps, args.repeats, sync) for b in batches]
    pipe.unet.compile()
    compiled = [compare(pipe, grounding, b, args.steps, args.repeats, sync) for b in batches]
    rate = dataset_rate(pipe, grounding, max(batches), args.steps, sync)
    return "\n".join(["Eager:", "", table(eager, H100_BOUND), "", "UNet compiled (inductor):", "", table(compiled, H100_BOUND), "",
                      f"make-dataset end to end (compiled, batch {max(batches)}, {8 * max(1, max(batches) // 2)} images, writing included): "
                      f"{rate:.2f} img/s"])


def dataset_rate(pipe, grounding, batch: int, steps: int, sync) -> float:
    """make-dataset's images per second over four batches, after one warm-up batch."""
    import tempfile

    from synthseg.config import load_config
    from synthseg.dataset import DatasetRecipe, make_dataset

    classes = ["dog", "cat", "cow", "horse", "sheep", "bird", "boat", "bus"]
    recipe = load_config(DatasetRecipe, dict(model="bench", classes=",".join(classes), per_class=1, num_inference_steps=steps,
                                             guidance_scale=7.5, require_all_classes=False, batch_size=batch), "bench")
    timed = replace(recipe, per_class=max(1, batch // 2))  # 4 batches of 8 classes' prompts
    with tempfile.TemporaryDirectory() as out:
        make_dataset(pipe, grounding, recipe, out + "/warm", dict(model="bench"))
        sync()
        start = time.perf_counter()
        make_dataset(pipe, grounding, timed, out + "/run", dict(model="bench"))
        sync()
        return timed.per_class * len(classes) / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
