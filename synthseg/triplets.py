"""Training triplets {denoiser features, masks, prompt}, made without human labels, stored as shards.

`make_triplets` builds prompts from the *seen* classes only (one or two classes, the recipe's
templates), generates each image with feature capture, and labels it with an annotator:

- target mask of a class: the union of its detected instances (`target="union"`, the default, so a
  one-class prompt that drew two dogs gets both), or the top-scoring instance only (`target="top"`,
  the reference code's choice);
- a prompted class the annotator did not find is marked *missing*: with "training without zero
  masks" it then adds no loss (see `grounding_loss`).

With `capture_from: image` the features are those `synthseg segment` reads of the finished image (VAE-encoded,
noised, one denoiser call), and `copy_paste` makes some of those images composites of two generations
(`paste_partners`), so a module meant for real scenes of several objects also learns from such scenes.

Storage: `recipe.json` (the TripletRecipe; a rerun with another one is refused), `layout.json`
(the feature layout, text width and storage kind, for building a grounding module),
`shard-NNNNN.safetensors` holds `shard_size` triplets and `shard-NNNNN.jsonl` one record per triplet
(prompt, seed, classes, missing, scores). Each shard is written atomically and a run skips shards that
already exist, so a killed job resumes where it stopped; prompts and seeds depend only on the triplet
index, so the result is the same. Cost on disk: see `TripletShards.bytes_per_triplet`.

A shard holds class-query embeddings, bit-packed masks, missing and valid flags, and the features in
one of two kinds of storage (`TripletRecipe.storage`):

- `features`: the captured features themselves (block outputs in `feature_dtype`; with
  `cross_attention` the cross-attention maps per stride; each class's cross-attention map for
  `attention_pooling`). Training reads them and runs no denoiser.
- `replay`: the capture step's denoiser inputs (the latent, timestep and conditioning; the text
  states, or with `replay_text: prompt` nothing, as the prompt is in the record). Training
  recomputes the features with one batched denoiser call (`synthseg.capture.replay`). An SD 1.5
  triplet at 512^2 is then about 0.2 MB instead of 34 MB: 20,000 of them fit in 4 GB, not 680 GB.

`auto` (the default) replays where cached features would pass `REPLAY_ABOVE` bytes per triplet, and
caches below: every real model replays, the worlds cache (a world triplet is about 0.1 MB).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .annotators import Instance
from .capture import CaptureStep, denoiser_of, replay
from .config import check_low_high, check_non_negative, check_plan_size, check_positive, check_share, load_config, record_recipe
from .device import resolve_device
from .errors import SynthsegError
from .formats import jsonl_text, read_jsonl, write_atomic
from .generate import capture_pass
from .grounding import ATTENTION_FIELDS, PIPELINE_FIELDS, GroundingConfig, class_attention_input, grounding_inputs
from .latents import encode_images, noise_generator, noise_latents, pixel_tensor, recorded_call, replay_noised
from .layouts import check_takes_prompts
from .plan import MAX_CLASSES, feature_bytes, plan_text, record_rate, time_line, triplet_bytes
from .progress import loss_progress
from .prompts import PAPER_TEMPLATES, Prompt, PromptPlanner, describe, template_slots
from .segment import SEGMENT_TEMPLATE
from .text import TEXT_INPUTS, class_queries, encode_prompts, prompt_token_spans, text_inputs, text_tokens
from .train.augment import copy_paste_instances

# Above this many bytes of cached features per triplet, `storage: auto` replays: 1 MB per triplet is
# 20 GB for the paper's 20,000 triplets, where a replay costs one denoiser call per training sample
# (about 1/50 of generating it, with 50 steps). SD 1.5 at 512^2 caches 34 MB; the world 0.1 MB.
REPLAY_ABOVE = 1_000_000


@dataclass
class TripletRecipe:
    """How triplets are made. `seen`: the classes prompts may name. `cross_attention`: also store the
    capture step's cross-attention maps (VPD's extra inputs, `GroundingConfig.cross_attention_strides`)."""

    seen: list[str] = field(default_factory=list)
    count: int = 1000
    seed: int = 0
    templates: list[str] = field(default_factory=lambda: list(PAPER_TEMPLATES))
    pair_fraction: float = 0.5
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    capture_timestep: int = 5
    capture_index: int | None = None
    target: str = "union"
    shard_size: int = 64
    batch_size: int = 8
    feature_dtype: str = "float16"
    cross_attention: bool = False
    blocks: list[str] = field(default_factory=list)  # a transformer's blocks to record; empty: capture.default_blocks
    storage: str = "auto"  # "features", "replay" or "auto" (see the module docstring)
    replay_text: str = "embeddings"  # what a replay triplet keeps of the text: "embeddings", or "prompt" (re-encoded)
    capture_from: str = "trajectory"  # "trajectory": the generation's capture step; "image": the finished image, as `segment` reads one
    negatives: float = 0.0  # with capture_from image: the chance a query names a seen class the prompt did not (target: empty)
    copy_paste: float = 0.0  # with capture_from image: the share of triplets with another image's objects pasted over (see `paste_partners`)
    paste_scale_range: list[float] = field(default_factory=lambda: [0.4, 1.0])  # the pasted image's side over the image's

    def validate(self, source: str) -> None:
        if not self.seen:
            raise SynthsegError(f"{source}: no seen classes to build prompts from")
        if self.target not in ("union", "top"):
            raise SynthsegError(f"{source}: target must be 'union' or 'top', got {self.target!r}")
        if self.feature_dtype not in ("float16", "bfloat16", "float32"):
            raise SynthsegError(f"{source}: feature_dtype must be float16, bfloat16 or float32")
        if self.storage not in ("auto", "features", "replay"):
            raise SynthsegError(f"{source}: storage must be 'auto', 'features' or 'replay', got {self.storage!r}")
        if self.replay_text not in ("embeddings", "prompt"):
            raise SynthsegError(f"{source}: replay_text must be 'embeddings' or 'prompt', got {self.replay_text!r}")
        if self.capture_from not in ("trajectory", "image"):
            raise SynthsegError(f"{source}: capture_from must be 'trajectory' or 'image', got {self.capture_from!r}")
        if self.capture_from == "image" and self.storage == "replay":
            raise SynthsegError(f"{source}: capture_from: image stores features; use storage: features or auto")
        if not 0 <= self.negatives < 1 or (self.negatives and self.capture_from != "image"):
            raise SynthsegError(f"{source}: negatives lies in [0, 1) and needs capture_from: image (a generation prompt cannot name an absent class)")
        if self.negatives and len(self.seen) < 2 * MAX_CLASSES:  # a two-class prompt may have both queries replaced
            raise SynthsegError(f"{source}: negatives needs at least {2 * MAX_CLASSES} seen classes, got {len(self.seen)}")
        check_share(source, self, "copy_paste")
        check_low_high(source, self, "paste_scale_range")
        if self.copy_paste and self.capture_from != "image":
            raise SynthsegError(f"{source}: copy_paste needs capture_from: image (a composite image has no generation to capture)")
        if self.capture_from == "image" and not 0 <= self.capture_timestep < 1000:
            raise SynthsegError(f"{source}: capture_timestep must be in 0..999 to noise a finished image")
        check_positive(source, self, "count", "shard_size", "batch_size", "num_inference_steps")
        check_plan_size(source, self.count, "count")
        check_non_negative(source, self, "guidance_scale", "capture_timestep")
        if not 0 <= self.pair_fraction <= 1:
            raise SynthsegError(f"{source}: pair_fraction must lie in [0, 1]")
        if self.shard_size % self.batch_size:
            raise SynthsegError(f"{source}: shard_size must be a multiple of batch_size")
        slots = {template_slots(t, source) for t in self.templates}
        if not slots <= {1, 2} or (1 not in slots):
            raise SynthsegError(f"{source}: templates need one-class ('{{}}') and optionally two-class slots")
        if self.pair_fraction > 0 and 2 not in slots:
            raise SynthsegError(f"{source}: pair_fraction > 0 needs a two-class template")


def triplet_prompt(recipe: TripletRecipe, index: int) -> Prompt:
    """Triplet `index`'s prompt, classes and seed; depends only on the recipe's seed and the index."""
    return PromptPlanner(recipe.templates, recipe.seed).triplet(recipe.seen, recipe.pair_fraction, index)


def plan_summary(recipe: TripletRecipe, model: str, device: str = "auto") -> str:
    """What `make_triplets` would do, without loading a model: counts per class and pair, storage, disk
    and, where a run on `device` recorded its rate, time."""
    prompts = [triplet_prompt(recipe, i) for i in range(recipe.count)]
    item, storage = triplet_bytes(model, torch.finfo(getattr(torch, recipe.feature_dtype)).bits // 8, recipe.cross_attention,
                                  recipe.blocks or None, recipe.storage, recipe.replay_text)
    took = time_line("triplets", model, resolve_device(device), recipe.guidance_scale, recipe.num_inference_steps, len(prompts))
    return plan_text("triplets", prompts, item, f"; {storage} storage" if storage else "", took)


def storage_kind(pipe, recipe: TripletRecipe) -> str:
    """"features" or "replay": the recipe's choice, or for "auto" replay where cached features would pass
    `REPLAY_ABOVE` bytes per triplet at the pipeline's default size."""
    if recipe.capture_from == "image":
        return "features"  # recomputing them would take the image, not a stored denoiser call
    if recipe.storage != "auto":
        return recipe.storage
    dtype_bytes = torch.finfo(getattr(torch, recipe.feature_dtype)).bits // 8
    latent = getattr(pipe, "default_sample_size", None) or denoiser_of(pipe).config.sample_size  # SD's pipeline has no default_sample_size
    cached = feature_bytes(pipe, latent, text_tokens(pipe), dtype_bytes, recipe.cross_attention, recipe.blocks or None)
    return "replay" if cached > REPLAY_ABOVE else "features"


def target_masks(instances: list[Instance], names: list[str], size: tuple[int, int], mode: str):
    """(Q, H, W) uint8 targets, (Q,) missing flags and per-class scores from annotator instances."""
    masks = np.zeros((len(names), *size), dtype=np.uint8)
    missing, scores = [], []
    for q, name in enumerate(names):
        found = sorted((i for i in instances if i.class_name == name), key=lambda i: -i.score)
        if mode == "top":
            found = found[:1]
        for inst in found:
            masks[q] |= inst.mask.astype(np.uint8)
        missing.append(not found)
        scores.append(found[0].score if found else 0.0)
    return masks, missing, scores


@torch.no_grad()
def make_triplets(pipe, annotator, recipe: TripletRecipe, directory: str | Path) -> Path:
    """Write `recipe.count` triplets as shards into `directory`, skipping shards already written."""
    for name in recipe.seen:  # refuse a class the annotator cannot label before any work
        annotator.category_of(name)
    check_takes_prompts(pipe)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record_recipe(directory / "recipe.json", recipe, f"{directory} holds triplets of another recipe ({{changed}} differ); use a new --out")
    storage = storage_kind(pipe, recipe)
    stored = {"storage": storage, **({"replay_text": recipe.replay_text} if storage == "replay" else {})}
    write_atomic(directory / "layout.json", json.dumps({**_layout(pipe, recipe), **stored}) + "\n")
    dtype = getattr(torch, recipe.feature_dtype)
    shards = range((recipe.count + recipe.shard_size - 1) // recipe.shard_size)
    pipe.set_progress_bar_config(disable=True)
    missing: list[float] = []  # one flag per prompted class, for the progress display
    start, made = time.perf_counter(), 0
    with loss_progress("triplets", recipe.count, log_every=recipe.shard_size, metric="missing") as advance:
        for shard in shards:
            stem = directory / f"shard-{shard:05d}"
            indices = list(range(shard * recipe.shard_size, min(recipe.count, (shard + 1) * recipe.shard_size)))
            if stem.with_suffix(".jsonl").is_file():
                records = read_jsonl(stem.with_suffix(".jsonl"))
            else:
                rows = [_generate_batch(pipe, annotator, recipe, indices[i : i + recipe.batch_size], dtype, storage)
                        for i in range(0, len(indices), recipe.batch_size)]
                _write_shard(stem, rows)
                records = [r for batch in rows for r in batch["records"]]
                made += len(records)
            missing += [float(m) for r in records for m in r["missing"]]
            advance(indices[-1] + 1, missing)
    record_rate("triplets", pipe, recipe.guidance_scale, recipe.num_inference_steps, time.perf_counter() - start, made)
    return directory


def _layout(pipe, recipe: TripletRecipe) -> dict:
    """The GroundingConfig fields that the triplets fix: feature layout, text width, attention inputs."""
    config = GroundingConfig.for_pipeline(pipe, cross_attention=recipe.cross_attention, blocks=recipe.blocks or None)
    keys = list(PIPELINE_FIELDS) + (list(ATTENTION_FIELDS) if recipe.cross_attention else [])
    return {k: getattr(config, k) for k in keys}


def _generate_batch(pipe, annotator, recipe: TripletRecipe, indices: list[int], dtype: torch.dtype, storage: str = "features") -> dict:
    """Generate, capture and label triplets `indices`: tensors (batch first) and one record per triplet.
    `storage` "features" keeps the features, "replay" the capture step's denoiser inputs."""
    planned = [triplet_prompt(recipe, i) for i in indices]
    prompts, names, seeds = [p.prompt for p in planned], [p.classes for p in planned], [p.seed for p in planned]
    run = capture_pass(pipe, prompts, names, seeds, guidance_scale=recipe.guidance_scale, num_inference_steps=recipe.num_inference_steps,
                       capture_step=CaptureStep(recipe.capture_timestep, recipe.capture_index), feature_dtype=dtype,
                       blocks=recipe.blocks or None, record_inputs=storage == "replay",
                       attention=recipe.capture_from == "trajectory")  # an image capture records its own, below
    images = np.stack([np.asarray(image) for image in run.images])
    detected = annotator.annotate(list(images), [list(n) for n in names])
    pasted = [None] * len(indices)
    if recipe.copy_paste:
        images, detected, pasted = paste_partners(recipe, images, detected, names, indices)
    if recipe.capture_from == "image":
        shown = [list(classes) + [c for c in (p or {}).get("classes", []) if c not in classes] for classes, p in zip(names, pasted)]
        queried = [query_names(recipe, classes, index) for classes, index in zip(shown, indices)]
        features, embeds, spans, query_prompts = _capture_images(pipe, recipe, images, queried, indices)
    else:
        queried, features, embeds, spans, query_prompts = [list(n) for n in names], run.features, run.prompt_embeds, run.spans, None
    queries, valid = class_queries(embeds, spans)
    width = MAX_CLASSES
    masks = np.zeros((len(indices), width, *images.shape[1:3]), dtype=np.uint8)
    missing = np.zeros((len(indices), width), dtype=bool)
    records = []
    for b, (index, prompt, classes, seed, found) in enumerate(zip(indices, prompts, names, seeds, detected)):
        m, miss, scores = target_masks(found, queried[b], images.shape[1:3], recipe.target)
        miss = [gone and name in classes for name, gone in zip(queried[b], miss)]  # a named absent class: its empty mask is the target
        masks[b, : len(queried[b])], missing[b, : len(queried[b])] = m, miss
        records.append(dict(index=index, prompt=prompt, seed=seed, classes=queried[b], missing=miss, scores=scores,
                            **({"query_prompt": query_prompts[b], "prompted": list(classes)} if query_prompts else {}),
                            **({"pasted": pasted[b]} if pasted[b] else {})))
    padded = torch.zeros(len(indices), width, queries.shape[-1])
    padded[:, : queries.shape[1]] = queries.float()
    flags = torch.zeros(len(indices), width, dtype=torch.bool)
    flags[:, : valid.shape[1]] = valid
    if storage == "replay":
        tensors = _replay_tensors(run.features.inputs, recipe, dtype)
    else:
        tensors = _feature_tensors(pipe, recipe, features, spans, dtype)
    tensors.update(queries=padded.to(dtype), valid=flags, masks=torch.from_numpy(masks), missing=torch.from_numpy(missing))
    return dict(tensors=tensors, records=records)


def paste_partners(recipe: TripletRecipe, images: np.ndarray, detected: list[list[Instance]], names: list[tuple[str, ...]],
                   indices: list[int]) -> tuple[np.ndarray, list[list[Instance]], list[dict | None]]:
    """Composite triplets (Simple Copy-Paste on annotated instances, `augment.copy_paste_instances`): with
    `recipe.copy_paste` chance, triplet `indices[b]` gets the instances the annotator found in another image of the
    batch pasted over its (N, H, W, 3) image, chosen among those that keep its classes within MAX_CLASSES and add
    none that the annotator missed in it (that object would be labelled background). Images of one or two objects
    then also teach the module scenes of more, on the features `segment` reads of them. Its own instances lose what
    the paste covers. Draws are seeded by the recipe and the index.
    -> (images, instances, per triplet None or {"index": the partner's index, "classes": its pasted classes})."""
    out, instances, pasted = images.copy(), [list(found) for found in detected], [None] * len(indices)
    for b, index in enumerate(indices):
        rng = np.random.default_rng([recipe.seed, index, 2])
        if rng.random() >= recipe.copy_paste:
            continue
        missed = set(names[b]) - {i.class_name for i in detected[b]}  # a missed object of a class pasted in would be labelled background
        partners = [j for j in range(len(indices)) if j != b and detected[j] and not missed & {i.class_name for i in detected[j]}
                    and len(set(names[b]) | {i.class_name for i in detected[j]}) <= MAX_CLASSES]
        if not partners:
            continue
        j = partners[int(rng.integers(len(partners)))]
        own, other = detected[b], detected[j]
        masks = np.array([i.mask for i in own], bool).reshape(-1, *images.shape[1:3])
        other_masks = np.array([i.mask for i in other], np.uint8)
        out[b], masks, order = copy_paste_instances(images[b], masks, np.arange(len(own)), (images[j], other_masks, np.arange(len(other)) + len(own)),
                                                    rng, recipe.paste_scale_range)
        found = own + other
        instances[b] = [Instance(mask, found[k].class_name, found[k].score) for mask, k in zip(masks, order) if mask.any()]
        pasted[b] = {"index": indices[j], "classes": sorted({i.class_name for i in other})}
    return out, instances, pasted


def query_names(recipe: TripletRecipe, prompted: list[str], index: int) -> list[str]:
    """The classes triplet `index` queries: its prompt's, or with `negatives` MAX_CLASSES names where each
    slot names an absent seen class with that chance (always, past the prompt's classes), in a seeded
    random order."""
    if not recipe.negatives:
        return prompted
    rng = np.random.default_rng([recipe.seed, index, 1])
    absent = [str(c) for c in rng.permutation([c for c in recipe.seen if c not in prompted])]
    names = [prompted[j] if j < len(prompted) and rng.random() >= recipe.negatives else absent.pop() for j in range(MAX_CLASSES)]
    return [names[j] for j in rng.permutation(len(names))]


def _capture_images(pipe, recipe: TripletRecipe, images: np.ndarray, queried: list[list[str]], indices: list[int]):
    """Features of finished images (N, H, W, 3) uint8 as `synthseg segment` reads a real one: each VAE-encoded,
    noised to the capture timestep (seeded by the recipe and its index) and replayed once with a prompt
    naming `queried[i]` in `SEGMENT_TEMPLATE`. Returns (features, prompt embeddings, spans, prompts)."""
    prompts = [SEGMENT_TEMPLATE.format(describe(names)) for names in queried]
    spans = prompt_token_spans(pipe, prompts, queried)
    latents = encode_images(pipe, pixel_tensor(images))
    draws = [noise_latents(pipe, latents[i : i + 1], recipe.capture_timestep, noise_generator(recipe.seed, index))
             for i, index in enumerate(indices)]
    call = recorded_call(pipe, len(prompts), *images.shape[1:3])
    encoded = encode_prompts(pipe, prompts, guidance_scale=1.0)
    features = replay_noised(pipe, call, torch.cat([d[0] for d in draws]), draws[0][1], text_inputs(pipe, prompts, encoded),
                             attention=True, blocks=recipe.blocks or None)
    return features, encoded.embeds, spans, prompts


def _feature_tensors(pipe, recipe: TripletRecipe, features, spans, dtype: torch.dtype) -> dict:
    """What a grounding module reads of a capture: "features.<block>", with `cross_attention` the
    "attention.<stride>" maps, and each class's attention map ("class_attention"), on the CPU."""
    tensors = {f"features.{k}": v.to(dtype).cpu().contiguous() for k, v in features.blocks.items()}
    if recipe.cross_attention:
        config = GroundingConfig.for_pipeline(pipe, cross_attention=True, blocks=recipe.blocks or None)
        maps = grounding_inputs(features, config)[len(config.feature_channels) :]
        tensors.update({f"attention.{s}": m.to(dtype).cpu() for s, m in zip(config.cross_attention_strides, maps)})
    tensors["class_attention"] = class_attention_input(features, spans, MAX_CLASSES).to(dtype).cpu()
    return tensors


def _replay_tensors(inputs: dict, recipe: TripletRecipe, dtype: torch.dtype) -> dict:
    """The capture step's denoiser inputs as "replay.<name>"; latents and text states (floating, two or
    more dims) in `dtype`, as `synthseg.capture.replay` casts back. With `replay_text: prompt` the text
    arguments are left out: a replay encodes the record's prompt again."""
    tensors = {}
    for name, value in inputs.items():
        if recipe.replay_text == "prompt" and name in TEXT_INPUTS:
            continue
        if not isinstance(value, torch.Tensor):
            raise SynthsegError(f"the denoiser's argument {name}={value!r} cannot be stored for replay; use storage: features")
        tensors[f"replay.{name}"] = (value.to(dtype) if value.is_floating_point() and value.ndim >= 2 else value).cpu().contiguous()
    return tensors


def _write_shard(stem: Path, rows: list[dict]) -> None:
    """Tensors first (masks bit-packed along the width), then the jsonl: a shard counts as written once its jsonl exists."""
    tensors = {k: torch.cat([r["tensors"][k] for r in rows]) for k in rows[0]["tensors"]}
    masks = tensors.pop("masks").numpy()
    tensors["masks_packed"] = torch.from_numpy(np.packbits(masks.astype(bool), axis=-1))
    tmp = stem.with_name(stem.name + ".safetensors.tmp")
    save_file(tensors, tmp, metadata={"mask_width": str(masks.shape[-1])})
    tmp.replace(stem.with_suffix(".safetensors"))
    write_atomic(stem.with_suffix(".jsonl"), jsonl_text(r for batch in rows for r in batch["records"]))


def _read_shard(shard: Path) -> dict:
    """A shard's tensors, masks unpacked to (N, Q, H, W) uint8 (shards before packing stored them so)."""
    with safe_open(shard, framework="pt") as f:
        data = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata() or {}
    if "masks_packed" in data:
        packed = data.pop("masks_packed").numpy()
        data["masks"] = torch.from_numpy(np.unpackbits(packed, axis=-1, count=int(metadata["mask_width"])))
    return data


def _storage(directory: str | Path) -> dict:
    """A triplet folder's storage entries of layout.json: storage ("features" where absent, older folders)
    and, for replay, replay_text."""
    path = Path(directory) / "layout.json"
    layout = json.loads(path.read_text()) if path.is_file() else {}
    return {"storage": layout.get("storage", "features"), "replay_text": layout.get("replay_text")}


def stored_for_replay(directory: str | Path) -> bool:
    """Whether a triplet folder holds denoiser inputs to replay rather than features."""
    return _storage(directory)["storage"] == "replay"


class TripletShards(torch.utils.data.IterableDataset):
    """Streams triplets shard by shard (one shard in memory at a time), shuffled with `seed` per epoch.
    Triplets whose prompt names a class in `exclude` are skipped (to hold classes out for validation).
    Replay triplets need `pipe`, the pipeline that made them: their features are recomputed in
    batches of the training batch size, one denoiser call each.

    Yields dicts: features (list of (C,H,W) float32, capture order), attention (list of (T,h,w)
    float32 per stride, empty unless made with cross_attention), class_attention (Q,h,w) float32,
    queries (Q,D), valid (Q,), masks (Q,H,W) float32, missing (Q,).
    """

    def __init__(self, directory: str | Path, seed: int = 0, exclude: list[str] | tuple[str, ...] = (), pipe=None):
        self.directory = Path(directory)
        self.shards = sorted(p for p in self.directory.glob("shard-*.safetensors") if p.with_suffix(".jsonl").is_file())
        if not self.shards:
            raise SynthsegError(f"no triplet shards in {self.directory}: run make-triplets first")
        if self.replays and pipe is None:
            raise SynthsegError(f"{self.directory} holds replay triplets, whose features are recomputed by the pipeline that made them: "
                                "pass that pipeline (train-grounding --model)")
        self.seed, self.pipe = seed, pipe
        self.exclude = set(exclude)
        self.epoch = 0
        self.replay_batch = 16

    def __len__(self) -> int:
        return len(self.records())

    def _shard_records(self, shard: Path) -> list[tuple[int, dict]]:
        """(row, record) of the shard's triplets that are not excluded."""
        records = read_jsonl(shard.with_suffix(".jsonl"))
        return [(row, r) for row, r in enumerate(records) if not set(r["classes"]) & self.exclude]

    def records(self) -> list[dict]:
        return [r for p in self.shards for _, r in self._shard_records(p)]

    def bytes_per_triplet(self) -> float:
        """Disk cost of one triplet, over every triplet of the folder."""
        files = sum(p.stat().st_size + p.with_suffix(".jsonl").stat().st_size for p in self.shards)
        return files / sum(len(read_jsonl(p.with_suffix(".jsonl"))) for p in self.shards)

    def layout(self) -> dict:
        """The GroundingConfig fields the shards fix (feature layout, text width, attention inputs)."""
        layout = json.loads((self.directory / "layout.json").read_text())
        return {k: v for k, v in layout.items() if k not in _storage(self.directory)}

    @property
    def replays(self) -> bool:
        return stored_for_replay(self.directory)

    @property
    def recipe(self) -> TripletRecipe:
        """The recipe the shards were made with."""
        return load_config(TripletRecipe, json.loads((self.directory / "recipe.json").read_text()), str(self.directory / "recipe.json"))

    def batches(self, batch_size: int, start_step: int = 0):
        """Endless collated batches over epochs; a run resumed at `start_step` begins a fresh epoch order."""
        self.epoch = start_step * batch_size // len(self)
        self.replay_batch = batch_size
        while True:
            yield from torch.utils.data.DataLoader(self, batch_size=batch_size, drop_last=True)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        for shard in (self.shards[i] for i in rng.permutation(len(self.shards))):
            data = _read_shard(shard)
            kept = self._shard_records(shard)
            order = rng.permutation(np.array([row for row, _ in kept], dtype=int))
            step = self.replay_batch if self.replays else max(len(order), 1)
            for start in range(0, len(order), step):
                rows = order[start : start + step]
                source, at = (self._replayed(data, rows, dict(kept)), range(len(rows))) if self.replays else (data, rows)
                names, maps = _input_keys(source)
                for row, i in zip(rows, at):
                    yield dict(
                        features=[source[k][i].float() for k in names], attention=[source[k][i].float() for k in maps],
                        queries=data["queries"][row].float(), valid=data["valid"][row], masks=data["masks"][row].float(),
                        missing=data["missing"][row], **({"class_attention": source["class_attention"][i].float()} if "class_attention" in source else {}),
                    )

    @torch.no_grad()
    def _replayed(self, data: dict, rows, records: dict) -> dict:
        """The feature tensors of shard `rows`, recomputed by one denoiser call on their stored inputs."""
        recipe = self.recipe
        inputs = {k.removeprefix("replay."): v[rows] for k, v in data.items() if k.startswith("replay.")}
        prompts, classes = [records[r]["prompt"] for r in rows], [records[r]["classes"] for r in rows]
        if _storage(self.directory)["replay_text"] == "prompt":
            inputs.update(text_inputs(self.pipe, prompts))
        features = replay(self.pipe, inputs, blocks=recipe.blocks or None, dtype=torch.float32)
        return _feature_tensors(self.pipe, recipe, features, prompt_token_spans(self.pipe, prompts, classes), torch.float32)


class OnlineTriplets:
    """Triplets generated and labelled on the fly, as the reference code trains (no cache on disk).

    Batch s holds triplets s*B .. s*B+B-1 of `recipe` (prompts and seeds from the index), so a
    resumed run sees the same batches; same batch format as `TripletShards.batches`.
    """

    def __init__(self, pipe, annotator, recipe: TripletRecipe):
        for name in recipe.seen:
            annotator.category_of(name)
        self.pipe, self.annotator, self.recipe = pipe, annotator, recipe
        pipe.set_progress_bar_config(disable=True)

    def layout(self) -> dict:
        return _layout(self.pipe, self.recipe)

    @torch.no_grad()
    def batches(self, batch_size: int, start_step: int = 0):
        for s in range(start_step, 2**62):
            tensors = _generate_batch(self.pipe, self.annotator, self.recipe, list(range(s * batch_size, (s + 1) * batch_size)),
                                      torch.float32)["tensors"]
            names, maps = _input_keys(tensors)
            yield dict(features=[tensors[k] for k in names], attention=[tensors[k] for k in maps], queries=tensors["queries"], valid=tensors["valid"],
                       masks=tensors["masks"].float(), missing=tensors["missing"], class_attention=tensors["class_attention"])


def _capture_order(key: str) -> tuple[int, int]:
    """Sort key restoring capture order of "features.<block>" names: a UNet's down, mid, up blocks; a
    transformer's double-stream, then single-stream blocks."""
    block = key.removeprefix("features.")
    kind, _, number = block.partition(".")
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2, "transformer_blocks": 3, "single_transformer_blocks": 4}
    return (order[kind], int(number or 0))


def _input_keys(tensors) -> tuple[list[str], list[str]]:
    """Stored "features.<block>" keys in capture order and "attention.<stride>" keys, finest stride first."""
    names = sorted((k for k in tensors if k.startswith("features.")), key=_capture_order)
    maps = sorted((k for k in tensors if k.startswith("attention.")), key=lambda k: int(k.split(".")[1]))
    return names, maps
