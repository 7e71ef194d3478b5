"""Training the segmenter (`synthseg.segmenter`: MaskFormer or Mask2Former) on a labelled dataset: Protocol ii's.

Augmentation follows MaskFormer's semantic recipe (`augment.scale_crop_flip`); with the recipe's `copy_paste`,
that share of the crops also gets another image's objects pasted over it (`augment.copy_paste`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from ..config import stamped
from ..errors import SynthsegError
from ..readers import SegmentationData
from ..segmenter import SegmenterRecipe, build_segmenter, image_processor
from .augment import copy_paste, scale_crop_flip
from .loop import claim_workdir, poly, train_loop, write_training_record


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
        crops = []
        for i in rng.integers(len(data), size=per_process):
            crop = scale_crop_flip(*data[int(i)], rng, recipe.crop_size, recipe.scale_range)
            if recipe.copy_paste and rng.random() < recipe.copy_paste:  # no draw at 0: old recipes repeat exactly
                crop = copy_paste(*crop, data[int(rng.integers(len(data)))], rng, recipe.paste_scale_range)[:2]
            crops.append(crop)
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
