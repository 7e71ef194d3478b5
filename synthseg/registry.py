"""Everything synthseg ships inside its package, found by name: bundled models and recipes.

One resolver for each kind of name, so "world" means the same thing to every command and loader:

- `resolve_pipeline("world")`, `resolve_grounding("world")`, `resolve_annotator("world")`,
  `resolve_backbone("world")`, `resolve_counter("world-layout")`: the folders of the bundled miniature worlds
  (`synthseg/assets/world/`, `world-dit/` for the transformer world, `world-layout/` for the world's GLIGEN and
  `world-layout-counter/` for its counting judge). Any other spec passes through (a hub id or a folder).
- `recipe_path("voc", "dataset")`: a packaged recipe by name (`synthseg/recipes/*.yaml`) or a file.
- `model_card(spec)`: what a text-to-image export says about itself for synthseg (`synthseg.json`:
  its class vocabulary and sampling defaults), for exports that carry one (the world's do).

Files are found with `importlib.resources`, so a wheel installed anywhere works from any folder.
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SynthsegError

PACKAGE = Path(str(importlib.resources.files("synthseg")))  # wheels install as folders, never zipped
RECIPES = PACKAGE / "recipes"
ASSETS = PACKAGE / "assets"
MODEL_CARD = "synthseg.json"

# Recipe kinds: which packaged files each command's --recipe may name (globs), and a prefix a short name may omit.
RECIPE_KINDS = {
    "dataset": (("dataset-*.yaml",), "dataset-"),
    "grounding": (("*-grounding.yaml",), ""),
    "segmenter": (("segmenter-*.yaml",), ""),
    "world-model": (("world-t2i*.yaml",), ""),
    "world-dit": (("world-dit.yaml", "world-dit-finetune*.yaml"), ""),
    "world-layout": (("world-layout*.yaml",), ""),
    "annotator": (("*-annotator.yaml",), ""),
    "captioner": (("captioner-*.yaml",), "captioner-"),
    "backbone": (("backbone-*.yaml", "counter-*.yaml"), "backbone-"),
}


@dataclass(frozen=True)
class Bundle:
    """A set of models shipped under one name: text-to-image pipeline, grounding module, annotator, the
    implicit captioner that recognises the named classes in an image (`synthseg.captioner`), the
    classification-pretrained ResNet its segmenters start from (`train.backbone`), and the counter that
    judges candidates with the captioner (`synthseg.counter`) and guides sampling (`synthseg.guidance`), where those ship."""

    pipeline: Path
    grounding: Path
    annotator: Path
    captioner: Path | None = None
    backbone: Path | None = None
    counter: Path | None = None


BUNDLES = {
    "world": Bundle(pipeline=ASSETS / "world" / "t2i", grounding=ASSETS / "world" / "grounding", annotator=ASSETS / "world" / "annotator",
                    captioner=ASSETS / "world" / "captioner", backbone=ASSETS / "world" / "backbone"),
    # The transformer world: FLUX's architecture on the same scenes, judged by the same annotator. Its captioner
    # is the world's: it reads the same VAE's latents into the same MiniLM states; its counter, which guides its
    # sampling, is the one trained on the world's rendered layout scenes (it reads pixels).
    "world-dit": Bundle(pipeline=ASSETS / "world-dit" / "t2i", grounding=ASSETS / "world-dit" / "grounding", annotator=ASSETS / "world" / "annotator",
                        captioner=ASSETS / "world" / "captioner", counter=ASSETS / "world-layout-counter"),
    # The world's GLIGEN: box layers over the world UNet (the export's card names "world" as its base), read by the world's
    # module; the world's captioner and a counter trained on its layout scenes choose among a layout's candidates.
    "world-layout": Bundle(pipeline=ASSETS / "world-layout", grounding=ASSETS / "world" / "grounding", annotator=ASSETS / "world" / "annotator",
                           captioner=ASSETS / "world" / "captioner", counter=ASSETS / "world-layout-counter"),
}
LAYOUT_MODELS = {"world": "world-layout"}  # the bundled GLIGEN export that `--layouts` uses in place of a bundled text-only model


def _bundled(spec, part: str) -> Path | None:
    bundle = BUNDLES.get(str(spec))
    if bundle is None:
        return None
    folder = getattr(bundle, part)
    if folder is None:
        raise SynthsegError(f"the bundled {spec} ships no {part}: name a folder")
    if not folder.is_dir():
        raise SynthsegError(f"the bundled {spec} {part} is missing from {folder}: reinstall synthseg")
    return folder


def resolve_pipeline(spec: str | Path) -> str:
    """A bundled name's pipeline folder; any other spec (hub id or folder) unchanged."""
    return str(_bundled(spec, "pipeline") or spec)


def resolve_grounding(spec: str | Path) -> Path:
    """A bundled name's grounding module folder; anything else is a folder."""
    return _bundled(spec, "grounding") or Path(spec)


def resolve_captioner(spec: str | Path) -> Path:
    """A bundled name's implicit captioner folder; anything else is a folder."""
    return _bundled(spec, "captioner") or Path(spec)


def resolve_backbone(spec: str | Path) -> str:
    """A bundled name's pretrained segmenter backbone folder; any other spec (hub id or folder) unchanged."""
    return str(_bundled(spec, "backbone") or spec)


def resolve_counter(spec: str | Path) -> Path:
    """A bundled name's counting judge folder; anything else is a folder."""
    return _bundled(spec, "counter") or Path(spec)


def judge_for(model: str | Path, given: str | None, part: str = "captioner") -> str | None:
    """The judge `part` ("captioner" or "counter") to use with `model`: `given` when given ("none": none),
    else the bundle's own when the model is bundled and ships one, else none."""
    if given is not None:
        return None if given == "none" else given
    bundle = BUNDLES.get(str(model))
    return str(model) if bundle is not None and getattr(bundle, part) is not None else None


def grounding_for(model: str | Path, grounding: str | Path | None) -> str | Path:
    """The grounding module to use with `model`: `grounding` when given, else the bundle's own when the
    model is bundled ("world-dit" -> world-dit's); a model from elsewhere needs one named."""
    if grounding is not None:
        return grounding
    if str(model) in BUNDLES:
        return str(model)
    raise SynthsegError(f"{model} is not a bundled model: name its grounding module (--grounding FOLDER)")


def resolve_annotator(spec: str | Path) -> str:
    """A bundled name's annotator folder; "coco" and folders unchanged."""
    return str(_bundled(spec, "annotator") or spec)


@dataclass(frozen=True)
class ModelCard:
    """`synthseg.json` beside a pipeline's model_index.json. classes: the only names the model was
    trained to draw (empty: open vocabulary). Sampling defaults for datasets made with it; for a GLIGEN
    model, `layouts`: the layout limits it was trained on (a dataset's `layouts` section over them). `candidates`:
    images generated per text prompt, of which its bundle's captioner keeps one (`synthseg.candidates`); `count_guidance`:
    the strength with which its bundle's counter guides a text prompt's sampling (`synthseg.guidance`; 0: none). `base`:
    the pipeline an export of added layers only (world-layout) takes its other parts from."""

    classes: tuple[str, ...] = ()
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    layouts: dict = field(default_factory=dict)
    base: str | None = None
    candidates: int = 1
    count_guidance: float = 0.0


SD_SAMPLING = ModelCard()  # Stable Diffusion's pipeline defaults, for models without a card


def model_card(spec: str | Path) -> ModelCard:
    """The card of a local pipeline (bundled name or folder); `SD_SAMPLING` where there is none."""
    path = Path(resolve_pipeline(spec)) / MODEL_CARD
    if not path.is_file():
        return SD_SAMPLING
    try:
        data = json.loads(path.read_text())
        return ModelCard(tuple(data.get("classes", ())), int(data["num_inference_steps"]), float(data["guidance_scale"]),
                         dict(data.get("layouts", {})), data.get("base"), int(data.get("candidates", 1)),
                         float(data.get("count_guidance", 0.0)))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise SynthsegError(f"{path}: corrupt model card") from None


def check_vocabulary(model: str | Path, class_names) -> None:
    """Refuse class names a closed-vocabulary model (one whose card lists classes) was never trained on."""
    known = model_card(model).classes
    unknown = [name for name in class_names if known and name not in known]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise SynthsegError(f"model {model!r} cannot draw {shown}: it knows only {', '.join(known)}")


def recipe_names(kind: str) -> dict[str, Path]:
    """{name: packaged file} of a recipe kind: file stems, and for datasets also the short set name."""
    patterns, prefix = RECIPE_KINDS[kind]
    names = {}
    for path in sorted(RECIPES.glob("*.yaml")):
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns):
            names[path.stem] = path
            if prefix:
                names[path.stem.removeprefix(prefix)] = path
    return names


def recipe_path(spec: str | Path, kind: str) -> Path:
    """A recipe given by packaged name ("voc", "world-grounding", "segmenter-tiny") or by file path."""
    names = recipe_names(kind)
    if str(spec) in names:
        return names[str(spec)]
    if Path(spec).is_file():
        return Path(spec)
    if Path(spec).suffix in (".yaml", ".yml", ".json") or "/" in str(spec):
        raise SynthsegError(f"{spec}: recipe file not found")
    shown = [n for n in names if not RECIPE_KINDS[kind][1] or not n.startswith(RECIPE_KINDS[kind][1])]
    raise SynthsegError(f"unknown {kind} recipe {str(spec)!r}; known: {', '.join(shown)} (or a YAML file's path)")
