"""Configs and recipes: dataclasses read from JSON or YAML, checked in one place.

`load_recipe(cls, name_or_path, kind)` reads a packaged or user recipe (`extends:` resolved);
`load_config(cls, data, source)` turns a mapping into `cls`, refusing unknown and missing keys and
values of the wrong type with one-line errors that name the file, and a `seed` field outside what the
generators take (`check_seed`), then runs the dataclass's own `validate()` for the checks that depend on
several fields (`check_positive` and `check_non_negative` for the common bounds).

Every config synthseg saves is `stamped`, as diffusers stamps `_class_name` and `_diffusers_version`:
the class that wrote it, synthseg's version and the file format. `load_config` drops the stamp
after refusing a format newer than this synthseg reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from pathlib import Path

import yaml

from .errors import SynthsegError

FORMAT_VERSION = 1  # of every saved config and recipe.json; raise it when an older synthseg could misread one
STAMP_KEYS = ("_class_name", "_synthseg_version", "_format")


def stamped(document: dict, writer) -> dict:
    """`document` with the stamp of `writer` (the object or class that wrote it), for saving."""
    from . import __version__

    name = writer.__name__ if isinstance(writer, type) else type(writer).__name__
    return {"_class_name": name, "_synthseg_version": __version__, "_format": FORMAT_VERSION, **document}


def unstamped(data: dict, source: str) -> dict:
    """`data` without its stamp; a file of a newer format than this synthseg reads is refused."""
    version = data.get("_format", 1) if isinstance(data, dict) else 1
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SynthsegError(f"{source} was written by a newer synthseg ({data.get('_synthseg_version', '?')}, format {version}; "
                            f"this one reads format {FORMAT_VERSION} and older): upgrade synthseg")
    return {k: v for k, v in data.items() if k not in STAMP_KEYS} if isinstance(data, dict) else data


ABSENT = "absent"  # a recipe field's metadata key: the value a run recorded before the field existed had, where its default differs


def record_recipe(path: str | Path, recipe, refusal: str) -> None:
    """Record `recipe` (a dataclass) as a job's recipe.json at `path`, or check it against the one
    recorded there: a resumed job must not mix two recipes. `refusal` is the error for another recipe,
    with {changed} for the fields that differ."""
    from .formats import write_json_atomic

    path = Path(path)
    wanted = json.loads(json.dumps(dataclasses.asdict(recipe)))
    if not path.is_file():
        write_json_atomic(path, stamped(wanted, recipe))
        return
    try:
        found = unstamped(json.loads(path.read_text()), str(path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SynthsegError(f"{path}: corrupt; remove it to start over") from None
    changed = _changed_fields(found, wanted, recipe)
    if changed:
        raise SynthsegError(refusal.format(changed=", ".join(changed)))


def _changed_fields(found: dict, wanted: dict, recipe, prefix: str = "") -> list[str]:
    """The fields (dotted inside sections) where a recorded recipe `found` differs from `wanted` (`recipe`
    as recorded now). A field added since, at the value the recorded run had without it (its default, or
    ABSENT), is no change, in a nested section (a dataclass field) as at the top."""
    fields = dataclasses.fields(recipe)
    defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                for f in fields if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    defaults = json.loads(json.dumps(defaults, default=dataclasses.asdict))  # as recorded: lists, nested recipes as mappings
    defaults.update({f.name: f.metadata[ABSENT] for f in fields if ABSENT in f.metadata})
    changed = []
    for key in sorted(set(found) | set(wanted)):
        old, section = found.get(key, defaults.get(key)), getattr(recipe, key, None)
        if dataclasses.is_dataclass(section) and isinstance(old, dict) and isinstance(wanted.get(key), dict):
            changed += _changed_fields(old, wanted[key], section, f"{prefix}{key}.")
        elif isinstance(old, dict) and isinstance(wanted.get(key), dict):  # a mapping field: the keys that differ
            changed += [f"{prefix}{key}.{k}" for k in sorted(set(old) | set(wanted[key])) if old.get(k, ABSENT) != wanted[key].get(k, ABSENT)]
        elif old != wanted.get(key):
            changed.append(prefix + key)
    return changed


def check_positive(source: str, config, *names: str) -> None:
    """Refuse a field of `config` below 1 (counts, sizes and batch sizes), naming it."""
    for name in names:
        if getattr(config, name) < 1:
            raise SynthsegError(f"{source}: {name} must be at least 1, got {getattr(config, name)}")


def check_non_negative(source: str, config, *names: str) -> None:
    """Refuse a negative field of `config`, naming it."""
    for name in names:
        if getattr(config, name) < 0:
            raise SynthsegError(f"{source}: {name} must be 0 or more, got {getattr(config, name)}")


MAX_PLANNED_ITEMS = 10_000_000  # a job's plan holds every item in memory (about 0.5 kB each); more is a typo, not a job


def check_plan_size(source: str, count: int, fields: str) -> None:
    """Refuse a plan of more than MAX_PLANNED_ITEMS items before it is drawn, naming the `fields` that size it."""
    if count > MAX_PLANNED_ITEMS:
        raise SynthsegError(f"{source}: the plan would hold {count:,} items ({fields}), more than {MAX_PLANNED_ITEMS:,}; "
                            "run several smaller jobs, each with its own seed, instead")


SEED_LIMIT = 2**63  # seeds are 0 to 2**63 - 1: numpy's generators refuse negative ones, torch's any beyond 64 bits


def check_seed(what: str, seed) -> None:
    """Refuse a seed that numpy's or torch's generators would not take (a non-integer included), naming `what`
    ("seed", "FILE: seed")."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise SynthsegError(f"{what} must be an integer from 0 to 2**63 - 1, got {seed!r}")


def check_share(source: str, config, *names: str) -> None:
    """Refuse a field of `config` outside [0, 1] (shares and fractions), naming it."""
    for name in names:
        if not 0 <= getattr(config, name) <= 1:
            raise SynthsegError(f"{source}: {name} must lie in [0, 1] (a share), got {getattr(config, name)}")


def check_low_high(source: str, config, *names: str) -> None:
    """Refuse a [low, high] range field of `config` unless 0 < low <= high, naming it."""
    for name in names:
        low_high = getattr(config, name)
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
            raise SynthsegError(f"{source}: {name} is [low, high] with 0 < low <= high")


def _coerce(value, hint, where: str):
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, where)
            except SynthsegError as error:
                errors.append(error)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SynthsegError(f"{where}: expected a list, got {value!r}")
        (item,) = set(typing.get_args(hint)) - {Ellipsis} or {typing.Any}
        return origin(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise SynthsegError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is typing.Any:
        return value
    if dataclasses.is_dataclass(hint):
        return load_config(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):  # YAML's .nan, an option's "inf"
        raise SynthsegError(f"{where}: expected a finite number, got {value!r}")
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise SynthsegError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def load_config(cls, data, source: str = "config"):
    """Build dataclass `cls` from a mapping, validating keys, types and the class's own rules."""
    if not isinstance(data, dict):
        raise SynthsegError(f"{source}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    data = unstamped(data, source)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SynthsegError(f"{source}: unknown {cls.__name__} field(s) {unknown}; known: {sorted(fields)}")
    missing = [
        name for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SynthsegError(f"{source}: missing {cls.__name__} field(s) {missing}")
    config = cls(**{name: _coerce(value, hints[name], f"{source}: {name}") for name, value in data.items()})
    if getattr(config, "seed", None) is not None:  # every recipe's seed, whatever its class
        check_seed(f"{source}: seed", config.seed)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate(source)
    return config


def read_mapping(path: str | Path) -> dict:
    """Read a JSON or YAML file into a dict, with one-line errors for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise SynthsegError(f"{path}: file not found")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise SynthsegError(f"{path}: corrupt {path.suffix.lstrip('.') or 'config'} file ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise SynthsegError(f"{path}: expected a mapping at the top level")
    return data


def apply_overrides(data: dict, overrides: dict, source: str) -> dict:
    """Merge command-line `overrides` into a recipe mapping, before `load_config` validates it.

    A None value leaves the recipe's own (an option not given); a dict value overrides inside that
    section (e.g. train={"steps": 500}).
    """
    return merge_mappings(data, overrides, source, none_keeps=True)


def options_source(source: str, overrides: dict) -> str:
    """The name a recipe's errors give once the caller's `overrides` are merged in: `source`, and where an
    option gave a value (not None), "with the options given", since a bad value may be either's."""
    return f"{source} with the options given" if _gives_value(overrides) else source


def _gives_value(overrides: dict) -> bool:
    return any(_gives_value(v) if isinstance(v, dict) else v is not None for v in overrides.values())


def merge_mappings(data: dict, update: dict, source: str, none_keeps: bool = False) -> dict:
    """`data` with `update`'s keys over it, section by section (a mapping in both merges key by key);
    with `none_keeps`, a None in `update` keeps `data`'s value."""
    for key, value in update.items():
        if isinstance(value, dict):
            if not isinstance(data.setdefault(key, {}), dict):
                raise SynthsegError(f"{source}: {key} must be a mapping")
            merge_mappings(data[key], value, f"{source}: {key}", none_keeps)
        elif value is not None or not none_keeps:
            data[key] = value
    return data


def read_recipe(spec: str | Path, kind: str, chain: tuple[Path, ...] = ()) -> tuple[dict, str]:
    """A recipe's mapping and its source name, by packaged name of `kind` or path.

    `extends: NAME` (a packaged recipe of the same kind, or a file path relative to this recipe's folder)
    reads that recipe first and lays this one's keys over it, section by section, so a stage of a staged
    training states only what it changes.
    """
    from .registry import recipe_path

    path = recipe_path(spec, kind)
    if path.resolve() in chain:
        names = " -> ".join(p.stem for p in (*chain, path.resolve()))
        raise SynthsegError(f"{path}: extends forms a cycle ({names})")
    data = read_mapping(path)
    base = data.pop("extends", None)
    if base is None:
        return data, str(path)
    if not isinstance(base, str):
        raise SynthsegError(f"{path}: extends names one recipe, got {base!r}")
    relative = path.parent / base
    try:
        base_path = relative if relative.is_file() else recipe_path(base, kind)
    except SynthsegError as error:
        raise SynthsegError(f"{path}: extends: {error}") from None
    base_data, _ = read_recipe(base_path, kind, (*chain, path.resolve()))
    return merge_mappings(base_data, data, str(path)), str(path)


def load_recipe(cls, spec: str | Path, kind: str, **overrides):
    """Recipe dataclass `cls` by packaged name of `kind` or path (`read_recipe`), with `overrides` (None: the
    recipe's own; a dict: inside that section), validated."""
    data, source = read_recipe(spec, kind)
    return load_config(cls, apply_overrides(data, overrides, source), options_source(source, overrides))
