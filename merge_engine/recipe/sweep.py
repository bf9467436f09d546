"""Sweeps: one recipe, one or two of its values tried at several settings.

``expand_sweep(text, {"models[1].parameters.weight": [0.1, 0.3, 0.5]})`` gives one
:class:`Variant` per combination of the axes' values (the product, first axis slowest),
each an ordinary mergekit recipe text (the format gains no keys) that ``parse_recipe``
accepts. An axis is a YAML path in the engine's own syntax (``models[1].parameters.weight``,
``parameters.t``, ``slices[0].sources[1].parameters.density``): every step but the last
must exist in the recipe; the last names a scalar there, or a new key of a mapping that
exists. Every mistake is a :class:`RecipeError` at the axis path, one sentence.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import yaml

from merge_engine.errors import RecipeError, shown
from merge_engine.recipe.locations import RecipeLimits
from merge_engine.recipe.parse import parse_recipe

_PATH = re.compile(r"[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\d+\])*")
_STEP = re.compile(r"([A-Za-z_][\w-]*)|\[(\d+)\]")
MAX_PATH_CHARS = 200
MAX_NAME_CHARS = 200
"""The longest axis path, and the longest string a value may be (a method or model name)."""


@dataclass(frozen=True)
class SweepLimits:
    """Budgets for one sweep (each variant is a whole merge)."""

    max_axes: int = 2
    max_variants: int = 16


@dataclass(frozen=True)
class Variant:
    """One point of a sweep: ``values`` maps each axis path to its value here."""

    label: str
    """e.g. ``weight=0.3`` (``weight=0.3, density=0.5`` for two axes); unique in a sweep."""
    values: dict[str, object]
    text: str
    """The recipe with the values set: ordinary mergekit YAML."""


def parse_path(path: object) -> list[str | int]:
    """``models[1].parameters.weight`` -> ``["models", 1, "parameters", "weight"]``."""
    if not isinstance(path, str) or not path:
        raise RecipeError("", f"a sweep axis must be a YAML path like "
                              f"'models[1].parameters.weight', got {shown(path)}")
    if len(path) > MAX_PATH_CHARS:
        raise RecipeError("", f"a sweep axis of {len(path):,} characters is too long; the "
                              f"limit is {MAX_PATH_CHARS}")
    if not _PATH.fullmatch(path):
        raise RecipeError(path, "the sweep axis is not a YAML path like "
                                "'models[1].parameters.weight'")
    return [key if key else int(index) for key, index in _STEP.findall(path)]


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _set(doc: object, path: str, steps: list[str | int], value: object) -> None:
    """Set ``value`` at ``steps`` in ``doc`` (in place); RecipeError at ``path``."""
    node = doc
    for depth, step in enumerate(steps[:-1]):
        node = _child(node, step, path, steps[: depth + 1])
    last = steps[-1]
    if isinstance(last, int):
        current = _child(node, last, path, steps)
    elif isinstance(node, dict):
        current = node.get(last)
    else:
        raise RecipeError(path, f"the sweep axis is unknown: {_show(steps[:-1])} is not a "
                                "mapping in the recipe")
    if not _is_scalar(current):
        kind = "a list" if isinstance(current, list) else "a mapping"
        raise RecipeError(path, f"the sweep axis names {kind} in the recipe; sweep a single "
                                "value (a number or a name)")
    node[last] = value


def _child(node: object, step: str | int, path: str, upto: list[str | int]) -> object:
    if isinstance(step, int):
        if isinstance(node, list) and step < len(node):
            return node[step]
    elif isinstance(node, dict) and step in node:
        return node[step]
    raise RecipeError(path, f"the sweep axis is unknown: the recipe has no {_show(upto)}")


def _show(steps: list[str | int]) -> str:
    text = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps).lstrip(".")
    return text or "top level"


def _check_values(path: str, values: object) -> list:
    if not isinstance(values, (list, tuple)) or not values:
        raise RecipeError(path, "the sweep axis needs a non-empty list of values")
    for value in values:
        if (not _is_scalar(value) or (isinstance(value, float) and not math.isfinite(value))
                or (isinstance(value, str) and len(value) > MAX_NAME_CHARS)):
            raise RecipeError(path, f"the sweep value {shown(value)} is not a single finite "
                                    "number or name")
    if len({(type(v), v) for v in values}) != len(values):
        raise RecipeError(path, "the sweep axis repeats a value")
    return list(values)


def _names(paths: list[str], steps: list[list[str | int]]) -> list[str]:
    """Short axis names for labels: the last key, unless two axes share it."""
    short = [str(s[-1]) if isinstance(s[-1], str) else p for p, s in zip(paths, steps, strict=True)]
    return short if len(set(short)) == len(short) else paths


def _label_value(value: object) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(
        value)


def expand_sweep(recipe_text: str, axes: dict[str, list], *,
                 limits: SweepLimits | None = None,
                 recipe_limits: RecipeLimits | None = None) -> list[Variant]:
    """The variants of ``recipe_text`` over ``axes`` (see the module docstring), each
    checked with ``parse_recipe``; RecipeError naming the axis path for a mistake."""
    limits = limits or SweepLimits()
    parse_recipe(recipe_text, recipe_limits)  # the recipe itself first: its errors are its own
    if not isinstance(axes, dict) or not axes:
        raise RecipeError("", "a sweep needs at least one axis: a YAML path and its values")
    if len(axes) > limits.max_axes:
        raise RecipeError(list(axes)[limits.max_axes], f"a sweep has at most "
                          f"{limits.max_axes} axes; this one has {len(axes)}")
    paths = list(axes)
    steps = [parse_path(p) for p in paths]
    values = [_check_values(p, axes[p]) for p in paths]
    count = math.prod(len(v) for v in values)
    if count > limits.max_variants:
        raise RecipeError(paths[-1], f"the sweep has {count} variants; the limit is "
                                     f"{limits.max_variants}")
    names = _names(paths, steps)
    variants = []
    for combo in itertools.product(*values):
        variant_doc = yaml.safe_load(recipe_text)  # a fresh copy; aliases become copies
        for path, path_steps, value in zip(paths, steps, combo, strict=True):
            _set(variant_doc, path, path_steps, value)
        text = yaml.safe_dump(variant_doc, sort_keys=False, allow_unicode=True)
        chosen = dict(zip(paths, combo, strict=True))
        try:
            parse_recipe(text, recipe_limits)
        except RecipeError as exc:
            path = _blame(paths, exc.loc)
            raise RecipeError(path, f"the sweep value {shown(chosen[path])} does not fit: "
                                    f"{exc.msg}") from None
        label = ", ".join(f"{n}={_label_value(v)}" for n, v in zip(names, combo, strict=True))
        variants.append(Variant(label, chosen, text))
    return variants


def _blame(paths: list[str], loc: str) -> str:
    """The axis a variant's error is about: the one its location is in (or contains)."""
    for path in paths:
        if loc == path or loc.startswith(path + ".") or path.startswith(loc + "."):
            return path
    return paths[-1]
