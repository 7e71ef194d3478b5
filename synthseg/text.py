"""Prompt encoding per model family, and class-name text queries: the prompt's own token states of each name.

The grounding module's queries are the frozen text encoders' hidden states at the class name's tokens
in the prompt ("a photograph of a dog and a cat" -> the states at "dog" and at "cat"), averaged over
its tokens. They are read from the very text states the denoiser is conditioned on, whose layout is
the family's:

| family | text states (B, T, D) | class positions from |
|---|---|---|
| SD 1.x/2.x | CLIP, T = 77 | its tokenizer |
| SDXL | CLIP-L and CLIP-G side by side (768 + 1280), T = 77 | both tokenizers, which must agree |
| SD3/SD3.5 | [CLIP-L and CLIP-G side by side, padded; T5], T = 77 + 256 | the CLIP tokenizers and T5's, offset by 77 |
| FLUX | T5, T <= 512 (CLIP gives the pooled vector only) | T5's tokenizer |

A class name is found in every stream that carries it (SD3: the CLIP part and the T5 part); two
tokenizers may split a name differently, and each stream's positions are its own.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .capture.transformer import transformer_kind
from .errors import SynthsegError
from .prompts import plural

FLOW_FAMILIES = ("sd3", "flux")  # the families whose schedulers are flow matching: x = (1 - sigma) x0 + sigma noise


def pipeline_family(pipe) -> str:
    """"sd", "sdxl", "sd3" or "flux", from the pipeline's components."""
    if getattr(pipe, "transformer", None) is not None:
        return transformer_kind(pipe.transformer)
    return "sdxl" if getattr(pipe, "tokenizer_2", None) is not None else "sd"


def max_sequence_length(pipe) -> int | None:
    """The T5 length the pipeline is called with (FLUX up to 512, SD3 256), capped by its tokenizer."""
    family = pipeline_family(pipe)
    if family == "flux":
        return min(512, pipe.tokenizer_2.model_max_length)
    if family == "sd3":
        return min(256, pipe.tokenizer_3.model_max_length) if getattr(pipe, "tokenizer_3", None) is not None else 256
    return None


def text_streams(pipe) -> list[tuple[str, object, int, int]]:
    """(name, tokenizer, offset in the text states, kept length) of each tokenizer the states come from."""
    family, clip = pipeline_family(pipe), pipe.tokenizer.model_max_length if getattr(pipe, "tokenizer", None) is not None else 0
    if family == "sd":
        return [("CLIP", pipe.tokenizer, 0, clip)]
    if family == "sdxl":
        return [("CLIP-L", pipe.tokenizer, 0, clip), ("CLIP-G", pipe.tokenizer_2, 0, clip)]
    if family == "flux":
        return [("T5", pipe.tokenizer_2, 0, max_sequence_length(pipe))]
    streams = [("CLIP-L", pipe.tokenizer, 0, clip), ("CLIP-G", pipe.tokenizer_2, 0, clip)]
    if getattr(pipe, "tokenizer_3", None) is not None:
        streams.append(("T5", pipe.tokenizer_3, clip, max_sequence_length(pipe)))
    return streams


def fits_prompt(pipe, prompt: str) -> bool:
    """Whether every text stream of `pipe` keeps all of `prompt`'s tokens (asked quietly: a tokenizer warns
    of a sequence over its limit, which is what is being tested)."""
    return all(len(tokenizer(prompt, verbose=False).input_ids) <= kept for _, tokenizer, _, kept in text_streams(pipe))


def text_tokens(pipe) -> int:
    """T, the length of the text states the denoiser reads."""
    family = pipeline_family(pipe)
    if family == "flux":
        return max_sequence_length(pipe)
    if family == "sd3":
        return pipe.tokenizer.model_max_length + max_sequence_length(pipe)
    return pipe.tokenizer.model_max_length


def text_dim(pipe) -> int:
    """D, the width of the text states: the denoiser's cross- or joint-attention input."""
    config = (pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer).config
    return int(config.cross_attention_dim if "cross_attention_dim" in config else config.joint_attention_dim)


@dataclass
class EncodedPrompts:
    """A batch of prompts encoded once for a pipeline call.

    embeds: (B, T, D) conditional text states, where the class queries are read. call: keyword
    arguments of the pipeline call. classifier_free_guidance: whether the denoiser's batch is
    [unconditional; conditional] (SD, SDXL, SD3 with guidance > 1; never FLUX, whose guidance is
    distilled into the model or run as separate "true CFG" passes, the conditional one first).
    """

    embeds: torch.Tensor
    call: dict
    classifier_free_guidance: bool


def encode_prompts(pipe, prompts: list[str], guidance_scale: float, negative_prompt=None) -> EncodedPrompts:
    """Encode `prompts` as `pipe` would, and say how to call it with these states at `guidance_scale`."""
    family, device, prompts = pipeline_family(pipe), pipe.device, list(prompts)
    if family == "flux":
        length = max_sequence_length(pipe)
        embeds, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, device=device, max_sequence_length=length)
        call = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, max_sequence_length=length)
        if pipe.transformer.config.guidance_embeds:  # guidance-distilled (FLUX.1-dev): one pass, guidance as an input
            call["guidance_scale"] = guidance_scale
        elif guidance_scale > 1:  # true classifier-free guidance: a separate unconditional pass
            negative = [negative_prompt or ""] * len(prompts) if not isinstance(negative_prompt, list) else negative_prompt
            negative_embeds, negative_pooled, _ = pipe.encode_prompt(negative, prompt_2=None, device=device, max_sequence_length=length)
            call.update(negative_prompt_embeds=negative_embeds, negative_pooled_prompt_embeds=negative_pooled, true_cfg_scale=guidance_scale)
        return EncodedPrompts(embeds, call, False)
    cfg = guidance_scale > 1 and getattr(getattr(pipe, "unet", None), "config", {}).get("time_cond_proj_dim") is None
    if family == "sd":
        embeds, negative = pipe.encode_prompt(prompts, device, 1, cfg, negative_prompt)
        return EncodedPrompts(embeds, dict(prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=guidance_scale), cfg)
    if family == "sdxl":
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(prompts, device=device, do_classifier_free_guidance=cfg,
                                                                       negative_prompt=negative_prompt)
    else:
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=cfg,
                                                                       negative_prompt=negative_prompt, max_sequence_length=max_sequence_length(pipe))
    call = dict(prompt_embeds=embeds, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
                negative_pooled_prompt_embeds=negative_pooled, guidance_scale=guidance_scale)
    if family == "sd3":
        call["max_sequence_length"] = max_sequence_length(pipe)
    return EncodedPrompts(embeds, call, cfg)


# The denoiser arguments that come from the text encoders, as the pipelines pass them: the text states,
# and the pooled vector (SDXL's added text_embeds; SD3's and FLUX's pooled_projections).
TEXT_INPUTS = ("encoder_hidden_states", "added_cond_kwargs.text_embeds", "pooled_projections")


def text_inputs(pipe, prompts: list[str], encoded: EncodedPrompts | None = None) -> dict:
    """The denoiser's text arguments for `prompts` (conditional), by their `TEXT_INPUTS` names: what a
    replay of a stored denoiser call needs when it kept the prompt rather than its states. `encoded`:
    these prompts already encoded (`encode_prompts`), so they are not encoded again."""
    call = (encoded or encode_prompts(pipe, prompts, guidance_scale=0.0)).call
    pooled = {"sdxl": "added_cond_kwargs.text_embeds", "sd3": "pooled_projections", "flux": "pooled_projections"}.get(pipeline_family(pipe))
    return {"encoder_hidden_states": call["prompt_embeds"], **({pooled: call["pooled_prompt_embeds"]} if pooled else {})}


def prompt_token_spans(pipe, prompts: list[str], class_names: list[list[str]]) -> list[list[list[int]]]:
    """Every class's positions in the text states of `pipe`, per prompt: in each stream that carries
    it (see the module docstring). Streams side by side (SDXL's two CLIPs) must split a name alike.
    A prompt longer than a tokenizer keeps is warned about, naming what was cut; a class name that
    was cut is an error. Fails before any work on the first bad name."""
    if len(prompts) != len(class_names):
        raise SynthsegError(f"got {len(prompts)} prompts but {len(class_names)} class-name lists")
    streams = text_streams(pipe)
    for prompt in prompts:
        for stream, tokenizer, _, limit in streams:
            _warn_if_cut(stream, tokenizer, prompt, limit)
    per_stream = [class_token_spans(tokenizer, prompts, class_names, limit) for _, tokenizer, _, limit in streams]
    spans = []
    for i, names in enumerate(class_names):
        row = []
        for q, name in enumerate(names):
            by_offset: dict[int, tuple[str, slice]] = {}
            for (stream, _, offset, _), found in zip(streams, per_stream):
                span = found[i][q]
                if offset in by_offset and by_offset[offset][1] != span:
                    raise SynthsegError(f"the {by_offset[offset][0]} and {stream} tokenizers split class {name!r} differently in {prompts[i]!r}, "
                                        "but their states lie side by side")
                by_offset[offset] = (stream, span)
            row.append([offset + t for offset, (_, span) in sorted(by_offset.items()) for t in range(span.start, span.stop)])
        spans.append(row)
    return spans


def _warn_if_cut(stream: str, tokenizer, prompt: str, limit: int) -> None:
    ids = tokenizer(prompt, verbose=False).input_ids
    if len(ids) > limit:
        cut = tokenizer.decode(ids[limit - 1 :], skip_special_tokens=True).strip()
        warnings.warn(f"prompt {prompt!r} is {len(ids)} {stream} tokens and {limit} are kept: {cut!r} is cut", stacklevel=3)


def class_token_span(tokenizer, prompt: str, class_name: str, limit: int | None = None) -> slice:
    """Token positions of `class_name` in `prompt`, as the pipeline tokenizes it (special tokens included).

    The first occurrence wins; the plural counts where the name itself does not occur (a layout's "two
    circles"). Raises SynthsegError if the name is not in the prompt, or is cut off by `limit` (default:
    the tokenizer's maximum length), past which the pipeline encodes nothing.
    """
    limit = limit or tokenizer.model_max_length
    ids = tokenizer(prompt, verbose=False).input_ids  # untruncated, to tell a cut-off name from a missing one
    if not tokenizer(class_name, add_special_tokens=False).input_ids:
        raise SynthsegError(f"class name {class_name!r} is empty after tokenization")
    for form in (class_name, plural(class_name)):
        name_ids = tokenizer(form, add_special_tokens=False).input_ids
        for start in range(len(ids) - len(name_ids) + 1):
            if ids[start : start + len(name_ids)] == name_ids:
                if start + len(name_ids) > limit - 1:  # the last kept position holds the end token
                    raise SynthsegError(f"class {class_name!r} is cut off: prompt {prompt!r} is {len(ids)} tokens and the "
                                        f"tokenizer keeps {limit}; shorten the prompt")
                return slice(start, start + len(name_ids))
    raise SynthsegError(f"class {class_name!r} does not occur in prompt {prompt!r}")


def class_token_spans(tokenizer, prompts: list[str], class_names: list[list[str]], limit: int | None = None) -> list[list[slice]]:
    """`class_token_span` for every class of every prompt; fails before any work on the first bad name."""
    if len(prompts) != len(class_names):
        raise SynthsegError(f"got {len(prompts)} prompts but {len(class_names)} class-name lists")
    spans = []
    for prompt, names in zip(prompts, class_names):
        if not names:
            raise SynthsegError(f"prompt {prompt!r} has no class names")
        if len(set(names)) != len(names):
            raise SynthsegError(f"prompt {prompt!r} lists a class twice: {names}")
        spans.append([class_token_span(tokenizer, prompt, name, limit) for name in names])
    return spans


def class_queries(prompt_embeds: torch.Tensor, spans) -> tuple[torch.Tensor, torch.Tensor]:
    """Average each class's token states: (B, T, D) prompt states -> queries (B, Q, D), valid (B, Q) bool.
    A span is a slice or a list of positions.

    Q is the largest class count in the batch; shorter rows are zero-padded and marked invalid.
    """
    batch, _, dim = prompt_embeds.shape
    width = max(len(row) for row in spans)
    queries = prompt_embeds.new_zeros(batch, width, dim)
    valid = torch.zeros(batch, width, dtype=torch.bool, device=prompt_embeds.device)
    for b, row in enumerate(spans):
        for q, span in enumerate(row):
            queries[b, q] = prompt_embeds[b, span].mean(dim=0)
            valid[b, q] = True
    return queries, valid
