"""Training the miniature world's annotator (`synthseg.annotators`): a small Mask R-CNN on rendered scenes,
or on a dataset's COCO instances (`train_data`: instance-level Protocol ii trains the same architecture
on a generated dataset), then its mask AP on held-out scenes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..annotators import MaskRCNNAnnotator, MaskRCNNConfig, build_maskrcnn
from ..config import check_low_high, check_positive, check_share, load_recipe
from ..errors import SynthsegError
from ..formats import coco_annotation, coco_document
from ..layouts import LayoutRecipe, sample_layout
from ..readers import read_coco_instances
from ..world import WORLD_CLASSES, Scene, layout_scene, render_scene, scene_seed
from .augment import copy_paste_instances
from .loop import claim_workdir, to_device, train_loop, warmup_cosine, write_training_record


@dataclass
class WorldAnnotatorRecipe:
    """Recipe of `train_world_annotator`; see recipes/world-annotator.yaml. `train_data`: a folder of COCO
    instances (a synthseg dataset, or `world.export_scenes`'s) to train on instead of freshly rendered
    scenes; its class names must be among the model's categories. `layout_fraction` of the rendered
    training scenes are `layouts` drawn as GLIGEN's (`render_layout`: smaller objects than the world's,
    up to four, same-class repeats), so the annotator can judge layout generation. `copy_paste`: the share of
    training images that get another's instances pasted over them (`augment.copy_paste_instances`), scaled to
    `paste_scale_range` of the image's side."""

    model: MaskRCNNConfig
    seed: int = 0
    steps: int = 3000
    batch_size: int = 8
    lr: float = 3e-4
    warmup_steps: int = 200
    checkpoint_every: int = 250
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    eval_scenes: int = 500
    train_data: str | None = None
    layout_fraction: float = 0.0
    layouts: LayoutRecipe = field(default_factory=LayoutRecipe)
    copy_paste: float = 0.0
    paste_scale_range: list[float] = field(default_factory=lambda: [0.4, 1.0])

    def validate(self, source: str) -> None:
        check_positive(source, self, "steps", "batch_size", "checkpoint_every", "eval_scenes")
        check_share(source, self, "layout_fraction", "copy_paste")
        check_low_high(source, self, "paste_scale_range")


def instance_targets(masks: np.ndarray, labels) -> dict:
    """torchvision detection targets: XYXY boxes, labels 1..K, (N, H, W) uint8 masks; empty masks left out. An image
    with no instance (N = 0, a COCO image without annotations) gives empty targets, a negative example."""
    keep = masks.any(axis=(1, 2))
    masks, labels = masks[keep], np.asarray(labels, dtype=np.int64)[keep]
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), labels=torch.from_numpy(labels),
                masks=torch.from_numpy(masks).to(torch.uint8))


def scene_targets(scene) -> dict:
    """`instance_targets` of a rendered scene."""
    return instance_targets(scene.masks, [WORLD_CLASSES.index(c) + 1 for c in scene.classes])


def training_scene(recipe: WorldAnnotatorRecipe, rng: np.random.Generator) -> Scene:
    """One rendered training scene (even seeds): a layout's (`recipe.layouts`' stream, a random index) with
    probability `layout_fraction`, else a world scene."""
    if recipe.layout_fraction and rng.random() < recipe.layout_fraction:  # no draw at 0: world-only streams stay as they were
        layout = sample_layout(recipe.layouts, list(WORLD_CLASSES), [], int(rng.integers(2**30)))
        return layout_scene(layout, held_out=False, fit=recipe.layouts.fit)
    return render_scene(scene_seed(int(rng.integers(2**30)), held_out=False))


def training_batches(recipe: WorldAnnotatorRecipe):
    """batch(step) -> (images as (3, H, W) floats in [0, 1], targets): freshly rendered training scenes
    (`training_scene`), or `recipe.train_data`'s items drawn with replacement, from default_rng([seed, step]);
    with `copy_paste`, that share of them with another's instances pasted over."""
    if recipe.train_data is None:
        def item(rng: np.random.Generator):
            scene = training_scene(recipe, rng)
            return scene.image, scene.masks, np.array([WORLD_CLASSES.index(c) + 1 for c in scene.classes], dtype=np.int64)
    else:
        data = read_coco_instances(recipe.train_data)
        unknown = [name for name in data.class_names if name not in recipe.model.categories]
        if unknown or not len(data):
            raise SynthsegError(f"{recipe.train_data}: " + (f"class {unknown[0]!r} is not a category of the annotator" if unknown else "no images"))
        label_map = np.array([0] + [recipe.model.categories.index(name) + 1 for name in data.class_names])

        def item(rng: np.random.Generator):
            image, masks, labels = data[int(rng.integers(len(data)))]
            return np.array(image.convert("RGB")), masks, label_map[labels]

    def batch(step: int):
        rng = np.random.default_rng([recipe.seed, step])
        drawn = []
        for _ in range(recipe.batch_size):
            image, masks, labels = item(rng)
            if recipe.copy_paste and rng.random() < recipe.copy_paste:  # no draw at 0: old recipes repeat exactly
                image, masks, labels = copy_paste_instances(image, masks, labels, item(rng), rng, recipe.paste_scale_range)
            drawn.append((image, masks, labels))
        return ([torch.from_numpy(image).permute(2, 0, 1).float() / 255 for image, _, _ in drawn],
                [instance_targets(masks, labels) for _, masks, labels in drawn])
    return batch


def train_world_annotator(recipe: WorldAnnotatorRecipe, workdir: Path, output: Path, max_steps: int | None = None,
                          device: torch.device | None = None) -> MaskRCNNAnnotator:
    """Train the world's Mask R-CNN on rendered scenes (even seeds; odd seeds are held out), or on
    `recipe.train_data`, on `device` (default CPU). Resumes from workdir/annotator.ckpt; the batch of step
    s is drawn from default_rng([seed, s]) on the CPU. The annotator comes back on the CPU.
    """
    batch = training_batches(recipe)  # a bad train_data is refused before the workdir is claimed
    claim_workdir(workdir, recipe)
    torch.manual_seed(recipe.seed)
    model = build_maskrcnn(recipe.model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.warmup_steps, recipe.steps))

    def step_loss(step: int) -> torch.Tensor:  # made in this process: the main process's random draws stay the shipped run's
        return sum(model(*to_device(batch(step), device)).values())

    losses = train_loop("annotator", step_loss, model=model, optimizer=optimizer, checkpoint=workdir / "annotator.ckpt",
                        steps=recipe.steps, checkpoint_every=recipe.checkpoint_every, max_steps=max_steps, schedule=schedule, clip_norm=10.0)
    annotator = MaskRCNNAnnotator(model.cpu(), recipe.model.categories, score_threshold=recipe.score_threshold,
                                  mask_threshold=recipe.mask_threshold, config=recipe.model)
    annotator.save_pretrained(output)
    write_training_record(output, annotator=losses)
    return annotator


def held_out_scenes(count: int) -> list[Scene]:
    """The first `count` held-out world scenes (odd seeds)."""
    return [render_scene(scene_seed(k, held_out=True)) for k in range(1, count + 1)]


def held_out_layout_scenes(layouts: LayoutRecipe, count: int, size: int = 64) -> list[Scene]:
    """`count` layouts of stream `layouts.seed + 1` (training draws from `layouts.seed`), rendered at held-out seeds."""
    stream = replace(layouts, seed=layouts.seed + 1)
    drawn = [sample_layout(stream, list(WORLD_CLASSES), [], index) for index in range(count)]
    return [layout_scene(lay, held_out=True, fit=layouts.fit, size=size) for lay in drawn]


def mask_ap(annotator: MaskRCNNAnnotator, scenes: list[Scene]) -> dict:
    """COCO mask AP (pycocotools COCOeval "segm") of `annotator` on rendered `scenes`, whose masks are exact."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ranking = MaskRCNNAnnotator(annotator.model, annotator.categories, score_threshold=0.05,  # AP ranks all detections
                                mask_threshold=annotator.mask_threshold, name_map=annotator.name_map)
    images, truth, detections = [], [], []
    for image_id, scene in enumerate(scenes, start=1):
        images.append(dict(id=image_id, width=scene.image.shape[1], height=scene.image.shape[0], file_name=f"{image_id}.png"))
        for mask, name in zip(scene.masks, scene.classes):
            if mask.any():
                truth.append(coco_annotation(len(truth) + 1, image_id, WORLD_CLASSES.index(name) + 1, mask))
        for inst in ranking.annotate([scene.image], [list(WORLD_CLASSES)])[0]:
            detections.append(coco_annotation(len(detections) + 1, image_id, WORLD_CLASSES.index(inst.class_name) + 1, inst.mask, inst.score))
    gt = COCO()
    gt.dataset = coco_document(images, truth, WORLD_CLASSES, "held-out rendered scenes")
    gt.createIndex()
    evaluator = COCOeval(gt, gt.loadRes(detections) if detections else COCO(), "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return dict(mask_ap=float(evaluator.stats[0]), mask_ap50=float(evaluator.stats[1]), mask_ap75=float(evaluator.stats[2]), scenes=len(scenes))


def world_mask_ap(annotator: MaskRCNNAnnotator, count: int = 500, layouts: LayoutRecipe | None = None) -> dict:
    """`mask_ap` on `count` held-out world scenes; with `layouts`, also on `count` held-out layout scenes
    (`held_out_layout_scenes`), under keys prefixed "layout_"."""
    metrics = mask_ap(annotator, held_out_scenes(count))
    if layouts is not None:
        metrics.update({f"layout_{key}": value for key, value in mask_ap(annotator, held_out_layout_scenes(layouts, count)).items()})
    return metrics


def load_annotator_recipe(spec: str | Path, **overrides) -> WorldAnnotatorRecipe:
    """An annotator recipe by packaged name ("world-annotator") or path, with `overrides` (None: the recipe's)."""
    return load_recipe(WorldAnnotatorRecipe, spec, "annotator", **overrides)
