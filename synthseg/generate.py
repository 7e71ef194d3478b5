"""Grounded generation: one batched pipeline pass gives images and one probability mask per named class."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .capture import CapturedFeatures, CaptureStep, FeatureCapture, ResolvedStep
from .errors import SynthsegError
from .grounding import GroundingModule, class_attention_input, grounding_inputs
from .text import class_queries, class_token_spans


@dataclass
class GroundedGeneration:
    """Result of `generate_grounded`, one entry per prompt.

    images: RGB PIL images. masks[i]: (K_i, H, W) float32 probabilities in [0, 1] at image
    resolution, in the order of class_names[i]. step: the captured denoising step.
    features: the captured UNet features (conditional half), when asked for.
    """

    images: list[Image.Image]
    masks: list[torch.Tensor]
    prompts: list[str]
    class_names: list[list[str]]
    seeds: list[int]
    step: ResolvedStep
    features: CapturedFeatures | None = None

    def save(self, directory: str | Path) -> Path:
        """Write `images/NNNNN.png`, `masks/NNNNN_<class>.png` (8-bit probability, L mode) and
        `generation.jsonl` (prompt, seed, classes and file names per image) into `directory`."""
        directory = Path(directory)
        (directory / "images").mkdir(parents=True, exist_ok=True)
        (directory / "masks").mkdir(exist_ok=True)
        records = []
        for i, (image, masks, names) in enumerate(zip(self.images, self.masks, self.class_names)):
            image.save(directory / "images" / f"{i:05d}.png")
            mask_files = {}
            for name, mask in zip(names, masks):
                mask_files[name] = f"masks/{i:05d}_{name.replace(' ', '_')}.png"
                Image.fromarray((mask.numpy() * 255).round().astype(np.uint8)).save(directory / mask_files[name])
            records.append(dict(file_name=f"images/{i:05d}.png", prompt=self.prompts[i], seed=self.seeds[i],
                                classes=names, masks=mask_files, capture_timestep=self.step.timestep))
        (directory / "generation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return directory


def uses_cfg(pipe, guidance_scale: float) -> bool:
    """Whether diffusers' SD pipelines batch an unconditional half through the UNet at this scale."""
    return guidance_scale > 1 and getattr(pipe.unet.config, "time_cond_proj_dim", None) is None


@torch.no_grad()
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
    capture_attention: bool = False,
) -> GroundedGeneration:
    """Generate `prompts` with `pipe` (any diffusers Stable Diffusion pipeline) and ground `class_names`.

    Each image's initial noise comes from its own `torch.Generator("cpu").manual_seed(seed)`, so an
    image depends only on its prompt and seed, not on the batch it is in. Class names are checked
    against their prompts before any generation work.
    """
    if len(seeds) != len(prompts):
        raise SynthsegError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    spans = class_token_spans(pipe.tokenizer, prompts, class_names)
    grounding.config.check_pipeline(pipe)
    cfg = uses_cfg(pipe, guidance_scale)
    step = capture_step.resolve(pipe.scheduler, num_inference_steps)

    prompt_embeds, negative_embeds = pipe.encode_prompt(prompts, pipe.device, 1, cfg, negative_prompt)
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    attention = capture_attention or bool(grounding.config.cross_attention_strides) or grounding.config.attention_pooling
    with FeatureCapture(pipe.unet, step.timestep, classifier_free_guidance=cfg, attention=attention) as capture:
        images = pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            generator=generators,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            output_type="pil",
        ).images
    if not capture.captured:
        raise SynthsegError(f"the pipeline never ran the capture step (timestep {step.timestep}); check the scheduler")

    masks = predict_masks(grounding, capture.features, prompt_embeds, spans, images[0].size[::-1])
    return GroundedGeneration(
        images=images,
        masks=masks,
        prompts=list(prompts),
        class_names=[list(names) for names in class_names],
        seeds=[int(s) for s in seeds],
        step=step,
        features=capture.features if return_features else None,
    )


def predict_masks(grounding: GroundingModule, features: CapturedFeatures, prompt_embeds: torch.Tensor, spans, size) -> list[torch.Tensor]:
    """Per-image (K_i, H, W) float32 mask probabilities at `size` = (H, W)."""
    device = next(grounding.parameters()).device
    queries, valid = class_queries(prompt_embeds.to(device), spans)
    pooled = class_attention_input(features, spans).to(device) if grounding.config.attention_pooling else None
    logits = grounding([f.to(device) for f in grounding_inputs(features, grounding.config)], queries, valid, pooled)
    probs = torch.sigmoid(F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False))
    return [probs[i, : len(row)].cpu() for i, row in enumerate(spans)]
