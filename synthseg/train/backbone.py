"""Pretraining the world segmenter's backbone by image classification: the miniature world's ImageNet.

MaskFormer's recipe starts from an ImageNet backbone, which has learnt to recognise most of the classes it
will segment (VOC's unseen ones among them) from image-level labels alone. The world has no ImageNet, and
its segmenters trained from scratch localise objects but confuse their classes. This trains the same kind of
weights on the world: a transformers ResNet that names the classes of a rendered training scene (even seeds,
1 to 3 objects; multi-label, binary cross-entropy), from the list of class names alone, never a mask. It is
saved with `save_pretrained` (`ResNetForImageClassification`), a folder that a segmenter recipe's
`backbone_weights` loads; the bundled one is the world's (`registry.resolve_backbone("world")`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import check_non_negative, check_positive, load_recipe, stamped
from ..segmenter import backbone_config, check_backbone, normalised_pixels
from ..world import WORLD_CLASSES, render_scene, scene_seed
from .loop import claim_workdir, staged_export, train_loop, warmup_cosine, write_training_record


@dataclass
class BackboneRecipe:
    """See recipes/backbone-world.yaml. `backbone`: a name of `segmenter.BACKBONES`; `eval_scenes`: held-out
    scenes (odd seeds) on which the export's accuracy is measured and written to its recipe.json."""

    backbone: str = "resnet-world"
    image_size: int = 64
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 500
    eval_scenes: int = 500

    def validate(self, source: str) -> None:
        check_backbone(source, self.backbone)
        check_positive(source, self, "image_size", "steps", "batch_size", "checkpoint_every", "eval_scenes")
        check_non_negative(source, self, "lr", "warmup_steps", "weight_decay")


def load_backbone_recipe(spec: str | Path, **overrides) -> BackboneRecipe:
    """A backbone recipe by packaged name ("backbone-world", "world") or path, with `overrides` (None: the recipe's)."""
    return load_recipe(BackboneRecipe, spec, "backbone", **overrides)


def scene_batch(seeds, size: int, rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered scenes of `seeds` -> (B, 3, size, size) pixels normalised as the segmenter's processor
    normalises them, and (B, 12) multi-hot labels of the classes each holds; with `rng`, each is flipped
    left-right with chance 1/2."""
    scenes = [render_scene(seed, size=size) for seed in seeds]
    pixels = normalised_pixels(np.stack([s.image for s in scenes]))
    if rng is not None:
        flip = torch.from_numpy(rng.random(len(scenes)) < 0.5)
        pixels[flip] = pixels[flip].flip(-1)
    labels = torch.zeros(len(scenes), len(WORLD_CLASSES))
    for row, scene in enumerate(scenes):
        labels[row, [WORLD_CLASSES.index(name) for name in scene.classes]] = 1
    return pixels, labels


@torch.no_grad()
def held_out_accuracy(model, recipe: BackboneRecipe) -> dict:
    """On `recipe.eval_scenes` held-out scenes: the share whose class set the model names exactly, and the
    share of (scene, class) decisions it gets right."""
    model.eval()
    exact = correct = 0
    for start in range(0, recipe.eval_scenes, recipe.batch_size):
        seeds = [scene_seed(i, held_out=True) for i in range(start, min(start + recipe.batch_size, recipe.eval_scenes))]
        pixels, labels = scene_batch(seeds, recipe.image_size)
        predicted = model(pixel_values=pixels).logits > 0
        exact += int((predicted == labels.bool()).all(1).sum())
        correct += int((predicted == labels.bool()).sum())
    return dict(exact_class_set=round(exact / recipe.eval_scenes, 4), per_class_decisions=round(correct / (recipe.eval_scenes * len(WORLD_CLASSES)), 4))


def pretrain_backbone(recipe: BackboneRecipe, workdir: str | Path, output: str | Path, max_steps: int | None = None,
                      device: torch.device | None = None) -> Path:
    """Train (or resume) the classifier in `workdir` on `device` (default CPU); save it to `output` (save_pretrained in fp16, with its recipe,
    held-out accuracy and training record, whose step count says how far this sitting got). Step s's scenes
    are drawn from default_rng([seed, s]), so a resumed run repeats an uninterrupted one."""
    from transformers import ResNetForImageClassification

    workdir, output = Path(workdir), Path(output)
    claim_workdir(workdir, recipe)
    torch.manual_seed(recipe.seed)
    config = backbone_config(recipe.backbone)
    config.num_labels, config.problem_type = len(WORLD_CLASSES), "multi_label_classification"
    config.id2label = dict(enumerate(WORLD_CLASSES))
    config.label2id = {name: i for i, name in enumerate(WORLD_CLASSES)}
    model = ResNetForImageClassification(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.warmup_steps, recipe.steps))

    def step_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:  # rendered ahead, beside the step before (train_loop)
        rng = np.random.default_rng([recipe.seed, step])
        seeds = [scene_seed(int(k), held_out=False) for k in rng.integers(2**30, size=recipe.batch_size)]
        return scene_batch(seeds, recipe.image_size, rng)

    def step_loss(step: int, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        pixels, labels = batch
        return F.binary_cross_entropy_with_logits(model(pixel_values=pixels).logits, labels)

    losses = train_loop("backbone", step_loss, model=model, optimizer=optimizer, checkpoint=workdir / "backbone.ckpt",
                        steps=recipe.steps, checkpoint_every=recipe.checkpoint_every, max_steps=max_steps, schedule=schedule,
                        batches=step_batch, device=device)
    made = dict(asdict(recipe), held_out=held_out_accuracy(model.cpu(), recipe))
    with staged_export(output) as staging:
        model.half().save_pretrained(staging)  # fp16, as the world's other exports; a segmenter copies it into fp32
        (staging / "recipe.json").write_text(json.dumps(stamped(made, recipe), indent=2) + "\n")
        write_training_record(staging, backbone=losses)
    return output
