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

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from merge_engine import methods
from merge_engine.errors import RecipeError
from merge_engine.methods.registry import REQUIRED, MethodSpec
from merge_engine.recipe.locations import line_of
from merge_engine.recipe.moe import MoeSpec
from merge_engine.recipe.params import (
    ParamValue,
    evaluate,
)
from merge_engine.recipe.refs import ModelRef
from merge_engine.recipe.tokenizer_block import TokenizerBlock

EMPTY: Mapping[str, ParamValue] = MappingProxyType({})


@dataclass(frozen=True)
class InputModel:
    """One model the merge reads, with its per-model parameters as written."""

    ref: ModelRef
    parameters: Mapping[str, ParamValue] = field(hash=False)
    loc: str

    @property
    def ref_loc(self) -> str:
        """The YAML path of the reference itself: ``base_model``, ``models[1].model``,
        ``slices[0].sources[1].model`` or, in an MoE recipe, ``experts[2].source_model`` (a
        stage's label may come first: ``stage 'mid' (document 2), base_model``)."""
        if self.loc.endswith(("base_model", ".source_model")):
            return self.loc
        return f"{self.loc}.model"


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
    and parameters (see :func:`merge_engine.plan.build.build_plan`); empty otherwise."""
    models_loc: str = "models"
    """Where the models (or slices) are in the YAML: ``models``/``slices``, under
    ``modules.<name>.``, or ``modules`` for a multi-part recipe."""
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """What was accepted but is worth saying: parameters mergekit defines that the method
    does not use, ignored (see :func:`merge_engine.recipe.checks.drop_ignored`)."""
    moe: MoeSpec | None = field(default=None, hash=False)
    """A mixture-of-experts recipe (mergekit-moe's YAML, :mod:`merge_engine.recipe.moe`):
    :attr:`models` are the base, then each other expert source once; the method is the
    expert copy (``merge_method`` ``moe``). None for a merge recipe."""

    @property
    def spec(self) -> MethodSpec:
        """The merge method's registry entry."""
        if self.method is not None:
            return self.method
        return methods.get_method(self.merge_method)

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
        base = listed or InputModel(self.base_model, EMPTY, "base_model")
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
        line = line_of(loc, self.lines)
        return f"{loc} (line {line})" if line is not None else loc


def ref_key(ref: ModelRef) -> tuple:
    """What makes two references the same model (a local path resolved)."""
    path = os.path.realpath(ref.path) if ref.is_local else ref.path
    return (path, ref.revision, ref_key(ref.lora) if ref.lora else None)
