"""Grounded generation: one batched pipeline pass (`capture_pass`) gives images, the capture step's features and
one probability mask per named class."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .candidates import best_candidate, candidate_seeds, check_chooser
from .capture import CapturedFeatures, CaptureStep, ResolvedStep, attention_maps, feature_capture
from .config import check_seed
from .errors import SynthsegError
from .formats import jsonl_text, png_bytes, safe_file_name, write_atomic
from .grounding import GroundingModule, class_attention_input, grounding_inputs
from .guidance import prompt_steering
from .layouts import check_takes_prompts
from .refine import refine_masks
from .text import class_queries, encode_prompts, prompt_token_spans


@dataclass
class GroundedGeneration:
    """Result of `generate_grounded`, one entry per prompt.

    images: RGB PIL images. masks[i]: (K_i, H, W) float32 probabilities in [0, 1] at image
    resolution, in the order of class_names[i]. step: the captured denoising step.
    features: the captured denoiser features (conditional half), when asked for.
    """

    images: list[Image.Image]
    masks: list[torch.Tensor]
    prompts: list[str]
    class_names: list[list[str]]
    seeds: list[int]
    step: ResolvedStep
    features: CapturedFeatures | None = None

    def save(self, directory: str | Path) -> Path:
        """Write `images/NNNNN.png`, `masks/NNNNN_<class>.png` (8-bit probability, L mode; the class name
        made safe for a file name) and `generation.jsonl` (prompt, seed, classes and file names per
        image) into `directory`, each file atomically and the index last."""
        directory = Path(directory)
        (directory / "images").mkdir(parents=True, exist_ok=True)
        (directory / "masks").mkdir(exist_ok=True)
        records = []
        for i, (image, masks, names) in enumerate(zip(self.images, self.masks, self.class_names)):
            mask_files = {name: f"masks/{i:05d}_{safe_file_name(name)}.png" for name in names}
            for name, mask in zip(names, masks):
                write_atomic(directory / mask_files[name], png_bytes(Image.fromarray((mask.numpy() * 255).round().astype(np.uint8))))
            write_atomic(directory / "images" / f"{i:05d}.png", png_bytes(image))
            records.append(dict(file_name=f"images/{i:05d}.png", prompt=self.prompts[i], seed=self.seeds[i],
                                classes=names, masks=mask_files, capture_timestep=self.step.timestep))
        write_atomic(directory / "generation.jsonl", jsonl_text(records))
        return directory


@dataclass
class CaptureRun:
    """What one generate-and-capture pass gives, one row per prompt.

    images: RGB PIL images. features: the capture step's denoiser features (conditional half).
    prompt_embeds: (B, T, D) text states the denoiser was conditioned on. spans: each class name's token
    positions in its prompt. heat_maps: with `daam`, per image (K_i, h, w) DAAM maps in [0, 1].
    """

    images: list[Image.Image]
    features: CapturedFeatures
    prompt_embeds: torch.Tensor
    spans: list[list[slice]]
    step: ResolvedStep
    heat_maps: list[torch.Tensor] | None = None

    def select(self, rows: list[int]) -> CaptureRun:
        """The pass's rows `rows`, in that order (the kept candidates), so that only they are grounded."""
        return CaptureRun([self.images[k] for k in rows], self.features.select(rows), self.prompt_embeds[rows], [self.spans[k] for k in rows],
                          self.step, None if self.heat_maps is None else [self.heat_maps[k] for k in rows])


@torch.no_grad()
def capture_pass(
    pipe,
    prompts: list[str],
    class_names: list[list[str]],
    seeds: list[int],
    *,
    guidance_scale: float,
    num_inference_steps: int,
    capture_step: CaptureStep = CaptureStep(),
    attention: bool = True,
    feature_dtype: torch.dtype | None = None,
    blocks: list[str] | None = None,
    daam: bool = False,
    record_inputs: bool = False,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | list[str] | None = None,
    pipeline_kwargs: dict | None = None,
) -> CaptureRun:
    """The one generate-and-capture pass that grounded generation, triplets and Protocol i all run.

    Each image's initial noise comes from its own `torch.Generator("cpu").manual_seed(seed)`, so an
    image depends only on its prompt and seed, not on the batch it is in. Class names are checked
    against their prompts before any generation work. `attention` also records the capture step's
    cross-attention (VPD inputs, attention pooling); `daam` also sums every step's (the baseline).
    `blocks`: the transformer blocks to record (see `synthseg.capture.default_blocks`; a UNet records all).
    `record_inputs`: also keep the capture step's denoiser arguments, to replay it (`synthseg.capture.replay`).
    `pipeline_kwargs`: further arguments of the pipeline's call (a GLIGEN layout's phrases and boxes).
    Works for every family of `synthseg.text` (SD 1.x/2.x, SDXL, SD3, FLUX).
    """
    if not prompts:
        raise SynthsegError("no prompts to generate")
    if len(seeds) != len(prompts):
        raise SynthsegError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    for seed in seeds:
        check_seed("seed", seed)
    if num_inference_steps < 1:
        raise SynthsegError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
    if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise SynthsegError(f"guidance_scale must be a finite number, 0 or more, got {guidance_scale}")
    if not (pipeline_kwargs or {}).get("gligen_boxes"):
        check_takes_prompts(pipe)
    spans = prompt_token_spans(pipe, list(prompts), class_names)
    text = encode_prompts(pipe, prompts, guidance_scale, negative_prompt)
    cfg = text.classifier_free_guidance
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    with contextlib.ExitStack() as stack:
        baseline = stack.enter_context(attention_maps(pipe, classifier_free_guidance=cfg)) if daam else None
        capture = stack.enter_context(feature_capture(pipe, capture_step, num_inference_steps, classifier_free_guidance=cfg,
                                                      attention=attention, dtype=feature_dtype, blocks=blocks,
                                                      record_inputs=record_inputs))
        images = pipe(**text.call, generator=generators, num_inference_steps=num_inference_steps, height=height, width=width,
                      output_type="pil", **(pipeline_kwargs or {})).images
    if not capture.captured:
        raise SynthsegError(f"the pipeline never ran the capture step ({capture_step}); check the scheduler")
    return CaptureRun(images, capture.features, text.embeds, spans, capture.resolved, baseline.normalised_maps(spans) if daam else None)


def generate_grounded(
    pipe,
    grounding: GroundingModule,
    prompts: list[str],
    class_names: list[list[str]],
    seeds: list[int],
    *,
    guidance_scale: float = 7.5,
    num_inference_steps: int = 50,
    height: int | None = None,
    width: int | None = None,
    capture_step: CaptureStep = CaptureStep(),
    negative_prompt: str | list[str] | None = None,
    return_features: bool = False,
    refine: int = 0,
    candidates: int = 1,
    recogniser=None,
    counter=None,
    count_guidance: float = 0.0,
) -> GroundedGeneration:
    """Generate `prompts` with `pipe` (SD 1.x/2.x, SDXL, SD3 or FLUX) and ground `class_names`:
    one `capture_pass`, then the module's masks at image resolution, refined by `refine` PAMR iterations
    on each image's colours (`synthseg.refine`; 0: none). `candidates`: images made per prompt in the same pass
    (`candidates.candidate_seeds`), of which `recogniser`, a per-class `captioner.Recogniser` (with `counter`, a
    `counter.CountJudge`, if given), keeps one (`candidates.best_candidate`); the result's seeds are the kept images'.
    `count_guidance`: the strength of `guidance.CountGuidance` toward one object of each class by `counter`, in every
    step before the captured one (0: none)."""
    grounding.config.check_pipeline(pipe)
    check_chooser(candidates, recogniser)
    rows = [n for n in class_names for _ in range(candidates)]
    steering = prompt_steering(pipe, counter, rows, count_guidance, num_inference_steps, capture_step)
    seeds = [candidate for seed in seeds for candidate in candidate_seeds(seed, candidates)]
    if isinstance(negative_prompt, list):
        negative_prompt = [n for n in negative_prompt for _ in range(candidates)]
    with steering:
        run = capture_pass(pipe, [p for p in prompts for _ in range(candidates)], rows, seeds,
                           guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, capture_step=capture_step,
                           attention=grounding.config.needs_attention, blocks=grounding.config.feature_blocks or None,
                           height=height, width=width, negative_prompt=negative_prompt)
    kept = [i * candidates + (best_candidate(pipe, recogniser, names, run.images[i * candidates : (i + 1) * candidates], counter)
                              if candidates > 1 else 0) for i, names in enumerate(class_names)]
    if candidates > 1:
        run = run.select(kept)
    masks = predict_masks(grounding, run.features, run.prompt_embeds, run.spans, run.images[0].size[::-1])
    if refine:
        masks = [refine_masks(image, m, refine) for image, m in zip(run.images, masks)]
    return GroundedGeneration(
        images=run.images,
        masks=masks,
        prompts=list(prompts),
        class_names=[list(names) for names in class_names],
        seeds=[seeds[k] for k in kept],
        step=run.step,
        features=run.features if return_features else None,
    )


@torch.no_grad()
def predict_masks(grounding: GroundingModule, features: CapturedFeatures, prompt_embeds: torch.Tensor, spans, size) -> list[torch.Tensor]:
    """Per-image (K_i, H, W) float32 mask probabilities at `size` = (H, W)."""
    device = next(grounding.parameters()).device
    queries, valid = class_queries(prompt_embeds.to(device), spans)
    pooled = class_attention_input(features, spans).to(device) if grounding.config.attention_pooling else None
    logits = grounding([f.to(device) for f in grounding_inputs(features, grounding.config)], queries, valid, pooled)
    probs = torch.sigmoid(F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False))
    return [probs[i, : len(row)].cpu() for i, row in enumerate(spans)]
