"""Segmenting real images with a grounding module (ODISE/VPD): the module reads the denoiser's features at
the capture step, so one denoising step on a real image's noised latent is enough to segment any named
class, unseen ones included.

Per image: VAE-encode it and noise the latent to the capture timestep with a seeded generator (K draws,
averaged; `synthseg.latents`); optionally name the classes it holds (an implicit captioner, whose lists a
diffusion classifier may choose among: `synthseg.captioner`, `synthseg.classify`); call the denoiser once per
prompt, the class names put in prompts that fit the text encoder ("a photograph of a dog, a cat and a bus",
several prompts when they do not, or one per class); capture that call and run the module; refine the masks
(`synthseg.refine`). The denoiser's other arguments (SDXL's size conditioning, FLUX's positional ids, guidance)
are what the pipeline itself passes (`synthseg.latents.recorded_call`), so every family works alike.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .captioner import ImplicitCaptioner, Recogniser
from .capture import denoiser_of, unit_scaled
from .classify import CLASSIFIER_DRAWS, CLASSIFIER_TOP, DiffusionClassifier
from .config import check_seed, record_recipe
from .errors import SynthsegError
from .formats import coco_annotation, coco_document, label_image, png_bytes, safe_file_name, voc_palette, write_atomic, write_json_atomic
from .generate import predict_masks
from .grounding import GroundingModule
from .latents import encode_images, noise_generator, noise_latents, pixel_tensor, recorded_call, replay_noised
from .progress import loss_progress
from .prompts import check_list_template, describe
from .readers import read_image, upright_size
from .refine import PAMR_ITERATIONS, check_iterations, refine_masks
from .text import encode_prompts, fits_prompt, pipeline_family, prompt_token_spans, text_inputs, text_streams

SEGMENT_TEMPLATE = "a photograph of {}"  # the prompt around the class list ("a dog, a cat and a bus")
THRESHOLD = 0.3  # GroundingSegmenter's: with refinement, on world scenes 500-699, 68.4 harmonic mIoU at 0.2-0.35 against
                 # 67.0 at 0.5 and 66.1 at 0.6 (RESULTS.md, "Ad hoc trials (world)")
CLASS_PRIOR = 10.0  # GroundingSegmenter's default with a max-pooled per-class captioner: on world scenes 500-699, harmonic
# mIoU 58.4 with the world captioner's up to 3 classes, against 57.9 at 5 and at 20, and 53.7 with no prior and up to 2
# (RESULTS.md, "Ad hoc trials (world)")


@dataclass
class Segmentation:
    """One image's result: `probs` (K, H, W) float32 per-class probabilities in the order of the class
    names, `labels` (H, W) uint8 with 0 for background and k + 1 for class k (the most probable class,
    weighed by the class prior where there is one, where the best probability passes the threshold)."""

    probs: torch.Tensor
    labels: np.ndarray


def prompts_for(pipe, class_names: list[str], template: str, one_per_class: bool) -> list[list[str]]:
    """The class names split into prompt groups: one per class, or as many per prompt as every text
    stream keeps whole. A name that does not fit a prompt alone is an error."""
    groups: list[list[str]] = []
    for name in class_names:
        if groups and not one_per_class and fits_prompt(pipe, template.format(describe(groups[-1] + [name]))):
            groups[-1].append(name)
        elif fits_prompt(pipe, template.format(describe([name]))):
            groups.append([name])
        else:
            limit = min(kept for _, _, _, kept in text_streams(pipe))
            raise SynthsegError(f"class name {name!r} does not fit in a prompt of the text encoder's {limit} tokens")
    return groups


def to_rgb(image: Image.Image, name: str) -> Image.Image:
    """8-bit RGB, with a warning that says what was converted: grayscale, palette, RGBA (alpha dropped) or
    16-bit (scaled to 8 bits)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(values / (257 if values.max() > 255 else 1), 0, 255).astype(np.uint8))
        warnings.warn(f"{name} is 16-bit; scaled to 8-bit RGB")
        return image.convert("RGB")
    warnings.warn(f"{name} is {image.mode}; converted to RGB" + (" (alpha dropped)" if "A" in image.mode else ""))
    return image.convert("RGB")


@dataclass
class _Prompts:
    """A class list made into prompts, once: the prompt groups, their class-token spans, text states
    (`embeds`, the module's queries) and the denoiser's text arguments."""

    groups: list[list[str]]
    spans: list
    embeds: torch.Tensor
    texts: dict


class GroundingSegmenter:
    """A grounding module on its pipeline, ready to segment `class_names` in any image: the prompts, their
    class-token spans, text embeddings and the denoiser's recorded arguments (per input size) are made
    once, not per image. It has `Segmenter`'s interface (`class_names`, `predict`), so
    `synthseg.benchmark` scores it with the same readers and confusion matrix as a trained segmenter.

    Options: `timestep` of 1000 (flow models: sigma = timestep / 1000); a class's probability is the mean
    over `noise_draws` noised latents, seeded by `seed` and the image's index; `template` has one slot
    for the class list; a pixel is labelled with its most probable class where that passes `threshold` (default
    THRESHOLD).
    With a `captioner` (ODISE's implicit captioner, `synthseg.captioner`), each image is first given the
    1 to `max_classes` of the names it recognises (`Recogniser`), and only those are prompted and segmented (the
    others get probability 0); without one, every image is prompted with all the names. With a captioner trained per
    class, `classifier_draws` (default CLASSIFIER_DRAWS with one; 0: off) makes that choice a diffusion classifier's
    (`synthseg.classify`): among the lists of 1 to `max_classes` of its `classifier_top` most probable classes, the one
    whose prompt best predicts the noise of the image's latent over that many draws, weighed with the captioner's
    probabilities. With `class_prior` > 0
    (a captioner trained per class, max-pooled; default CLASS_PRIOR with one, else 0), a pixel's label weighs its
    named classes' probabilities by a softmax over them of the captioner's cell similarity
    (`ImplicitCaptioner.cell_similarity`, upsampled) times `class_prior`: the module finds the objects, the
    captioner's cells say which is which; the module's own probabilities still decide background. `refine` (default
    PAMR_ITERATIONS; 0: off) PAMR iterations then move the probabilities' and those weights' edges to the image's
    colour edges (`synthseg.refine`), as the returned probabilities show.
    `grounding` is None only in a subclass that makes the probabilities otherwise (`AttentionSegmenter`).
    """

    def __init__(self, pipe, grounding: GroundingModule | None, class_names, *, timestep: int = 5, noise_draws: int = 1, seed: int = 0,
                 template: str = SEGMENT_TEMPLATE, one_prompt_per_class: bool = False, threshold: float | None = None,
                 captioner: ImplicitCaptioner | None = None, max_classes: int = 3, class_prior: float | None = None,
                 refine: int | None = None, classifier_draws: int | None = None, classifier_top: int = CLASSIFIER_TOP):
        names = list(class_names)
        if not names:
            raise SynthsegError("no class names to segment")
        if noise_draws < 1:
            raise SynthsegError(f"noise_draws must be at least 1, got {noise_draws}")
        check_seed("seed", seed)
        if not 0 <= timestep < 1000:
            raise SynthsegError(f"the capture timestep must be in 0..999 (of 1000), got {timestep}")
        threshold = THRESHOLD if threshold is None else threshold
        if not 0 <= threshold < 1:
            raise SynthsegError(f"threshold must be in [0, 1), got {threshold}")
        cells = captioner is not None and (captioner.config.objective, captioner.config.pooling) == ("classes", "max")
        class_prior = (CLASS_PRIOR if cells else 0.0) if class_prior is None else class_prior
        if not (math.isfinite(class_prior) and class_prior >= 0):
            raise SynthsegError(f"class_prior must be a finite number, at least 0, got {class_prior}")
        refine = PAMR_ITERATIONS if refine is None else refine
        check_iterations(refine)
        per_class = captioner is not None and captioner.config.objective == "classes"
        classifier_draws = (CLASSIFIER_DRAWS if per_class else 0) if classifier_draws is None else classifier_draws
        if classifier_draws < 0:
            raise SynthsegError(f"classifier_draws must be at least 0, got {classifier_draws}")
        if classifier_draws and not per_class:
            raise SynthsegError("the diffusion classifier (classifier_draws) ranks the class lists of a captioner trained per class")
        if class_prior and not cells:
            raise SynthsegError("class_prior needs a captioner trained per class with pooling max, whose cells say where each class is")
        check_list_template(template, "segment")
        if grounding is not None:
            grounding.config.check_pipeline(pipe)
            grounding.eval()
        self.pipe, self.grounding, self.names = pipe, grounding, names
        self.timestep, self.noise_draws, self.seed, self.threshold = timestep, noise_draws, seed, threshold
        self.template, self.one_prompt_per_class, self.class_prior, self.refine = template, one_prompt_per_class, class_prior, refine
        self._prompt_sets: dict[tuple[str, ...], _Prompts] = {}
        self.prompts(names)  # every name must fit a prompt, whatever an image is found to hold
        self.recogniser = Recogniser(pipe, captioner, names, max_classes) if captioner is not None else None
        self.classifier = (DiffusionClassifier(pipe, self.recogniser, template, draws=classifier_draws, top=classifier_top, seed=seed)
                           if classifier_draws else None)
        self._calls: dict[tuple[int, int, int], dict] = {}

    @property
    def class_names(self) -> tuple[str, ...]:
        """Label names in label order; label 0 is "background"."""
        return ("background", *self.names)

    def prompts(self, names: list[str]) -> _Prompts:
        """`names` made into prompts (cached per class list)."""
        key = tuple(names)
        if key not in self._prompt_sets:
            groups = prompts_for(self.pipe, names, self.template, self.one_prompt_per_class)
            prompts = [self.template.format(describe(group)) for group in groups]
            with torch.no_grad():
                encoded = encode_prompts(self.pipe, prompts, guidance_scale=1.0)
                self._prompt_sets[key] = _Prompts(groups, prompt_token_spans(self.pipe, prompts, groups), encoded.embeds,
                                                  text_inputs(self.pipe, prompts, encoded))
        return self._prompt_sets[key]

    def predict(self, image: Image.Image) -> np.ndarray:
        """HW int64 labels of one image at its own size (noise seeded as the first image of a list)."""
        return self.segment(image).labels.astype(np.int64)

    def segment(self, image: Image.Image, index: int = 0) -> Segmentation:
        """Segment one PIL image (any mode and size; `index` seeds its noise). An image the VAE cannot take
        at its size is padded (edge pixels) up to one it can, with a warning; the output is cropped back."""
        return self.segment_batch([image], [index])[0]

    @torch.no_grad()
    def segment_batch(self, images: list[Image.Image], indices: list[int]) -> list[Segmentation]:
        """Segment images of one input size (`input_size`), the images prompted with the same class list
        in one denoiser call: for each image, its noise draws times the prompts, image-major. Image i's
        noise is seeded by indices[i] alone, so a batch gives what one image at a time gives (to float
        rounding)."""
        rgbs, clean, noisy, size = [], [], [], None
        for image, index in zip(images, indices):
            name = getattr(image, "filename", "") or f"image {index}"
            rgb = to_rgb(image, name)
            own = self.input_size(rgb)
            if size not in (None, own):
                raise SynthsegError(f"{name}: a batch takes images of one input size; group them with input_size")
            height, width = size = own
            if size != (rgb.height, rgb.width):
                warnings.warn(f"{name} is {rgb.width}x{rgb.height}; padded to {width}x{height} for the VAE, and its masks cropped back")
            padded = np.pad(np.asarray(rgb), ((0, height - rgb.height), (0, width - rgb.width), (0, 0)), mode="edge")
            generator = noise_generator(self.seed, index)
            latent = encode_images(self.pipe, pixel_tensor(padded))
            draws, value = noise_latents(self.pipe, latent.expand(self.noise_draws, -1, -1, -1), self.timestep, generator)
            rgbs.append(rgb)
            clean.append(latent)
            noisy.append(draws)
        if self.classifier is not None:
            named = self.classifier(torch.cat(clean), indices)
        else:
            named = self.recogniser(torch.cat(clean)) if self.recogniser is not None else [self.names] * len(images)
        probs: list[torch.Tensor] = [torch.empty(0)] * len(images)
        for names in dict.fromkeys(tuple(n) for n in named):
            members = [i for i, n in enumerate(named) if tuple(n) == names]
            rows = [self.names.index(n) for n in names]
            for i, own in zip(members, self._probs(self.prompts(list(names)), [noisy[i] for i in members], value, size)):
                probs[i] = torch.zeros((len(self.names), *size))
                probs[i][rows] = own
        weights = self._class_weights(torch.cat(clean), named, size) if self.class_prior else [torch.ones(1, 1, 1)] * len(images)
        results = []
        for rgb, full, weight in zip(rgbs, probs, weights):
            full, weight = full[:, : rgb.height, : rgb.width], weight[:, : rgb.height, : rgb.width]
            if self.refine and self.class_prior:  # the weights too, in the same pass: refined alone, the probabilities gain 5.2
                full, weight = refine_masks(rgb, torch.cat([full, weight]), self.refine).split(len(full))  # harmonic mIoU, with them 7.6
            elif self.refine:
                full = refine_masks(rgb, full, self.refine)
            labels = ((full * weight).argmax(0) + 1).numpy().astype(np.uint8)
            labels[full.max(0).values.numpy() <= self.threshold] = 0
            results.append(Segmentation(full, labels))
        return results

    def _class_weights(self, clean: torch.Tensor, named: list[list[str]], size: tuple[int, int]) -> list[torch.Tensor]:
        """Per image, (K, H, W) weights of its named classes (0 for the others): a softmax over them of the
        captioner's upsampled cell similarity times `class_prior`."""
        cells = F.interpolate(self.recogniser.cell_similarity(clean), size=size, mode="bilinear", align_corners=False)
        out = []
        for similarity, names in zip(cells, named):
            unnamed = torch.tensor([name not in names for name in self.names])
            out.append(torch.softmax((similarity * self.class_prior).masked_fill(unnamed[:, None, None], float("-inf")), 0))
        return out

    def _probs(self, prompts: _Prompts, noisy: list[torch.Tensor], value: float, size: tuple[int, int]) -> list[torch.Tensor]:
        """Per image of `noisy` (each its (draws, C, h, w) noised latents), (K, H, W) probabilities of the
        prompts' classes, averaged over the draws: one denoiser call for all of them."""
        draws_count, prompt_count, copies = self.noise_draws, len(prompts.groups), len(noisy) * self.noise_draws
        key = (*size, prompt_count * copies)
        if key not in self._calls:
            self._calls[key] = recorded_call(self.pipe, prompt_count * copies, *size)
        texts = {k: v.repeat(copies, *[1] * (v.ndim - 1)) for k, v in prompts.texts.items()}
        features = replay_noised(self.pipe, self._calls[key], torch.cat(noisy).repeat_interleave(prompt_count, dim=0), value, texts,
                                 **self._capture_options())
        masks = self._class_probs(features, prompts, size, copies)
        out = []
        for b in range(len(noisy)):
            rows = [(b * draws_count + d) * prompt_count for d in range(draws_count)]
            out.append(torch.stack([torch.stack([masks[row + g][q] for row in rows]).mean(0)
                                    for g, group in enumerate(prompts.groups) for q in range(len(group))]))
        return out

    def input_size(self, image: Image.Image) -> tuple[int, int]:
        """The (H, W) an image is padded to (`padded_size`)."""
        return self.padded_size(image.height, image.width)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest (H, W) at or above (height, width) that the pipeline takes (multiples of 8, and of the
        VAE's factor times the transformer's patch: FLUX packs 2x2)."""
        patch = 2 if pipeline_family(self.pipe) == "flux" else int(getattr(denoiser_of(self.pipe).config, "patch_size", None) or 1)
        multiple = math.lcm(8, self.pipe.vae_scale_factor * patch)
        return (-(-height // multiple) * multiple, -(-width // multiple) * multiple)

    def _capture_options(self) -> dict:
        config = self.grounding.config
        return dict(attention=config.needs_attention, blocks=config.feature_blocks or None)

    def _class_probs(self, features, prompts: _Prompts, size: tuple[int, int], copies: int) -> list[torch.Tensor]:
        """Per captured row (`copies` times the prompts: image, then draw, then prompt), (K_g, H, W)
        probabilities of its prompt's classes."""
        return predict_masks(self.grounding, features, prompts.embeds.repeat(copies, 1, 1), prompts.spans * copies, size)


class AttentionSegmenter(GroundingSegmenter):
    """The cross-attention baseline (DAAM) on an existing image, in place of a module: each class's
    attention at the capture step (layers averaged per resolution, sub-word tokens summed, resolutions
    summed; `CapturedFeatures.class_attention`), min-max scaled per class to [0, 1] as DAAM scales its
    heat maps. Same prompts, noise, refinement and labelling as `GroundingSegmenter`."""

    def __init__(self, pipe, class_names, **options):
        super().__init__(pipe, None, class_names, **options)

    def _capture_options(self) -> dict:
        return dict(attention=True, blocks=None)

    def _class_probs(self, features, prompts: _Prompts, size: tuple[int, int], copies: int) -> list[torch.Tensor]:
        spans = prompts.spans * copies
        scaled = unit_scaled(features.class_attention(spans, size).float().cpu())
        return [scaled[i, : len(row)] for i, row in enumerate(spans)]


def _batches(sizes: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices of up to `batch_size` consecutive images of one input size (`GroundingSegmenter.input_size`): fixed
    by the list alone, since batched float arithmetic differs in the last bit between batch compositions."""
    if batch_size < 1:
        raise SynthsegError(f"batch_size must be at least 1, got {batch_size}")
    batches: list[list[int]] = []
    for index, size in enumerate(sizes):
        if batches and len(batches[-1]) < batch_size and sizes[batches[-1][0]] == size:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def segment_images(pipe, grounding: GroundingModule, images: list[Image.Image], class_names: list[str], batch_size: int = 1,
                   **options) -> list[Segmentation]:
    """Segment `class_names` in each of `images` with `grounding` on `pipe`'s features; `options` are
    `GroundingSegmenter`'s. Up to `batch_size` consecutive images of one input size share a denoiser
    call; image i's noise is seeded by `seed` and i whatever the batch. Shows progress with the running
    mean of the labelled fraction of pixels. Every result is kept: for many images, `segment_to_folder`."""
    segmenter = GroundingSegmenter(pipe, grounding, class_names, **options)
    batches, results, labelled = _batches([segmenter.input_size(image) for image in images], batch_size), [], []
    with loss_progress("segment", len(images), metric="labelled") as advance:  # the mean labelled fraction
        for indices in batches:
            results += segmenter.segment_batch([images[i] for i in indices], indices)
            labelled += [float((r.labels > 0).mean()) for r in results[-len(indices):]]
            advance(len(results), labelled)
    return results


@dataclass
class SegmentJob:
    """What a `segment_to_folder` output holds, recorded as its segment.json: a rerun that resumes it must
    ask the same (`config.record_recipe`)."""

    images: list[str]
    class_names: list[str]
    settings: dict


def segment_to_folder(pipe, grounding: GroundingModule, paths: list[str | Path], class_names: list[str], directory: str | Path, *,
                      batch_size: int = 1, min_area: int = 4, provenance: dict | None = None, **options) -> dict:
    """Segment image files into `directory`, one batch at a time in memory (`segment_images` keeps them all):
    `labels/<stem>.png` (VOC palette: 0 background, k + 1 class k), `overlays/<stem>.png` and `records/<stem>.json`
    per image, then `annotations.json` (COCO instances: one per connected region of at least `min_area` pixels,
    scored by its mean probability; each image's `file_name` its absolute path, so detectron2 and pycocotools open
    it from anywhere). A record is written last, atomically, so a killed run reruns where it stopped; a rerun
    with other images, classes, options or `provenance` (the model and module named) is refused. Image i's noise
    depends on its place in `paths` alone and the batches on the list alone, so a resumed run writes what an
    uninterrupted one writes. Returns {"images", "instances"}."""
    segmenter = GroundingSegmenter(pipe, grounding, class_names, **options)
    directory, paths = Path(directory), [Path(p) for p in paths]
    stems, batches = _stems(paths), _batches([segmenter.padded_size(*upright_size(path)) for path in paths], batch_size)
    settings = {k: v for k, v in options.items() if v is None or isinstance(v, (bool, int, float, str))}  # a captioner: by provenance
    job = SegmentJob([str(p.resolve()) for p in paths], list(class_names), dict(settings, min_area=min_area, **(provenance or {})))
    for sub in ("labels", "overlays", "records"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    record_recipe(directory / "segment.json", job, f"{directory} was started with another segment job ({{changed}} differ); use a new --out "
                  "or the same images and options")
    pending = [b for b in batches if not all((directory / "records" / f"{stems[i]}.json").is_file() for i in b)]
    skipped, labelled = len(paths) - sum(map(len, pending)), []
    with loss_progress("segment", len(paths), completed=skipped, metric="labelled") as advance:
        for indices in pending:  # a batch is redone whole, as it was composed
            images = [read_image(paths[i]) for i in indices]
            for index, image, result in zip(indices, images, segmenter.segment_batch(images, indices)):
                _write_segmentation(directory, stems[index], image, result, len(class_names), min_area)
                labelled.append(float((result.labels > 0).mean()))
            advance(skipped + len(labelled), labelled)
    entries, annotations = [], []
    for image_id, stem in enumerate(stems, start=1):
        record = json.loads((directory / "records" / f"{stem}.json").read_text())
        entries.append(dict(record["image"], id=image_id))
        annotations += [dict(ann, id=len(annotations) + n, image_id=image_id) for n, ann in enumerate(record["instances"], start=1)]
    write_json_atomic(directory / "annotations.json", coco_document(entries, annotations, list(class_names), "synthseg segment"))
    return {"images": len(entries), "instances": len(annotations)}


def _stems(paths: list[Path]) -> list[str]:
    """Output names of the images: each file's stem made safe (`safe_file_name`), the later of two alike
    suffixed with its place in the list."""
    stems: list[str] = []
    taken: set[str] = set()
    for index, path in enumerate(paths, start=1):
        stem = safe_file_name(path.stem)
        stem = stem if stem not in taken else f"{stem}-{index}"
        stems.append(stem)
        taken.add(stem)
    return stems


def _write_segmentation(directory: Path, stem: str, image: Image.Image, result: Segmentation, classes: int, min_area: int) -> None:
    """One image's label map, overlay and (last) record: its COCO image entry and instances, ids left to the end."""
    from .dataset import instances

    write_atomic(directory / "labels" / f"{stem}.png", png_bytes(label_image(result.labels)))
    with warnings.catch_warnings():  # segment_batch said what it converted
        warnings.simplefilter("ignore")
        rgb = to_rgb(image, image.filename)
    write_atomic(directory / "overlays" / f"{stem}.png", png_bytes(overlay(rgb, result.labels)))
    found = [coco_annotation(0, 0, k + 1, mask, float(result.probs[k].numpy()[mask].mean()))
             for k in range(classes) for mask in instances(result.labels, k + 1, min_area)]
    entry = dict(file_name=str(Path(image.filename).resolve()), width=image.width, height=image.height, label_file_name=f"labels/{stem}.png")
    write_json_atomic(directory / "records" / f"{stem}.json", dict(image=entry, instances=found))


def overlay(image: Image.Image, labels: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """`image` (RGB) with each labelled pixel blended `alpha` towards its class's VOC colour."""
    colours = np.array(voc_palette(), dtype=np.float32).reshape(-1, 3)[labels]
    pixels = np.asarray(image, dtype=np.float32)
    mixed = np.where((labels > 0)[..., None], (1 - alpha) * pixels + alpha * colours, pixels)
    return Image.fromarray(mixed.round().astype(np.uint8))
