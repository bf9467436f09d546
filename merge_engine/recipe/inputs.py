"""The models of a recipe from YAML: ``models`` entries, ``slices`` with their sources and
``layer_range``, and parameter blocks (values parsed, not yet checked against a method).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from merge_engine.errors import RecipeError
from merge_engine.recipe.params import (
    ParamValue,
    parse_value,
    unknown_key,
)
from merge_engine.recipe.refs import parse_ref_value
from merge_engine.recipe.schema import EMPTY, InputModel, OutputSlice, SliceSource, ref_key

MODEL_KEYS = ("model", "parameters")


SLICE_KEYS = ("sources", "base_model", "parameters")


SOURCE_KEYS = ("model", "layer_range", "parameters")


def kind_of(raw: object) -> str:
    if raw is None:
        return "nothing (null)"
    if isinstance(raw, dict):
        return "a mapping"
    if isinstance(raw, list):
        return "a list"
    return repr(raw)


def input_model(raw: object, loc: str) -> InputModel:
    if not isinstance(raw, dict):
        hint = f"; write '- model: {raw}'" if isinstance(raw, str) else ""
        raise RecipeError(loc, f"expected a mapping with 'model' and 'parameters'{hint}")
    for key in raw:
        if key not in MODEL_KEYS:
            raise unknown_key(f"{loc}.{key}", key, MODEL_KEYS)
    if raw.get("model") is None:
        raise RecipeError(loc, "missing required key 'model'")
    ref = parse_ref_value(raw["model"], f"{loc}.model")
    return InputModel(ref, params_block(raw.get("parameters"), f"{loc}.parameters"), loc)


def params_block(raw: object, loc: str) -> Mapping[str, ParamValue]:
    if raw is None:
        return EMPTY
    if not isinstance(raw, dict):
        raise RecipeError(
            loc, f"expected a mapping of parameter names to values, got {kind_of(raw)}")
    out = {}
    for key, value in raw.items():
        name = str(key)
        out[name] = parse_value(value, f"{loc}.{name}")
    return MappingProxyType(out)


def parse_slices(raw: list, loc: str = "slices") -> tuple[OutputSlice, ...]:
    return tuple(_output_slice(item, f"{loc}[{i}]") for i, item in enumerate(raw))


def _output_slice(raw: object, loc: str) -> OutputSlice:
    if not isinstance(raw, dict):
        raise RecipeError(loc, f"expected a mapping with 'sources' (a list of models with "
                               f"layer_range), got {kind_of(raw)}")
    for key in raw:
        if key not in SLICE_KEYS:
            raise unknown_key(f"{loc}.{key}", key, SLICE_KEYS)
    items = raw.get("sources")
    if not isinstance(items, list) or not items:
        what = "missing" if items is None else f"got {kind_of(items)}"
        raise RecipeError(f"{loc}.sources", f"expected a non-empty list of sources, each a "
                                            f"model and its layer_range ({what})")
    sources = tuple(_slice_source(item, f"{loc}.sources[{j}]") for j, item in enumerate(items))
    first = sources[0]
    seen: dict[tuple, str] = {}
    for source in sources:
        if source.length != first.length:
            raise RecipeError(
                f"{source.model.loc}.layer_range",
                f"{list(source.layer_range)} covers {source.length} layers but "
                f"{first.model.loc} covers {first.length}; every source of a slice must "
                "cover the same number of layers")
        key = ref_key(source.model.ref)
        if key in seen:
            raise RecipeError(f"{source.model.loc}.model",
                              f"{str(source.model.ref)!r} is listed twice in this slice "
                              f"(also {seen[key]})")
        seen[key] = source.model.loc
    base = None
    if raw.get("base_model") is not None:
        base = parse_ref_value(raw["base_model"], f"{loc}.base_model")
    return OutputSlice(sources, base, params_block(raw.get("parameters"), f"{loc}.parameters"),
                       loc)


def _slice_source(raw: object, loc: str) -> SliceSource:
    if not isinstance(raw, dict):
        hint = f"; write '- model: {raw}' and its layer_range" if isinstance(raw, str) else ""
        raise RecipeError(loc, f"expected a mapping with 'model' and 'layer_range'{hint}")
    for key in raw:
        if key not in SOURCE_KEYS:
            raise unknown_key(f"{loc}.{key}", key, SOURCE_KEYS)
    if raw.get("model") is None:
        raise RecipeError(loc, "missing required key 'model'")
    ref = parse_ref_value(raw["model"], f"{loc}.model")
    model = InputModel(ref, params_block(raw.get("parameters"), f"{loc}.parameters"), loc)
    return SliceSource(model, _layer_range(raw.get("layer_range"), f"{loc}.layer_range"))


def _layer_range(raw: object, loc: str) -> tuple[int, int]:
    if raw is None:
        raise RecipeError(loc, "missing required key 'layer_range' ([first, end) layers, "
                               "e.g. [0, 16])")
    ints = isinstance(raw, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                         for v in raw)
    if not ints or len(raw) != 2:
        raise RecipeError(loc, f"expected [start, end] (two whole numbers, end excluded), "
                               f"got {raw!r}")
    start, end = raw
    if start < 0 or end <= start:
        raise RecipeError(loc, f"[{start}, {end}] is empty or negative; expected 0 <= start "
                               "< end (end is excluded)")
    return start, end


def check_duplicates(models: tuple[InputModel, ...]) -> None:
    seen: dict[tuple, str] = {}
    for m in models:
        key = ref_key(m.ref)
        if key in seen:
            raise RecipeError(
                f"{m.loc}.model", f"{str(m.ref)!r} is listed twice (also {seen[key]})"
            )
        seen[key] = m.loc
