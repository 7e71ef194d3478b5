"""Layouts for box-grounded generation (GLIGEN): per image, 1 to N objects, each a phrase (a class name)
and a box, and one instance mask per object from the grounding module's class masks.

- `sample_layouts` (`sample_layout` for one): layouts drawn from a class set and its pairs, same-class repeats included, with
  boxes inside size, aspect and overlap limits. Layout i depends only on the recipe's seed and i.
- `read_layouts`: a user's JSONL file, one layout per line:
  `{"prompt": "...", "phrases": ["dog", "dog"], "boxes": [[x0, y0, x1, y1], ...], "seed": 7}`, boxes as
  fractions of the image in [0, 1] (`prompt` and `seed` optional), each its object's bounding box as in COCO (GLIGEN's
  convention; the world's layers learnt it, `LayoutRecipe.fit`). Each line is checked, and a bad one is named by its number.
- `generate_layout`: one layout through a GLIGEN pipeline (`StableDiffusionGLIGENPipeline`, SD 1.x), the
  grounding module's capture unchanged: GLIGEN's gated layers stop before the late capture step (scheduled
  sampling; a beta that would run them there is refused), so it reads the base UNet as in text-only generation. diffusers has
  GLIGEN only for SD 1.x; SDXL, SD3 and FLUX pipelines take no boxes.
- `BoxAttention` (`box_steering` for one layout): optional, while the gated layers run: each class's tokens are pulled toward its boxes
  in the base UNet's cross-attention (DenseDiffusion's attention modulation), so that a box draws its
  own class and not its neighbour's.
- `candidates.best_candidate`: optional, several images of one layout (`candidates`), of which a per-class implicit
  captioner keeps the likeliest to hold exactly the layout's classes, with a counter where one is given, exactly its
  count of each: GLIGEN often draws a box's object as a neighbouring class, or none, which the grounding module, asked
  for the layout's classes, cannot see.
- `guidance.CountGuidance` (`count_guidance`): optional, while the gated layers run, the counter's gradient steers the
  sampling toward the layout's count of each class.
- `instance_masks`: each phrase's instance, its class mask restricted to a margin around its box; where
  two instances claim a pixel, the module's probability weighted by the pixel's place in each box
  decides, so touching objects of one class come out as separate instances.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .candidates import best_candidate, candidate_seeds, check_chooser
from .capture import CaptureStep, denoiser_of
from .capture.core import DenoiserHooks
from .capture.unet import attention_grid
from .config import check_positive, check_seed
from .errors import SynthsegError
from .guidance import count_steering
from .prompts import describe, template_slots
from .refine import refine_masks
from .world import LAYOUT_FITS

MAX_GLIGEN_BOXES = 30  # StableDiffusionGLIGENPipeline's max_objs: the position net's token count
STRAYS = ("unlabelled", "instances", "drop")  # LayoutRecipe.strays


@dataclass
class LayoutRecipe:
    """How layouts are drawn (a dataset recipe's `layouts` section). Sizes are box sides as fractions of
    the image side; `max_overlap` bounds the IoU of any two boxes of a layout; `repeat_fraction` of the
    layouts repeat one class; `margin` widens a box (as a fraction of its side) where its instance mask
    may reach; an instance covering less than `min_fill` of its box drops the image.
    `scheduled_sampling_beta`: the share of the sampling steps GLIGEN's gated layers run in (GLIGEN's
    scheduled sampling; diffusers' default 0.3); a GLIGEN model's card gives its own. `box_attention`:
    the logit bias of `BoxAttention` (0: off). `candidates`: images generated per layout, of which a per-class
    captioner (and a counter, if given) keeps one (`candidates.best_candidate`; 1: the layout's own seed's, no captioner needed).
    `count_guidance`: the strength of `guidance.CountGuidance` with the recipe's counter while the gated layers run (0: off).
    `seed`: the layout stream (layouts and their images' seeds); a dataset recipe's section that names none takes the
    dataset's seed. `fit`: how the world draws each object in its box where it renders layouts (training scenes, held-out
    judges; `world.LAYOUT_FITS`): "extent", the box is the object's bounding box, as COCO's are; "inscribed", the models
    trained before session 50. A GLIGEN model's card says which its layers learnt. `strays`: what becomes of an object of a
    layout's class that the generator drew where no box asked (a connected region of the class's label that no box's
    instance touches; `STRAYS`): "unlabelled", only the boxes' instances are COCO instances (the label map has it all the
    same); "instances", each is an instance too; "drop", its image is dropped."""

    min_objects: int = 1
    max_objects: int = 4
    repeat_fraction: float = 0.3
    pair_fraction: float = 0.5
    min_size: float = 0.2
    max_size: float = 0.6
    max_aspect: float = 2.0
    max_overlap: float = 0.2
    margin: float = 0.1
    min_fill: float = 0.1
    scheduled_sampling_beta: float = 0.3
    box_attention: float = 0.0
    candidates: int = 1
    count_guidance: float = 0.0
    seed: int = 0
    fit: str = "extent"
    strays: str = "unlabelled"
    templates: list[str] = field(default_factory=lambda: ["a photograph of {}"])

    def validate(self, source: str) -> None:
        """`source` names the section ("recipe.yaml: layouts"), as `config.load_config` gives it."""
        check_positive(source, self, "min_objects", "max_objects", "candidates")
        if self.min_objects > self.max_objects:
            raise SynthsegError(f"{source}: min_objects {self.min_objects} is above max_objects {self.max_objects}")
        if not 0 < self.min_size <= self.max_size <= 1:
            raise SynthsegError(f"{source}: need 0 < min_size <= max_size <= 1")
        for name in ("repeat_fraction", "pair_fraction", "max_overlap", "min_fill", "scheduled_sampling_beta"):
            if not 0 <= getattr(self, name) <= 1:
                raise SynthsegError(f"{source}: {name} must lie in [0, 1]")
        if self.max_aspect < 1 or self.margin < 0 or self.box_attention < 0 or self.count_guidance < 0:
            raise SynthsegError(f"{source}: max_aspect must be at least 1, and margin, box_attention and count_guidance not negative")
        if self.fit not in LAYOUT_FITS:
            raise SynthsegError(f"{source}: fit must be one of {', '.join(LAYOUT_FITS)}, got {self.fit!r}")
        if self.strays not in STRAYS:
            raise SynthsegError(f"{source}: strays must be one of {', '.join(STRAYS)}, got {self.strays!r}")
        if any(template_slots(t, source) != 1 for t in self.templates):
            raise SynthsegError(f"{source}: each template has one slot for the objects, e.g. 'a photograph of {{}}'")


@dataclass
class Layout:
    """One planned layout generation: its place in the plan, the prompt, one phrase (class name) and one
    box (x0, y0, x1, y1 as fractions of the image) per object, and its seed."""

    index: int
    prompt: str
    phrases: list[str]
    boxes: list[tuple[float, float, float, float]]
    seed: int

    @property
    def classes(self) -> list[str]:
        """The distinct classes named, in order of first appearance (what `Prompt.classes` holds)."""
        return list(dict.fromkeys(self.phrases))


def box_iou(a, b) -> float:
    """IoU of two (x0, y0, x1, y1) boxes; 0 where both have no area."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _draw_box(rng: np.random.Generator, recipe: LayoutRecipe) -> tuple[float, float, float, float]:
    """A box with sides in [min_size, max_size] and aspect within max_aspect, placed uniformly."""
    for _ in range(100):  # accepts within a few draws, unless min_size = max_size leaves only squares
        width = rng.uniform(recipe.min_size, recipe.max_size)
        height = width / float(np.exp(rng.uniform(-np.log(recipe.max_aspect), np.log(recipe.max_aspect))))
        if recipe.min_size <= height <= recipe.max_size:
            break
    else:
        height = width
    x0, y0 = rng.uniform(0, 1 - width), rng.uniform(0, 1 - height)
    return (round(float(x0), 4), round(float(y0), 4), round(float(x0 + width), 4), round(float(y0 + height), 4))


def sample_layout(recipe: LayoutRecipe, class_names: list[str], pairs: list[list[str]], index: int) -> Layout:
    """Layout `index`, from its own stream (seed, index): its number of objects n; whether a class repeats
    (`repeat_fraction` of the layouts with n >= 2: then 1 to n - 1 distinct classes, the rest repeats of
    them, so "three circles" occurs); its distinct classes (two of them a pair of `pairs` for
    `pair_fraction` of the time, else drawn without replacement); and boxes, redrawn until no two overlap
    by more than `max_overlap` IoU (a box that finds no place in 100 tries is left out)."""
    if not class_names:
        raise SynthsegError("layouts need at least one class")
    rng = np.random.default_rng([recipe.seed, index])
    n = int(rng.integers(recipe.min_objects, recipe.max_objects + 1))
    distinct = int(rng.integers(1, n)) if n >= 2 and rng.random() < recipe.repeat_fraction else n
    distinct = min(distinct, len(class_names))
    if distinct == 2 and pairs and rng.random() < recipe.pair_fraction:
        chosen = list(pairs[int(rng.integers(len(pairs)))])
    else:
        chosen = [class_names[i] for i in rng.choice(len(class_names), size=distinct, replace=False)]
    phrases = chosen + [chosen[int(rng.integers(len(chosen)))] for _ in range(n - len(chosen))]
    boxes: list[tuple[float, float, float, float]] = []
    kept = []
    for phrase in phrases:
        for _ in range(100):
            box = _draw_box(rng, recipe)
            if all(box_iou(box, other) <= recipe.max_overlap for other in boxes):
                boxes.append(box)
                kept.append(phrase)
                break
    template = recipe.templates[int(rng.integers(len(recipe.templates)))]
    return Layout(index, template.format(describe(kept)), kept, boxes, int(rng.integers(2**31)))


def sample_layouts(recipe: LayoutRecipe, class_names: list[str], pairs: list[list[str]], count: int) -> list[Layout]:
    """Layouts 0 to `count` - 1 (`sample_layout`): layout i depends only on the recipe's seed and i."""
    return [sample_layout(recipe, class_names, pairs, index) for index in range(count)]


def check_layout(layout: Layout, class_names: list[str], max_boxes: int | None, where: str) -> None:
    """Refuse a layout that generation cannot take: no objects, a phrase outside the class set, a box
    outside [0, 1] or of zero area, more boxes than the model's position net takes."""
    if not layout.phrases or len(layout.phrases) != len(layout.boxes):
        raise SynthsegError(f"{where}: a layout needs one box per phrase and at least one (got {len(layout.phrases)} phrases, "
                            f"{len(layout.boxes)} boxes)")
    unknown = sorted(set(layout.phrases) - set(class_names))
    if unknown:
        raise SynthsegError(f"{where}: phrase {unknown[0]!r} is not in the class set ({', '.join(class_names)})")
    for box in layout.boxes:
        if len(box) != 4 or not all(0 <= v <= 1 for v in box):
            raise SynthsegError(f"{where}: box {list(box)} must be [x0, y0, x1, y1] with every value in [0, 1]")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise SynthsegError(f"{where}: box {list(box)} has zero area (x1 must exceed x0, y1 y0)")
    if max_boxes is not None and len(layout.boxes) > max_boxes:
        raise SynthsegError(f"{where}: {len(layout.boxes)} boxes, but the model's position net takes at most {max_boxes}")


def read_layouts(path: str | Path, class_names: list[str], max_boxes: int | None = None, seed: int = 0) -> list[Layout]:
    """The layouts of a JSONL file (see the module docstring), each checked by `check_layout`. A line
    without a prompt gets one that names its objects; one without a seed gets one drawn from (seed, line)."""
    path = Path(path)
    if not path.is_file():
        raise SynthsegError(f"{path}: layouts file not found")
    layouts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
            if not (isinstance(record["phrases"], list) and isinstance(record["boxes"], list)):
                raise TypeError  # a string of phrases would be read as its letters
            phrases, boxes = [str(p) for p in record["phrases"]], [tuple(float(v) for v in box) for box in record["boxes"]]
            prompt = str(record.get("prompt") or f"a photograph of {describe(phrases)}")
            layout_seed = record["seed"] if "seed" in record else int(np.random.default_rng([seed, number]).integers(2**31))
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            reason = f"missing {error}" if isinstance(error, KeyError) else "not a JSON object with lists of phrases and boxes"
            raise SynthsegError(f"{where}: malformed layout ({reason})") from None
        check_seed(f"{where}: seed", layout_seed)
        layout = Layout(len(layouts), prompt, phrases, boxes, layout_seed)
        check_layout(layout, class_names, max_boxes, where)
        layouts.append(layout)
    if not layouts:
        raise SynthsegError(f"{path}: no layouts in the file")
    return layouts


def _box_weight(box, height: int, width: int, margin: float) -> np.ndarray:
    """(H, W): 1 at the box's centre, falling linearly to 1 / (1 + margin) at its edge and 0 at the edge of
    its margin; 0 beyond."""
    x0, y0, x1, y1 = box
    ys, xs = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
    dx = np.abs(xs - (x0 + x1) / 2) / ((x1 - x0) / 2)
    dy = np.abs(ys - (y0 + y1) / 2) / ((y1 - y0) / 2)
    distance = np.maximum(dy[:, None], dx[None, :])  # 1 on the box's edge
    return np.clip(1 - distance / (1 + margin), 0, None)


def instance_masks(probs: np.ndarray, classes: list[str], layout: Layout, margin: float, threshold: float = 0.5) -> list[np.ndarray]:
    """One boolean (H, W) mask per phrase of `layout`. `probs`: (K, H, W) the module's per-class
    probabilities, in the order of `classes` (`layout.classes`). A pixel belongs to the phrase whose class
    probability times box weight (`_box_weight`) is highest there, if that class's probability passes
    `threshold` and the pixel lies within the phrase's box widened by `margin`."""
    height, width = probs.shape[1:]
    scores = np.stack([probs[classes.index(p)] * _box_weight(box, height, width, margin) for p, box in zip(layout.phrases, layout.boxes)])
    owner = scores.argmax(0)
    return [(owner == i) & (scores[i] > 0) & (probs[classes.index(p)] > threshold) for i, p in enumerate(layout.phrases)]


def box_fill(mask: np.ndarray, box) -> float:
    """The share of `box` (fractions of the image) that `mask` covers."""
    height, width = mask.shape
    x0, y0 = int(np.floor(box[0] * width)), int(np.floor(box[1] * height))
    x1, y1 = max(x0 + 1, int(np.ceil(box[2] * width))), max(y0 + 1, int(np.ceil(box[3] * height)))
    return float(mask[y0:y1, x0:x1].mean())


def _call_takes_boxes(pipe) -> bool:
    return "gligen_boxes" in inspect.signature(type(pipe).__call__).parameters


def check_takes_layouts(pipe) -> None:
    """Refuse a pipeline that cannot generate from boxes: it needs a GLIGEN UNet (a position net) and a
    call that takes boxes."""
    if getattr(denoiser_of(pipe), "position_net", None) is None or not _call_takes_boxes(pipe):
        raise SynthsegError(f"{type(pipe).__name__} takes no layouts: box-grounded generation needs a GLIGEN pipeline "
                            "(StableDiffusionGLIGENPipeline, SD 1.x); diffusers has no GLIGEN for SDXL, SD3 or FLUX")


def check_takes_prompts(pipe) -> None:
    """Refuse a GLIGEN pipeline for text prompts alone: its call needs a layout's phrases and boxes."""
    if _call_takes_boxes(pipe):
        raise SynthsegError(f"{type(pipe).__name__} draws box layouts, not text prompts alone: give it layouts (make-dataset "
                            "--layouts or --layouts-file), or use its base model for text prompts")


def gated_steps(scheduled_sampling_beta: float, num_inference_steps: int) -> int:
    """How many of the first sampling steps GLIGEN's gated layers run in (diffusers' `num_grounding_steps`)."""
    return int(scheduled_sampling_beta * num_inference_steps)


def check_layers_stop_before_capture(pipe, scheduled_sampling_beta: float, num_inference_steps: int, capture_step: CaptureStep = CaptureStep()) -> None:
    """Refuse a beta that runs GLIGEN's gated layers at the captured step: the grounding module was trained
    on the base UNet's features, and read through the layers its masks fall apart (world-layout at beta 1.0:
    a class-mask IoU with the annotator's of 26.5 against 49.0 at 0.96; README, "Box layouts")."""
    captured = capture_step.resolve(pipe.scheduler, num_inference_steps).index
    if captured < gated_steps(scheduled_sampling_beta, num_inference_steps):
        raise SynthsegError(f"layouts.scheduled_sampling_beta {scheduled_sampling_beta:g} runs GLIGEN's gated layers at the captured step "
                            f"({captured + 1} of {num_inference_steps}), which the grounding module reads: give a beta that stops them "
                            f"before it ({captured} / {num_inference_steps} or less)")


def box_region(boxes, height: int, width: int) -> torch.Tensor:
    """(height * width,) bool: the cells of a height x width grid that any of `boxes` (fractions) overlaps."""
    ys, xs = torch.arange(height) / height, torch.arange(width) / width
    region = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        region |= ((ys < y1) & (ys + 1 / height > y0))[:, None] & ((xs < x1) & (xs + 1 / width > x0))[None, :]
    return region.flatten()


class BoxAttention(DenoiserHooks):
    """Context manager: while GLIGEN's gated layers run, every cross-attention layer of a gated block adds
    `strength` to the logits of a class's prompt tokens at the positions its boxes overlap, and subtracts it
    elsewhere (DenseDiffusion's cross-attention modulation, Kim et al. 2023, as a constant bias). The base
    UNet never learnt where a name goes, and the caption names every class of the image, so without it a
    box may draw its neighbour's class. The unconditional half of a CFG batch is left as it is, and so is
    every step after the gated layers switch off (the grounding module's capture step among them).

    Args:
        unet: a GLIGEN `UNet2DConditionModel` (gated transformer blocks).
        layouts: one `Layout` per image of the batch.
        spans: per image, per class of `layout.classes`, its token positions (`prompt_token_spans`).
        strength: the bias, in logits.
        classifier_free_guidance: the UNet batch is [unconditional; conditional].
    """

    def __init__(self, unet, layouts: list[Layout], spans: list[list[list[int]]], strength: float, *, classifier_free_guidance: bool):
        super().__init__(unet, classifier_free_guidance)
        self.layouts, self.spans, self.strength = layouts, spans, float(strength)
        self._latent_hw: tuple[int, int] | None = None
        self._bias: dict[tuple[int, int], torch.Tensor] = {}

    def install(self) -> None:
        self.hook(self.denoiser.register_forward_pre_hook(self._before_unet, with_kwargs=True))
        for block in self.denoiser.modules():
            if getattr(block, "fuser", None) is not None and getattr(block, "attn2", None) is not None:
                block.attn2.set_processor(_BoxBiasProcessor(self, block.attn2.processor, block.fuser))

    def _before_unet(self, module, args, kwargs):
        sample = kwargs.get("sample", args[0] if args else None)
        self._latent_hw = tuple(sample.shape[-2:])

    def bias(self, positions: int, tokens: int) -> torch.Tensor:
        """(B, positions, tokens) additive logits for a layer with `positions` queries (cached per size)."""
        if (positions, tokens) not in self._bias:
            height, width = attention_grid(self._latent_hw, positions)
            rows = []
            for layout, row in zip(self.layouts, self.spans):
                bias = torch.zeros(positions, tokens)
                for name, token_positions in zip(layout.classes, row):
                    inside = box_region([b for p, b in zip(layout.phrases, layout.boxes) if p == name], height, width)
                    bias[:, token_positions] = torch.where(inside, self.strength, -self.strength)[:, None]
                rows.append(bias)
            conditional = torch.stack(rows)
            self._bias[positions, tokens] = torch.cat([torch.zeros_like(conditional), conditional]) if self.classifier_free_guidance else conditional
        return self._bias[positions, tokens]


def box_steering(pipe, layout: Layout, strength: float, guidance_scale: float, copies: int = 1) -> contextlib.AbstractContextManager:
    """The context one layout's GLIGEN call runs in: `BoxAttention` on `pipe`'s UNet with `strength` over the
    layout's class tokens (the pipeline batches [unconditional; conditional] when guidance_scale > 1), or
    nothing at strength 0. `copies`: images of the layout in the call."""
    from .text import prompt_token_spans

    if not strength:
        return contextlib.nullcontext()
    spans = prompt_token_spans(pipe, [layout.prompt], [layout.classes]) * copies
    return BoxAttention(pipe.unet, [layout] * copies, spans, strength, classifier_free_guidance=guidance_scale > 1)


class _BoxBiasProcessor:
    """Runs the layer's own processor with `BoxAttention`'s bias as its (additive, float) attention mask
    while the block's gated layer is on."""

    def __init__(self, context: BoxAttention, base, fuser):
        self.context, self.base, self.fuser = context, base, fuser

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        if self.fuser.enabled and encoder_hidden_states is not None and attention_mask is None:
            bias = self.context.bias(hidden_states.shape[1], encoder_hidden_states.shape[1])
            attention_mask = bias.to(hidden_states.device, hidden_states.dtype)
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


@dataclass
class LayoutGeneration:
    """One layout's result: the image, `probs` (K, H, W) float32 per class of `layout.classes`, and one
    (H, W) bool instance mask per phrase, with the share of its box it fills."""

    layout: Layout
    image: Image.Image
    probs: torch.Tensor
    instances: list[np.ndarray]
    fills: list[float]

    @classmethod
    def cut(cls, layout: Layout, image: Image.Image, probs: torch.Tensor, margin: float) -> LayoutGeneration:
        """`layout`'s instances cut from the module's `probs` (`instance_masks`), with their boxes' fills."""
        masks = instance_masks(probs.numpy(), layout.classes, layout, margin)
        return cls(layout, image, probs, masks, [box_fill(m, box) for m, box in zip(masks, layout.boxes)])


def generate_layout(pipe, grounding, layout: Layout, *, guidance_scale: float, num_inference_steps: int,
                    capture_step: CaptureStep = CaptureStep(), margin: float = LayoutRecipe.margin,
                    scheduled_sampling_beta: float = LayoutRecipe.scheduled_sampling_beta,
                    box_attention: float = LayoutRecipe.box_attention, refine: int = 0,
                    candidates: int = LayoutRecipe.candidates, recogniser=None, counter=None,
                    count_guidance: float = LayoutRecipe.count_guidance) -> LayoutGeneration:
    """Generate `layout` with a GLIGEN pipeline (one layout per call, as GLIGEN takes it) and cut its
    instances from the grounding module's class masks (`instance_masks`). `scheduled_sampling_beta`: the
    share of the steps GLIGEN's gated layers run in; `box_attention`: `BoxAttention`'s bias in them (0: none);
    `candidates`: images made in the call (`candidates.candidate_seeds`), of which `recogniser` (with `counter`, if given)
    keeps one (`candidates.best_candidate`); `count_guidance`: `guidance.CountGuidance`'s strength with `counter` while the gated layers run (0: none);
    `refine`: PAMR iterations on the masks first (`synthseg.refine`; 0: none)."""
    from .generate import capture_pass, predict_masks

    check_takes_layouts(pipe)
    check_layout(layout, list(dict.fromkeys(layout.phrases)), MAX_GLIGEN_BOXES, f"layout {layout.index}")
    check_chooser(candidates, recogniser)
    check_layers_stop_before_capture(pipe, scheduled_sampling_beta, num_inference_steps, capture_step)
    grounding.config.check_pipeline(pipe)
    boxes = dict(gligen_phrases=list(layout.phrases), gligen_boxes=[list(box) for box in layout.boxes],
                 gligen_scheduled_sampling_beta=scheduled_sampling_beta)
    if count_guidance and counter is None:
        raise SynthsegError("count guidance follows a counter's gradient: give a counter, or set count_guidance to 0")
    with box_steering(pipe, layout, box_attention, guidance_scale, copies=candidates), \
            count_steering(pipe, counter, [list(layout.phrases)] * candidates, count_guidance, gated_steps(scheduled_sampling_beta, num_inference_steps)):
        run = capture_pass(pipe, [layout.prompt] * candidates, [layout.classes] * candidates, candidate_seeds(layout.seed, candidates),
                           guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, capture_step=capture_step,
                           attention=grounding.config.needs_attention, blocks=grounding.config.feature_blocks or None, pipeline_kwargs=boxes)
    try:
        best = best_candidate(pipe, recogniser, layout.classes, run.images, counter, layout.phrases) if candidates > 1 else 0
    except SynthsegError as error:
        raise SynthsegError(f"layout {layout.index}: {error}") from None
    if candidates > 1:
        run = run.select([best])  # only the kept image is grounded
    image = run.images[0]
    probs = predict_masks(grounding, run.features, run.prompt_embeds, run.spans, image.size[::-1])[0]
    if refine:
        probs = refine_masks(image, probs, refine)
    return LayoutGeneration.cut(layout, image, probs, margin)
