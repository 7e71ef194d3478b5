"""Pretraining the world segmenter's backbone by image classification: the miniature world's ImageNet; and, with
a `layouts` section, the same ResNet trained to count (`synthseg.counter`).

MaskFormer's recipe starts from an ImageNet backbone, which has learnt to recognise most of the classes it
will segment (VOC's unseen ones among them) from image-level labels alone. The world has no ImageNet, and
its segmenters trained from scratch localise objects but confuse their classes. This trains the same kind of
weights on the world: a transformers ResNet that names the classes of a rendered training scene (even seeds,
1 to 3 objects; multi-label, binary cross-entropy), from the list of class names alone, never a mask. It is
saved with `save_pretrained` (`ResNetForImageClassification`), a folder that a segmenter recipe's
`backbone_weights` loads; the bundled one is the world's (`registry.resolve_backbone("world")`).

A recipe with a `layouts` section trains a counting judge instead (`counter-world`): for each class, how many
objects (0 to `max_count`, the last meaning that many or more) a rendered layout scene of that section holds
(one softmax per class, cross-entropy), with flips and a random blur (generated images are softer than rendered
ones). Its labels are "circle=2"; `counter.CountJudge` reads them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import check_non_negative, check_positive, load_recipe, stamped
from ..counter import count_labels, object_counts
from ..errors import SynthsegError
from ..layouts import LayoutRecipe
from ..segmenter import backbone_config, check_backbone, normalised_pixels
from ..world import WORLD_CLASSES, Scene, render_scene, scene_seed
from .annotator import held_out_layout_scenes
from .loop import claim_workdir, staged_export, train_loop, warmup_cosine, write_training_record
from .world_t2i import sample_layout_scenes


@dataclass
class BackboneRecipe:
    """See recipes/backbone-world.yaml. `backbone`: a name of `segmenter.BACKBONES`; `eval_scenes`: held-out
    scenes (odd seeds) on which the export's accuracy is measured and written to its recipe.json. With
    `layouts` (recipes/counter-world.yaml): count each class's objects, 0 to `max_count`, in scenes of that
    layout stream (held out: the next stream's layouts, rendered from odd seeds); `blur`: the largest sigma (px)
    of the Gaussian blur a batch gets (0: none)."""

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
    layouts: LayoutRecipe | None = None
    max_count: int = 4
    blur: float = 0.0

    def validate(self, source: str) -> None:
        check_backbone(source, self.backbone)
        check_positive(source, self, "image_size", "steps", "batch_size", "checkpoint_every", "eval_scenes", "max_count")
        check_non_negative(source, self, "lr", "warmup_steps", "weight_decay", "blur")
        if self.layouts is None and self.blur:
            raise SynthsegError(f"{source}: blur goes with a layouts section (a counting judge); the class objective trains unblurred")


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
        random_flips(pixels, rng)
    labels = torch.zeros(len(scenes), len(WORLD_CLASSES))
    for row, scene in enumerate(scenes):
        labels[row, [WORLD_CLASSES.index(name) for name in scene.classes]] = 1
    return pixels, labels


def random_flips(pixels: torch.Tensor, rng: np.random.Generator) -> None:
    """Flip each of the (B, 3, H, W) `pixels` left-right in place, with chance 1/2 (B draws from `rng`)."""
    flip = torch.from_numpy(rng.random(len(pixels)) < 0.5)
    pixels[flip] = pixels[flip].flip(-1)


def count_batch(scenes: list[Scene], rng: np.random.Generator | None = None, blur: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered layout scenes -> (B, 3, size, size) normalised pixels and (B, 12) counts of each class's visible
    objects; with `rng`, each flipped left-right with chance 1/2, and the batch blurred with a sigma in [0.1, blur]."""
    from torchvision.transforms.functional import gaussian_blur

    pixels = normalised_pixels(np.stack([s.image for s in scenes]))
    if rng is not None:
        random_flips(pixels, rng)
        if blur:
            sigma = float(rng.uniform(0.1, blur))
            pixels = gaussian_blur(pixels, [5, 5], [sigma, sigma])
    return pixels, torch.from_numpy(np.stack([object_counts(s.classes, s.masks, WORLD_CLASSES) for s in scenes]))


@torch.no_grad()
def held_out_counts(model, recipe: BackboneRecipe) -> dict:
    """On `recipe.eval_scenes` held-out layout scenes (`annotator.held_out_layout_scenes`: the next stream's layouts,
    rendered from odd seeds): the share whose every class count the model gets right (counts above max_count as
    max_count), and the share of (scene, class) counts it gets right."""
    model.eval()
    scenes = held_out_layout_scenes(recipe.layouts, recipe.eval_scenes, recipe.image_size)
    exact = correct = 0
    for start in range(0, recipe.eval_scenes, recipe.batch_size):
        pixels, counts = count_batch(scenes[start : start + recipe.batch_size])
        logits = model(pixel_values=pixels).logits.view(len(counts), len(WORLD_CLASSES), recipe.max_count + 1)
        right = logits.argmax(-1) == counts.clamp(max=recipe.max_count)
        exact += int(right.all(1).sum())
        correct += int(right.sum())
    return dict(exact_counts=round(exact / recipe.eval_scenes, 4), per_class_counts=round(correct / (recipe.eval_scenes * len(WORLD_CLASSES)), 4))


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


def count_loss(logits: torch.Tensor, counts: torch.Tensor, max_count: int) -> torch.Tensor:
    """The counter's cross-entropy: (B, 12 * (max_count + 1)) logits, one softmax per class, against (B, 12) counts
    (above max_count counted as max_count)."""
    return F.cross_entropy(logits.reshape(-1, max_count + 1), counts.clamp(max=max_count).reshape(-1))


def classifier_config(recipe: BackboneRecipe):
    """The ResNet config `recipe` trains: the world's classes (multi-label), or with a `layouts` section the counter's
    "class=count" labels (one softmax per class) and the image size it resizes other images to."""
    config = backbone_config(recipe.backbone)
    counts = recipe.layouts is not None
    labels = count_labels(WORLD_CLASSES, recipe.max_count) if counts else list(WORLD_CLASSES)
    config.num_labels, config.problem_type = len(labels), None if counts else "multi_label_classification"
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    if counts:
        config.image_size = recipe.image_size  # the counter resizes other images to it
    return config


def pretrain_backbone(recipe: BackboneRecipe, workdir: str | Path, output: str | Path, max_steps: int | None = None,
                      device: torch.device | None = None) -> Path:
    """Train (or resume) the classifier (with `recipe.layouts`: the counter) in `workdir` on `device` (default CPU); save it to
    `output` (save_pretrained in fp16, with its recipe, held-out accuracy and training record, whose step count says how far
    this sitting got). Step s's scenes are drawn from default_rng([seed, s]) (a counter's: layouts s * batch_size onward),
    so a resumed run repeats an uninterrupted one."""
    from transformers import ResNetForImageClassification

    workdir, output = Path(workdir), Path(output)
    claim_workdir(workdir, recipe)
    torch.manual_seed(recipe.seed)
    counts = recipe.layouts is not None
    model = ResNetForImageClassification(classifier_config(recipe)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.warmup_steps, recipe.steps))

    def step_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:  # rendered ahead, beside the step before (train_loop)
        rng = np.random.default_rng([recipe.seed, step])
        if counts:
            return count_batch(sample_layout_scenes(recipe.layouts, step, recipe.batch_size, recipe.image_size)[0], rng, recipe.blur)
        seeds = [scene_seed(int(k), held_out=False) for k in rng.integers(2**30, size=recipe.batch_size)]
        return scene_batch(seeds, recipe.image_size, rng)

    def step_loss(step: int, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        pixels, labels = batch
        logits = model(pixel_values=pixels).logits
        return count_loss(logits, labels, recipe.max_count) if counts else F.binary_cross_entropy_with_logits(logits, labels)

    stage = "counter" if counts else "backbone"  # its progress line, checkpoint and training record
    losses = train_loop(stage, step_loss, model=model, optimizer=optimizer, checkpoint=workdir / f"{stage}.ckpt",
                        steps=recipe.steps, checkpoint_every=recipe.checkpoint_every, max_steps=max_steps, schedule=schedule,
                        batches=step_batch, device=device)
    made = dict(asdict(recipe), held_out=(held_out_counts if counts else held_out_accuracy)(model.cpu(), recipe))
    with staged_export(output) as staging:
        model.half().save_pretrained(staging)  # fp16, as the world's other exports; a segmenter copies it into fp32
        (staging / "recipe.json").write_text(json.dumps(stamped(made, recipe), indent=2) + "\n")
        write_training_record(staging, **{stage: losses})
    return output
