"""Train the grounding module on a triplet cache, or on triplets generated online (see
`synthseg.triplets`), resumably.

Default: "training without zero masks": a prompted class the annotator missed adds no loss. With
`zero_masks: true` it is trained towards an empty mask instead (the paper's ablation).

`query_dropout`: the share of training queries whose class-name embedding is replaced by zeros, so
the module must find that class from what else it reads (with `attention_pooling`, the features under
the class's cross-attention map). An unseen class's embedding is new to the module at test time;
what the UNet's attention says about it is not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..classes import get_split
from ..config import apply_overrides, check_non_negative, check_positive, load_config, options_source, read_recipe, stamped
from ..errors import SynthsegError
from ..grounding import ATTENTION_FIELDS, GroundingArchitecture, GroundingConfig, GroundingModule, grounding_loss
from ..registry import check_vocabulary, resolve_grounding
from ..triplets import TripletRecipe
from .loop import claim_workdir, to_device, train_loop, warmup_cosine, write_training_record


@dataclass
class TrainRecipe:
    """A grounding recipe's `train` section; `zero_masks` and `query_dropout` as the module docstring says
    (default: a prompted class the annotator missed adds no loss, and no query is zeroed)."""

    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    zero_masks: bool = False
    query_dropout: float = 0.0
    checkpoint_every: int = 250
    seed: int = 0

    def validate(self, source: str) -> None:
        check_positive(source, self, "steps", "batch_size", "checkpoint_every")
        check_non_negative(source, self, "warmup_steps", "lr", "weight_decay")
        if not 0 <= self.query_dropout < 1:
            raise SynthsegError(f"{source}: query_dropout must lie in [0, 1), got {self.query_dropout}")


@dataclass
class GroundingModelRecipe(GroundingArchitecture):
    """A recipe's `model` section: the module's sizes, and whether it reads the triplets' cross-attention
    maps (VPD's inputs). cross_attention None: whatever the triplets hold; True: they must hold them.
    blocks: the transformer blocks it reads, a subset of those the triplets hold (empty: all of them),
    so one triplet set serves a block-choice ablation."""

    cross_attention: bool | None = None
    blocks: list[str] = field(default_factory=list)


@dataclass
class GroundingRecipe:
    """A grounding recipe (`world-grounding`, `voc-grounding`, ...): the split, how triplets are made,
    the module's size, training."""

    split: str
    pipeline: str = "world"
    annotator: str = "world"
    score_threshold: float | None = None  # the annotator's thresholds; None keeps the annotator's own
    mask_threshold: float | None = None
    triplets: TripletRecipe = field(default_factory=TripletRecipe)
    model: GroundingModelRecipe = field(default_factory=GroundingModelRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)

    @property
    def annotator_thresholds(self) -> dict:
        return {k: v for k, v in (("score_threshold", self.score_threshold), ("mask_threshold", self.mask_threshold)) if v is not None}

    def validate(self, source: str) -> None:
        if any(not 0 <= v <= 1 for v in self.annotator_thresholds.values()):
            raise SynthsegError(f"{source}: score_threshold and mask_threshold lie in [0, 1]")
        split = get_split(self.split)
        leaked = sorted(set(self.triplets.seen) - set(split.seen))
        if leaked:
            raise SynthsegError(f"{source}: triplet prompts would name classes that are not seen in split {self.split!r}: {leaked}")
        if self.model.cross_attention and not self.triplets.cross_attention:
            raise SynthsegError(f"{source}: model.cross_attention reads cross-attention maps that triplets.cross_attention: false does not store")
        check_vocabulary(self.pipeline, split.all_classes)


def capture_step_of(module: str | Path, default: TripletRecipe) -> tuple[int, int | None]:
    """(capture_timestep, capture_index) a trained module's triplets used (its recipe.json), else `default`'s."""
    path = resolve_grounding(module) / "recipe.json"
    triplets = json.loads(path.read_text()).get("triplets", {}) if path.is_file() else {}
    return triplets.get("capture_timestep", default.capture_timestep), triplets.get("capture_index", default.capture_index)


def load_grounding_recipe(spec: str | Path, **overrides: dict) -> GroundingRecipe:
    """A grounding recipe by packaged name ("world-grounding") or path, with per-section `overrides`
    (e.g. train={"steps": 500}; None values ignored) applied before validation; triplet prompts
    default to the split's seen classes."""
    data, source = read_recipe(spec, "grounding")
    data, source = apply_overrides(data, overrides, source), options_source(source, overrides)
    triplets = data.setdefault("triplets", {})
    if isinstance(triplets, dict) and not triplets.get("seen") and isinstance(data.get("split"), str):
        triplets["seen"] = get_split(data["split"]).seen
    return load_config(GroundingRecipe, data, source)


def select_blocks(layout: dict, blocks: list[str]) -> tuple[dict, list[int]]:
    """The triplet `layout` narrowed to the transformer `blocks` (empty: all), and the positions of the
    kept blocks among the stored feature maps."""
    stored = layout.get("feature_blocks", [])
    if not blocks:
        return layout, list(range(len(layout["feature_channels"])))
    unknown = [b for b in blocks if b not in stored]
    if unknown:
        raise SynthsegError(f"model.blocks {unknown} are not in the triplets, which hold {stored or 'a UNet (all its blocks)'}")
    keep = [stored.index(b) for b in stored if b in blocks]  # capture order, whatever the recipe's order
    narrowed = {k: [layout[k][i] for i in keep] for k in ("feature_channels", "feature_strides", "feature_blocks")}
    return {**layout, **narrowed}, keep


def drop_queries(queries: torch.Tensor, rate: float, seed) -> torch.Tensor:
    """(B, Q, D) queries with each one zeroed with probability `rate`; the draw depends on `seed` alone
    (the trainer passes [seed, step], so a resumed run repeats an uninterrupted one)."""
    if not rate:
        return queries
    keep = np.random.default_rng(seed).random(queries.shape[:2]) >= rate
    return queries * torch.from_numpy(keep).to(queries.device)[..., None]


def train_grounding(recipe: GroundingRecipe, triplets, workdir: Path, output: Path, max_steps: int | None = None,
                    device: torch.device | None = None) -> GroundingModule:
    """Train on `triplets` (a TripletShards cache or OnlineTriplets), on `device` (default CPU; the
    triplets' batches come on the CPU and move); checkpoints in `workdir`; `save_pretrained` into `output`."""
    model = asdict(recipe.model)
    wanted = model.pop("cross_attention")
    layout = triplets.layout()
    if wanted and not set(ATTENTION_FIELDS) <= set(layout):
        raise SynthsegError("the triplets hold no cross-attention maps that model.cross_attention asks for: remake them with "
                            "triplets.cross_attention: true, or train with --no-cross-attention")
    if wanted is False:  # leave out the attention maps the triplets may hold
        layout = {k: v for k, v in layout.items() if k not in ATTENTION_FIELDS}
    layout, keep = select_blocks(layout, model.pop("blocks"))
    config = load_config(GroundingConfig, {**layout, **model}, "triplet layout")
    claim_workdir(workdir, recipe)
    t = recipe.train
    torch.manual_seed(t.seed)
    module = GroundingModule(config).to(device).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t.warmup_steps, t.steps))
    batches = None

    def step_loss(step: int) -> torch.Tensor:
        nonlocal batches
        if batches is None:
            batches = triplets.batches(t.batch_size, step)
        batch = to_device(next(batches), device)
        inputs = [batch["features"][i] for i in keep] + (batch["attention"] if config.cross_attention_strides else [])
        queries = drop_queries(batch["queries"], t.query_dropout, [t.seed, step])
        logits = module(inputs, queries, batch["valid"], batch.get("class_attention"))
        missing = None if t.zero_masks else batch["missing"]
        return grounding_loss(logits, batch["masks"], batch["valid"], missing)

    losses = train_loop("grounding", step_loss, model=module, optimizer=optimizer, checkpoint=workdir / "grounding.ckpt",
                        steps=t.steps, checkpoint_every=t.checkpoint_every, max_steps=max_steps, schedule=schedule)
    module.cpu().eval().save_pretrained(output)
    made = dict(asdict(recipe), triplets=asdict(triplets.recipe))  # how its triplets were really made
    (Path(output) / "recipe.json").write_text(json.dumps(stamped(made, recipe), indent=2) + "\n")
    write_training_record(output, grounding=losses)
    return module
