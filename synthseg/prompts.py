"""Prompts from class names and templates ("a photograph of a {} and a {}")."""

from __future__ import annotations

import re

PAPER_TEMPLATES = ("a photograph of a {}", "a photograph of a {} and a {}")

_ARTICLE = re.compile(r"\ba ([aeiouAEIOU])")


def fill_template(template: str, class_names: list[str] | tuple[str, ...]) -> str:
    """Fill `{}` slots with class names and fix the article: "a photograph of a arrow" -> "... an arrow"."""
    return _ARTICLE.sub(r"an \1", template.format(*class_names))


def caption(class_names: list[str] | tuple[str, ...], templates: tuple[str, ...] = PAPER_TEMPLATES) -> str:
    """The template whose slot count equals the number of classes, filled."""
    for template in templates:
        if template.count("{}") == len(class_names):
            return fill_template(template, class_names)
    raise ValueError(f"no template with {len(class_names)} slots in {templates}")
