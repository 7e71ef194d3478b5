"""Writing a labelled synthetic dataset from grounded generation: the product's main job.

Layout of a dataset folder:

    images/NNNNNN.png            generated RGB images
    masks/NNNNNN.png             semantic label maps, mode "P", VOC palette: 0 background,
                                 k = k-th class of the dataset, 255 = ignore (uncertain pixels)
    annotations.json             COCO instances: RLE masks, categories 1..K, iscrowd 0
    metadata.jsonl               one line per image: file_name, mask_file_name (HF imagefolder),
                                 prompt, seed, classes, scores, model and module hashes, versions
    README.md                    dataset card
    records/NNNNNN.json          per-image records; the three files above are built from them
    recipe.json                  the recipe; a rerun or another shard with a different one is refused

Labels: at each pixel the most probable prompted class wins if its probability is at least
`0.5 + band/2`; pixels whose best probability is at most `0.5 - band/2` are background; pixels in
between are 255 (ignore). Instances are the connected components (8-connectivity) of each class's
region, dropping components smaller than `min_instance_area` pixels. With `require_all_classes`,
an image where a prompted class got no pixel is dropped, and the count goes into the card.

Kill-safety: each image's files are written first and its record last, each atomically; a rerun
skips indices that have a record, so a run killed at any point and rerun equals an uninterrupted
one. Items are planned from the recipe and seed alone and generated in fixed batches of
`batch_size` consecutive items (batched float arithmetic differs in the last bit between batch
compositions, so the batches never change); `--num-shards/--shard-index` (or the processes of
torchrun / accelerate launch) deal those batches round robin, and `finalize` builds the shared files
from all records, so shards merge into exactly the dataset a single process writes. Shards written
to separate folders are joined by `merge_datasets`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .classes import check_names, resolve_classes
from .config import check_non_negative, check_positive, load_config, record_recipe
from .device import resolve_device
from .errors import SynthsegError
from .formats import IGNORE, coco_annotation, coco_document, jsonl_text, label_image, png_bytes, write_atomic, write_json_atomic
from .plan import dataset_item_bytes, plan_text, record_rate, time_line
from .prompts import PAPER_TEMPLATES, Prompt, PromptPlanner
from .registry import BUNDLES, check_vocabulary, grounding_for, model_card, recipe_names, recipe_path, resolve_grounding, resolve_pipeline


@dataclass
class DatasetRecipe:
    """What to generate. `classes`: "voc", "coco", "world" or comma-separated names (set names may
    join them). `model`: a bundled name, hub id or folder; `grounding`: a bundled name or a module
    folder. Steps and guidance left at None take the model's own defaults (its model card's, else
    Stable Diffusion's 50 and 7.5), whatever the class set."""

    classes: str
    model: str = "world"
    grounding: str = "world"
    per_class: int = 10
    per_pair: int = 0
    pairs: list[list[str]] = field(default_factory=list)
    templates: list[str] = field(default_factory=lambda: list(PAPER_TEMPLATES))
    seed: int = 0
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    band: float = 0.2
    min_instance_area: int = 4
    require_all_classes: bool = True
    batch_size: int = 8

    def __post_init__(self) -> None:
        card = model_card(self.model)
        if self.num_inference_steps is None:
            self.num_inference_steps = card.num_inference_steps
        if self.guidance_scale is None:
            self.guidance_scale = card.guidance_scale

    def validate(self, source: str) -> None:
        names = resolve_classes(self.classes)
        check_non_negative(source, self, "per_class", "per_pair", "min_instance_area", "guidance_scale")
        check_positive(source, self, "num_inference_steps", "batch_size")
        for pair in self.pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise SynthsegError(f"{source}: a pair names two different classes, got {pair}")
            check_names(pair, names, f"{source}: pair")
        if not 0 <= self.band < 1:
            raise SynthsegError(f"{source}: band must lie in [0, 1)")
        slots = {t.count("{}") for t in self.templates}
        if 1 not in slots or (self.per_pair and 2 not in slots):
            raise SynthsegError(f"{source}: templates need a one-class slot ('{{}}'), and a two-class one when per_pair > 0")
        if not self.per_class and not (self.per_pair and (self.pairs or len(names) > 1)):
            raise SynthsegError(f"{source}: the plan has no images (per_class and per_pair are 0, or no pair exists)")
        check_vocabulary(self.model, names)

    @property
    def class_names(self) -> tuple[str, ...]:
        return resolve_classes(self.classes)


def load_dataset_recipe(classes: str = "world", recipe: str | Path | None = None, **overrides) -> DatasetRecipe:
    """The recipe of a job: `recipe` (a packaged name or a path), else the packaged recipe of a named
    class set ("voc" -> dataset-voc), else just `classes`; then `overrides` (None values ignored), validated.
    A bundled model given without a grounding module brings its own ("world-dit" -> world-dit's)."""
    from .config import apply_overrides, load_config, read_mapping

    if overrides.get("model") in BUNDLES:
        overrides["grounding"] = grounding_for(overrides["model"], overrides.get("grounding"))

    if recipe is None and classes in recipe_names("dataset"):
        recipe = classes
    path = recipe_path(recipe, "dataset") if recipe is not None else None
    source = str(path or "make-dataset")
    data = read_mapping(path) if path else {"classes": classes}
    return load_config(DatasetRecipe, apply_overrides(data, overrides, source), source)


def plan(recipe: DatasetRecipe) -> list[Prompt]:
    """Every item of the dataset, in index order: per_class images of each class, then per_pair of each pair.
    An item's seed depends only on the recipe seed and its index."""
    return PromptPlanner(recipe.templates, recipe.seed).dataset(recipe.class_names, recipe.per_class, recipe.pairs, recipe.per_pair)


def plan_summary(recipe: DatasetRecipe, device: str = "auto") -> str:
    """What `make_dataset` would write, and in what time on `device`, without loading a model."""
    items = plan(recipe)
    took = time_line("images", recipe.model, resolve_device(device), recipe.guidance_scale, recipe.num_inference_steps, len(items))
    return plan_text("images", items, dataset_item_bytes(recipe.model), " at most, before PNG compression", took)


def label_map(probs: np.ndarray, class_ids: list[int], band: float) -> np.ndarray:
    """(K, H, W) probabilities of the prompted classes -> HW uint8 labels (class_ids[k], 0 or 255)."""
    best = probs.max(axis=0)
    labels = np.asarray(class_ids, dtype=np.uint8)[probs.argmax(axis=0)]
    labels[best <= 0.5 - band / 2] = 0
    labels[(best > 0.5 - band / 2) & (best < 0.5 + band / 2)] = IGNORE
    return labels


def instances(labels: np.ndarray, class_id: int, min_area: int) -> list[np.ndarray]:
    """Connected components (8-connectivity) of one class's region, largest first, as HW bool masks."""
    components, count = ndimage.label(labels == class_id, structure=np.ones((3, 3)))
    masks = [components == i for i in range(1, count + 1)]
    return sorted((m for m in masks if m.sum() >= min_area), key=lambda m: -int(m.sum()))


def file_hash(path: str | Path) -> str:
    """sha256 of a file, or of all files under a folder (sorted by relative path)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def write_item(directory: Path, item: Prompt, image: Image.Image, probs: torch.Tensor, recipe: DatasetRecipe, provenance: dict) -> None:
    """Write one image, its label map and (last) its record."""
    names = recipe.class_names
    ids = [names.index(c) + 1 for c in item.classes]
    labels = label_map(probs.numpy(), ids, recipe.band)
    present = [bool((labels == i).any()) for i in ids]
    stem = f"{item.index:06d}"
    record = dict(asdict(item), file_name=f"images/{stem}.png", mask_file_name=f"masks/{stem}.png",
                  scores={c: float(p.max()) for c, p in zip(item.classes, probs)},
                  dropped=None if all(present) or not recipe.require_all_classes else "a prompted class has no confident pixel",
                  **provenance)
    if record["dropped"] is None:
        write_atomic(directory / record["file_name"], png_bytes(image))
        write_atomic(directory / record["mask_file_name"], png_bytes(label_image(labels)))
        record["instances"] = [
            coco_annotation(0, 0, class_id, mask) for class_id in ids for mask in instances(labels, class_id, recipe.min_instance_area)
        ]
        record["width"], record["height"] = image.size
    write_json_atomic(directory / "records" / f"{stem}.json", record)


def claim(directory: Path, recipe: DatasetRecipe) -> None:
    """Record the recipe in a new dataset folder, or refuse one that another recipe started."""
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "recipe.json").is_file() and any(directory.iterdir()):
        raise SynthsegError(f"{directory} is not empty and holds no synthseg recipe.json; choose an empty or new --out")
    record_recipe(directory / "recipe.json", recipe,
                  f"{directory} was started with another recipe ({{changed}} differ); use a new --out or the same options")


def read_recipe(directory: str | Path) -> DatasetRecipe:
    """The recipe a dataset folder was started with."""
    path = Path(directory) / "recipe.json"
    if not path.is_file():
        raise SynthsegError(f"{directory}: no recipe.json; not a synthseg dataset folder")
    return load_config(DatasetRecipe, json.loads(path.read_text()), str(path))


def merge_datasets(sources: list[str | Path], directory: str | Path) -> dict:
    """Join shard folders written separately (same recipe) into `directory`, then finalize it."""
    directory = Path(directory)
    recipes = [read_recipe(source) for source in sources]
    if any(r != recipes[0] for r in recipes):
        raise SynthsegError("the shard folders were made with different recipes")
    claim(directory, recipes[0])
    for source in map(Path, sources):
        for sub in ("images", "masks", "records"):
            (directory / sub).mkdir(exist_ok=True)
            for file in sorted((source / sub).glob("[!.]*")):
                if not (directory / sub / file.name).exists():
                    write_atomic(directory / sub / file.name, file.read_bytes())
    return finalize(directory, recipes[0])


def finalize(directory: str | Path, recipe: DatasetRecipe) -> dict:
    """Build annotations.json, metadata.jsonl and README.md from every record; fails if any is missing."""
    directory = Path(directory)
    items = plan(recipe)
    missing = [i.index for i in items if not _record_path(directory, i).is_file()]
    if missing:
        raise SynthsegError(f"{directory}: {len(missing)} of {len(items)} images are not written yet (first: {missing[0]}); run the remaining shards")
    for sub in ("images", "masks", "records"):  # temporary files of writes that a kill interrupted
        for stale in (directory / sub).glob(".*.tmp*"):
            stale.unlink()
    images, annotations, metadata, dropped = [], [], [], {}
    for item in items:
        record = _read_record(directory, item)
        if record is None:
            raise SynthsegError(f"{_record_path(directory, item)}: corrupt record; rerun make-dataset with the same options to redo it")
        if record["dropped"]:
            dropped[record["dropped"]] = dropped.get(record["dropped"], 0) + 1
            continue
        image_id = len(images) + 1
        images.append(dict(id=image_id, file_name=record["file_name"], width=record["width"], height=record["height"]))
        for ann in record.pop("instances"):
            annotations.append(dict(ann, id=len(annotations) + 1, image_id=image_id))
        metadata.append({k: v for k, v in record.items() if k not in ("dropped", "width", "height")})
    write_json_atomic(directory / "annotations.json", coco_document(images, annotations, recipe.class_names, "synthseg synthetic dataset"))
    write_atomic(directory / "metadata.jsonl", jsonl_text(metadata))
    summary = dict(images=len(images), instances=len(annotations), planned=len(items), dropped=dropped)
    write_atomic(directory / "README.md", _card(recipe, summary, metadata[0] if metadata else {}))
    return summary


def _card(recipe: DatasetRecipe, summary: dict, example: dict) -> str:
    classes = ", ".join(recipe.class_names)
    return f"""# synthseg synthetic segmentation dataset

Generated by grounded generation (Li et al. 2023): each image comes with a grounding module's
masks of the classes named in its prompt. No human labelled it.

- images: {summary['images']} kept of {summary['planned']} planned; dropped: {json.dumps(summary['dropped'])}
- instances: {summary['instances']}
- classes ({len(recipe.class_names)}, label k = k-th): {classes}
- model: {example.get('model', '?')} ({example.get('model_hash', '?')}); grounding module hash {example.get('grounding_hash', '?')}

## Files
- `images/`: PNG images. `masks/`: palette PNG label maps (0 background, 255 ignore).
- `annotations.json`: COCO instances (RLE), categories 1..K in the order above.
- `metadata.jsonl`: per image prompt, seed, classes and scores; `file_name` and `mask_file_name`
  make `datasets.load_dataset("imagefolder", data_dir=...)` give image and mask columns.

## Recipe
```json
{json.dumps(asdict(recipe), indent=2)}
```
"""


def provenance(model: str, grounding: str | Path) -> dict:
    """What made the dataset: model id (bundled name, hub id or folder) and the hash of a local one,
    grounding module hash, library versions."""
    import diffusers

    from . import __version__

    local = Path(resolve_pipeline(model))
    return dict(
        model=model, model_hash=file_hash(local) if local.exists() else None, grounding_hash=file_hash(resolve_grounding(grounding)),
        versions=dict(synthseg=__version__, diffusers=diffusers.__version__, torch=torch.__version__, python=platform.python_version()),
    )


def _record_path(directory: Path, item: Prompt) -> Path:
    return directory / "records" / f"{item.index:06d}.json"


def _read_record(directory: Path, item: Prompt) -> dict | None:
    """An item's record, or None where it is missing or cut."""
    try:
        return json.loads(_record_path(directory, item).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _intact(directory: Path, item: Prompt) -> bool:
    """Whether an item is completely written: its record parses and its PNGs decode to the end. A job
    killed mid-write, or a disk that filled, can leave either cut; such an item is redone."""
    record = _read_record(directory, item)
    if record is None:
        return False
    if record.get("dropped"):
        return True
    try:
        for name in ("file_name", "mask_file_name"):
            with Image.open(directory / record[name]) as image:
                image.load()
    except (OSError, KeyError, SyntaxError):
        return False
    return True


def check_shards(num_shards: int | None, shard_index: int | None) -> None:
    """Refuse a shard count below 1 or an index outside it, before any work."""
    if num_shards is not None and num_shards < 1:
        raise SynthsegError(f"--num-shards must be at least 1, got {num_shards}")
    if shard_index is not None and not 0 <= shard_index < (num_shards or 1):
        raise SynthsegError(f"--shard-index {shard_index} is outside 0..{(num_shards or 1) - 1}")


def make_dataset(pipe, grounding, recipe: DatasetRecipe, directory: str | Path, provenance: dict, *,
                 num_shards: int | None = None, shard_index: int | None = None) -> dict | None:
    """Generate this shard's items into `directory`, skipping written ones; finalize when all are there.

    Without `num_shards`, a run under torchrun or accelerate launch takes its shard from the launcher
    (one per process) and the main process finalizes after all are done; otherwise one shard.
    Returns the summary once the whole dataset is complete, else None (other shards still pending).
    """
    import os

    from .generate import generate_grounded
    from .progress import loss_progress

    directory = Path(directory)
    state = None
    if num_shards is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True, CPU processes each run alone
        num_shards, shard_index = state.num_processes, state.process_index
    check_shards(num_shards, shard_index)
    num_shards, shard_index = num_shards or 1, shard_index or 0
    if state is None or state.is_main_process:
        claim(directory, recipe)
    if state is not None:
        state.wait_for_everyone()
        claim(directory, recipe)  # the other processes check the main process's recipe.json
    for sub in ("images", "masks", "records"):
        (directory / sub).mkdir(parents=True, exist_ok=True)

    items = plan(recipe)
    batches = [items[i : i + recipe.batch_size] for i in range(0, len(items), recipe.batch_size)]
    mine = batches[shard_index::num_shards]
    written = {item.index for batch in mine for item in batch if _intact(directory, item)}  # verified once, at the start

    def done(item: Prompt) -> bool:
        return item.index in written

    todo = [batch for batch in mine if not all(done(item) for item in batch)]
    total = sum(len(b) for b in mine)
    skipped = total - sum(len(b) for b in todo)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    with loss_progress("make-dataset", total, skipped, log_every=recipe.batch_size, metric="kept") as advance:
        kept: list[float] = []
        for batch in todo:
            # Whole batches, always the same ones: an image's pixels do not depend on how a run was split.
            result = generate_grounded(pipe, grounding, [i.prompt for i in batch], [i.classes for i in batch],
                                       [i.seed for i in batch], guidance_scale=recipe.guidance_scale,
                                       num_inference_steps=recipe.num_inference_steps)
            for item, image, probs in zip(batch, result.images, result.masks):
                if not done(item):
                    write_item(directory, item, image, probs, recipe, provenance)
                    written.add(item.index)
                kept.append(float((directory / "images" / f"{item.index:06d}.png").is_file()))
            advance(skipped + len(kept), kept)
    record_rate("images", pipe, recipe.guidance_scale, recipe.num_inference_steps, time.perf_counter() - start, len(kept))
    if state is not None:
        state.wait_for_everyone()
        return finalize(directory, recipe) if state.is_main_process else None
    if all(_record_path(directory, item).is_file() for item in items):
        return finalize(directory, recipe)
    return None


def build_dataset(recipe: DatasetRecipe, directory: str | Path, *, device: str = "auto", num_shards: int | None = None,
                  shard_index: int | None = None) -> dict | None:
    """`make_dataset` from a recipe alone: checks the shards, the output folder and the device before
    loading the recipe's pipeline and grounding module (bundled names, hub ids or folders)."""
    from .formats import check_output_dir
    from .grounding import GroundingModule
    from .pipeline import load_pipeline

    check_shards(num_shards, shard_index)
    check_output_dir(directory)
    torch_device = resolve_device(device)
    module = GroundingModule.from_pretrained(recipe.grounding).to(torch_device)
    pipe = load_pipeline(recipe.model, device=torch_device)
    return make_dataset(pipe, module, recipe, directory, provenance(recipe.model, recipe.grounding), num_shards=num_shards, shard_index=shard_index)
