"""Training the segmenter (`synthseg.segmenter`: MaskFormer or Mask2Former) on a labelled dataset: Protocol ii's.

Augmentation follows MaskFormer's semantic recipe: the short side is scaled to `crop_size * U(scale_range)`,
then a random `crop_size` crop (padded with ignore where the image is smaller) and a random horizontal flip.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from ..config import stamped
from ..errors import SynthsegError
from ..formats import IGNORE
from ..readers import SegmentationData
from ..segmenter import SegmenterRecipe, build_segmenter, image_processor
from .loop import claim_workdir, poly, train_loop, write_training_record


def augment(image: Image.Image, labels: np.ndarray, rng: np.random.Generator, crop: int, scale_range: list[float]):
    """Random scale, pad-and-crop to `crop`, random flip -> (crop x crop x 3 uint8, crop x crop uint8)."""
    short = crop * rng.uniform(*scale_range)
    factor = short / min(image.size)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    pixels = np.asarray(image.resize(size, Image.BILINEAR))
    target = np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))
    height, width = max(crop, size[1]), max(crop, size[0])
    padded = np.zeros((height, width, 3), dtype=np.uint8)
    padded_labels = np.full((height, width), IGNORE, dtype=np.uint8)
    padded[: size[1], : size[0]], padded_labels[: size[1], : size[0]] = pixels, target
    top, left = int(rng.integers(height - crop + 1)), int(rng.integers(width - crop + 1))
    pixels, target = padded[top : top + crop, left : left + crop], padded_labels[top : top + crop, left : left + crop]
    if rng.random() < 0.5:
        pixels, target = pixels[:, ::-1], target[:, ::-1]
    return np.ascontiguousarray(pixels), np.ascontiguousarray(target)


def training_loss(model, batch, device) -> torch.Tensor:
    """The matched loss (class CE, and focal or sigmoid CE, and dice) on a processor batch; with `use_auxiliary_loss`
    (deep supervision, as both archs train) it is summed over every decoder layer's predictions."""
    # transformers 5 drops the decoder layers' outputs that the auxiliary losses read unless they are asked for
    return model(pixel_values=batch["pixel_values"].to(device), mask_labels=[m.to(device) for m in batch["mask_labels"]],
                 class_labels=[c.to(device) for c in batch["class_labels"]], output_hidden_states=True).loss


def freeze_backbone_norm(model) -> None:
    """detectron2's FrozenBN in the backbone: each BatchNorm normalises with its pretrained statistics and
    keeps its affine, where the batch statistics of a few small crops would otherwise replace both."""
    for module in model.model.pixel_level_module.encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval().requires_grad_(False)


def train_segmenter(recipe: SegmenterRecipe, data: SegmentationData, output: str | Path, workdir: str | Path,
                    max_steps: int | None = None, device: str = "auto") -> Path:
    """Train the recipe's arch on `data`, resuming from workdir/segmenter.ckpt; save_pretrained to `output`.

    The batch and dropout of step s are drawn from default_rng([seed, s, process]), so a resumed run repeats an
    uninterrupted one. Run under `accelerate launch` for several GPUs: each process takes
    batch_size / num_processes images of every step.
    """
    from accelerate import Accelerator

    if len(data) == 0:
        raise SynthsegError(f"{data.name}: no images to train on")
    accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
    if recipe.batch_size % accelerator.num_processes:
        raise SynthsegError(f"batch_size {recipe.batch_size} does not split over {accelerator.num_processes} processes")
    torch.manual_seed(recipe.seed)
    model = build_segmenter(recipe, data.class_names).train()  # before the workdir is claimed: bad weights leave none
    if accelerator.is_main_process:
        claim_workdir(workdir, recipe)
    accelerator.wait_for_everyone()
    model.config.use_auxiliary_loss = True  # deep supervision (transformers leaves it off for MaskFormer)
    if recipe.pretrained_backbone and recipe.frozen_backbone_norm:
        freeze_backbone_norm(model)
    processor = image_processor(recipe)
    backbone = [p for n, p in model.named_parameters() if ".pixel_level_module.encoder." in n]
    others = [p for n, p in model.named_parameters() if ".pixel_level_module.encoder." not in n]
    optimizer = torch.optim.AdamW([dict(params=backbone, lr=recipe.lr * recipe.backbone_lr_multiplier), dict(params=others)],
                                  lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, poly(recipe.steps, recipe.poly_power, recipe.warmup_steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    per_process = recipe.batch_size // accelerator.num_processes

    def step_loss(step: int) -> torch.Tensor:
        rng = np.random.default_rng([recipe.seed, step, accelerator.process_index])
        torch.manual_seed(int(rng.integers(2**31)))  # dropout: a resumed run draws the same masks
        crops = [augment(*data[int(i)], rng, recipe.crop_size, recipe.scale_range) for i in rng.integers(len(data), size=per_process)]
        batch = processor(images=[c[0] for c in crops], segmentation_maps=[c[1] for c in crops], do_resize=False, return_tensors="pt")
        return training_loss(model, batch, accelerator.device)

    losses = train_loop("segmenter", step_loss, model=model, optimizer=optimizer, checkpoint=Path(workdir) / "segmenter.ckpt",
                        steps=recipe.steps, checkpoint_every=recipe.checkpoint_every, max_steps=max_steps, schedule=schedule,
                        clip_norm=recipe.clip_norm, accelerator=accelerator)
    output = Path(output)
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(model)
        # transformers' MaskFormer inference fails with it on, its Mask2Former inference with it off
        trained.config.use_auxiliary_loss = recipe.arch == "mask2former"
        trained.save_pretrained(output)
        processor.save_pretrained(output)
        (output / "synthseg-segmenter.yaml").write_text(yaml.safe_dump(stamped(dict(recipe=asdict(recipe), trained_on=data.name), recipe)))
        write_training_record(output, segmenter=losses)
    accelerator.wait_for_everyone()
    return output
