"""A merge recipe (mergekit's YAML), parsed and validated.

``parse_recipe(text)`` returns a :class:`Recipe` or raises ``RecipeError`` whose ``loc``
is the YAML path of the mistake (``models[1].parameters.weight``, ``merge_method``, or
"" for the document itself). When the path is in the text, the error also carries
``line`` (1-based) and its message reads ``"models[1].parameters.weight (line 9): ..."``.

Parameter values are kept as written (no defaults filled in); ``Recipe.model_param`` and
``Recipe.global_param`` resolve them for one tensor: per-model value, then the global
value of the same name, then the method's default. With ``slices:`` (mergekit's order) a
source's own value comes first, then its slice's ``parameters``, then the top-level ones.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
from merge_engine.tokenizer_block import TokenizerBlock, parse_tokenizer_block

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
SLICE_KEYS = ("sources", "base_model", "parameters")
SOURCE_KEYS = ("model", "layer_range", "parameters")
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
class SliceSource:
    """One source of an output slice: a model and the layers ``[start, end)`` it gives."""

    model: InputModel
    """The model with this source's own parameters; its loc is ``slices[i].sources[j]``."""
    layer_range: tuple[int, int]

    @property
    def length(self) -> int:
        return self.layer_range[1] - self.layer_range[0]


@dataclass(frozen=True)
class OutputSlice:
    """``slices[i]``: output layers made from the same number of layers of each source."""

    sources: tuple[SliceSource, ...]
    base_model: ModelRef | None
    """The slice's own ``base_model`` (None: the recipe's)."""
    parameters: Mapping[str, ParamValue] = field(hash=False)
    loc: str

    @property
    def length(self) -> int:
        """Output layers this slice makes."""
        return self.sources[0].length


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``modules`` is kept as parsed from YAML. ``slices`` are parsed
    (:class:`OutputSlice`); a single-part ``modules: {default: ...}`` fills ``models`` or
    ``slices`` and :attr:`module_parameters`."""

    merge_method: str
    models: tuple[InputModel, ...]
    base_model: ModelRef | None
    parameters: Mapping[str, ParamValue] = field(hash=False)
    dtype: str | None
    out_dtype: str | None
    tokenizer_source: str | None
    tokenizer: TokenizerBlock | None
    chat_template: str | None
    slices: tuple[OutputSlice, ...] | None = field(hash=False)
    modules: Mapping | None = field(hash=False)
    name: str | None
    text: str
    method: MethodSpec | None = field(default=None, compare=False, repr=False)
    """The method's spec; looked up by name when None."""
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False, hash=False)
    """The line of each YAML path in :attr:`text` (for errors found after parsing)."""
    module_parameters: Mapping[str, ParamValue] = field(default_factory=dict, hash=False)
    """The module's ``parameters`` (``modules.<name>.parameters``): looked up after a
    slice's parameters and before the top-level ones, as in mergekit."""
    part: str | None = None
    """In :attr:`parts`: the module this recipe merges (``text_decoder``, ...)."""
    parts: tuple[Recipe, ...] = field(default=(), hash=False)
    """Multi-part ``modules``: one recipe per module, each with its own models or slices
    and parameters (see :func:`merge_engine.plan.build_plan`); empty otherwise."""
    models_loc: str = "models"
    """Where the models (or slices) are in the YAML: ``models``/``slices``, under
    ``modules.<name>.``, or ``modules`` for a multi-part recipe."""

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
        the recipe names a ``base_model``, at the top level or in a slice)?"""
        named = self.base_model is not None or any(
            s.base_model is not None for s in self.slices or ())
        return self.spec.uses_base(named)

    @property
    def vocab_source(self) -> str | None:
        """Where the output vocabulary comes from: ``tokenizer.source`` or
        ``tokenizer_source`` (``base``, ``union``, a model), None when neither is given."""
        return self.tokenizer.source if self.tokenizer is not None else self.tokenizer_source

    def slice_base(self, out_slice: OutputSlice) -> ModelRef | None:
        """The base model of one slice: its own ``base_model``, else the recipe's."""
        return out_slice.base_model or self.base_model

    def is_base(self, model: InputModel, out_slice: OutputSlice | None = None) -> bool:
        """True when ``model`` is the recipe's ``base_model`` (or ``out_slice``'s base)."""
        base = self.slice_base(out_slice) if out_slice is not None else self.base_model
        return base is not None and ref_key(model.ref) == ref_key(base)

    def slice_inputs(self, out_slice: OutputSlice) -> tuple[SliceSource, ...]:
        """The sources of one slice in merge order: the base first when the method has a
        base role, then the others in recipe order."""
        if not self.has_base_role:
            return out_slice.sources
        base = [s for s in out_slice.sources if self.is_base(s.model, out_slice)]
        return (*base, *(s for s in out_slice.sources if s not in base))

    def inputs(self) -> tuple[InputModel, ...]:
        """Every model the merge reads, each once.

        With a base role (:attr:`has_base_role`): the base first (its ``models`` entry if listed,
        else an entry with loc ``base_model`` and no parameters), then the others in
        recipe order. With a method without a base role, a ``base_model`` is just one
        more input (mergekit adds it too): recipe order, an unlisted base last.

        With ``slices``: every source model once, in the order of
        :meth:`slice_inputs` over the slices (so the first slice's base, or its first
        source, comes first); each with the loc of its first appearance and, for the
        summary and the card, the per-model parameters it has there (its own over its
        slice's). The merge itself reads each slice's values (:meth:`model_param`). A
        ``base_model`` that no slice lists is not read (mergekit does not add it).
        """
        if self.slices is not None:
            seen: dict[tuple, InputModel] = {}
            for out_slice in self.slices:
                for source in self.slice_inputs(out_slice):
                    key = ref_key(source.model.ref)
                    if key in seen:
                        continue
                    m = source.model
                    inherited = {k: v for k, v in out_slice.parameters.items()
                                 if k in self.spec.model_params and k not in m.parameters}
                    params = MappingProxyType({**inherited, **m.parameters}) if inherited \
                        else m.parameters
                    seen[key] = InputModel(m.ref, params, m.loc)
            return tuple(seen.values())
        if self.base_model is None:
            return self.models
        listed = next((m for m in self.models if self.is_base(m)), None)
        base = listed or InputModel(self.base_model, _EMPTY, "base_model")
        if self.has_base_role:
            return (base, *(m for m in self.models if m is not listed))
        return self.models if listed else (*self.models, base)

    def model_param(self, model: InputModel, name: str, tensor_name: str, t: float,
                    out_slice: OutputSlice | None = None):
        """Per-model parameter ``name`` of ``model`` for one tensor at gradient ``t``.

        Per-model value, else (with ``out_slice``) the slice's value, else the global
        value, else the method's default. The base's own values are ignored by methods
        with a base; a required parameter left unset there gives None. RecipeError when a
        required parameter has no value for this tensor (e.g. a filter list that matches
        nothing and no global fallback).
        """
        spec = self.spec
        if name not in spec.model_params:
            raise KeyError(f"{name!r} is not a per-model parameter of {spec.name}")
        base_role = self.has_base_role and self.is_base(model, out_slice)
        blocks = [] if base_role else [model.parameters]
        if out_slice is not None:
            blocks.append(out_slice.parameters)
        blocks += [self.module_parameters, self.parameters]
        for block in blocks:
            if name in block:
                value = evaluate(block[name], tensor_name, t)
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

    def global_param(self, name: str, tensor_name: str, t: float,
                     out_slice: OutputSlice | None = None):
        """Global parameter ``name`` for one tensor at gradient ``t`` (the slice's value
        first, with ``out_slice``), else its default."""
        spec = self.spec
        if name not in spec.global_params and name not in spec.model_params:
            raise KeyError(f"{name!r} is not a parameter of {spec.name}")
        blocks = [out_slice.parameters] if out_slice is not None else []
        for block in (*blocks, self.module_parameters, self.parameters):
            if name in block:
                value = evaluate(block[name], tensor_name, t)
                if value is not None:
                    return value
        default = spec.global_params.get(name)
        if default is REQUIRED:
            raise RecipeError(
                f"parameters.{name}", f"no value for tensor {tensor_name!r}: no filter matches it"
            )
        return default

    def where(self, loc: str) -> str:
        """``loc`` with its recipe line when known: ``slices[1].sources[0] (line 9)``."""
        line = _line_of(loc, self.lines)
        return f"{loc} (line {line})" if line is not None else loc


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
        return _build(doc, text, lines)
    except RecipeError as e:
        raise _with_line(e, lines) from None


# --- YAML with line numbers ---------------------------------------------------------


def _located(loc: str, msg: str, line: int | None) -> RecipeError:
    err = RecipeError(loc, msg)
    err.line = line
    if line is not None:
        err.args = (f"{loc} (line {line}): {msg}" if loc else f"line {line}: {msg}",)
    return err


def _line_of(loc: str, lines: Mapping[str, int]) -> int | None:
    """The line of ``loc``, else of its nearest enclosing path that is in the text."""
    path = loc
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def _with_line(err: RecipeError, lines: dict[str, int]) -> RecipeError:
    if getattr(err, "line", None) is not None or not err.loc:
        return err
    line = _line_of(err.loc, lines)
    return _located(err.loc, err.msg, line) if line is not None else err


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


def _build(doc: object, text: str, lines: Mapping[str, int] = _EMPTY) -> Recipe:
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
    modules = doc.get("modules")
    if modules and [str(k) for k in modules] != ["default"]:
        return _multi_part(doc, text, lines, spec, modules)
    where, raw_models, slices, module_params = "", doc.get("models"), doc.get("slices"), _EMPTY
    if modules:
        where, raw_models, slices, module_params = _module_body(modules["default"],
                                                                "modules.default")
    recipe = _assemble(doc, text, lines, spec, where, raw_models, slices, module_params)
    _check_tokenizer_settings(recipe)
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
        _input_model(raw, f"{where}models[{i}]") for i, raw in enumerate(raw_models or ())
    )
    _check_duplicates(models)
    tokenizer, modules = doc.get("tokenizer"), doc.get("modules")
    recipe = Recipe(
        merge_method=spec.name,
        models=models,
        base_model=base,
        parameters=_params_block(doc.get("parameters"), "parameters"),
        dtype=_dtype(doc.get("dtype"), "dtype"),
        out_dtype=_dtype(doc.get("out_dtype"), "out_dtype"),
        tokenizer_source=_tokenizer_source(doc.get("tokenizer_source")),
        tokenizer=parse_tokenizer_block(tokenizer) if tokenizer is not None else None,
        chat_template=_opt_str(doc.get("chat_template"), "chat_template"),
        slices=_slices(slices, f"{where}slices") if slices else None,
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
    if recipe.slices is not None:
        _validate_slices(recipe, spec)
    else:
        _validate_params(recipe, spec)
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
    recipe = replace(parts[0], models=tuple(seen.values()), slices=None, part=None,
                     module_parameters=_EMPTY, parts=tuple(parts), models_loc="modules")
    _check_tokenizer_settings(recipe)
    return recipe


MODULE_KEYS = ("models", "slices", "parameters")


def _module_body(body: object, loc: str) -> tuple[str, object, object,
                                                 Mapping[str, ParamValue]]:
    """One module of ``modules:``: (YAML prefix, models, slices, module parameters)."""
    if not isinstance(body, dict):
        raise RecipeError(loc, f"expected a mapping with models or slices, got {_kind(body)}")
    for key in body:
        if key not in MODULE_KEYS:
            raise unknown_key(f"{loc}.{key}", key, MODULE_KEYS)
    given = [k for k in ("models", "slices") if body.get(k)]
    for key in given:
        if not isinstance(body[key], list):
            raise RecipeError(f"{loc}.{key}", f"expected a list, got {_kind(body[key])}")
    if len(given) != 1:
        raise RecipeError(loc if not given else f"{loc}.{given[1]}",
                          "give exactly one non-empty list: models or slices")
    params = _params_block(body.get("parameters"), f"{loc}.parameters")
    return f"{loc}.", body.get("models"), body.get("slices"), params


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


def _slices(raw: list, loc: str = "slices") -> tuple[OutputSlice, ...]:
    return tuple(_output_slice(item, f"{loc}[{i}]") for i, item in enumerate(raw))


def _output_slice(raw: object, loc: str) -> OutputSlice:
    if not isinstance(raw, dict):
        raise RecipeError(loc, f"expected a mapping with 'sources' (a list of models with "
                               f"layer_range), got {_kind(raw)}")
    for key in raw:
        if key not in SLICE_KEYS:
            raise unknown_key(f"{loc}.{key}", key, SLICE_KEYS)
    items = raw.get("sources")
    if not isinstance(items, list) or not items:
        what = "missing" if items is None else f"got {_kind(items)}"
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
    return OutputSlice(sources, base, _params_block(raw.get("parameters"), f"{loc}.parameters"),
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
    model = InputModel(ref, _params_block(raw.get("parameters"), f"{loc}.parameters"), loc)
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


def ref_key(ref: ModelRef) -> tuple:
    """What makes two references the same model (a local path resolved)."""
    path = os.path.realpath(ref.path) if ref.is_local else ref.path
    return (path, ref.revision, ref_key(ref.lora) if ref.lora else None)


def _check_duplicates(models: tuple[InputModel, ...]) -> None:
    seen: dict[tuple, str] = {}
    for m in models:
        key = ref_key(m.ref)
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
    plural = "s" * (wanted != "exactly 1")
    raise RecipeError(recipe.models_loc, f"{spec.name} merges {wanted} model{plural}"
                                         f"{besides}; this recipe gives {count}")


def _check_global_block(params: Mapping[str, ParamValue], prefix: str,
                        spec: MethodSpec) -> None:
    """A block that may hold global and per-model parameters (top level, a slice's)."""
    known = (*spec.global_params, *spec.model_params)
    for name, value in params.items():
        if name not in known:
            raise unknown_key(f"{prefix}.{name}", name, known)
        default = spec.global_params.get(name, spec.model_params.get(name))
        _check_type(value, default, f"{prefix}.{name}")


def _check_model_block(m: InputModel, spec: MethodSpec, where: str) -> None:
    """A model's own parameters: per-model names only."""
    for name, value in m.parameters.items():
        loc = f"{m.loc}.parameters.{name}"
        if name in spec.model_params:
            _check_type(value, spec.model_params[name], loc)
        elif name in spec.global_params:
            raise RecipeError(
                loc, f"{name!r} is a global parameter of {spec.name}; move it to {where}")
        else:
            raise unknown_key(loc, name, spec.model_params)


def _validate_params(recipe: Recipe, spec: MethodSpec) -> None:
    if spec.needs_base and recipe.base_model is None:
        raise RecipeError("base_model", f"merge method {spec.name!r} needs a base_model")
    _validate_model_count(recipe, spec)
    _check_global_block(recipe.parameters, "parameters", spec)
    _check_global_block(recipe.module_parameters, "modules.default.parameters", spec)
    for name, default in spec.global_params.items():
        if (default is REQUIRED and name not in recipe.parameters
                and name not in recipe.module_parameters):
            raise RecipeError(f"parameters.{name}", f"missing required parameter {name!r}")
    for m in recipe.models:
        _check_model_block(m, spec, "the top-level parameters")
    for m in recipe.inputs():
        if recipe.has_base_role and recipe.is_base(m):
            continue
        for name, default in spec.model_params.items():
            if default is REQUIRED and not any(
                    name in block for block in (m.parameters, recipe.module_parameters,
                                                recipe.parameters)):
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


def _validate_slices(recipe: Recipe, spec: MethodSpec) -> None:
    """mergekit's rules for ``slices``: per slice, the base (its own ``base_model`` or the
    recipe's) must be one of its sources when the method uses one, and the number of other
    sources must suit the method (passthrough: exactly one source per slice)."""
    assert recipe.slices is not None
    named = [recipe.slice_base(s) is not None for s in recipe.slices]
    for out_slice, has_base in zip(recipe.slices, named, strict=True):
        if spec.needs_base and not has_base:
            raise RecipeError(
                f"{out_slice.loc}.base_model",
                f"merge method {spec.name!r} needs a base_model: give one at the top level "
                "or in this slice")
        if recipe.has_base_role and not has_base:
            raise RecipeError(
                f"{out_slice.loc}.base_model",
                f"another slice gives {spec.name} a base_model and this one has none; give "
                "every slice one (or one at the top level)")
        if recipe.has_base_role and not any(recipe.is_base(s.model, out_slice)
                                            for s in out_slice.sources):
            raise RecipeError(
                f"{out_slice.loc}.sources",
                f"the base model {recipe.slice_base(out_slice)} is not among this slice's "
                "sources; add it with the layer_range it gives")
        count = len(out_slice.sources) - recipe.has_base_role
        low, high = spec.min_donors, spec.max_donors
        if count < low or (high is not None and count > high):
            wanted = (f"exactly {low}" if high == low else f"at least {low}" if high is None
                      else f"between {low} and {high}")
            besides = " besides its base" if recipe.has_base_role else ""
            raise RecipeError(
                f"{out_slice.loc}.sources",
                f"{spec.name} merges {wanted} source{'s' * (wanted != 'exactly 1')} per slice"
                f"{besides}; this slice gives {count}")
    _check_global_block(recipe.parameters, "parameters", spec)
    _check_global_block(recipe.module_parameters, "modules.default.parameters", spec)
    for out_slice in recipe.slices:
        _check_global_block(out_slice.parameters, f"{out_slice.loc}.parameters", spec)
        for source in out_slice.sources:
            _check_model_block(source.model, spec, "the slice's or the top-level parameters")
    for name, default in spec.global_params.items():
        if default is not REQUIRED or name in recipe.parameters or name in recipe.module_parameters:
            continue
        for out_slice in recipe.slices:
            if name not in out_slice.parameters:
                raise RecipeError(f"{out_slice.loc}.parameters.{name}",
                                  f"missing required parameter {name!r}")
    for m, chain in _param_chains(recipe):
        for name, default in spec.model_params.items():
            if default is REQUIRED and not any(name in params for params, _ in chain):
                raise RecipeError(f"{m.loc}.parameters.{name}",
                                  f"missing required parameter {name!r}")
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


Blocks = list[tuple[Mapping[str, ParamValue], str]]
"""Parameter blocks in lookup order, each with its YAML path (``models[0].parameters``)."""


def _candidates(blocks: Blocks, spec: MethodSpec, name: str, own_loc: str):
    """(value, loc) pairs that can give ``name`` for one model for some tensor: each block
    in lookup order while the earlier ones may leave it unset, then the default."""
    out = []
    for params, prefix in blocks:
        value = params.get(name)
        if value is not None:
            out.append((value, f"{prefix}.{name}"))
            if covers_all(value):
                return out
    default = spec.model_params.get(name)
    if _is_num(default):
        out.append((default, f"{own_loc}.{name}"))
    return out


def _param_chains(recipe: Recipe) -> list[tuple[InputModel, Blocks]]:
    """Every (non-base) model input with the parameter blocks its values come from."""
    chains = []
    glob = [(recipe.module_parameters, "modules.default.parameters"),
            (recipe.parameters, "parameters")]
    if recipe.slices is None:
        for m in recipe.inputs():
            if not (recipe.has_base_role and recipe.is_base(m)):
                chains.append((m, [(m.parameters, f"{m.loc}.parameters"), *glob]))
        return chains
    for out_slice in recipe.slices:
        for source in out_slice.sources:
            m = source.model
            if not (recipe.has_base_role and recipe.is_base(m, out_slice)):
                chains.append((m, [(m.parameters, f"{m.loc}.parameters"),
                                   (out_slice.parameters, f"{out_slice.loc}.parameters"), *glob]))
    return chains


def _check_ranges(recipe: Recipe, spec: MethodSpec) -> None:
    blocks = [("parameters", recipe.parameters),
              ("modules.default.parameters", recipe.module_parameters)]
    blocks += [(f"{m.loc}.parameters", m.parameters) for m in recipe.models]
    for out_slice in recipe.slices or ():
        blocks.append((f"{out_slice.loc}.parameters", out_slice.parameters))
        blocks += [(f"{s.model.loc}.parameters", s.model.parameters) for s in out_slice.sources]
    for prefix, params in blocks:
        if "density" in params:
            for leaf, loc in iter_leaves(params["density"], f"{prefix}.density"):
                if _is_num(leaf) and not 0 <= leaf <= 1:
                    raise RecipeError(loc, f"density must be between 0 and 1, got {leaf}")
    if spec.name not in _DELLA:
        return
    for m, chain in _param_chains(recipe):
        own = f"{m.loc}.parameters"
        eps = [hi for v, _ in _candidates(chain, spec, "epsilon", own) for _, hi in _numbers(v)]
        emax = max(eps, default=0.0)
        for value, loc in _candidates(chain, spec, "density", own):
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


def _check_tokenizer_settings(recipe: Recipe) -> None:
    """Models named by the tokenizer settings are the recipe's; the chat template is usable."""
    loc = "tokenizer.source" if recipe.tokenizer is not None else "tokenizer_source"
    _check_recipe_model(recipe, recipe.vocab_source, loc)
    for rule in recipe.tokenizer.tokens if recipe.tokenizer is not None else ():
        if rule.source is not None and rule.source.model is not None:
            _check_recipe_model(recipe, rule.source.model, rule.source.loc)
    if recipe.chat_template is not None:
        from .vocab import check_chat_template

        problem = check_chat_template(recipe.chat_template)
        if problem:
            raise RecipeError("chat_template", problem)


def _check_recipe_model(recipe: Recipe, source: str | None, loc: str) -> None:
    """``source`` (from the tokenizer settings) must be one of the recipe's models."""
    if source in (None, "base", "union"):
        return
    want = ref_key(parse_ref(source, loc))
    keys = [ref_key(m.ref) for m in recipe.inputs()]
    if want not in keys and not (want[2] is None and want[:2] in [k[:2] for k in keys]):
        raise RecipeError(loc, f"{source!r} is not one of the recipe's models; name a model "
                               "the recipe merges")
