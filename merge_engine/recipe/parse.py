"""``parse_recipe`` and ``load_recipe``: recipe YAML to a validated :class:`Recipe`, or a
``RecipeError`` at the YAML path (and line) of the first mistake.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from merge_engine import methods
from merge_engine.errors import RecipeError
from merge_engine.methods import moe as moe_method
from merge_engine.methods.registry import MethodSpec
from merge_engine.recipe.checks import (
    check_tokenizer_settings,
    drop_ignored,
    validate_params,
    validate_slices,
)
from merge_engine.recipe.inputs import (
    EMPTY,
    check_duplicates,
    input_model,
    kind_of,
    params_block,
    parse_slices,
)
from merge_engine.recipe.locations import (
    RecipeLimits,
    load_yaml,
    size_message,
    with_line,
)
from merge_engine.recipe.moe import is_moe, parse_moe
from merge_engine.recipe.params import (
    ParamValue,
    unknown_key,
)
from merge_engine.recipe.refs import parse_ref, parse_ref_value
from merge_engine.recipe.schema import InputModel, Recipe, ref_key
from merge_engine.recipe.tokenizer_block import parse_tokenizer_block

TOP_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "slices",
    "modules",
    "name",
)


_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "f32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "f16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def load_recipe(path: str | os.PathLike, limits: RecipeLimits | None = None) -> Recipe:
    """Read and parse a recipe file; RecipeError("", ...) when it cannot be read."""
    limits = limits or RecipeLimits()
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limits.max_bytes:
                raise RecipeError("", size_message(size, limits.max_bytes))
            text = f.read(limits.max_bytes + 1).decode("utf-8")
    except FileNotFoundError:
        raise RecipeError("", f"recipe file {os.fspath(path)!r} not found") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name, not UTF-8
        raise RecipeError("", f"cannot read recipe file {os.fspath(path)!r}: {e}") from None
    return parse_recipe(text, limits)


def parse_recipe(text: str, limits: RecipeLimits | None = None) -> Recipe:
    """Parse and validate recipe YAML within ``limits`` (default :class:`RecipeLimits`);
    RecipeError at the YAML path of the first mistake."""
    doc, lines = load_yaml(text, limits)
    return build_recipe(doc, text, lines)


def build_recipe(doc: object, text: str, lines: Mapping[str, int] = EMPTY) -> Recipe:
    """The recipe of one YAML document already loaded (``text`` is kept as its text;
    ``lines`` maps its YAML paths to lines); RecipeError at the path of the first mistake."""
    try:
        return _build(doc, text, lines)
    except RecipeError as e:
        raise with_line(e, dict(lines)) from None


def _build(doc: object, text: str, lines: Mapping[str, int] = EMPTY) -> Recipe:
    if doc is None:
        raise RecipeError(
            "", "the recipe is empty; expected a mapping with merge_method and models"
        )
    if not isinstance(doc, dict):
        raise RecipeError(
            "", f"expected a mapping of recipe keys at the top level, got {kind_of(doc)}"
        )
    if is_moe(doc):
        return _moe_recipe(doc, text, lines)
    for key in doc:
        if key not in TOP_KEYS:
            raise unknown_key(str(key), key, TOP_KEYS)
    spec = _method(doc.get("merge_method"))
    _check_sources(doc)
    modules = doc.get("modules")
    if modules and [str(k) for k in modules] != ["default"]:
        return _multi_part(doc, text, lines, spec, modules)
    where, raw_models, slices, module_params = "", doc.get("models"), doc.get("slices"), EMPTY
    if modules:
        where, raw_models, slices, module_params = _module_body(modules["default"],
                                                                "modules.default")
    recipe = _assemble(doc, text, lines, spec, where, raw_models, slices, module_params)
    check_tokenizer_settings(recipe)
    return recipe


def _assemble(doc: dict, text: str, lines: Mapping[str, int], spec: MethodSpec, where: str,
              raw_models: object, slices: object, module_params: Mapping[str, ParamValue],
              part: str | None = None) -> Recipe:
    """The recipe of ``raw_models`` or ``slices`` (at YAML prefix ``where``) with the
    document's other keys, its parameters checked."""
    base = None
    if doc.get("base_model") is not None:
        base = parse_ref_value(doc["base_model"], "base_model")
    models = tuple(
        input_model(raw, f"{where}models[{i}]") for i, raw in enumerate(raw_models or ())
    )
    check_duplicates(models)
    tokenizer, modules = doc.get("tokenizer"), doc.get("modules")
    recipe = Recipe(
        merge_method=spec.name,
        models=models,
        base_model=base,
        parameters=params_block(doc.get("parameters"), "parameters"),
        dtype=_dtype(doc.get("dtype"), "dtype"),
        out_dtype=_dtype(doc.get("out_dtype"), "out_dtype"),
        tokenizer_source=_tokenizer_source(doc.get("tokenizer_source")),
        tokenizer=parse_tokenizer_block(tokenizer) if tokenizer is not None else None,
        chat_template=_opt_str(doc.get("chat_template"), "chat_template"),
        slices=parse_slices(slices, f"{where}slices") if slices else None,
        modules=MappingProxyType(modules) if modules else None,
        name=_opt_str(doc.get("name"), "name"),
        text=text,
        method=spec,
        lines=MappingProxyType(dict(lines)),
        module_parameters=module_params,
        models_loc=f"{where}{'slices' if slices else 'models'}",
        part=part,
    )
    if recipe.tokenizer is not None and recipe.tokenizer_source is not None:
        raise RecipeError("tokenizer", "give either tokenizer_source or tokenizer, not both")
    recipe = drop_ignored(recipe, spec, f"{where}parameters")
    if recipe.slices is not None:
        validate_slices(recipe, spec)
    else:
        validate_params(recipe, spec)
    return recipe


def _multi_part(doc: dict, text: str, lines: Mapping[str, int], spec: MethodSpec,
                modules: dict) -> Recipe:
    """``modules:`` naming the parts of a multi-part model (``text_decoder``,
    ``vision_tower``, ``multi_modal_projector``): one recipe per part in :attr:`Recipe.parts`;
    the whole recipe's :attr:`Recipe.models` is every part's inputs, each once."""
    parts = []
    for name, body in modules.items():
        name = str(name)
        if name == "default":
            raise RecipeError("modules.default", "'default' is the one module of a single-part "
                              "model; with several modules, name each part (text_decoder, "
                              "vision_tower, multi_modal_projector)")
        where, raw_models, slices, params = _module_body(body, f"modules.{name}")
        parts.append(_assemble(doc, text, lines, spec, where, raw_models, slices, params, name))
    seen: dict[tuple, InputModel] = {}
    for part in parts:
        for m in part.inputs():
            seen.setdefault(ref_key(m.ref), m)
    warnings = tuple(dict.fromkeys(w for part in parts for w in part.warnings))
    recipe = replace(parts[0], models=tuple(seen.values()), slices=None, part=None,
                     module_parameters=EMPTY, parts=tuple(parts), models_loc="modules",
                     warnings=warnings)
    check_tokenizer_settings(recipe)
    return recipe


def _moe_recipe(doc: dict, text: str, lines: Mapping[str, int]) -> Recipe:
    """A mergekit-moe recipe: its models are the base, then each other expert source once
    (the plan maps experts to them by reference); ``dtype`` is the output's."""
    base, spec = parse_moe(doc)
    refs = [("base_model", base)] + [(f"{e.loc}.source_model", e.ref) for e in spec.all_experts]
    for loc, ref in refs:
        if ref.lora is not None:
            raise RecipeError(loc, "a model with a LoRA adapter cannot be an MoE source yet; "
                              "merge the adapter into the model first")
    models: dict[tuple, InputModel] = {}
    for loc, ref in refs:
        models.setdefault(ref_key(ref), InputModel(ref, EMPTY, loc))
    tokenizer_source = doc.get("tokenizer_source")
    if tokenizer_source not in (None, "base"):
        raise RecipeError("tokenizer_source", "an MoE model keeps the base model's tokenizer; "
                          "only tokenizer_source: base is supported")
    return Recipe(
        merge_method=moe_method.SPEC.name, models=tuple(models.values()), base_model=base,
        parameters=EMPTY, dtype=None, out_dtype=_dtype(doc.get("dtype"), "dtype"),
        tokenizer_source=tokenizer_source, tokenizer=None, chat_template=None, slices=None,
        modules=None, name=_opt_str(doc.get("name"), "name"), text=text,
        method=moe_method.SPEC, lines=MappingProxyType(dict(lines)), models_loc="experts",
        moe=spec)


MODULE_KEYS = ("models", "slices", "parameters")


def _module_body(body: object, loc: str) -> tuple[str, object, object,
                                                 Mapping[str, ParamValue]]:
    """One module of ``modules:``: (YAML prefix, models, slices, module parameters)."""
    if not isinstance(body, dict):
        raise RecipeError(loc, f"expected a mapping with models or slices, got {kind_of(body)}")
    for key in body:
        if key not in MODULE_KEYS:
            raise unknown_key(f"{loc}.{key}", key, MODULE_KEYS)
    given = [k for k in ("models", "slices") if body.get(k)]
    for key in given:
        if not isinstance(body[key], list):
            raise RecipeError(f"{loc}.{key}", f"expected a list, got {kind_of(body[key])}")
    if len(given) != 1:
        raise RecipeError(loc if not given else f"{loc}.{given[1]}",
                          "give exactly one non-empty list: models or slices")
    params = params_block(body.get("parameters"), f"{loc}.parameters")
    return f"{loc}.", body.get("models"), body.get("slices"), params


def _method(raw: object) -> MethodSpec:
    if raw is None:
        raise RecipeError("merge_method", "missing required key 'merge_method'")
    if not isinstance(raw, str):
        raise RecipeError("merge_method", f"expected a merge method name, got {kind_of(raw)}")
    try:
        return methods.get_method(raw)
    except KeyError:
        names = sorted(methods.method_names())
        close = difflib.get_close_matches(raw, names, n=3)
        if close:
            hint = "; did you mean " + " or ".join(repr(n) for n in close) + "?"
        else:
            hint = "; known methods: " + ", ".join(names)
        raise RecipeError("merge_method", f"unknown merge method {raw!r}{hint}") from None


def _check_sources(doc: dict) -> None:
    """mergekit: exactly one of models, slices, modules, each non-empty."""
    kinds = {"models": list, "slices": list, "modules": dict}
    for key, kind in kinds.items():
        value = doc.get(key)
        if value is not None and not isinstance(value, kind):
            what = "a list" if kind is list else "a mapping"
            raise RecipeError(key, f"expected {what}, got {kind_of(value)}")
    given = [key for key in kinds if doc.get(key)]
    if len(given) > 1:
        raise RecipeError(given[1], "give only one of models, slices or modules")
    if not given:
        if "models" in doc:
            raise RecipeError("models", "expected a non-empty list of models to merge")
        raise RecipeError("models", "missing required key 'models' (the models to merge)")


def _dtype(raw: object, loc: str) -> str | None:
    if raw is None:
        return None
    name = raw.lower().removeprefix("torch.") if isinstance(raw, str) else None
    if name not in _DTYPES:
        raise RecipeError(loc, f"unsupported dtype {raw!r}; expected float32, float16 or bfloat16")
    return _DTYPES[name]


def _opt_str(raw: object, loc: str) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise RecipeError(loc, f"expected a string, got {kind_of(raw)}")
    return raw


def _tokenizer_source(raw: object) -> str | None:
    if raw is None or raw in ("base", "union"):
        return raw
    if isinstance(raw, str):
        return str(parse_ref(raw, "tokenizer_source"))
    return str(parse_ref_value(raw, "tokenizer_source"))
