"""A merge recipe (mergekit's YAML), parsed and validated.

``parse_recipe(text)`` returns a :class:`Recipe` or raises ``RecipeError`` whose ``loc``
is the YAML path of the mistake (``models[1].parameters.weight``, ``merge_method``, or
"" for the document itself). When the path is in the text, the error also carries
``line`` (1-based) and its message reads ``"models[1].parameters.weight (line 9): ..."``.

Parameter values are kept as written (no defaults filled in); ``Recipe.model_param`` and
``Recipe.global_param`` resolve them for one tensor: per-model value, then the global
value of the same name, then the method's default.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import yaml

from merge_engine.errors import RecipeError
from merge_engine.methods.registry import REQUIRED, MethodSpec
from merge_engine.params import (
    FilterList,
    Gradient,
    ParamValue,
    covers_all,
    evaluate,
    iter_leaves,
    parse_value,
    unknown_key,
)
from merge_engine.refs import ModelRef, parse_ref, parse_ref_value

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
MODEL_KEYS = ("model", "parameters")
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
_DELLA = ("della", "della_linear")
_EMPTY: Mapping[str, ParamValue] = MappingProxyType({})


@dataclass(frozen=True)
class InputModel:
    """One model the merge reads, with its per-model parameters as written."""

    ref: ModelRef
    parameters: Mapping[str, ParamValue] = field(hash=False)
    loc: str


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Raw blocks (``tokenizer``, ``slices``, ``modules``) are kept
    as parsed from YAML; the engine rejects them for now."""

    merge_method: str
    models: tuple[InputModel, ...]
    base_model: ModelRef | None
    parameters: Mapping[str, ParamValue] = field(hash=False)
    dtype: str | None
    out_dtype: str | None
    tokenizer_source: str | None
    tokenizer: Mapping | None = field(hash=False)
    chat_template: str | None
    slices: tuple | None = field(hash=False)
    modules: Mapping | None = field(hash=False)
    name: str | None
    text: str
    method: MethodSpec | None = field(default=None, compare=False, repr=False)
    """The method's spec; looked up by name when None."""

    @property
    def spec(self) -> MethodSpec:
        """The merge method's registry entry."""
        if self.method is not None:
            return self.method
        from merge_engine.methods import get_method

        return get_method(self.merge_method)

    @property
    def has_base_role(self) -> bool:
        """Does the method get a base tensor (it needs one, or takes an optional one and
        the recipe names a ``base_model``)?"""
        return self.spec.uses_base(self.base_model is not None)

    def is_base(self, model: InputModel) -> bool:
        """True when ``model`` is the recipe's ``base_model``."""
        return self.base_model is not None and _ref_key(model.ref) == _ref_key(self.base_model)

    def inputs(self) -> tuple[InputModel, ...]:
        """Every model the merge reads, each once.

        With a base role (:attr:`has_base_role`): the base first (its ``models`` entry if listed,
        else an entry with loc ``base_model`` and no parameters), then the others in
        recipe order. With a method without a base role, a ``base_model`` is just one
        more input (mergekit adds it too): recipe order, an unlisted base last.
        """
        if self.base_model is None:
            return self.models
        listed = next((m for m in self.models if self.is_base(m)), None)
        base = listed or InputModel(self.base_model, _EMPTY, "base_model")
        if self.has_base_role:
            return (base, *(m for m in self.models if m is not listed))
        return self.models if listed else (*self.models, base)

    def model_param(self, model: InputModel, name: str, tensor_name: str, t: float):
        """Per-model parameter ``name`` of ``model`` for one tensor at gradient ``t``.

        Per-model value, else the global value, else the method's default. The base's
        own values are ignored by methods with a base; a required parameter left unset
        there gives None. RecipeError when a required parameter has no value for this
        tensor (e.g. a filter list that matches nothing and no global fallback).
        """
        spec = self.spec
        if name not in spec.model_params:
            raise KeyError(f"{name!r} is not a per-model parameter of {spec.name}")
        base_role = self.has_base_role and self.is_base(model)
        if not base_role and name in model.parameters:
            value = evaluate(model.parameters[name], tensor_name, t)
            if value is not None:
                return value
        if name in self.parameters:
            value = evaluate(self.parameters[name], tensor_name, t)
            if value is not None:
                return value
        default = spec.model_params[name]
        if default is REQUIRED:
            if base_role:
                return None
            raise RecipeError(
                f"{model.loc}.parameters.{name}",
                f"no value for tensor {tensor_name!r}: no filter matches it and there is "
                f"no global {name!r} to fall back to",
            )
        return default

    def global_param(self, name: str, tensor_name: str, t: float):
        """Global parameter ``name`` for one tensor at gradient ``t``, else its default."""
        spec = self.spec
        if name not in spec.global_params and name not in spec.model_params:
            raise KeyError(f"{name!r} is not a parameter of {spec.name}")
        if name in self.parameters:
            value = evaluate(self.parameters[name], tensor_name, t)
            if value is not None:
                return value
        default = spec.global_params.get(name)
        if default is REQUIRED:
            raise RecipeError(
                f"parameters.{name}", f"no value for tensor {tensor_name!r}: no filter matches it"
            )
        return default


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and parse a recipe file; RecipeError("", ...) when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise RecipeError("", f"recipe file {os.fspath(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError("", f"cannot read recipe file {os.fspath(path)!r}: {e}") from None
    return parse_recipe(text)


def parse_recipe(text: str) -> Recipe:
    """Parse and validate recipe YAML; RecipeError at the YAML path of the first mistake."""
    doc, lines = _load_yaml(text)
    try:
        return _build(doc, text)
    except RecipeError as e:
        raise _with_line(e, lines) from None


# --- YAML with line numbers ---------------------------------------------------------


def _located(loc: str, msg: str, line: int | None) -> RecipeError:
    err = RecipeError(loc, msg)
    err.line = line
    if line is not None:
        err.args = (f"{loc} (line {line}): {msg}" if loc else f"line {line}: {msg}",)
    return err


def _with_line(err: RecipeError, lines: dict[str, int]) -> RecipeError:
    if getattr(err, "line", None) is not None or not err.loc:
        return err
    path = err.loc
    while path:
        if path in lines:
            return _located(err.loc, err.msg, lines[path])
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return err


def _index(node: yaml.Node, path: str, lines: dict[str, int], stack: set[int]) -> None:
    """Record the line of every YAML path; reject duplicate keys (PyYAML keeps the last)."""
    if id(node) in stack:
        return
    stack.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key == "<<":
                continue
            child = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _located(child, f"duplicate key {key!r}", line)
            seen.add(key)
            lines.setdefault(child, line)
            _index(value_node, child, lines, stack)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = f"{path}[{i}]"
            lines.setdefault(child, item.start_mark.line + 1)
            _index(item, child, lines, stack)
    stack.discard(id(node))


def _load_yaml(text: str) -> tuple[object, dict[str, int]]:
    if not isinstance(text, str):
        raise RecipeError("", f"expected recipe text, got {type(text).__name__}")
    lines: dict[str, int] = {}
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        _index(node, "", lines, set())
        return loader.construct_document(node), lines
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context, problem = getattr(e, "context", None), getattr(e, "problem", None)
        problem = "; ".join(p for p in (context, problem) if p) or str(e)
        raise RecipeError("", f"invalid YAML{where}: {problem}") from None
    finally:
        loader.dispose()


# --- building -----------------------------------------------------------------------


def _kind(raw: object) -> str:
    if raw is None:
        return "nothing (null)"
    if isinstance(raw, dict):
        return "a mapping"
    if isinstance(raw, list):
        return "a list"
    return repr(raw)


def _build(doc: object, text: str) -> Recipe:
    if doc is None:
        raise RecipeError(
            "", "the recipe is empty; expected a mapping with merge_method and models"
        )
    if not isinstance(doc, dict):
        raise RecipeError(
            "", f"expected a mapping of recipe keys at the top level, got {_kind(doc)}"
        )
    for key in doc:
        if key not in TOP_KEYS:
            raise unknown_key(str(key), key, TOP_KEYS)
    spec = _method(doc.get("merge_method"))
    _check_sources(doc)
    base = None
    if doc.get("base_model") is not None:
        base = parse_ref_value(doc["base_model"], "base_model")
    models = tuple(
        _input_model(raw, f"models[{i}]") for i, raw in enumerate(doc.get("models") or ())
    )
    _check_duplicates(models)
    tokenizer, slices, modules = doc.get("tokenizer"), doc.get("slices"), doc.get("modules")
    if tokenizer is not None and not isinstance(tokenizer, dict):
        raise RecipeError("tokenizer", f"expected a mapping, got {_kind(tokenizer)}")
    recipe = Recipe(
        merge_method=spec.name,
        models=models,
        base_model=base,
        parameters=_params_block(doc.get("parameters"), "parameters"),
        dtype=_dtype(doc.get("dtype"), "dtype"),
        out_dtype=_dtype(doc.get("out_dtype"), "out_dtype"),
        tokenizer_source=_tokenizer_source(doc.get("tokenizer_source")),
        tokenizer=MappingProxyType(tokenizer) if tokenizer is not None else None,
        chat_template=_opt_str(doc.get("chat_template"), "chat_template"),
        slices=tuple(slices) if slices else None,
        modules=MappingProxyType(modules) if modules else None,
        name=_opt_str(doc.get("name"), "name"),
        text=text,
        method=spec,
    )
    if recipe.tokenizer is not None and recipe.tokenizer_source is not None:
        raise RecipeError("tokenizer", "give either tokenizer_source or tokenizer, not both")
    if recipe.slices is not None:
        raise RecipeError("slices", "slices are not supported yet; list whole models under models")
    if recipe.modules is not None:
        raise RecipeError("modules", "modules are not supported yet; list models under models")
    _validate_params(recipe, spec)
    _reject_unsupported(recipe, spec)
    return recipe


def _method(raw: object) -> MethodSpec:
    from merge_engine.methods import get_method, method_names

    if raw is None:
        raise RecipeError("merge_method", "missing required key 'merge_method'")
    if not isinstance(raw, str):
        raise RecipeError("merge_method", f"expected a merge method name, got {_kind(raw)}")
    try:
        return get_method(raw)
    except KeyError:
        names = sorted(method_names())
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
            raise RecipeError(key, f"expected {what}, got {_kind(value)}")
    given = [key for key in kinds if doc.get(key)]
    if len(given) > 1:
        raise RecipeError(given[1], "give only one of models, slices or modules")
    if not given:
        if "models" in doc:
            raise RecipeError("models", "expected a non-empty list of models to merge")
        raise RecipeError("models", "missing required key 'models' (the models to merge)")


def _input_model(raw: object, loc: str) -> InputModel:
    if not isinstance(raw, dict):
        hint = f"; write '- model: {raw}'" if isinstance(raw, str) else ""
        raise RecipeError(loc, f"expected a mapping with 'model' and 'parameters'{hint}")
    for key in raw:
        if key not in MODEL_KEYS:
            raise unknown_key(f"{loc}.{key}", key, MODEL_KEYS)
    if raw.get("model") is None:
        raise RecipeError(loc, "missing required key 'model'")
    ref = parse_ref_value(raw["model"], f"{loc}.model")
    return InputModel(ref, _params_block(raw.get("parameters"), f"{loc}.parameters"), loc)


def _params_block(raw: object, loc: str) -> Mapping[str, ParamValue]:
    if raw is None:
        return _EMPTY
    if not isinstance(raw, dict):
        raise RecipeError(loc, f"expected a mapping of parameter names to values, got {_kind(raw)}")
    out = {}
    for key, value in raw.items():
        name = str(key)
        out[name] = parse_value(value, f"{loc}.{name}")
    return MappingProxyType(out)


def _ref_key(ref: ModelRef) -> tuple:
    path = os.path.realpath(ref.path) if ref.is_local else ref.path
    return (path, ref.revision, _ref_key(ref.lora) if ref.lora else None)


def _check_duplicates(models: tuple[InputModel, ...]) -> None:
    seen: dict[tuple, str] = {}
    for m in models:
        key = _ref_key(m.ref)
        if key in seen:
            raise RecipeError(
                f"{m.loc}.model", f"{str(m.ref)!r} is listed twice (also {seen[key]})"
            )
        seen[key] = m.loc


def _dtype(raw: object, loc: str) -> str | None:
    if raw is None:
        return None
    name = raw.lower().removeprefix("torch.") if isinstance(raw, str) else None
    if name not in _DTYPES:
        raise RecipeError(loc, f"unsupported dtype {raw!r}; expected float32, float16 or bfloat16")
    return _DTYPES[name]


def _opt_str(raw: object, loc: str) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise RecipeError(loc, f"expected a string, got {_kind(raw)}")
    return raw


def _tokenizer_source(raw: object) -> str | None:
    if raw is None or raw in ("base", "union"):
        return raw
    if isinstance(raw, str):
        return str(parse_ref(raw, "tokenizer_source"))
    return str(parse_ref_value(raw, "tokenizer_source"))


# --- method-specific checks -----------------------------------------------------------


def _check_type(value: ParamValue, default: object, loc: str) -> None:
    """Each scalar inside ``value`` must fit the kind of the parameter's default."""
    for leaf, leaf_loc in iter_leaves(value, loc):
        if isinstance(default, bool):
            ok, want = not isinstance(leaf, str), "true or false"
        elif isinstance(default, str):
            ok, want = isinstance(leaf, str), "a string"
        elif default is REQUIRED or isinstance(default, int | float):
            ok, want = _is_num(leaf), "a number"
        else:
            ok, want = True, ""
        if not ok:
            shown = str(leaf).lower() if isinstance(leaf, bool) else repr(leaf)
            raise RecipeError(leaf_loc, f"expected {want}, got {shown}")


def _validate_model_count(recipe: Recipe, spec: MethodSpec) -> None:
    """The number of inputs besides the base must be in [min_donors, max_donors]."""
    count = len(recipe.inputs()) - recipe.has_base_role
    low, high = spec.min_donors, spec.max_donors
    if low <= count and (high is None or count <= high):
        return
    if high == low:
        wanted = f"exactly {low}"
    elif high is None:
        wanted = f"at least {low}"
    else:
        wanted = f"between {low} and {high}"
    besides = " besides the base_model" if recipe.has_base_role else ""
    raise RecipeError("models", f"{spec.name} merges {wanted} model{'s' * (wanted != 'exactly 1')}"
                                f"{besides}; this recipe gives {count}")


def _validate_params(recipe: Recipe, spec: MethodSpec) -> None:
    if spec.needs_base and recipe.base_model is None:
        raise RecipeError("base_model", f"merge method {spec.name!r} needs a base_model")
    _validate_model_count(recipe, spec)
    known = (*spec.global_params, *spec.model_params)
    for name, value in recipe.parameters.items():
        if name not in known:
            raise unknown_key(f"parameters.{name}", name, known)
        default = spec.global_params.get(name, spec.model_params.get(name))
        _check_type(value, default, f"parameters.{name}")
    for name, default in spec.global_params.items():
        if default is REQUIRED and name not in recipe.parameters:
            raise RecipeError(f"parameters.{name}", f"missing required parameter {name!r}")
    for m in recipe.models:
        for name, value in m.parameters.items():
            loc = f"{m.loc}.parameters.{name}"
            if name in spec.model_params:
                _check_type(value, spec.model_params[name], loc)
            elif name in spec.global_params:
                raise RecipeError(
                    loc,
                    f"{name!r} is a global parameter of {spec.name}; "
                    "move it to the top-level parameters",
                )
            else:
                raise unknown_key(loc, name, spec.model_params)
    for m in recipe.inputs():
        if recipe.has_base_role and recipe.is_base(m):
            continue
        for name, default in spec.model_params.items():
            if default is REQUIRED and name not in m.parameters and name not in recipe.parameters:
                if m.loc == "base_model":
                    raise RecipeError(
                        "base_model",
                        f"missing required parameter {name!r}: {spec.name} reads the base "
                        "as an input; list it under models with its parameters",
                    )
                raise RecipeError(
                    f"{m.loc}.parameters.{name}", f"missing required parameter {name!r}"
                )
    _check_ranges(recipe, spec)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _numbers(value: ParamValue) -> list[tuple[float, float]]:
    """The ranges of numbers ``value`` can take: one per scalar, gradient or rule."""
    if isinstance(value, FilterList):
        return [r for rule in value.rules for r in _numbers(rule.value)]
    leaves = value.values if isinstance(value, Gradient) else (value,)
    nums = [float(v) for v in leaves if _is_num(v)]
    return [(min(nums), max(nums))] if nums else []


def _candidates(recipe: Recipe, spec: MethodSpec, m: InputModel, name: str):
    """(value, loc) pairs that can give ``name`` for model ``m`` for some tensor."""
    out = []
    own = m.parameters.get(name)
    if own is not None:
        out.append((own, f"{m.loc}.parameters.{name}"))
    if own is None or not covers_all(own):
        glob = recipe.parameters.get(name)
        if glob is not None:
            out.append((glob, f"parameters.{name}"))
        if glob is None or not covers_all(glob):
            default = spec.model_params.get(name)
            if _is_num(default):
                out.append((default, f"{m.loc}.parameters.{name}"))
    return out


def _check_ranges(recipe: Recipe, spec: MethodSpec) -> None:
    blocks = [("parameters", recipe.parameters)]
    blocks += [(f"{m.loc}.parameters", m.parameters) for m in recipe.models]
    for prefix, params in blocks:
        if "density" in params:
            for leaf, loc in iter_leaves(params["density"], f"{prefix}.density"):
                if _is_num(leaf) and not 0 <= leaf <= 1:
                    raise RecipeError(loc, f"density must be between 0 and 1, got {leaf}")
    if spec.name not in _DELLA:
        return
    for m in recipe.inputs():
        if recipe.has_base_role and recipe.is_base(m):
            continue
        eps = [hi for v, _ in _candidates(recipe, spec, m, "epsilon") for _, hi in _numbers(v)]
        emax = max(eps, default=0.0)
        for value, loc in _candidates(recipe, spec, m, "density"):
            for lo, hi in _numbers(value):
                if hi <= 0 or lo >= 1:
                    continue  # density 0 drops all, 1 keeps all: no sampling
                if max(lo, 0.0) - emax <= 0 or min(hi, 1.0) + emax >= 1:
                    shown = f"{lo:g}" if lo == hi else f"{lo:g} to {hi:g}"
                    raise RecipeError(
                        loc,
                        f"{spec.name} needs 0 < density - epsilon and density + epsilon < 1; "
                        f"density {shown} with epsilon {emax:g} breaks that",
                    )


def _reject_unsupported(recipe: Recipe, spec: MethodSpec) -> None:
    if recipe.tokenizer is not None:
        raise RecipeError("tokenizer", "the tokenizer block is not supported yet")
    if recipe.tokenizer_source not in (None, "base"):
        raise RecipeError(
            "tokenizer_source",
            f"tokenizer_source {recipe.tokenizer_source!r} is not supported yet; use 'base'",
        )
    if recipe.chat_template is not None:
        raise RecipeError("chat_template", "chat_template is not supported yet")
    refs = [("base_model", recipe.base_model)] + [(f"{m.loc}.model", m.ref) for m in recipe.models]
    for loc, ref in refs:
        if ref is not None and ref.lora is not None:
            raise RecipeError(loc, f"LoRA adapters ({ref}) are not supported yet")
