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
import io
import json
import platform
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .classes import check_names, resolve_classes
from .errors import SynthsegError
from .formats import IGNORE, coco_annotation, coco_document, label_image, write_atomic, write_json_atomic
from .prompts import PAPER_TEMPLATES, caption


@dataclass
class DatasetRecipe:
    """What to generate. `classes`: "voc", "coco", "world" or comma-separated names. `model`: hub id,
    folder or "world"; `grounding`: a grounding module folder or "world" (the bundled one)."""

    classes: str
    model: str = "world"
    grounding: str = "world"
    per_class: int = 10
    per_pair: int = 0
    pairs: list[list[str]] = field(default_factory=list)
    templates: list[str] = field(default_factory=lambda: list(PAPER_TEMPLATES))
    seed: int = 0
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    band: float = 0.2
    min_instance_area: int = 4
    require_all_classes: bool = True
    batch_size: int = 8

    def validate(self, source: str) -> None:
        names = resolve_classes(self.classes)
        for pair in self.pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise SynthsegError(f"{source}: a pair names two different classes, got {pair}")
            check_names(pair, names, f"{source}: pair")
        if not 0 <= self.band < 1:
            raise SynthsegError(f"{source}: band must lie in [0, 1)")
        slots = {t.count("{}") for t in self.templates}
        if 1 not in slots or (self.per_pair and 2 not in slots):
            raise SynthsegError(f"{source}: templates need a one-class slot ('{{}}'), and a two-class one when per_pair > 0")

    @property
    def class_names(self) -> tuple[str, ...]:
        return resolve_classes(self.classes)


def load_dataset_recipe(classes: str = "world", path: str | Path | None = None, **overrides) -> DatasetRecipe:
    """The recipe of a job: `path`, else recipes/dataset-<classes>.yaml for a named class set, else just
    `classes`; then `overrides` (None values ignored), validated."""
    from .classes import RECIPES
    from .config import apply_overrides, load_config, read_mapping

    named = RECIPES / f"dataset-{classes}.yaml"
    path = path or (named if named.is_file() else None)
    source = str(path or "make-dataset")
    data = read_mapping(path) if path else {"classes": classes}
    return load_config(DatasetRecipe, apply_overrides(data, overrides, source), source)


def resolve_grounding(spec: str) -> Path:
    """A grounding argument: "world" means the bundled world module; anything else is a folder."""
    from .worldmodel import WORLD_GROUNDING

    return WORLD_GROUNDING if spec == "world" else Path(spec)


def plan(recipe: DatasetRecipe) -> list[dict]:
    """Every item of the dataset, in index order: per_class images of each class, then per_pair of each pair.

    An item's seed depends only on the recipe seed and its index.
    """
    pairs = recipe.pairs or ([list(p) for p in combinations(recipe.class_names, 2)] if recipe.per_pair else [])
    groups = [[c] for c in recipe.class_names for _ in range(recipe.per_class)]
    groups += [list(p) for p in pairs for _ in range(recipe.per_pair)]
    items = []
    for index, names in enumerate(groups):
        rng = np.random.default_rng([recipe.seed, index])
        items.append(dict(index=index, classes=names, prompt=caption(names, tuple(recipe.templates)), seed=int(rng.integers(2**31))))
    return items


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


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_item(directory: Path, item: dict, image: Image.Image, probs: torch.Tensor, recipe: DatasetRecipe, provenance: dict) -> None:
    """Write one image, its label map and (last) its record."""
    names = recipe.class_names
    ids = [names.index(c) + 1 for c in item["classes"]]
    labels = label_map(probs.numpy(), ids, recipe.band)
    present = [bool((labels == i).any()) for i in ids]
    stem = f"{item['index']:06d}"
    record = dict(item, file_name=f"images/{stem}.png", mask_file_name=f"masks/{stem}.png",
                  scores={c: float(p.max()) for c, p in zip(item["classes"], probs)},
                  dropped=None if all(present) or not recipe.require_all_classes else "a prompted class has no confident pixel",
                  **provenance)
    if record["dropped"] is None:
        write_atomic(directory / record["file_name"], _png_bytes(image))
        write_atomic(directory / record["mask_file_name"], _png_bytes(label_image(labels)))
        record["instances"] = [
            coco_annotation(0, 0, class_id, mask) for class_id in ids for mask in instances(labels, class_id, recipe.min_instance_area)
        ]
        record["width"], record["height"] = image.size
    write_json_atomic(directory / "records" / f"{stem}.json", record)


def claim(directory: Path, recipe: DatasetRecipe) -> None:
    """Record the recipe in a new dataset folder, or refuse one that another recipe started."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "recipe.json"
    wanted = asdict(recipe)
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise SynthsegError(f"{path}: corrupt; remove the folder to start over") from None
        if found != wanted:
            changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise SynthsegError(f"{directory} was started with another recipe ({', '.join(changed)} differ); use a new --out or the same options")
    elif any(directory.iterdir()):
        raise SynthsegError(f"{directory} is not empty and holds no synthseg recipe.json; choose an empty or new --out")
    else:
        write_json_atomic(path, wanted)


def read_recipe(directory: str | Path) -> DatasetRecipe:
    """The recipe a dataset folder was started with."""
    from .config import load_config

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
    missing = [i["index"] for i in items if not (directory / "records" / f"{i['index']:06d}.json").is_file()]
    if missing:
        raise SynthsegError(f"{directory}: {len(missing)} of {len(items)} images are not written yet (first: {missing[0]}); run the remaining shards")
    for sub in ("images", "masks", "records"):  # temporary files of writes that a kill interrupted
        for stale in (directory / sub).glob(".*.tmp*"):
            stale.unlink()
    images, annotations, metadata, dropped = [], [], [], {}
    for item in items:
        record = json.loads((directory / "records" / f"{item['index']:06d}.json").read_text())
        if record["dropped"]:
            dropped[record["dropped"]] = dropped.get(record["dropped"], 0) + 1
            continue
        image_id = len(images) + 1
        images.append(dict(id=image_id, file_name=record["file_name"], width=record["width"], height=record["height"]))
        for ann in record.pop("instances"):
            annotations.append(dict(ann, id=len(annotations) + 1, image_id=image_id))
        metadata.append({k: v for k, v in record.items() if k not in ("dropped", "width", "height")})
    write_json_atomic(directory / "annotations.json", coco_document(images, annotations, recipe.class_names, "synthseg synthetic dataset"))
    write_atomic(directory / "metadata.jsonl", "".join(json.dumps(m, sort_keys=True) + "\n" for m in metadata))
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


def provenance(model: str, grounding_dir: str | Path) -> dict:
    """What made the dataset: model id and hash, grounding module hash, library versions."""
    import diffusers

    from . import __version__

    local = Path(model)
    return dict(
        model=model, model_hash=file_hash(local) if local.exists() else None, grounding_hash=file_hash(grounding_dir),
        versions=dict(synthseg=__version__, diffusers=diffusers.__version__, torch=torch.__version__, python=platform.python_version()),
    )


def make_dataset(pipe, grounding, recipe: DatasetRecipe, directory: str | Path, provenance: dict, *,
                 num_shards: int | None = None, shard_index: int | None = None) -> dict | None:
    """Generate this shard's items into `directory`, skipping written ones; finalize when all are there.

    Without `num_shards`, a run under torchrun or accelerate launch takes its shard from the launcher
    (one per process) and the main process finalizes after all are done; otherwise one shard.
    Returns the summary once the whole dataset is complete, else None (other shards still pending).
    """
    import os

    from .generate import generate_grounded
    from .training import loss_progress

    directory = Path(directory)
    state = None
    if num_shards is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True, CPU processes each run alone
        num_shards, shard_index = state.num_processes, state.process_index
    num_shards, shard_index = num_shards or 1, shard_index or 0
    if not 0 <= shard_index < num_shards:
        raise SynthsegError(f"shard index {shard_index} is outside 0..{num_shards - 1}")
    if state is None or state.is_main_process:
        claim(directory, recipe)
    if state is not None:
        state.wait_for_everyone()
        claim(directory, recipe)  # the other processes check the main process's recipe.json
    for sub in ("images", "masks", "records"):
        (directory / sub).mkdir(parents=True, exist_ok=True)

    def done(item: dict) -> bool:
        return (directory / "records" / f"{item['index']:06d}.json").is_file()

    items = plan(recipe)
    batches = [items[i : i + recipe.batch_size] for i in range(0, len(items), recipe.batch_size)]
    mine = batches[shard_index::num_shards]
    todo = [batch for batch in mine if not all(done(item) for item in batch)]
    total = sum(len(b) for b in mine)
    skipped = total - sum(len(b) for b in todo)
    pipe.set_progress_bar_config(disable=True)
    with loss_progress("make-dataset", total, skipped, log_every=recipe.batch_size, metric="kept") as advance:
        kept: list[float] = []
        for batch in todo:
            # Whole batches, always the same ones: an image's pixels do not depend on how a run was split.
            result = generate_grounded(pipe, grounding, [i["prompt"] for i in batch], [i["classes"] for i in batch],
                                       [i["seed"] for i in batch], guidance_scale=recipe.guidance_scale,
                                       num_inference_steps=recipe.num_inference_steps)
            for item, image, probs in zip(batch, result.images, result.masks):
                if not done(item):
                    write_item(directory, item, image, probs, recipe, provenance)
                kept.append(float((directory / "images" / f"{item['index']:06d}.png").is_file()))
            advance(skipped + len(kept), kept)
    if state is not None:
        state.wait_for_everyone()
        return finalize(directory, recipe) if state.is_main_process else None
    if all(done(item) for item in items):
        return finalize(directory, recipe)
    return None
