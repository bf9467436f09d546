"""A recipe checked against its merge method: model counts, parameter names, kinds and
ranges, required values, mergekit's rules for ``slices``, and the tokenizer settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from merge_engine.errors import RecipeError
from merge_engine.methods import METHODS
from merge_engine.methods.registry import REQUIRED, MethodSpec
from merge_engine.recipe.chat_templates import check_chat_template
from merge_engine.recipe.params import (
    FilterList,
    Gradient,
    ParamValue,
    covers_all,
    iter_leaves,
    unknown_key,
)
from merge_engine.recipe.refs import parse_ref
from merge_engine.recipe.schema import InputModel, Recipe, ref_key

_DELLA = ("della", "della_linear")

OTHER_MERGEKIT_PARAMS = ("embed_slerp",)
"""mergekit parameters that belong to no merge method: ``embed_slerp`` (mergekit merges
embeddings with slerp under ``tokenizer_source``; here the recipe's method merges them)."""
MERGEKIT_PARAMS = frozenset(
    {name for spec in METHODS.values() for name in (*spec.global_params, *spec.model_params)}
    | set(OTHER_MERGEKIT_PARAMS))
"""Every parameter name mergekit defines: each method's (the registry holds mergekit's
names) and :data:`OTHER_MERGEKIT_PARAMS`. One a recipe gives to a method that does not
use it (``weight`` on model_stock, ``normalize`` on sce) is ignored, as by mergekit, with
a warning; any other unknown name is an error (see :func:`drop_ignored`)."""


def drop_ignored(recipe: Recipe, spec: MethodSpec, module_loc: str) -> Recipe:
    """``recipe`` without the parameters mergekit defines but ``spec`` does not take,
    each noted in :attr:`Recipe.warnings` ("parameters.normalize (line 4): ignored: not a
    parameter of sce"), in every block: top level, module (at ``module_loc``), models,
    slices and their sources."""
    used = {*spec.global_params, *spec.model_params}
    found: list[str] = []

    def kept(block: Mapping[str, ParamValue], loc: str) -> Mapping[str, ParamValue]:
        dropped = [n for n in block if n in MERGEKIT_PARAMS and n not in used]
        found.extend(f"{recipe.where(f'{loc}.{n}')}: ignored: not a parameter of {spec.name}"
                     for n in dropped)
        if not dropped:
            return block
        return MappingProxyType({k: v for k, v in block.items() if k not in dropped})

    def model(m: InputModel) -> InputModel:
        return dataclasses.replace(m, parameters=kept(m.parameters, f"{m.loc}.parameters"))

    parameters = kept(recipe.parameters, "parameters")
    module_parameters = kept(recipe.module_parameters, module_loc)
    models = tuple(model(m) for m in recipe.models)
    slices = None if recipe.slices is None else tuple(
        dataclasses.replace(
            s, parameters=kept(s.parameters, f"{s.loc}.parameters"),
            sources=tuple(dataclasses.replace(src, model=model(src.model)) for src in s.sources))
        for s in recipe.slices)
    if not found:
        return recipe
    return dataclasses.replace(recipe, parameters=parameters, module_parameters=module_parameters,
                               models=models, slices=slices,
                               warnings=(*recipe.warnings, *found))


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


def validate_params(recipe: Recipe, spec: MethodSpec) -> None:
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


def validate_slices(recipe: Recipe, spec: MethodSpec) -> None:
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


def check_tokenizer_settings(recipe: Recipe) -> None:
    """Models named by the tokenizer settings are the recipe's; the chat template is usable."""
    loc = "tokenizer.source" if recipe.tokenizer is not None else "tokenizer_source"
    _check_recipe_model(recipe, recipe.vocab_source, loc)
    for rule in recipe.tokenizer.tokens if recipe.tokenizer is not None else ():
        if rule.source is not None and rule.source.model is not None:
            _check_recipe_model(recipe, rule.source.model, rule.source.loc)
    if recipe.chat_template is not None:
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
