"""The `synthseg` command line: parse arguments, call the library, print one line per error.

One vocabulary across commands: `--out` is every output, `--model` always a text-to-image pipeline
(bundled name, hub id or folder), `--segmenter` a trained segmenter, `--dataset` an input dataset,
`--num-inference-steps` denoising steps and `--train-steps` training steps, `--guidance-scale` as in
recipes and diffusers, `--stop-at` the step where a training sitting ends, `--device auto`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .errors import SynthsegError

app = typer.Typer(
    name="synthseg",
    help="Turn a text-to-image diffusion model into a factory of labelled segmentation data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_stderr = Console(stderr=True)
FROM_RECIPE = "default: from the recipe"
RESUMABLE = {"train-world-model", "train-world-dit", "train-world-layout",
              "train-world-annotator", "train-backbone", "make-triplets", "train-grounding", "make-dataset", "train-segmenter", "train-captioner"}

Device = Annotated[str, typer.Option(help="auto (CUDA where present), cpu, cuda, cuda:N or mps.")]
GROUNDING_HELP = "Grounding module: a bundled name or a folder; default: the bundled model's own."
CAPTIONER_HELP = ("Implicit captioner (a bundled name or a folder from train-captioner): each image is first given the classes "
                  "its caption holds, and only those are segmented; 'none': every class is prompted; default: the bundled model's own.")
MaxClasses = Annotated[int, typer.Option(help="With --captioner: the most classes it may give an image (its caption's, or those it finds present).")]
ClassPrior = Annotated[Optional[float], typer.Option(help="With a captioner trained per class, max-pooled: weigh each pixel's named classes "
                                                          "by its cells' say (softmax of similarity x this); 0: off; default: 10 with such a captioner.")]
Refine = Annotated[Optional[int], typer.Option(help="PAMR iterations that move the masks' edges to the image's colour edges; "
                                                   "0: off; default: 20.")]
ClassifierDraws = Annotated[Optional[int], typer.Option(help="With a captioner trained per class: choose each image's classes among "
                                                               "lists of its 5 best by the pipeline's denoising error over this many "
                                                               "noise draws (a diffusion classifier); 0: the captioner alone; default: 16 "
                                                               "with such a captioner.")]
Candidates = Annotated[Optional[int], typer.Option(help="Images generated per prompt (or layout), of which the captioner (and counter) keeps "
                                                       "the likeliest to hold exactly its classes; 1: no choice; default: the recipe's, else "
                                                       "the model card's.")]
Chooser = Annotated[Optional[str], typer.Option("--captioner", help="With candidates above 1: the implicit captioner trained per class that "
                                                "chooses (a bundled name or a folder from train-captioner); default: the bundled model's own.")]
Counter = Annotated[Optional[str], typer.Option(help="With candidates above 1: a counter whose judgement of each class's count is added to "
                                                     "the captioner's, and with count guidance the one it follows (a bundled name or a folder "
                                                     "from train-backbone --recipe counter-world); 'none': none; default: the bundled model's own.")]
CountGuidanceScale = Annotated[Optional[float], typer.Option("--count-guidance", help="The strength of counting guidance, which moves sampling "
                                                             "steps along the counter's gradient toward each image's count of each class (a "
                                                             "prompt's: one of each; a layout's: its boxes'); 0: off; default: the recipe's, "
                                                             "else the model card's.")]
StopAt = Annotated[Optional[int], typer.Option(help="End this sitting at this training step; rerun the command to go on.")]
Workdir = Annotated[Path, typer.Option(help="Checkpoints; rerunning the command resumes from here.")]


@app.callback()
def _root() -> None:
    """Turn a text-to-image diffusion model into a factory of labelled segmentation data."""
    warnings.showwarning = _warning


def _warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one `warning:` line (a prompt cut by a tokenizer's limit, ...), not two lines of source."""
    _stderr.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 1):
    _stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # "[x0, y0, ...]" is not markup
    raise typer.Exit(code)


def _interrupted(message: str) -> None:
    """Ctrl-C: one line, then exit 130 at once, as a kill would: every file is written atomically, so there
    is nothing to clean up. (Left to propagate, an interrupt can be swallowed by a library, or make Python
    end by SIGINT at shutdown.)"""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    os._exit(130)


@contextlib.contextmanager
def _on_interrupt(message: str):
    """Within the block, SIGINT calls `_interrupted(message)` wherever it lands (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: _interrupted(message))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _command(function):
    """Register a command whose bad input, full disk or Ctrl-C ends in one `error:` line, never a traceback."""
    name = function.__name__.replace("_", "-")
    resume = "; rerun the same command to resume" if name in RESUMABLE else ""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        for option, value in kwargs.items():  # click's float type takes "nan" and "inf"; no option means them
            if isinstance(value, float) and not math.isfinite(value):
                _fail(f"--{option.replace('_', '-')}: expected a finite number, got {value}")
        try:
            with _on_interrupt(f"interrupted{resume}"):
                return function(*args, **kwargs)
        except SynthsegError as error:
            _fail(str(error))
        except KeyboardInterrupt:
            _interrupted(f"interrupted{resume}")
        except OSError as error:
            if error.errno == errno.ENOSPC:
                _fail(f"no space left on device{f' writing {error.filename}' if error.filename else ''}: free some space{resume}")
            _fail(f"{error.strerror or error}{f': {error.filename}' if error.filename else ''}")

    return app.command(name)(wrapper)


def _device(spec: str):
    from .device import resolve_device

    return resolve_device(spec)


def _names(text: str) -> list[str]:
    """A comma-separated option as a list of names."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _recipe_models(config, device):
    """(pipeline, annotator) of a grounding recipe, on `device`."""
    from .annotators import load_annotator
    from .pipeline import load_pipeline

    labeller = load_annotator(config.annotator, **config.annotator_thresholds)
    labeller.model.to(device)
    return load_pipeline(config.pipeline, device=device), labeller


@_command
def generate(
    prompt: Annotated[list[str], typer.Option(help="A prompt; repeat for a batch.")],
    classes: Annotated[list[str], typer.Option(help="Comma-separated class names of each prompt, in prompt order.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    model: Annotated[str, typer.Option(help="Pipeline: 'world', a hub id or a folder.")] = "world",
    grounding: Annotated[Optional[str], typer.Option(help=GROUNDING_HELP)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt; prompt i uses seed + i.")] = 0,
    num_inference_steps: Annotated[Optional[int], typer.Option(help="Denoising steps; default: the model's.")] = None,
    guidance_scale: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale; default: the model's.")] = None,
    capture_timestep: Annotated[int, typer.Option(help="Capture the step nearest this scheduler timestep.")] = 5,
    capture_index: Annotated[Optional[int], typer.Option(help="Capture this step index instead (-1 = last).")] = None,
    candidates: Candidates = None,
    captioner: Chooser = None,
    counter: Counter = None,
    count_guidance: CountGuidanceScale = None,
    device: Device = "auto",
) -> None:
    """Grounded generation: images plus one probability mask per class name."""
    from .candidates import load_judges
    from .capture import CaptureStep
    from .formats import check_output_dir
    from .generate import generate_grounded
    from .grounding import GroundingModule
    from .pipeline import load_pipeline
    from .registry import check_vocabulary, grounding_for, judge_for, model_card

    names = [_names(group) for group in classes]
    check_vocabulary(model, [n for group in names for n in group])
    card, torch_device = model_card(model), _device(device)
    candidates = card.candidates if candidates is None else candidates
    count_guidance = card.count_guidance if count_guidance is None else count_guidance
    if candidates < 1:
        _fail(f"--candidates must be at least 1, got {candidates}")
    if not count_guidance >= 0:
        _fail(f"--count-guidance must be 0 or more, got {count_guidance}")
    check_output_dir(out)
    pipe = load_pipeline(model, device=torch_device)  # first: a missing model is the error to report
    module = GroundingModule.from_pretrained(grounding_for(model, grounding)).to(torch_device)
    captioner = judge_for(model, captioner) if candidates > 1 else None
    counter = judge_for(model, counter, "counter") if candidates > 1 or count_guidance else None
    if count_guidance and counter is None:
        _fail("--count-guidance follows a counter's gradient: give one (--counter), or set it to 0")
    recogniser, judge = load_judges(pipe, list(dict.fromkeys(n for group in names for n in group)), candidates, captioner, counter,
                                    torch_device)
    result = generate_grounded(
        pipe, module, prompt, names, [seed + i for i in range(len(prompt))],
        guidance_scale=card.guidance_scale if guidance_scale is None else guidance_scale,
        num_inference_steps=card.num_inference_steps if num_inference_steps is None else num_inference_steps,
        capture_step=CaptureStep(timestep=capture_timestep, index=capture_index),
        candidates=candidates, recogniser=recogniser, counter=judge, count_guidance=count_guidance,
    )
    count = len(result.images)
    _stderr.print(f"wrote {count} image{'s' if count > 1 else ''} and {'their' if count > 1 else 'its'} masks to {result.save(out)}")


@_command
def train_world_model(
    recipe: Annotated[str, typer.Option(help="World model recipe: a packaged name or a YAML file.")] = "world-t2i",
    workdir: Workdir = Path("runs/world-t2i"),
    out: Annotated[Path, typer.Option(help="Where the trained pipeline parts are exported.")] = Path("runs/world-t2i/pipeline"),
    device: Device = "auto",
    stop_at: StopAt = None,
) -> None:
    """Train the miniature world's text-to-image model (VAE, then latent UNet) from a recipe."""
    from .train.world_t2i import load_world_model_recipe, train_world_model as train

    config = load_world_model_recipe(recipe)
    _stderr.print(f"saved {train(config, workdir, out, stop_at, _device(device))}")


@_command
def train_world_dit(
    recipe: Annotated[str, typer.Option(help="World transformer recipe: a packaged name or a YAML file.")] = "world-dit",
    workdir: Workdir = Path("runs/world-dit"),
    out: Annotated[Path, typer.Option(help="Where the trained pipeline parts are exported.")] = Path("runs/world-dit/pipeline"),
    device: Device = "auto",
    stop_at: StopAt = None,
) -> None:
    """Train the miniature world's transformer text-to-image model (FLUX's architecture, flow matching)."""
    from .train.world_dit import load_dit_recipe, train_world_dit as train

    config = load_dit_recipe(recipe)
    _stderr.print(f"saved {train(config, workdir, out, stop_at, _device(device))}")


@_command
def train_world_layout(
    recipe: Annotated[str, typer.Option(help="World GLIGEN recipe: a packaged name or a YAML file.")] = "world-layout",
    workdir: Workdir = Path("runs/world-layout"),
    out: Annotated[Path, typer.Option(help="Where GLIGEN's trained layers are exported.")] = Path("runs/world-layout/pipeline"),
    device: Device = "auto",
    stop_at: StopAt = None,
) -> None:
    """Train GLIGEN's box grounding (gated self-attention, box tokens) into the frozen world UNet."""
    from .train.world_layout import load_layout_recipe, train_world_layout as train

    config = load_layout_recipe(recipe)
    _stderr.print(f"saved {train(config, workdir, out, stop_at, _device(device))}")


@_command
def train_world_annotator(
    recipe: Annotated[str, typer.Option(help="Annotator recipe: a packaged name or a YAML file.")] = "world-annotator",
    workdir: Workdir = Path("runs/world-annotator"),
    out: Annotated[Path, typer.Option(help="Where the trained annotator is saved.")] = Path("runs/world-annotator/annotator"),
    train_data: Annotated[Optional[Path], typer.Option(help="Train on this folder's COCO instances (a synthseg dataset) instead of rendered scenes.")] = None,
    train_steps: Annotated[Optional[int], typer.Option(help=f"Training steps; {FROM_RECIPE}.")] = None,
    device: Device = "auto",
    stop_at: StopAt = None,
) -> None:
    """Train the miniature world's Mask R-CNN annotator, then score its mask AP on held-out scenes."""
    import json

    from .annotators import MaskRCNNAnnotator
    from .train.annotator import load_annotator_recipe, train_world_annotator as train, world_mask_ap

    config = load_annotator_recipe(recipe, train_data=str(train_data.resolve()) if train_data else None, steps=train_steps)
    train(config, workdir, out, stop_at, _device(device))
    metrics = world_mask_ap(MaskRCNNAnnotator.from_pretrained(out), config.eval_scenes,  # as shipped
                            config.layouts if config.layout_fraction else None)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    layouts = f", {metrics['layout_mask_ap']:.3f} on as many held-out layout scenes" if "layout_mask_ap" in metrics else ""
    _stderr.print(f"saved {out}; mask AP {metrics['mask_ap']:.3f} (AP50 {metrics['mask_ap50']:.3f}) on {config.eval_scenes} held-out scenes{layouts}")


@_command
def train_backbone(
    recipe: Annotated[str, typer.Option(help="Backbone recipe: a packaged name or a YAML file.")] = "backbone-world",
    workdir: Workdir = Path("runs/world-backbone"),
    out: Annotated[Path, typer.Option(help="save_pretrained folder of the classifier, for a segmenter recipe's backbone_weights.")]
        = Path("runs/world-backbone/backbone"),
    train_steps: Annotated[Optional[int], typer.Option(help=f"Training steps; {FROM_RECIPE}.")] = None,
    device: Device = "auto",
    stop_at: StopAt = None,
) -> None:
    """Pretrain the world segmenter's ResNet on rendered scenes (the world's ImageNet), or with counter-world a layout's counter."""
    import json

    from .train.backbone import load_backbone_recipe, pretrain_backbone

    config = load_backbone_recipe(recipe, steps=train_steps)
    pretrain_backbone(config, workdir, out, stop_at, _device(device))
    held_out = json.loads((out / "recipe.json").read_text())["held_out"]
    _stderr.print(f"saved {out}; on {config.eval_scenes} held-out scenes: " + ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f}%" for k, v in held_out.items()))


@_command
def make_triplets(
    recipe: Annotated[str, typer.Option(help="Grounding recipe with a `triplets` section: a packaged name or a YAML file.")] = "world-grounding",
    out: Annotated[Path, typer.Option(help="Triplet shard folder; rerunning the command resumes it.")] = Path("runs/world-triplets"),
    model: Annotated[Optional[str], typer.Option(help=f"Pipeline: 'world', a hub id or a folder; {FROM_RECIPE}.")] = None,
    annotator: Annotated[Optional[str], typer.Option(help=f"Annotator: 'world', 'coco' or a folder; {FROM_RECIPE}.")] = None,
    count: Annotated[Optional[int], typer.Option(help=f"Number of triplets; {FROM_RECIPE}.")] = None,
    capture_timestep: Annotated[Optional[int], typer.Option(help=f"Capture the step nearest this timestep (ablation); {FROM_RECIPE}.")] = None,
    capture_index: Annotated[Optional[int], typer.Option(help=f"Capture this step index instead (-1: last); {FROM_RECIPE}.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (counts per class and pair, disk, time) without loading a model.")] = False,
    device: Device = "auto",
) -> None:
    """Make {denoiser features, masks, prompt} triplets from seen classes, labelled by an annotator."""
    from .formats import check_output_dir
    from .train.grounding import load_grounding_recipe
    from .triplets import make_triplets as make, plan_summary

    config = load_grounding_recipe(recipe, pipeline=model, annotator=annotator,
                                   triplets=dict(count=count, capture_timestep=capture_timestep, capture_index=capture_index))
    if dry_run:
        print(plan_summary(config.triplets, config.pipeline, device))
        return
    check_output_dir(out)
    pipe, labeller = _recipe_models(config, _device(device))
    _stderr.print(f"wrote triplets to {make(pipe, labeller, config.triplets, out)}")


@_command
def train_grounding(
    recipe: Annotated[str, typer.Option(help="Grounding recipe: a packaged name or a YAML file.")] = "world-grounding",
    triplets: Annotated[Path, typer.Option(help="Triplet shard folder from make-triplets.")] = Path("runs/world-triplets"),
    workdir: Workdir = Path("runs/world-grounding"),
    out: Annotated[Path, typer.Option(help="save_pretrained folder of the trained module.")] = Path("runs/world-grounding/module"),
    zero_masks: Annotated[Optional[bool], typer.Option("--zero-masks/--no-zero-masks",
                                                       help=f"Train missed classes towards empty masks (ablation); {FROM_RECIPE}.")] = None,
    cross_attention: Annotated[Optional[bool], typer.Option("--cross-attention/--no-cross-attention",
                                                            help=f"Use the triplets' cross-attention maps as inputs (VPD); {FROM_RECIPE}.")] = None,
    attention_pooling: Annotated[Optional[bool], typer.Option("--attention-pooling/--no-attention-pooling",
                                                              help=f"Pool each query's feature under its class's cross-attention map; {FROM_RECIPE}.")] = None,
    query_dropout: Annotated[Optional[float], typer.Option(help=f"Share of training queries with their text embedding zeroed; {FROM_RECIPE}.")] = None,
    blocks: Annotated[Optional[str], typer.Option(help=f"Transformer blocks to read, comma-separated, of the triplets' (ablation); {FROM_RECIPE}.")] = None,
    train_steps: Annotated[Optional[int], typer.Option(help=f"Training steps; {FROM_RECIPE}.")] = None,
    online: Annotated[bool, typer.Option("--online", help="Generate and label triplets every step instead of reading --triplets.")] = False,
    model: Annotated[Optional[str], typer.Option(help=f"Pipeline for --online, or the one that made replay triplets; {FROM_RECIPE}.")] = None,
    annotator: Annotated[Optional[str], typer.Option(help=f"Annotator for --online; {FROM_RECIPE}.")] = None,
    device: Device = "auto",
    stop_at: StopAt = None,
) -> None:
    """Train the grounding module on a triplet cache or online (default: without zero masks)."""
    from .pipeline import load_pipeline
    from .train.grounding import load_grounding_recipe, train_grounding as train
    from .triplets import OnlineTriplets, TripletShards, stored_for_replay

    config = load_grounding_recipe(recipe, pipeline=model, annotator=annotator,
                                   train=dict(zero_masks=zero_masks, steps=train_steps, query_dropout=query_dropout),
                                   model=dict(cross_attention=cross_attention, attention_pooling=attention_pooling,
                                              blocks=_names(blocks) if blocks is not None else None))
    torch_device = _device(device)
    if online:
        source = OnlineTriplets(*_recipe_models(config, torch_device), config.triplets)
    else:
        pipe = load_pipeline(config.pipeline, device=torch_device) if stored_for_replay(triplets) else None
        source = TripletShards(triplets, seed=config.train.seed, pipe=pipe)
    train(config, source, workdir, out, stop_at, torch_device)
    _stderr.print(f"saved {out}")


@_command
def train_captioner(
    dataset: Annotated[list[Path], typer.Option(help="Training data: a synthseg dataset (make-dataset), or a COCO or VOC-layout folder; "
                                                     "repeat it to train on several (one class list).")],
    model: Annotated[str, typer.Option(help="Pipeline whose VAE and text encoder the captioner is for: 'world', a hub id or a folder.")] = "world",
    recipe: Annotated[str, typer.Option(help="Captioner recipe: a packaged name or a YAML file.")] = "captioner-world",
    workdir: Workdir = Path("runs/captioner"),
    out: Annotated[Path, typer.Option(help="save_pretrained folder of the trained captioner.")] = Path("runs/captioner/captioner"),
    train_steps: Annotated[Optional[int], typer.Option(help=f"Training steps; {FROM_RECIPE}.")] = None,
    device: Device = "auto",
    stop_at: StopAt = None,
) -> None:
    """Train ODISE's implicit captioner: image (VAE latent) -> the text embedding of the classes it holds."""
    from .pipeline import load_pipeline
    from .readers import open_training_data
    from .train.captioner import load_captioner_recipe, train_captioner as train

    config = load_captioner_recipe(recipe, steps=train_steps)
    data = open_training_data(dataset)
    train(load_pipeline(model, device=_device(device)), data, config, workdir, out, stop_at)
    _stderr.print(f"saved {out}")


@_command
def evaluate_grounding(
    grounding: Annotated[str, typer.Option(help="Grounding module: 'world' or a folder.")] = "world",
    recipe: Annotated[str, typer.Option(help="Grounding recipe (split, templates, steps, guidance, capture step): a name or a file.")] = "world-grounding",
    model: Annotated[Optional[str], typer.Option(help=f"Pipeline: 'world', a hub id or a folder; {FROM_RECIPE}.")] = None,
    annotator: Annotated[Optional[str], typer.Option(help=f"Annotator: 'world', 'coco' or a folder; {FROM_RECIPE}.")] = None,
    per_class: Annotated[int, typer.Option(help="One-class test prompts per class.")] = 10,
    pairs: Annotated[int, typer.Option(help="Two-class test prompts.")] = 50,
    out: Annotated[Path, typer.Option(help="Markdown table (a .json is written beside it).")] = Path("runs/protocol_i.md"),
    device: Device = "auto",
) -> None:
    """Protocol i: mIoU of the module's masks vs the cross-attention baseline, seen vs unseen classes."""
    from .capture import CaptureStep
    from .classes import get_split
    from .evaluation import evaluate_grounding as evaluate
    from .grounding import GroundingModule
    from .train.grounding import capture_step_of, load_grounding_recipe

    torch_device = _device(device)
    config = load_grounding_recipe(recipe, pipeline=model, annotator=annotator)
    t = config.triplets
    module = GroundingModule.from_pretrained(grounding).to(torch_device)
    pipe, labeller = _recipe_models(config, torch_device)
    result = evaluate(pipe, module, labeller, get_split(config.split), per_class=per_class, pairs=pairs, templates=t.templates,
                      num_inference_steps=t.num_inference_steps, guidance_scale=t.guidance_scale,
                      capture_step=CaptureStep(*capture_step_of(grounding, t)), batch_size=t.batch_size)
    result.save(out)
    print(result.markdown())


def _captioner(model: str, spec: str | None, device):
    """The implicit captioner of --captioner (or the bundled model's own), on `device`; None without one."""
    from .registry import judge_for

    spec = judge_for(model, spec)
    if spec is None:
        return None
    from .captioner import ImplicitCaptioner

    return ImplicitCaptioner.from_pretrained(spec).to(device)


def _module_timestep(module: str | Path, given: int | None) -> int:
    """`given`, or the capture timestep a grounding module's triplets used (its recipe.json; else 5)."""
    from .train.grounding import capture_step_of
    from .triplets import TripletRecipe

    return given if given is not None else capture_step_of(module, TripletRecipe())[0]


@_command
def segment(
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...; any mode and size), or folders of them.")],
    classes: Annotated[str, typer.Option(help="Comma-separated class names to look for, seen or unseen.")],
    out: Annotated[Path, typer.Option(help="Output folder: labels/, overlays/ and annotations.json (COCO); rerunning the same "
                                           "command resumes it.")],
    model: Annotated[str, typer.Option(help="Pipeline: a bundled name, a hub id or a folder.")] = "world",
    grounding: Annotated[Optional[str], typer.Option(help=GROUNDING_HELP)] = None,
    capture_timestep: Annotated[Optional[int], typer.Option(help="Noise the image to this timestep of 1000 (flow models: sigma = t / 1000); "
                                                                 "default: the one the module's triplets used.")] = None,
    noise_draws: Annotated[int, typer.Option(help="Average the masks over this many noise draws.")] = 1,
    one_prompt_per_class: Annotated[bool, typer.Option("--one-prompt-per-class", help="One prompt per class, not as few prompts as fit.")] = False,
    template: Annotated[str, typer.Option(help="Prompt template, '{}' for the class list.")] = "a photograph of {}",
    threshold: Annotated[Optional[float], typer.Option(help="A pixel is labelled with its most probable class above this probability; "
                                                            "default: 0.3.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images of one size per denoiser call (the masks do not depend on it).")] = 1,
    captioner: Annotated[Optional[str], typer.Option(help=CAPTIONER_HELP)] = None,
    max_classes: MaxClasses = 3,
    class_prior: ClassPrior = None,
    refine: Refine = None,
    classifier_draws: ClassifierDraws = None,
    device: Device = "auto",
) -> None:
    """Segment real images with a grounding module: one denoiser step on each image's noised latent (ODISE/VPD)."""
    from .formats import check_output_dir
    from .grounding import GroundingModule
    from .pipeline import load_pipeline
    from .readers import image_files
    from .registry import grounding_for
    from .segment import segment_to_folder

    names = _names(classes)
    if not names:
        _fail("--classes names no class")
    if batch_size < 1:
        _fail(f"--batch-size must be at least 1, got {batch_size}")
    check_output_dir(out)
    files = image_files(images)
    torch_device = _device(device)
    pipe = load_pipeline(model, device=torch_device)  # first: a missing model is the error to report
    module_dir = grounding_for(model, grounding)
    module = GroundingModule.from_pretrained(module_dir).to(torch_device).eval()
    summary = segment_to_folder(pipe, module, files, names, out, batch_size=batch_size, timestep=_module_timestep(module_dir, capture_timestep),
                                noise_draws=noise_draws, seed=seed, template=template, one_prompt_per_class=one_prompt_per_class,
                                captioner=_captioner(model, captioner, torch_device), max_classes=max_classes, class_prior=class_prior,
                                refine=refine, threshold=threshold, classifier_draws=classifier_draws,
                                provenance=dict(model=model, grounding=str(module_dir), captioner=captioner))
    _stderr.print(f"{out}: {summary['images']} images, {summary['instances']} instances")


@_command
def make_dataset(
    classes: Annotated[str, typer.Option(help="'voc', 'coco', 'world' (each reads its packaged recipe), or comma-separated class and set names.")] = "world",
    out: Annotated[Path, typer.Option(help="Dataset folder; rerunning the same command resumes it.")] = Path("out/dataset"),
    recipe: Annotated[Optional[str], typer.Option(help="Dataset recipe: a packaged name or a YAML file; the options below override it.")] = None,
    model: Annotated[Optional[str], typer.Option(help=f"Pipeline: 'world', a hub id or a folder; {FROM_RECIPE}.")] = None,
    grounding: Annotated[Optional[str], typer.Option(help=f"Grounding module: 'world' or a folder; {FROM_RECIPE}.")] = None,
    per_class: Annotated[Optional[int], typer.Option(help=f"Images per class; {FROM_RECIPE}.")] = None,
    per_pair: Annotated[Optional[int], typer.Option(help=f"Images per co-occurring pair; {FROM_RECIPE}.")] = None,
    spare: Annotated[Optional[float], typer.Option(help="Extra items planned, as a fraction of those asked, to stand in for images the "
                                                        f"filters drop; the asked number that pass are kept; {FROM_RECIPE}.")] = None,
    templates: Annotated[Optional[list[str]], typer.Option("--template", help=f"Prompt template, '{{}}' per class; repeat for more; {FROM_RECIPE}.")] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Seed of the whole dataset; {FROM_RECIPE}.")] = None,
    num_inference_steps: Annotated[Optional[int], typer.Option(help="Denoising steps; default: the recipe's, else the model's.")] = None,
    guidance_scale: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale; default: the recipe's, else the model's.")] = None,
    refine: Annotated[Optional[int], typer.Option(help=f"PAMR iterations that move each image's masks to its colour edges before labels "
                                                       f"are made; 0: off; {FROM_RECIPE} (20).")] = None,
    layouts: Annotated[bool, typer.Option("--layouts", help="Box layouts through a GLIGEN model, one COCO instance per box.")] = False,
    layouts_file: Annotated[Optional[Path], typer.Option(help="Generate these layouts instead: JSONL of prompt, phrases, boxes (and seed).")] = None,
    candidates: Candidates = None,
    captioner: Chooser = None,
    counter: Counter = None,
    count_guidance: CountGuidanceScale = None,
    num_shards: Annotated[Optional[int], typer.Option(help="Split the items over this many jobs (default: one, or torchrun's processes).")] = None,
    shard_index: Annotated[Optional[int], typer.Option(help="This job's shard, 0 to num-shards - 1.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (counts per class and pair, disk, time) without loading a model.")] = False,
    device: Device = "auto",
) -> None:
    """Generate a labelled dataset: images, COCO instances, palette masks, metadata and a card."""
    from .dataset import build_dataset, load_dataset_recipe, plan_summary

    config = load_dataset_recipe(classes, recipe, model=model, grounding=grounding, per_class=per_class, per_pair=per_pair,
                                 spare=spare, templates=templates, seed=seed, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                 refine=refine, layouts=layouts, layouts_file=str(layouts_file.resolve()) if layouts_file else None,
                                 candidates=candidates, captioner=captioner, counter=counter, count_guidance=count_guidance)
    if dry_run:
        print(plan_summary(config, device))
        return
    summary = build_dataset(config, out, device=device, num_shards=num_shards, shard_index=shard_index)
    _stderr.print(f"{out}: " + (f"{summary['images']} images, {summary['instances']} instances" if summary else "shard done; other shards pending"))
    if summary and summary["short"]:
        _stderr.print(f"warning: {summary['short']} short of the images asked: the filters dropped more than the spares (--spare {config.spare:g}) "
                      "could replace; the card counts the drops by reason")


@_command
def merge_dataset(
    shards: Annotated[list[Path], typer.Argument(help="Shard folders written with the same recipe.")],
    out: Annotated[Path, typer.Option(help="The merged dataset folder.")],
) -> None:
    """Join make-dataset shards written to separate folders into one dataset."""
    from .dataset import merge_datasets
    from .formats import check_output_dir

    summary = merge_datasets(shards, check_output_dir(out))
    _stderr.print(f"{out}: {summary['images']} images, {summary['instances']} instances")


@_command
def show(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder written by make-dataset.")],
    out: Annotated[Optional[Path], typer.Option(help="PNG to write; default DATASET/contact_sheet.png.")] = None,
    count: Annotated[int, typer.Option(help="Images on the sheet.")] = 16,
) -> None:
    """Write a contact sheet of a dataset: images beside their label maps, with a colour key of the classes."""
    from .show import contact_sheet

    _stderr.print(f"wrote {contact_sheet(dataset, out, count)}")


@_command
def train_segmenter(
    dataset: Annotated[list[Path], typer.Option(help="Training data: a synthseg dataset, or a COCO or VOC-layout folder; "
                                                     "repeat it to train on several (one class list).")] = [Path("out/dataset")],
    recipe: Annotated[str, typer.Option(help="Segmenter recipe: a packaged name or a YAML file.")] = "segmenter-tiny",
    out: Annotated[Path, typer.Option(help="Where the trained segmenter (save_pretrained) goes.")] = Path("runs/segmenter"),
    workdir: Annotated[Optional[Path], typer.Option(help="Checkpoints; rerunning the command resumes from here. Default: OUT-work beside OUT.")] = None,
    arch: Annotated[Optional[str], typer.Option(help=f"maskformer or mask2former; {FROM_RECIPE}.")] = None,
    backbone: Annotated[Optional[str], typer.Option(help=f"Backbone architecture, e.g. resnet-101, resnet-50, resnet-tiny; {FROM_RECIPE}.")] = None,
    pretrained_backbone: Annotated[Optional[bool], typer.Option("--pretrained-backbone/--no-pretrained-backbone",
                                                                help=f"Start from pretrained weights, or from scratch; {FROM_RECIPE}.")] = None,
    backbone_weights: Annotated[Optional[str], typer.Option(help="Pretrained backbone: a hub id, a folder (train-backbone's) or 'world'; "
                                                                 "default: the recipe's, else the backbone's ImageNet id.")] = None,
    train_steps: Annotated[Optional[int], typer.Option(help=f"Training steps; {FROM_RECIPE}.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Images per step (over all processes); {FROM_RECIPE}.")] = None,
    device: Device = "auto",
    stop_at: StopAt = None,
) -> None:
    """Train MaskFormer or Mask2Former on a labelled dataset (Protocol ii); several GPUs with `accelerate launch`."""
    from .readers import open_training_data
    from .segmenter import load_segmenter_recipe
    from .train.segmenter import train_segmenter as train

    _device(device)
    config = load_segmenter_recipe(recipe, arch=arch, backbone=backbone, pretrained_backbone=pretrained_backbone,
                                   backbone_weights=backbone_weights, steps=train_steps, batch_size=batch_size)
    data = open_training_data(dataset)
    _stderr.print(f"saved {train(config, data, out, workdir or out.with_name(out.name + '-work'), stop_at, device)}")


@_command
def benchmark(
    dataset: Annotated[str, typer.Option(help="voc2012 (with --data-root), world (rendered held-out scenes), or a dataset folder or COCO JSON.")] = "voc2012",
    segmenter: Annotated[Path, typer.Option(help="A segmenter folder from train-segmenter.")] = Path("runs/segmenter"),
    grounding: Annotated[Optional[str], typer.Option(help="Score a grounding module instead (a bundled name or a folder), "
                                                          "given every class name, on --model.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Pipeline of --grounding: a bundled name, a hub id or a folder; default: the bundle's.")] = None,
    capture_timestep: Annotated[Optional[int], typer.Option(help="With --grounding: noise each image to this timestep of 1000; "
                                                                 "default: the one the module's triplets used.")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Where --dataset voc2012 lives (VOCdevkit or VOCdevkit/VOC2012).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Seen/unseen split (splits.yaml); default voc-15-5 on voc2012, world on world.")] = None,
    image_set: Annotated[str, typer.Option(help="VOC image set (ImageSets/Segmentation/<name>.txt).")] = "val",
    background: Annotated[bool, typer.Option("--background/--no-background", help="Count background as a seen class.")] = True,
    count: Annotated[int, typer.Option(help="Rendered scenes for --dataset world.")] = 500,
    captioner: Annotated[Optional[str], typer.Option(help="With --grounding: " + CAPTIONER_HELP)] = None,
    max_classes: MaxClasses = 3,
    class_prior: ClassPrior = None,
    refine: Refine = None,
    classifier_draws: ClassifierDraws = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for benchmark.json and benchmark.md; default SEGMENTER/benchmark-DATASET "
                                                    "(with --grounding: runs/benchmark-DATASET).")] = None,
    device: Device = "auto",
) -> None:
    """Score a segmenter, or a grounding module, zero-shot: per-class IoU and seen, unseen and harmonic mIoU (Protocol ii)."""
    from .benchmark import benchmark as score
    from .classes import get_split
    from .readers import open_dataset
    from .segmenter import Segmenter

    torch_device = _device(device)
    split = split or {"voc2012": "voc-15-5", "world": "world"}.get(dataset)
    chosen = get_split(split) if split else None
    data = open_dataset(dataset, data_root, image_set, count)
    if grounding is None:
        if any(option is not None for option in (captioner, class_prior, refine, classifier_draws)):
            _fail("--captioner, --class-prior, --refine and --classifier-draws go with --grounding (a segmenter is closed-vocabulary)")
        model_name, scored = str(segmenter), Segmenter.from_pretrained(segmenter, torch_device)
        out = out or segmenter / f"benchmark-{Path(dataset).name}"
    else:
        from .grounding import GroundingModule
        from .pipeline import load_pipeline
        from .registry import BUNDLES
        from .segment import GroundingSegmenter

        model = model or (grounding if grounding in BUNDLES else None)
        if model is None:
            _fail("--grounding from a folder needs its pipeline: --model")
        module = GroundingModule.from_pretrained(grounding).to(torch_device)
        model_name = f"grounding {grounding} on {model}"
        scored = GroundingSegmenter(load_pipeline(model, device=torch_device), module, data.class_names,
                                    timestep=_module_timestep(grounding, capture_timestep), captioner=_captioner(model, captioner, torch_device),
                                    max_classes=max_classes, class_prior=class_prior, refine=refine, classifier_draws=classifier_draws)
        out = out or Path("runs") / f"benchmark-{Path(dataset).name}"
    result = score(scored, data, chosen, background, model_name=model_name)
    result.save(out)
    print(result.markdown())
