"""Class-name text queries: the prompt's own token embeddings of each class name.

The grounding module's queries are the frozen text encoder's hidden states at the class name's
tokens in the prompt ("a photograph of a dog and a cat" -> the states at "dog" and at "cat"),
averaged over sub-word tokens. They are read from the very `prompt_embeds` the UNet is conditioned on.
"""

from __future__ import annotations

import torch

from .errors import SynthsegError


def class_token_span(tokenizer, prompt: str, class_name: str) -> slice:
    """Token positions of `class_name` in `prompt`, as the pipeline tokenizes it (special tokens included).

    The first occurrence wins. Raises SynthsegError if the name is not in the prompt, or is cut off
    by the tokenizer's maximum length (the pipeline never encodes what lies past it).
    """
    limit = tokenizer.model_max_length
    ids = tokenizer(prompt).input_ids  # untruncated, to tell a cut-off name from a missing one
    name_ids = tokenizer(class_name, add_special_tokens=False).input_ids
    if not name_ids:
        raise SynthsegError(f"class name {class_name!r} is empty after tokenization")
    for start in range(len(ids) - len(name_ids) + 1):
        if ids[start : start + len(name_ids)] == name_ids:
            if start + len(name_ids) > limit - 1:  # the last kept position holds the end token
                raise SynthsegError(f"class {class_name!r} is cut off: prompt {prompt!r} is {len(ids)} tokens and the "
                                    f"tokenizer keeps {limit}; shorten the prompt")
            return slice(start, start + len(name_ids))
    raise SynthsegError(f"class {class_name!r} does not occur in prompt {prompt!r}")


def class_token_spans(tokenizer, prompts: list[str], class_names: list[list[str]]) -> list[list[slice]]:
    """`class_token_span` for every class of every prompt; fails before any work on the first bad name."""
    if len(prompts) != len(class_names):
        raise SynthsegError(f"got {len(prompts)} prompts but {len(class_names)} class-name lists")
    spans = []
    for prompt, names in zip(prompts, class_names):
        if not names:
            raise SynthsegError(f"prompt {prompt!r} has no class names")
        if len(set(names)) != len(names):
            raise SynthsegError(f"prompt {prompt!r} lists a class twice: {names}")
        spans.append([class_token_span(tokenizer, prompt, name) for name in names])
    return spans


def class_queries(prompt_embeds: torch.Tensor, spans: list[list[slice]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Average each class's token states: (B, T, D) prompt states -> queries (B, Q, D), valid (B, Q) bool.

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
