"""The text-to-image model as a zero-shot classifier (Li et al. 2023, "Your Diffusion Model is Secretly a
Zero-Shot Classifier"; Clark & Jaini 2023), to say which of the named classes an existing image holds.

The denoiser was trained to predict the noise of images given their prompts, so the prompt that names an
image's classes predicts its noise better than a prompt that names others: its denoising error, over
timesteps and noise draws shared by every candidate prompt (the comparison is paired, so the draws' own
spread cancels), is an estimate of the image's likelihood under that prompt. The generator knows every class
it can draw, unseen ones included, so this needs no training.

Scoring every list of up to three of many classes would cost too many denoiser calls, and the implicit
captioner (`synthseg.captioner`) is already a good judge of which classes are likely: so the candidates are
the lists of 1 to `max_classes` of the captioner's `top` classes, and a list's score is its log-probability
under the captioner's independent per-class probabilities less `weight` times its relative denoising error: at
each draw, its mean squared error over the mean of all the candidates' there, averaged over the draws. Relative
errors make the weight one number for every family, target (noise, v, flow) and image size, and give each
timestep an equal say. On world scenes 500-699 it names the exact class set of 77% of scenes against the
captioner's 60.5% (RESULTS.md, "Ad hoc trials (world)", where the defaults below were chosen).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from .captioner import Recogniser, class_set_log_probability
from .errors import SynthsegError
from .latents import add_noise, noise_generator, predict_noised, prediction_target, recorded_call
from .prompts import describe
from .text import encode_prompts, fits_prompt, text_inputs

CLASSIFIER_DRAWS = 16  # (timestep, noise) draws per candidate list, timesteps stratified below CLASSIFIER_HIGHEST
CLASSIFIER_HIGHEST = 700  # of 1000: above it the latent is nearly all noise, and its errors add spread, not evidence (exact
                          # class sets of world scenes 500-699 +1.5 to 2 points against the whole schedule)
CLASSIFIER_TOP = 5  # the captioner's best classes the candidate lists are made of
DENOISING_WEIGHT = 50.0  # per unit of relative error, against the captioner's log-probabilities


@torch.no_grad()
def denoising_errors(pipe, latent: torch.Tensor, prompts: list[str], draws: int, generator: torch.Generator, highest: int | None = None,
                     batch_size: int = 64, calls: dict | None = None, texts: dict | None = None) -> torch.Tensor:
    """(P, draws) mean squared errors of the denoiser's prediction for `latent` (1, C, h, w), noised at
    `draws` timesteps stratified over 0..`highest` (default CLASSIFIER_HIGHEST; one noise draw each, from
    `generator`, shared by all prompts), given each of the P `prompts`; in rows of at most `batch_size`
    denoiser inputs. `calls`: a cache of the pipeline's recorded denoiser arguments, kept across calls;
    `texts`: the prompts' text inputs (`text_inputs`, P rows) where already made."""
    highest = CLASSIFIER_HIGHEST if highest is None else highest
    if not 0 < highest <= 1000:
        raise SynthsegError(f"the diffusion classifier's highest timestep must be in 1..1000, got {highest}")
    timesteps = ((np.arange(draws) + 0.5) / draws * highest).astype(int).tolist()
    noise = torch.randn((draws, *latent.shape[1:]), generator=generator).to(latent.device, latent.dtype)
    noisy, values = add_noise(pipe, latent, noise, timesteps)
    target = prediction_target(pipe, latent, noise, timesteps).float()
    texts = text_inputs(pipe, prompts, encode_prompts(pipe, prompts, guidance_scale=1.0)) if texts is None else texts
    rows = [(p, d) for p in range(len(prompts)) for d in range(draws)]
    errors, calls = torch.empty(len(prompts), draws), {} if calls is None else calls
    height, width = latent.shape[2] * pipe.vae_scale_factor, latent.shape[3] * pipe.vae_scale_factor
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        key = (len(chunk), height, width)
        if key not in calls:
            calls[key] = recorded_call(pipe, *key)
        p, d = torch.tensor([r[0] for r in chunk]), torch.tensor([r[1] for r in chunk])
        prediction = predict_noised(pipe, calls[key], noisy[d], values[d], {k: v[p] for k, v in texts.items()})
        errors[p, d] = F.mse_loss(prediction, target[d].to(prediction.device), reduction="none").mean((1, 2, 3)).cpu()
    return errors


class DiffusionClassifier:
    """Which of the captioner's named classes each image holds, chosen among candidate lists by the
    captioner's probabilities and the pipeline's denoising error (see the module docstring). Same call as
    `Recogniser`, plus each image's index, which seeds its draws with `seed`."""

    def __init__(self, pipe, recogniser: Recogniser, template: str, *, draws: int = CLASSIFIER_DRAWS, top: int = CLASSIFIER_TOP,
                 weight: float | None = None, seed: int = 0):
        weight = DENOISING_WEIGHT if weight is None else weight
        if draws < 1 or top < 1:
            raise SynthsegError(f"the diffusion classifier needs draws and top of at least 1, got {draws} and {top}")
        if weight < 0:
            raise SynthsegError(f"the denoising weight must be at least 0, got {weight}")
        if not recogniser.per_class:
            raise SynthsegError("the diffusion classifier ranks the lists of a captioner trained per class (objective classes)")
        self.pipe, self.recogniser, self.template = pipe, recogniser, template
        self.draws, self.top, self.weight, self.seed = draws, top, weight, seed
        self._calls: dict = {}  # the recorded denoiser arguments per (rows, height, width), made once
        self._prompts: dict[tuple[int, ...], str | None] = {}  # each candidate list's prompt (None: it does not fit)
        self._texts: dict[tuple[int, ...], dict] = {}  # each candidate list's text inputs (one row), encoded once

    def candidates(self, logits: torch.Tensor) -> list[list[int]]:
        """The lists (class indices, ascending) of 1 to `max_classes` of the `top` classes by `logits` (N,),
        whose prompts every text stream keeps whole."""
        best = sorted(logits.argsort(descending=True)[: self.top].tolist())
        lists = [list(c) for k in range(1, self.recogniser.max_classes + 1) for c in itertools.combinations(best, k)]
        return [c for c in lists if self._prompt(c) is not None]

    def _prompt(self, classes: list[int]) -> str | None:
        """The prompt of a class list, or None where a text stream would cut it (asked once per list; a single
        class always fits, as `GroundingSegmenter` checked every name alone)."""
        key = tuple(classes)
        if key not in self._prompts:
            prompt = self.template.format(describe([self.recogniser.names[i] for i in classes]))
            self._prompts[key] = prompt if len(classes) == 1 or fits_prompt(self.pipe, prompt) else None
        return self._prompts[key]

    def _text_inputs(self, lists: list[list[int]]) -> dict:
        """The denoiser's text inputs of the lists' prompts (one row each), encoding only those not met before."""
        new = [c for c in dict.fromkeys(map(tuple, lists)) if c not in self._texts]
        if new:
            prompts = [self._prompt(list(c)) for c in new]
            made = text_inputs(self.pipe, prompts, encode_prompts(self.pipe, prompts, guidance_scale=1.0))
            self._texts.update({c: {k: v[i : i + 1] for k, v in made.items()} for i, c in enumerate(new)})
        return {k: torch.cat([self._texts[tuple(c)][k] for c in lists]) for k in self._texts[tuple(lists[0])]}

    def __call__(self, latents: torch.Tensor, indices: list[int]) -> list[list[str]]:
        """latents: (B, C, h, w) clean VAE latents. Returns B class lists, each in the order of the names."""
        names, found = self.recogniser.names, []
        for latent, logits, index in zip(latents, self.recogniser.class_logits(latents), indices):
            lists = self.candidates(logits)
            prior = torch.stack([class_set_log_probability(logits, c) for c in lists])
            generator = noise_generator(self.seed, index)
            errors = denoising_errors(self.pipe, latent[None], [self._prompt(c) for c in lists], self.draws, generator, calls=self._calls,
                                      texts=self._text_inputs(lists))
            relative = (errors / errors.mean(0, keepdim=True)).mean(1)  # each draw's errors over their mean: every timestep says alike
            found.append([names[i] for i in lists[int((prior - self.weight * relative).argmax())]])
        return found
