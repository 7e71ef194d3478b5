"""Train the implicit captioner (`synthseg.captioner`) on a labelled dataset, resumably.

Each image's caption is the class list its label map holds (`template` around it, as the candidates
are written at use), so a `make-dataset` folder trains it with no further labels: the generator was
asked for those classes, and the grounding module found each of them. Images are VAE-encoded once,
at `image_size`, by the pipeline the captioner is for. The loss is CLIP's: cross-entropy of the
image's scaled cosine similarity to every distinct caption of the dataset, the right one the target;
or, with `objective: classes`, SigLIP's: binary cross-entropy of its scaled and shifted similarity to
each class's direction (`synthseg.captioner.class_embeddings`), the classes it holds the positives.
With `copy_paste` (objective classes), that share of each batch is re-encoded from composites: another image's
objects pasted over the image (`augment.copy_paste`), so a dataset of one or two objects an image also shows it
scenes of three or four.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..captioner import CaptionerConfig, ImplicitCaptioner, caption_embeddings, class_embeddings
from ..config import check_non_negative, check_positive, check_share, load_recipe, stamped
from ..errors import SynthsegError
from ..latents import encode_images, pixel_tensor
from ..progress import loss_progress
from ..readers import SegmentationData
from .augment import copy_paste
from .loop import claim_workdir, to_device, train_loop, warmup_cosine, write_training_record


@dataclass
class CaptionerRecipe:
    """See recipes/captioner-world.yaml. image_size: the side images are resized to before encoding
    (None: the pipeline's default). rotations: also turn latents by multiples of 90 degrees (for scenes
    with no up, as the world's); horizontal flips are always drawn. objective, pooling: what the captioner
    learns, and how (`synthseg.captioner.CaptionerConfig`). copy_paste: the share of each batch whose images get
    another image's objects pasted over them before encoding (only with objective classes: a composite's class set
    need not be one of the data's captions)."""

    template: str = "a photograph of {}"
    width: int = 64
    hidden_dim: int = 512
    objective: str = "captions"
    pooling: str = "mean"
    image_size: int | None = None
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    rotations: bool = False
    copy_paste: float = 0.0
    seed: int = 0
    checkpoint_every: int = 500

    def validate(self, source: str) -> None:
        check_positive(source, self, "steps", "batch_size", "checkpoint_every")
        check_share(source, self, "copy_paste")
        if self.copy_paste and self.objective != "classes":
            raise SynthsegError(f"{source}: copy_paste goes with objective classes (a composite's classes need not be a caption of the data)")
        check_non_negative(source, self, "warmup_steps", "lr", "weight_decay")
        if self.image_size is not None and (self.image_size < 8 or self.image_size % 8):
            raise SynthsegError(f"{source}: image_size must be a multiple of 8, got {self.image_size}")
        CaptionerConfig(1, 1, self.template, self.width, self.hidden_dim, self.objective, self.pooling).validate(source)


def load_captioner_recipe(spec: str | Path, **overrides) -> CaptionerRecipe:
    """A captioner recipe by packaged name ("captioner-world") or path, with `overrides` (None: the recipe's)."""
    return load_recipe(CaptionerRecipe, spec, "captioner", **overrides)


@torch.no_grad()
def encode_dataset(pipe, data: SegmentationData, size: int) -> tuple[torch.Tensor, list[list[str]], list[int]]:
    """(N, C, h, w) VAE latents of every image at `size` x `size`, each image's classes (its label map's, in
    the dataset's class order), and its index in `data`; an image with no class is skipped."""
    latents, classes, indices = [], [], []
    with loss_progress("encode", len(data), metric="kept") as advance:
        kept = []
        for index in range(len(data)):
            image, labels = data[index]
            present = data.classes_in(labels)
            kept.append(float(bool(present)))
            if present:
                latents.append(encode_images(pipe, pixel_tensor(np.asarray(image.convert("RGB").resize((size, size))))).float().cpu())
                classes.append(present)
                indices.append(index)
            advance(index + 1, kept)
    if not latents:
        raise SynthsegError(f"{data.name}: no image holds a labelled class; nothing to train the captioner on")
    return torch.cat(latents), classes, indices


class Composites:
    """copy_paste for a captioner batch: the images and label maps of `data`'s items `indices` at `size` (read
    again, as `encode_dataset` keeps only latents), and the class list `captions` whose presence the loss scores."""

    scales = [0.5, 1.0]  # a pasted image at most the image's size, so no object is cut: each is pasted whole, anywhere

    def __init__(self, data: SegmentationData, indices: list[int], size: int, captions: list[str]):
        items = [data[index] for index in indices]
        self.pixels = np.stack([np.asarray(image.convert("RGB").resize((size, size))) for image, _ in items])
        self.labels = np.stack([np.asarray(Image.fromarray(labels).resize((size, size), Image.NEAREST)) for _, labels in items])
        self.size = size
        self.class_index = [data.class_names.index(name) + 1 for name in captions]

    def __call__(self, pipe, rows: torch.Tensor, latents: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator,
                 share: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch of dataset rows `rows` (of `latents` and `targets` over the captions), `share` of its images
        pasted over and re-encoded -> (latents, targets, weights): a class of an image that the paste left under
        half visible, but not hidden, has weight 0, neither positive nor negative."""
        batch, target, weight = latents[rows], targets[rows], torch.ones(len(rows), targets.shape[-1])
        pasted, pixels, pasted_targets, pasted_weights = [], [], [], []
        for position, row in enumerate(rows.tolist()):
            if rng.random() >= share:
                continue
            other = int(rng.integers(len(self.labels)))
            base = self.labels[row]
            image, labels, where = copy_paste(self.pixels[row], base, (Image.fromarray(self.pixels[other]), self.labels[other]),
                                              rng, self.scales)
            before = np.array([(base == k).sum() for k in self.class_index])
            kept = np.array([((base == k) & ~where).sum() for k in self.class_index])
            added = np.array([((labels == k) & where).sum() for k in self.class_index])
            partly = (kept > 0) & (2 * kept < before) & (added == 0)
            pasted.append(position)
            pixels.append(image)
            pasted_targets.append(((added > 0) | (2 * kept >= before) & (before > 0)).astype(np.float32))
            pasted_weights.append((~partly).astype(np.float32))
        if pasted:
            with torch.no_grad():
                batch[pasted] = encode_images(pipe, pixel_tensor(np.stack(pixels))).float().cpu()
            target[pasted], weight[pasted] = torch.from_numpy(np.stack(pasted_targets)), torch.from_numpy(np.stack(pasted_weights))
        return batch, target, weight


def augment(latents: torch.Tensor, rng: np.random.Generator, rotations: bool) -> torch.Tensor:
    """Per latent: a horizontal flip with chance 1/2, then (with `rotations`) a random quarter turn."""
    out = []
    for latent in latents:
        if rng.random() < 0.5:
            latent = latent.flip(-1)
        out.append(torch.rot90(latent, int(rng.integers(4)), (-2, -1)) if rotations else latent)
    return torch.stack(out)


def train_captioner(pipe, data: SegmentationData, recipe: CaptionerRecipe, workdir: str | Path, output: str | Path,
                    max_steps: int | None = None) -> ImplicitCaptioner:
    """Train (or resume) a captioner for `pipe` on `data` in `workdir`, on the pipeline's device (the
    dataset's latents are kept on the CPU; each step's batch moves); save it to `output` with its recipe
    and training record. Step s's batch is drawn from default_rng([seed, s]), so a resumed run repeats an
    uninterrupted one."""
    workdir, output = Path(workdir), Path(output)
    config = CaptionerConfig.for_pipeline(pipe, template=recipe.template, width=recipe.width, hidden_dim=recipe.hidden_dim,
                                          objective=recipe.objective, pooling=recipe.pooling)
    claim_workdir(workdir, recipe)
    size = recipe.image_size or pipe.default_sample_size * pipe.vae_scale_factor
    latents, classes, indices = encode_dataset(pipe, data, size)
    if recipe.objective == "classes":
        captions = [name for name in data.class_names if any(name in c for c in classes)]  # one class each
        if recipe.copy_paste:
            composites = Composites(data, indices, size, captions)
        targets = torch.tensor([[float(name in c) for name in captions] for c in classes])
        embeddings = class_embeddings(pipe, captions, recipe.template)
    else:
        captions = sorted({tuple(c) for c in classes}, key=lambda c: (len(c), [data.class_names.index(n) for n in c]))
        targets = torch.tensor([captions.index(tuple(c)) for c in classes])
        embeddings = caption_embeddings(pipe, [list(c) for c in captions], recipe.template)
    torch.manual_seed(recipe.seed)
    device = pipe.device
    captioner = ImplicitCaptioner(config).to(device).train()
    embeddings = embeddings.to(device)
    optimizer = torch.optim.AdamW(captioner.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.warmup_steps, recipe.steps))

    def step_loss(step: int) -> torch.Tensor:
        rng = np.random.default_rng([recipe.seed, step])
        rows = torch.from_numpy(rng.integers(len(latents), size=recipe.batch_size))
        if recipe.copy_paste:  # no draws without it: old recipes repeat exactly
            batch, target, weight = to_device(composites(pipe, rows, latents, targets, rng, recipe.copy_paste), device)
            logits = captioner.class_logits(augment(batch, rng, recipe.rotations), embeddings)
            return F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum") / weight.sum()
        batch, target = to_device((augment(latents[rows], rng, recipe.rotations), targets[rows]), device)
        if recipe.objective == "classes":
            return F.binary_cross_entropy_with_logits(captioner.class_logits(batch, embeddings), target)
        return F.cross_entropy(captioner(batch) @ embeddings.T * captioner.logit_scale.exp(), target)

    losses = train_loop("captioner", step_loss, model=captioner, optimizer=optimizer, checkpoint=workdir / "captioner.ckpt",
                        steps=recipe.steps, checkpoint_every=recipe.checkpoint_every, max_steps=max_steps, schedule=schedule)
    captioner.cpu().eval().save_pretrained(output)
    made = dict(asdict(recipe), images=len(latents), captions=len(captions), dataset=data.name)
    (output / "recipe.json").write_text(json.dumps(stamped(made, recipe), indent=2) + "\n")
    write_training_record(output, captioner=losses)
    return captioner
