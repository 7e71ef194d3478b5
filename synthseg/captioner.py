"""ODISE's implicit captioner, as synthseg uses it: a small trained map from an image into the text-embedding
space of the pipeline's prompts, which says which of the named classes an image holds.

A grounding module segments every class it is asked for, and it is not a classifier: told all of a
dataset's class names, it finds a place for most of them in any image. ODISE meets this with an implicit
captioner (a frozen image encoder, then a learned map into the text encoder's space, whose output
conditions the denoiser). Here the image encoder is the pipeline's own VAE encoder, frozen (every family
has one, and the captured call encodes the image with it anyway), and the learned map is trained on
generated images against the text embedding of the prompt that made them (`synthseg.train.captioner`),
contrastively, as CLIP trains its image tower. At use, the captions of 1 to `max_classes` of the named
classes are the candidates (open vocabulary: any names the text encoder reads); the image's caption is
the nearest, and its classes are the prompt the module segments with (`synthseg.segment`).

A caption is one choice among lists of classes, and the captions of three or more classes are many and
alike; so a captioner may instead be trained per class (`objective: classes`): each class is present
with probability sigmoid(scale * cos(image, class direction) + bias), learnt with binary cross-entropy
(SigLIP's loss), and an image holds every class above 1/2 (at least its best, at most `max_classes`).
A class's direction is its caption's embedding less the template's own (`class_embeddings`). With
`pooling: max`, the image side is each cell of the encoder's last grid, and a class takes its best cell.

A caption's embedding is the mean over tokens of the text states the grounding module reads (the
`embeds` of `synthseg.text.encode_prompts`), unit-normed. Saved as `config.json` and `model.safetensors`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_positive
from .errors import SynthsegError
from .prompts import check_list_template, describe
from .registry import resolve_captioner
from .text import encode_prompts, fits_prompt, text_dim
from .weights import load_model, save_model

OBJECTIVES = ("captions", "classes")
POOLINGS = ("mean", "max")


@dataclass
class CaptionerConfig:
    """latent_channels / text_dim: fixed by the pipeline (its VAE's latent channels, the width of its
    text states). template: the prompt around a class list, which made the training captions (one slot).
    width: the first conv's channels (then 2x, 4x at strides 2 and 4); hidden_dim: the MLP's. objective:
    "captions" (an image is given its nearest caption of 1 to max_classes classes) or "classes" (each
    class present or not on its own). pooling: over the last grid of cells, "mean" (one embedding of the
    image) or, for "classes", "max" (a class's similarity is its best cell's: several objects in one image
    do not blur into one embedding)."""

    latent_channels: int
    text_dim: int
    template: str = "a photograph of {}"
    width: int = 64
    hidden_dim: int = 512
    objective: str = "captions"
    pooling: str = "mean"

    def validate(self, source: str = "captioner config") -> None:
        check_positive(source, self, "latent_channels", "text_dim", "width", "hidden_dim")
        check_list_template(self.template, source)
        if self.width % 8:
            raise SynthsegError(f"{source}: width must be a multiple of 8 (GroupNorm of 8 groups), got {self.width}")
        if self.objective not in OBJECTIVES:
            raise SynthsegError(f"{source}: objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.pooling not in POOLINGS:
            raise SynthsegError(f"{source}: pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.pooling == "max" and self.objective != "classes":
            raise SynthsegError(f"{source}: pooling max goes with objective classes (a caption is one embedding of the whole image)")

    @classmethod
    def for_pipeline(cls, pipe, **overrides) -> "CaptionerConfig":
        config = cls(latent_channels=pipe.vae.config.latent_channels, text_dim=text_dim(pipe), **overrides)
        config.validate()
        return config

    def check_pipeline(self, pipe) -> None:
        """Refuse a pipeline whose VAE or text states this captioner was not made for."""
        own = (pipe.vae.config.latent_channels, text_dim(pipe))
        if own != (self.latent_channels, self.text_dim):
            raise SynthsegError(f"the captioner reads {self.latent_channels}-channel latents into {self.text_dim}-wide text states; "
                                f"this pipeline has {own[0]} and {own[1]}: train one for it (synthseg train-captioner)")


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class ImplicitCaptioner(nn.Module):
    """VAE latents (B, C, h, w), any size, -> (B, text_dim) unit vectors in the caption-embedding space."""

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.encoder = nn.Sequential(_conv(config.latent_channels, w, 1), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 1), _conv(2 * w, 4 * w, 2))
        self.head = nn.Sequential(nn.Linear(4 * w, config.hidden_dim), nn.SiLU(), nn.Linear(config.hidden_dim, config.text_dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.996))  # log(1 / 0.05), CLIP's temperature, learnt
        if config.objective == "classes":
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))  # SigLIP's start: most classes are absent from an image

    def class_logits(self, latents: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, N) logits that each of N classes is in the image (objective "classes"); embeddings: (N, D)
        class directions (`class_embeddings`)."""
        if self.config.objective != "classes":
            raise SynthsegError("class_logits is for a captioner trained per class (objective classes); this one ranks captions")
        if self.config.pooling == "max":
            similarity = self.cell_similarity(latents, embeddings).amax((2, 3))
        else:
            similarity = self(latents) @ embeddings.T
        return similarity * self.logit_scale.exp() + self.logit_bias

    def cell_similarity(self, latents: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, N, h', w') cosine similarity of each cell of the encoder's last grid (latents / 4) to each of N class
        directions: where a max-pooled captioner finds each class."""
        cells = self.encoder(latents.float())
        batch, _, height, width = cells.shape
        similarity = F.normalize(self.head(cells.flatten(2).transpose(1, 2)), dim=-1) @ embeddings.T  # (B, cells, N)
        return similarity.transpose(1, 2).reshape(batch, -1, height, width)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, D) unit embeddings of the whole images (the cells' mean)."""
        return F.normalize(self.head(self.encoder(latents.float()).mean((2, 3))), dim=-1)

    def save_pretrained(self, directory: str | Path) -> None:
        save_model(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ImplicitCaptioner":
        return load_model(cls, CaptionerConfig, resolve_captioner(directory), "captioner")


@torch.no_grad()
def text_embeddings(pipe, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """(N, D) unit embeddings of prompts: the mean over tokens of the text states the module reads."""
    rows = [encode_prompts(pipe, prompts[start:start + batch_size], guidance_scale=1.0).embeds.float().mean(1).cpu()
            for start in range(0, len(prompts), batch_size)]
    return F.normalize(torch.cat(rows), dim=-1)


def caption_embeddings(pipe, class_lists: list[list[str]], template: str) -> torch.Tensor:
    """(N, D) unit embeddings of the captions `template.format(describe(classes))`, one per class list."""
    return text_embeddings(pipe, [template.format(describe(names)) for names in class_lists])


def class_embeddings(pipe, names: list[str], template: str) -> torch.Tensor:
    """(N, D) unit directions of each name's caption from the template's own (`template` with no class):
    what tells the classes apart, less what all their captions share (for the "classes" objective, whose
    sigmoid, unlike a softmax over captions, a shared component would shift per image)."""
    shared = text_embeddings(pipe, [template.format("").strip()])
    return F.normalize(caption_embeddings(pipe, [[name] for name in names], template) - shared, dim=-1)


def candidate_class_lists(class_names: list[str], max_classes: int) -> list[list[str]]:
    """Every list of 1 to `max_classes` (at least 1) of the names, in their order: the captions an image may have."""
    return [list(c) for k in range(1, min(max_classes, len(class_names)) + 1) for c in itertools.combinations(class_names, k)]


def class_set_log_probability(logits: torch.Tensor, members: list[int]) -> torch.Tensor:
    """(...) log-probability that an image holds exactly the classes `members` (indices) and none of the
    others, under independent per-class probabilities sigmoid(`logits`) (..., N) of a per-class captioner."""
    log_yes, log_no = F.logsigmoid(logits), F.logsigmoid(-logits)
    return log_no.sum(-1) + (log_yes[..., members] - log_no[..., members]).sum(-1)


class Recogniser:
    """Which of `class_names` each image holds, for `captioner` on `pipe`: by its nearest candidate caption
    (`candidate_class_lists`, less those the text encoder would cut), or, for a captioner trained per class,
    by each class's probability (see the module's docstring). The candidates' embeddings are made once."""

    def __init__(self, pipe, captioner: ImplicitCaptioner, class_names: list[str], max_classes: int = 2):
        captioner.config.check_pipeline(pipe)
        if max_classes < 1:
            raise SynthsegError(f"max_classes must be at least 1, got {max_classes}")
        self.captioner, self.max_classes, self.names = captioner.eval(), max_classes, list(class_names)
        self.per_class = captioner.config.objective == "classes"
        template = captioner.config.template
        if self.per_class:
            self.candidates = [[name] for name in class_names]
            self.embeddings = class_embeddings(pipe, list(class_names), template)
        else:
            candidates = candidate_class_lists(list(class_names), max_classes)
            self.candidates = [names for names in candidates if len(names) == 1 or fits_prompt(pipe, template.format(describe(names)))]
            self.embeddings = caption_embeddings(pipe, self.candidates, template)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> list[list[str]]:
        """latents: (B, C, h, w) clean VAE latents as the denoiser reads them. Returns B class lists, each in
        the order of `class_names`."""
        latents = latents.to(next(self.captioner.parameters()).device)
        if not self.per_class:
            scores = self.captioner(latents).cpu() @ self.embeddings.T
            return [self.candidates[i] for i in scores.argmax(1).tolist()]
        found = []
        for row in self.class_logits(latents):
            best = row.argsort(descending=True)[: self.max_classes].tolist()
            chosen = {best[0], *(i for i in best if row[i] > 0)}  # probability above 1/2; the best always
            found.append([self.candidates[i][0] for i in sorted(chosen)])
        return found

    @torch.no_grad()
    def class_logits(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, N) logits that each of the names is in each image (a captioner trained per class)."""
        latents = latents.to(next(self.captioner.parameters()).device)
        return self.captioner.class_logits(latents, self.embeddings.to(latents.device)).cpu()

    @torch.no_grad()
    def cell_similarity(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, K, h', w') `ImplicitCaptioner.cell_similarity` of the K class names, for a captioner trained per class
        with max pooling (the only kind whose cells are trained to say where a class is)."""
        latents = latents.to(next(self.captioner.parameters()).device)
        return self.captioner.cell_similarity(latents, self.embeddings.to(latents.device)).cpu()
