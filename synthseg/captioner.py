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


@dataclass
class CaptionerConfig:
    """latent_channels / text_dim: fixed by the pipeline (its VAE's latent channels, the width of its
    text states). template: the prompt around a class list, which made the training captions (one slot).
    width: the first conv's channels (then 2x, 4x at strides 2 and 4); hidden_dim: the MLP's."""

    latent_channels: int
    text_dim: int
    template: str = "a photograph of {}"
    width: int = 64
    hidden_dim: int = 512

    def validate(self, source: str = "captioner config") -> None:
        check_positive(source, self, "latent_channels", "text_dim", "width", "hidden_dim")
        check_list_template(self.template, source)
        if self.width % 8:
            raise SynthsegError(f"{source}: width must be a multiple of 8 (GroupNorm of 8 groups), got {self.width}")

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
        self.encoder = nn.Sequential(_conv(config.latent_channels, w, 1), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 1), _conv(2 * w, 4 * w, 2),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(4 * w, config.hidden_dim), nn.SiLU(), nn.Linear(config.hidden_dim, config.text_dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.996))  # log(1 / 0.05), CLIP's temperature, learnt

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.encoder(latents.float())), dim=-1)

    def save_pretrained(self, directory: str | Path) -> None:
        save_model(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ImplicitCaptioner":
        return load_model(cls, CaptionerConfig, resolve_captioner(directory), "captioner")


@torch.no_grad()
def caption_embeddings(pipe, class_lists: list[list[str]], template: str, batch_size: int = 64) -> torch.Tensor:
    """(N, D) unit embeddings of the captions `template.format(describe(classes))`, one per class list."""
    rows = []
    for start in range(0, len(class_lists), batch_size):
        prompts = [template.format(describe(names)) for names in class_lists[start:start + batch_size]]
        rows.append(encode_prompts(pipe, prompts, guidance_scale=1.0).embeds.float().mean(1).cpu())
    return F.normalize(torch.cat(rows), dim=-1)


def candidate_class_lists(class_names: list[str], max_classes: int) -> list[list[str]]:
    """Every list of 1 to `max_classes` of the names, in their order: the captions an image may have."""
    if max_classes < 1:
        raise SynthsegError(f"max_classes must be at least 1, got {max_classes}")
    return [list(c) for k in range(1, min(max_classes, len(class_names)) + 1) for c in itertools.combinations(class_names, k)]


class Recogniser:
    """Which of `class_names` each image holds, by its nearest candidate caption (`candidate_class_lists`,
    less those the text encoder would cut), for `captioner` on `pipe`. The candidates' embeddings are made once."""

    def __init__(self, pipe, captioner: ImplicitCaptioner, class_names: list[str], max_classes: int = 2):
        captioner.config.check_pipeline(pipe)
        self.captioner = captioner.eval()
        template = captioner.config.template
        candidates = candidate_class_lists(list(class_names), max_classes)
        self.candidates = [names for names in candidates if len(names) == 1 or fits_prompt(pipe, template.format(describe(names)))]
        self.embeddings = caption_embeddings(pipe, self.candidates, template)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> list[list[str]]:
        """latents: (B, C, h, w) clean VAE latents as the denoiser reads them. Returns B class lists."""
        device = next(self.captioner.parameters()).device
        scores = self.captioner(latents.to(device)).cpu() @ self.embeddings.T
        return [self.candidates[i] for i in scores.argmax(1).tolist()]
