"""What to generate: prompts from class names and templates ("a photograph of a {} and a {}"), each with
its seed. `PromptPlanner` is the one planner of datasets, training triplets and Protocol i.

Every plan depends only on its inputs and seed, never on how a job is split or resumed.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from .errors import SynthsegError

PAPER_TEMPLATES = ("a photograph of a {}", "a photograph of a {} and a {}")

_ARTICLE = re.compile(r"\ba ([aeiouAEIOU])")
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_IRREGULAR = {"person": "people", "sheep": "sheep", "mouse": "mice", "knife": "knives", "skis": "skis", "scissors": "scissors"}


def template_slots(template: str, source: str) -> int:
    """The number of `{}` slots of a prompt template, each filled by one class name. A template that names
    or numbers a field, or holds a lone brace, is refused: `str.format` would fail on it mid-run."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        raise SynthsegError(f"{source}: template {template!r} is not a format string ({error}); write a literal brace as '{{{{'") from None
    if any(fields):
        raise SynthsegError(f"{source}: template {template!r} may hold only empty '{{}}' slots")
    return len(fields)


def check_list_template(template: str, source: str) -> None:
    """Refuse a template that is not one `{}` slot for a whole class list ("a photograph of {}" around
    "a dog and a cat"), as segment and the implicit captioner write their prompts."""
    if template_slots(template, source) != 1:
        raise SynthsegError(f"{source}: template must have one {{}} slot for the class list, got {template!r}")


def fill_template(template: str, class_names: list[str] | tuple[str, ...]) -> str:
    """Fill `{}` slots with class names and fix the article: "a photograph of a arrow" -> "... an arrow"."""
    return _ARTICLE.sub(r"an \1", template.format(*class_names))


def plural(name: str) -> str:
    """English plural of a class name, for counted prompts ("two crosses", "two people")."""
    if name in _IRREGULAR:
        return _IRREGULAR[name]
    if name.endswith(("s", "x", "ch", "sh")):
        return name + "es"
    return name[:-1] + "ies" if name.endswith("y") and name[-2:-1] not in "aeiou" else name + "s"


def describe(phrases: list[str]) -> str:
    """"a circle, two stars and an arrow": each class once, with its count, in order of appearance."""
    counts = {name: phrases.count(name) for name in dict.fromkeys(phrases)}
    parts = [(("an " if name[0] in "aeiou" else "a ") + name) if n == 1 else f"{COUNT_WORDS[n] if n < len(COUNT_WORDS) else n} {plural(name)}"
             for name, n in counts.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(class_names: list[str] | tuple[str, ...], templates: tuple[str, ...] = PAPER_TEMPLATES) -> str:
    """The first template whose slot count equals the number of classes, filled."""
    return PromptPlanner(templates).fill(class_names)


def dataset_pairs(class_names, pairs: list[list[str]], per_pair: int) -> list[list[str]]:
    """The pairs a dataset plans `per_pair` prompts of: those given, else every pair of classes (none if per_pair is 0)."""
    return pairs or ([list(p) for p in combinations(class_names, 2)] if per_pair else [])


@dataclass
class Prompt:
    """One planned generation: its place in the plan, the prompt, the classes it names (in order), its seed."""

    index: int
    prompt: str
    classes: list[str]
    seed: int


class PromptPlanner:
    """Plans prompts from `templates` under `seed`. A template is chosen by slot count: the first one
    (datasets), or drawn from the plan's random stream (triplets, Protocol i)."""

    def __init__(self, templates, seed: int = 0):
        self.templates = tuple(templates)
        self.slots = tuple(template_slots(t, "template") for t in self.templates)  # parsed once, not per prompt
        self.seed = seed

    def fill(self, class_names, rng: np.random.Generator | None = None) -> str:
        choices = [t for t, slots in zip(self.templates, self.slots) if slots == len(class_names)]
        if not choices:
            raise SynthsegError(f"no template with {len(class_names)} slots in {list(self.templates)}")
        return fill_template(choices[0] if rng is None else choices[int(rng.integers(len(choices)))], class_names)

    def _drawn(self, index: int, names, rng: np.random.Generator) -> Prompt:
        text = self.fill(names, rng)
        return Prompt(index, text, list(names), int(rng.integers(2**31)))

    def dataset(self, class_names, per_class: int, pairs: list[list[str]], per_pair: int) -> list[Prompt]:
        """`per_class` prompts of each class, then `per_pair` of each pair (default: every pair of classes).
        Item i's seed comes from `default_rng([seed, i])`."""
        groups = [[c] for c in class_names for _ in range(per_class)]
        groups += [list(p) for p in dataset_pairs(class_names, pairs, per_pair) for _ in range(per_pair)]
        return [Prompt(i, self.fill(names), names, int(np.random.default_rng([self.seed, i]).integers(2**31)))
                for i, names in enumerate(groups)]

    def triplet(self, seen, pair_fraction: float, index: int) -> Prompt:
        """Triplet `index`: one or (with `pair_fraction`) two distinct seen classes, from `default_rng([seed, index])`."""
        rng = np.random.default_rng([self.seed, index])
        count = 2 if len(seen) > 1 and rng.random() < pair_fraction else 1
        return self._drawn(index, [seen[i] for i in rng.choice(len(seen), size=count, replace=False)], rng)

    def evaluation(self, classes, per_class: int, pairs: int) -> list[Prompt]:
        """`per_class` one-class prompts of each class, then `pairs` random two-class prompts (if a
        two-class template exists), all drawn from one stream `default_rng([seed, 1])`."""
        rng = np.random.default_rng([self.seed, 1])
        two = 2 in self.slots
        groups = [[c] for c in classes for _ in range(per_class)]
        groups += [[classes[i] for i in rng.choice(len(classes), 2, replace=False)] for _ in range(pairs if two else 0)]
        return [self._drawn(i, names, rng) for i, names in enumerate(groups)]
