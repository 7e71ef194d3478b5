"""The `synthseg` command line: parse arguments, call the library, turn SynthsegError into one line and exit 1."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .errors import SynthsegError

app = typer.Typer(
    name="synthseg",
    help="Turn a text-to-image diffusion model into a factory of labelled segmentation data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_stderr = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Turn a text-to-image diffusion model into a factory of labelled segmentation data."""


def _command(function):
    """Register a command whose SynthsegError becomes `error: <message>` on stderr and exit code 1."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except SynthsegError as error:
            _stderr.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return app.command()(wrapper)


@_command
def generate(
    model: Annotated[str, typer.Option(help="Diffusers pipeline: a hub id or a local folder.")],
    grounding: Annotated[Path, typer.Option(help="Grounding module folder (config.json + model.safetensors).")],
    prompt: Annotated[list[str], typer.Option(help="A prompt; repeat for a batch.")],
    classes: Annotated[list[str], typer.Option(help="Comma-separated class names of each prompt, in prompt order.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    seed: Annotated[int, typer.Option(help="Seed of the first prompt; prompt i uses seed + i.")] = 0,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.5,
    capture_timestep: Annotated[int, typer.Option(help="Capture the step nearest this scheduler timestep.")] = 5,
    capture_index: Annotated[Optional[int], typer.Option(help="Capture this step index instead (-1 = last).")] = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Grounded generation: images plus one probability mask per class name."""
    from .capture import CaptureStep
    from .generate import generate_grounded
    from .grounding import GroundingModule
    from .pipeline import load_pipeline

    names = [[name.strip() for name in group.split(",") if name.strip()] for group in classes]
    module = GroundingModule.from_pretrained(grounding).to(device)
    pipe = load_pipeline(model, device=device)
    result = generate_grounded(
        pipe, module, prompt, names, [seed + i for i in range(len(prompt))],
        guidance_scale=guidance, num_inference_steps=steps,
        capture_step=CaptureStep(timestep=capture_timestep, index=capture_index),
    )
    _stderr.print(f"wrote {len(result.images)} images and masks to {result.save(out)}")


@_command
def train_world_model(
    recipe: Annotated[Path, typer.Option(help="World model recipe (YAML).")] = Path("recipes/world-t2i.yaml"),
    workdir: Annotated[Path, typer.Option(help="Checkpoints; an interrupted run resumes from here.")] = Path("runs/world-t2i"),
    output: Annotated[Path, typer.Option(help="Where the trained pipeline parts are saved.")] = Path("runs/world-t2i/pipeline"),
    max_steps: Annotated[Optional[int], typer.Option(help="Stop each stage after this many steps (a sitting).")] = None,
) -> None:
    """Train the miniature world's text-to-image model (VAE, then latent UNet) from a recipe."""
    from .worldmodel import load_recipe, train_world_model as train

    _stderr.print(f"saved {train(load_recipe(recipe), workdir, output, max_steps)}")


@_command
def train_world_annotator(
    recipe: Annotated[Path, typer.Option(help="Annotator recipe (YAML).")] = Path("recipes/world-annotator.yaml"),
    workdir: Annotated[Path, typer.Option(help="Checkpoints; an interrupted run resumes from here.")] = Path("runs/world-annotator"),
    output: Annotated[Path, typer.Option(help="Where the trained annotator is saved.")] = Path("runs/world-annotator/annotator"),
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (a sitting).")] = None,
) -> None:
    """Train the miniature world's Mask R-CNN annotator, then score its mask AP on held-out scenes."""
    import json

    from .annotators import MaskRCNNAnnotator, WorldAnnotatorRecipe, train_world_annotator as train, world_mask_ap
    from .config import load_config, read_mapping

    config = load_config(WorldAnnotatorRecipe, read_mapping(recipe), str(recipe))
    train(config, workdir, output, max_steps)
    metrics = world_mask_ap(MaskRCNNAnnotator.from_pretrained(output), config.eval_scenes)  # as shipped
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _stderr.print(f"saved {output}; mask AP {metrics['mask_ap']:.3f} (AP50 {metrics['mask_ap50']:.3f}) on {config.eval_scenes} held-out scenes")


def _recipe_models(config, model: str | None, annotator: str | None, device: str):
    """(pipeline, annotator) of a grounding recipe, each overridable, on `device`."""
    from .annotators import load_annotator
    from .pipeline import load_pipeline
    from .worldmodel import resolve_model

    labeller = load_annotator(annotator or config.annotator, **config.annotator_thresholds)
    labeller.model.to(device)
    return load_pipeline(resolve_model(model or config.pipeline), device=device), labeller


@_command
def make_triplets(
    recipe: Annotated[Path, typer.Option(help="Grounding recipe (YAML) with a `triplets` section.")] = Path("recipes/world-grounding.yaml"),
    out: Annotated[Path, typer.Option(help="Triplet shard folder; a rerun resumes it.")] = Path("runs/world-triplets"),
    model: Annotated[Optional[str], typer.Option(help="Pipeline (hub id, folder or 'world'); default from the recipe.")] = None,
    annotator: Annotated[Optional[str], typer.Option(help="Annotator ('world', 'coco' or a folder); default from the recipe.")] = None,
    count: Annotated[Optional[int], typer.Option(help="Number of triplets; default from the recipe.")] = None,
    capture_timestep: Annotated[Optional[int], typer.Option(help="Capture the step nearest this timestep (ablation).")] = None,
    capture_index: Annotated[Optional[int], typer.Option(help="Capture this step index instead (-1: last).")] = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Make {UNet features, masks, prompt} triplets from seen classes, labelled by an annotator."""
    from .train_grounding import load_grounding_recipe
    from .triplets import make_triplets as make

    config = load_grounding_recipe(recipe, triplets=dict(count=count, capture_timestep=capture_timestep, capture_index=capture_index))
    pipe, labeller = _recipe_models(config, model, annotator, device)
    _stderr.print(f"wrote triplets to {make(pipe, labeller, config.triplets, out)}")


@_command
def train_grounding(
    recipe: Annotated[Path, typer.Option(help="Grounding recipe (YAML).")] = Path("recipes/world-grounding.yaml"),
    triplets: Annotated[Path, typer.Option(help="Triplet shard folder from make-triplets.")] = Path("runs/world-triplets"),
    workdir: Annotated[Path, typer.Option(help="Checkpoints; rerunning the command resumes from here.")] = Path("runs/world-grounding"),
    output: Annotated[Path, typer.Option(help="save_pretrained folder of the trained module.")] = Path("runs/world-grounding/module"),
    zero_masks: Annotated[Optional[bool], typer.Option("--zero-masks/--no-zero-masks", help="Train missed classes towards empty masks (ablation).")] = None,
    cross_attention: Annotated[Optional[bool], typer.Option("--cross-attention/--no-cross-attention",
                                                            help="Use the triplets' cross-attention maps as inputs (VPD; ablation).")] = None,
    attention_pooling: Annotated[Optional[bool], typer.Option("--attention-pooling/--no-attention-pooling",
                                                              help="Pool each query's feature under its class's cross-attention map (ablation: --no-...).")] = None,
    query_dropout: Annotated[Optional[float], typer.Option(help="Share of training queries with their text embedding zeroed; default from the recipe.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps; default from the recipe.")] = None,
    online: Annotated[bool, typer.Option(help="Generate and label triplets every step instead of reading a cache.")] = False,
    model: Annotated[Optional[str], typer.Option(help="Override the recipe's pipeline (with --online).")] = None,
    annotator: Annotated[Optional[str], typer.Option(help="Override the recipe's annotator (with --online).")] = None,
    device: Annotated[str, typer.Option(help="torch device (with --online).")] = "cpu",
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (a sitting).")] = None,
) -> None:
    """Train the grounding module on a triplet cache or online (default: without zero masks)."""
    from .train_grounding import load_grounding_recipe, train_grounding as train
    from .triplets import OnlineTriplets, TripletShards

    config = load_grounding_recipe(recipe, train=dict(zero_masks=zero_masks, steps=steps, query_dropout=query_dropout),
                                   model=dict(cross_attention=cross_attention, attention_pooling=attention_pooling))
    if online:
        source = OnlineTriplets(*_recipe_models(config, model, annotator, device), config.triplets)
    else:
        source = TripletShards(triplets, seed=config.train.seed)
    train(config, source, workdir, output, max_steps)
    _stderr.print(f"saved {output}")


@_command
def evaluate_grounding(
    grounding: Annotated[Path, typer.Option(help="Grounding module folder.")],
    recipe: Annotated[Path, typer.Option(help="Grounding recipe: split, templates, steps, guidance, capture step.")] = Path("recipes/world-grounding.yaml"),
    model: Annotated[Optional[str], typer.Option(help="Pipeline (hub id, folder or 'world'); default from the recipe.")] = None,
    annotator: Annotated[Optional[str], typer.Option(help="Annotator ('world', 'coco' or a folder); default from the recipe.")] = None,
    per_class: Annotated[int, typer.Option(help="One-class test prompts per class.")] = 10,
    pairs: Annotated[int, typer.Option(help="Two-class test prompts.")] = 50,
    out: Annotated[Path, typer.Option(help="Markdown table (a .json is written beside it).")] = Path("runs/protocol_i.md"),
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Protocol i: mIoU of the module's masks vs the cross-attention baseline, seen vs unseen classes."""
    from .capture import CaptureStep
    from .classes import get_split
    from .evaluation import evaluate_grounding as evaluate
    from .grounding import GroundingModule
    from .train_grounding import capture_step_of, load_grounding_recipe

    config = load_grounding_recipe(recipe)
    t = config.triplets
    module = GroundingModule.from_pretrained(grounding).to(device)
    pipe, labeller = _recipe_models(config, model, annotator, device)
    result = evaluate(pipe, module, labeller, get_split(config.split), per_class=per_class, pairs=pairs, templates=t.templates,
                      num_inference_steps=t.num_inference_steps, guidance_scale=t.guidance_scale,
                      capture_step=CaptureStep(*capture_step_of(grounding, t)), batch_size=t.batch_size)
    result.save(out)
    print(result.markdown())


@_command
def make_dataset(
    classes: Annotated[str, typer.Option(help="'voc', 'coco', 'world' (recipes/dataset-<name>.yaml), or comma-separated class names.")] = "world",
    out: Annotated[Path, typer.Option(help="Dataset folder; rerunning the same command resumes it.")] = Path("out/dataset"),
    recipe: Annotated[Optional[Path], typer.Option(help="Dataset recipe (YAML); the options below override it.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Pipeline: hub id, folder, or 'world'.")] = None,
    grounding: Annotated[Optional[str], typer.Option(help="Grounding module folder, or 'world'.")] = None,
    per_class: Annotated[Optional[int], typer.Option(help="Images per class.")] = None,
    per_pair: Annotated[Optional[int], typer.Option(help="Images per co-occurring pair.")] = None,
    templates: Annotated[Optional[list[str]], typer.Option("--template", help="Prompt template, '{}' per class; repeat for more.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the whole dataset.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale.")] = None,
    num_shards: Annotated[Optional[int], typer.Option(help="Split the items over this many jobs (default: one, or torchrun's processes).")] = None,
    shard_index: Annotated[Optional[int], typer.Option(help="This job's shard.")] = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Generate a labelled dataset: images, COCO instances, palette masks, metadata and a card."""
    from .dataset import load_dataset_recipe, make_dataset as make, provenance, resolve_grounding
    from .grounding import GroundingModule
    from .pipeline import load_pipeline
    from .worldmodel import resolve_model

    config = load_dataset_recipe(classes, recipe, model=model, grounding=grounding, per_class=per_class, per_pair=per_pair,
                                 templates=templates, seed=seed, num_inference_steps=steps, guidance_scale=guidance)
    module_dir = resolve_grounding(config.grounding)
    module = GroundingModule.from_pretrained(module_dir).to(device)
    pipe = load_pipeline(resolve_model(config.model), device=device)
    summary = make(pipe, module, config, out, provenance(config.model, module_dir), num_shards=num_shards, shard_index=shard_index)
    _stderr.print(f"{out}: " + (f"{summary['images']} images, {summary['instances']} instances" if summary else "shard done; other shards pending"))


@_command
def merge_dataset(
    out: Annotated[Path, typer.Argument(help="The merged dataset folder.")],
    shards: Annotated[list[Path], typer.Argument(help="Shard folders written with the same recipe.")],
) -> None:
    """Join make-dataset shards written to separate folders into one dataset."""
    from .dataset import merge_datasets

    summary = merge_datasets(shards, out)
    _stderr.print(f"{out}: {summary['images']} images, {summary['instances']} instances")


@_command
def show(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder written by make-dataset.")],
    out: Annotated[Optional[Path], typer.Option(help="PNG to write; default DATASET/contact_sheet.png.")] = None,
    count: Annotated[int, typer.Option(help="Images on the sheet.")] = 16,
) -> None:
    """Write a contact sheet of a dataset: images with their masks overlaid and class names."""
    from .show import contact_sheet

    _stderr.print(f"wrote {contact_sheet(dataset, out, count)}")


@_command
def train_segmenter(
    data: Annotated[Path, typer.Option(help="Training data: a synthseg dataset, or a COCO or VOC-layout folder.")] = Path("out/dataset"),
    recipe: Annotated[Path, typer.Option(help="Segmenter recipe (YAML).")] = Path("recipes/segmenter-tiny.yaml"),
    out: Annotated[Path, typer.Option(help="Where the trained model (save_pretrained) goes.")] = Path("runs/segmenter"),
    workdir: Annotated[Optional[Path], typer.Option(help="Checkpoints; default OUT/../OUT.name-work.")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone architecture, e.g. resnet-101, resnet-50, resnet-tiny.")] = None,
    pretrained_backbone: Annotated[Optional[bool], typer.Option("--pretrained-backbone/--no-pretrained-backbone",
                                                                help="Start from ImageNet weights (hub), or from scratch.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training iterations.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per iteration (over all processes).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from WORKDIR's checkpoint; without it an existing one is refused.")] = False,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (a sitting).")] = None,
) -> None:
    """Train MaskFormer on a labelled dataset (Protocol ii); several GPUs with `accelerate launch`."""
    from .readers import open_data
    from .segmenter import load_segmenter_recipe, train_segmenter as train

    config = load_segmenter_recipe(recipe, backbone=backbone, pretrained_backbone=pretrained_backbone, steps=steps, batch_size=batch_size)
    workdir = workdir or out.with_name(out.name + "-work")
    if (workdir / "segmenter.ckpt").exists() and not resume:
        raise SynthsegError(f"{workdir / 'segmenter.ckpt'} exists; pass --resume to continue it, or remove it")
    _stderr.print(f"saved {train(config, open_data('auto', data), out, workdir, max_steps)}")


@_command
def benchmark(
    dataset: Annotated[str, typer.Option(help="voc2012, world, coco-json, voc-layout or synthseg.")] = "voc2012",
    model: Annotated[Path, typer.Option(help="A segmenter folder from train-segmenter.")] = Path("runs/segmenter"),
    data_root: Annotated[Optional[Path], typer.Option(help="The dataset's folder (VOCdevkit for voc2012; a JSON for coco-json).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Seen/unseen split from recipes/splits.yaml; default voc-15-5 on voc2012, world on world.")] = None,
    image_set: Annotated[str, typer.Option(help="VOC image set (ImageSets/Segmentation/<name>.txt).")] = "val",
    background: Annotated[bool, typer.Option("--background/--no-background", help="Count background as a seen class.")] = True,
    count: Annotated[int, typer.Option(help="Rendered scenes for --dataset world.")] = 500,
    out: Annotated[Optional[Path], typer.Option(help="Folder for benchmark.json and benchmark.md; default MODEL/benchmark-DATASET.")] = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Score a segmenter zero-shot: per-class IoU and seen, unseen and harmonic mIoU (Protocol ii)."""
    from .benchmark import benchmark as score
    from .classes import get_split
    from .readers import open_data
    from .segmenter import Segmenter

    split = split or {"voc2012": "voc-15-5", "world": "world"}.get(dataset)
    chosen = get_split(split) if split else None
    data = open_data(dataset, data_root, image_set, count)
    result = score(Segmenter.from_pretrained(model, device), data, chosen, background, model_name=str(model))
    result.save(out or model / f"benchmark-{dataset}")
    print(result.markdown())
