"""Recipe parameter values and their evaluation for one tensor (mergekit semantics).

A value, as written under ``parameters:``, is one of:

- a scalar: number, bool or string;
- a :class:`Gradient`: a list of scalars, interpolated over ``t`` in [0, 1];
- a :class:`FilterList`: ``[{filter: substring, value: scalar-or-gradient}, ...]``; the
  first rule whose filter is absent, ``"*"`` or a substring of the tensor name wins.

``evaluate(value, tensor_name, t)`` gives the value for one tensor, or ``None`` when a
filter list has no matching rule ("not set here": the caller falls back to the global
value, then to the method's default). ``layer_t`` gives the ``t`` mergekit uses.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from merge_engine.errors import RecipeError

Scalar = float | int | bool | str


@dataclass(frozen=True)
class Gradient:
    """A list of scalars over the layer stack: numbers interpolate linearly, others pick."""

    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class FilterRule:
    """``{filter: substring, value: ...}``; ``filter`` None or ``"*"`` matches every tensor."""

    filter: str | None
    value: ParamValue


@dataclass(frozen=True)
class FilterList:
    """Rules tried in order; the first whose filter matches the tensor name gives the value."""

    rules: tuple[FilterRule, ...]


ParamValue = float | int | bool | str | Gradient | FilterList

_SHAPES = "a number, true/false, a string, a list of numbers, or a list of {filter, value}"


def unknown_key(loc: str, key: object, known: Iterable[str]) -> RecipeError:
    """RecipeError "unknown key 'wieght'; did you mean 'weight'?" (hint only when close)."""
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return RecipeError(loc, f"unknown key {str(key)!r}{hint}")


def _kind(raw: object) -> str:
    if raw is None:
        return "nothing (null)"
    if isinstance(raw, bool):
        return f"the boolean {str(raw).lower()}"
    if isinstance(raw, dict):
        return "a mapping"
    if isinstance(raw, list):
        return "a list"
    return f"{raw!r}"


FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32: parameters are used in float32 math."""
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""``1e-3``: YAML 1.2 and people read it as a number, PyYAML (YAML 1.1) as a string."""


def _scalar(raw: object, loc: str) -> Scalar:
    if isinstance(raw, str) and _EXPONENT_FLOAT.fullmatch(raw.strip()):
        raw = float(raw)
    if isinstance(raw, bool | str):
        return raw
    if isinstance(raw, int | float):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise RecipeError(loc, f"expected a finite number, got {raw}")
        if abs(raw) > FLOAT32_MAX:
            raise RecipeError(loc, f"{raw:g} is out of float32 range (the merge's math); "
                                   f"expected a number between -{FLOAT32_MAX:.4g} and "
                                   f"{FLOAT32_MAX:.4g}")
        return raw
    raise RecipeError(loc, f"expected {_SHAPES}; got {_kind(raw)}")


def _is_scalar(raw: object) -> bool:
    return isinstance(raw, bool | int | float | str)


def _gradient(raw: list, loc: str) -> Gradient:
    if not raw:
        raise RecipeError(loc, "expected a non-empty list (a gradient)")
    return Gradient(tuple(_scalar(v, f"{loc}[{i}]") for i, v in enumerate(raw)))


def _rule(raw: object, loc: str) -> FilterRule:
    if not isinstance(raw, dict):
        raise RecipeError(loc, f"expected a {{filter, value}} rule, got {_kind(raw)}")
    for key in raw:
        if key not in ("filter", "value"):
            raise unknown_key(f"{loc}.{key}", key, ("filter", "value"))
    if "value" not in raw:
        raise RecipeError(loc, "missing 'value' in this filter rule")
    flt = raw.get("filter")
    if flt is not None and not isinstance(flt, str):
        raise RecipeError(f"{loc}.filter", f"expected a string, got {_kind(flt)}")
    value = raw["value"]
    vloc = f"{loc}.value"
    if isinstance(value, list):
        if not all(_is_scalar(v) for v in value):
            raise RecipeError(vloc, "a rule's value must be a scalar or a list of scalars")
        return FilterRule(flt, _gradient(value, vloc))
    return FilterRule(flt, _scalar(value, vloc))


def parse_value(raw: object, loc: str) -> ParamValue:
    """Turn a YAML value into a ParamValue; RecipeError at ``loc`` for a bad shape.

    A single ``{filter, value}`` mapping is read as a one-rule filter list.
    """
    if isinstance(raw, list):
        if raw and all(isinstance(v, dict) for v in raw):
            return FilterList(tuple(_rule(v, f"{loc}[{i}]") for i, v in enumerate(raw)))
        if all(_is_scalar(v) for v in raw):
            return _gradient(raw, loc)
        raise RecipeError(
            loc, "expected a list of numbers (a gradient) or a list of {filter, value} rules"
        )
    if isinstance(raw, dict):
        return FilterList((_rule(raw, loc),))
    return _scalar(raw, loc)


def iter_leaves(value: ParamValue, loc: str) -> Iterator[tuple[Scalar, str]]:
    """Every scalar inside ``value`` with its YAML path (for type and range checks)."""
    if isinstance(value, Gradient):
        for i, v in enumerate(value.values):
            yield v, f"{loc}[{i}]"
    elif isinstance(value, FilterList):
        for i, rule in enumerate(value.rules):
            yield from iter_leaves(rule.value, f"{loc}[{i}].value")
    else:
        yield value, loc


def covers_all(value: ParamValue) -> bool:
    """True unless ``value`` is a filter list that may match no rule for some tensor."""
    if not isinstance(value, FilterList):
        return True
    return any(rule.filter is None or rule.filter in ("*", "") for rule in value.rules)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, str)


def _eval_gradient(values: tuple[Scalar, ...], t: float) -> Scalar:
    n = len(values)
    if all(_is_number(v) for v in values):
        # mergekit interpolates bools as numbers too (bool is an int); keep that meaning.
        scaled = t * (n - 1)
        i0 = math.floor(scaled)
        i1 = min(n - 1, i0 + 1)
        frac = scaled - i0
        res = (1 - frac) * values[i0] + frac * values[i1]
        if all(isinstance(v, bool) for v in values):
            return res != 0
        return float(res)
    return values[int(t * (n - 1))]


def evaluate(value: ParamValue, tensor_name: str, t: float) -> Scalar | None:
    """The value of ``value`` for one tensor at gradient position ``t`` in [0, 1].

    Returns None when ``value`` is a filter list and no rule matches ``tensor_name``:
    the parameter is not set here, and the caller falls back (global value, default).
    A gradient of numbers gives a float; a gradient of only bools gives a bool
    (true wherever mergekit's interpolated number is non-zero); any other gradient
    picks ``values[int(t * (n - 1))]``.
    """
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    if isinstance(value, Gradient):
        return _eval_gradient(value.values, t)
    if isinstance(value, FilterList):
        for rule in value.rules:
            if rule.filter is None or rule.filter == "*" or rule.filter in tensor_name:
                return evaluate(rule.value, tensor_name, t)
        return None
    return value


def layer_t(
    layer_index: int | None,
    n_layers: int,
    position: Literal["pre", "layer", "post"] = "layer",
) -> float:
    """The gradient position ``t`` mergekit uses for a tensor.

    - In the layer stack (``position="layer"``): ``layer_index / (n_layers - 1)``, and
      1.0 when the stack has a single layer (mergekit's rule).
    - Outside it (``"pre"``: embeddings; ``"post"``: final norm, lm_head; or
      ``layer_index`` None): 0.0, so they take a gradient's first value. This is what
      mergekit >= 0.1 does (its planner reads pre- and post-stack weights with t=0);
      mergekit 0.0.x read post-stack weights with t=1.
    """
    if position not in ("pre", "layer", "post"):
        raise ValueError(f"position must be 'pre', 'layer' or 'post', got {position!r}")
    if position != "layer" or layer_index is None:
        return 0.0
    if n_layers < 1 or not 0 <= layer_index < n_layers:
        raise ValueError(f"layer {layer_index} is outside a stack of {n_layers} layers")
    if n_layers == 1:
        return 1.0
    return layer_index / (n_layers - 1)
