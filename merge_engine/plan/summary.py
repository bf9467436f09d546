"""What a plan will compute, in words people read: the formula, a row per model, for a
``slices:`` recipe a row per slice with the parameters of each of its sources and, for a
multi-part ``modules:`` recipe, each module as its own plan (:func:`parts`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from merge_engine.methods.registry import REQUIRED
from merge_engine.plan.architecture import module_of
from merge_engine.plan.build import Plan
from merge_engine.recipe import ref_key
from merge_engine.recipe.params import FilterList, Gradient, ParamValue

TASK_ARITHMETIC_FAMILY = {
    "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties",
    "della", "della_linear",
}
Blocks = Sequence[Mapping[str, ParamValue]]
"""Parameter blocks in lookup order (a model's own, its slice's, the recipe-wide ones)."""


@dataclass(frozen=True)
class ModelRow:
    """One input model as the card and ``validate`` show it."""

    role: str
    """"base" or "donor" (every input of a method without a base is a donor)."""
    name: str
    revision: str | None
    weight: str
    """With slices, each distinct value over the slices that merge it: ``0.3 / 0.7``."""
    others: dict[str, str]
    """Other parameters that differ from the method's defaults, formatted (likewise)."""
    values: dict[str, object]
    """The same parameters (weight included) as plain YAML/JSON values; with slices, only
    when they are the same in every slice (else empty: see :func:`slice_rows`)."""
    model: str = ""
    """The model without its adapter (``name`` is ``model+adapter`` for a LoRA source)."""
    adapter: str | None = None
    """The LoRA adapter (repo id or directory), if any."""
    adapter_revision: str | None = None
    """The commit SHA the adapter was pinned to (None: local, or no adapter)."""
    slices: tuple[int, ...] = ()
    """The slices that use this model (none for a recipe without slices)."""
    modules: tuple[str, ...] = ()
    """The modules that merge this model (none for a single-part recipe)."""


@dataclass(frozen=True)
class SliceSourceRow:
    """One source of one output slice."""

    source: int
    """Index into :attr:`Plan.sources`."""
    role: str
    layer_range: tuple[int, int]
    params: dict[str, ParamValue]
    """Its per-model parameters there (own, else the slice's, else the recipe-wide ones)
    that differ from the method's defaults, and the weight; empty for the slice's base."""


@dataclass(frozen=True)
class SliceRow:
    """One output slice: the output layers ``[start, end)`` it makes, its sources in merge
    order (base first) and its own ``parameters`` block as written."""

    index: int
    layers: tuple[int, int]
    sources: tuple[SliceSourceRow, ...]
    parameters: Mapping[str, ParamValue]


@dataclass(frozen=True)
class Part:
    """One module of a multi-part recipe (``text_decoder``, ``vision_tower``, ...)."""

    name: str
    plan: Plan
    """The module seen as a plan of its own, for the summary only: the module's recipe,
    its inputs and their sources, and the output tensors of this module (whose input
    indices stay the whole plan's)."""
    sources: tuple[int, ...]
    """For each of :attr:`plan`'s sources, its index in the whole plan's sources."""


def parts(plan: Plan) -> list[Part]:
    """The modules of a multi-part recipe in recipe order; empty for a single-part one."""
    index = {ref_key(m.ref): i for i, m in enumerate(plan.models)}
    found = []
    for part in plan.recipe.parts:
        models = part.inputs()
        idx = tuple(index[ref_key(m.ref)] for m in models)
        view = dataclasses.replace(
            plan, recipe=part, models=models, sources=tuple(plan.sources[i] for i in idx),
            tasks=[t for t in plan.tasks if module_of(t.out.name) == part.part])
        found.append(Part(part.part, view, idx))
    return found


def fmt(value: ParamValue | object) -> str:
    """A parameter value as written: ``0.3``, ``gradient[0.1, 0.5]``, ``filtered(...)``."""
    if isinstance(value, Gradient):
        return "gradient[" + ", ".join(fmt(v) for v in value.values) + "]"
    if isinstance(value, FilterList):
        rules = "; ".join(f"{r.filter or '*'}: {fmt(r.value)}" for r in value.rules)
        return f"filtered({rules})"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value) if value != int(value) else f"{value:.1f}"
    return str(value)


def plain(value: ParamValue | object) -> object:
    """A parameter value as plain data: numbers, lists, ``{filter, value}`` mappings."""
    if isinstance(value, Gradient):
        return list(value.values)
    if isinstance(value, FilterList):
        return [{"filter": r.filter, "value": plain(r.value)} for r in value.rules]
    return value


def recipe_parameters(plan: Plan) -> dict[str, ParamValue]:
    """The recipe-wide parameters as written: ``modules.default.parameters`` over the
    top-level ones, the order they are looked up in."""
    return {**plan.recipe.parameters, **plan.recipe.module_parameters}


def _effective(plan: Plan, blocks: Blocks) -> dict[str, ParamValue]:
    """Per-model parameters, each from the first block that gives it: the weight, and
    those that differ from the method's defaults."""
    values = {}
    for name, default in plan.method.model_params.items():
        value = next((b[name] for b in blocks if name in b), default)
        if value is not REQUIRED and (name == "weight" or value != default):
            values[name] = value
    return values


def _shown(plan: Plan, uses: list[dict[str, ParamValue]]) -> tuple[str, dict[str, str]]:
    """(weight, other parameters) of one model over its uses, formatted: each distinct
    value in order (a use that leaves a parameter at its default shows the default)."""
    defaults = plan.method.model_params
    shown = {}
    for name in dict.fromkeys(n for use in uses for n in use):
        texts = [fmt(use.get(name, defaults[name])) for use in uses
                 if name in use or defaults[name] is not REQUIRED]
        shown[name] = " / ".join(dict.fromkeys(texts))
    return shown.pop("weight", ""), shown


def slice_rows(plan: Plan) -> list[SliceRow]:
    """A row per output slice (none for a recipe without ``slices``)."""
    recipe = plan.recipe
    index = {ref_key(m.ref): i for i, m in enumerate(plan.models)}
    rows: list[SliceRow] = []
    start = 0
    for n, out_slice in enumerate(recipe.slices or ()):
        sources = []
        for src in recipe.slice_inputs(out_slice):
            is_base = recipe.has_base_role and recipe.is_base(src.model, out_slice)
            blocks = [src.model.parameters, out_slice.parameters,
                      recipe.module_parameters, recipe.parameters]
            sources.append(SliceSourceRow(index[ref_key(src.model.ref)],
                                          "base" if is_base else "donor", src.layer_range,
                                          {} if is_base else _effective(plan, blocks)))
        rows.append(SliceRow(n, (start, start + out_slice.length), tuple(sources),
                             out_slice.parameters))
        start += out_slice.length
    return rows


def _input_uses(plan: Plan) -> list[tuple[int, dict[str, ParamValue] | None, int | None]]:
    """Every use of an input: (source index, its effective per-model parameters there or
    None where it is the base, its slice or None)."""
    recipe = plan.recipe
    if recipe.slices is None:
        wide = [recipe.module_parameters, recipe.parameters]
        return [(i, None if plan.has_base and i == 0 else _effective(plan, [m.parameters, *wide]),
                 None) for i, m in enumerate(plan.models)]
    return [(src.source, src.params if src.role == "donor" else None, row.index)
            for row in slice_rows(plan) for src in row.sources]


def model_rows(plan: Plan) -> list[ModelRow]:
    """A row per input: the base first (if any), with its effective per-model parameters
    (with slices, over every slice that merges it; with modules, over every module)."""
    count = len(plan.sources)
    uses: list[list[dict[str, ParamValue]]] = [[] for _ in range(count)]
    used_in: list[list[int]] = [[] for _ in range(count)]
    modules: list[list[str]] = [[] for _ in range(count)]
    if plan.recipe.parts:
        found = [(part.sources[k], params, None, part.name) for part in parts(plan)
                 for k, params, _ in _input_uses(part.plan)]
    else:
        found = [(i, params, out_slice, None) for i, params, out_slice in _input_uses(plan)]
    for i, params, out_slice, module in found:
        if params is not None:
            uses[i].append(params)
        if out_slice is not None:
            used_in[i].append(out_slice)
        if module is not None:
            modules[i].append(module)
    rows = []
    for i, source in enumerate(plan.sources):
        mine = uses[i]
        weight, others = _shown(plan, mine)
        same = bool(mine) and all(use == mine[0] for use in mine)
        adapter = source.adapter.name if source.adapter is not None else None
        base = (plan.has_base or plan.recipe.moe is not None) and i == 0
        rows.append(ModelRow("base" if base else "donor", source.name,
                             source.revision, weight, others,
                             {k: plain(v) for k, v in mine[0].items()} if same else {},
                             source.ref.path, adapter, source.adapter_revision,
                             tuple(dict.fromkeys(used_in[i])), tuple(dict.fromkeys(modules[i]))))
    return rows


def _global(plan: Plan, blocks: Blocks, name: str) -> object:
    """A global parameter as written in the first block that gives it, else its default."""
    return next((b[name] for b in blocks if name in b), plan.method.global_params.get(name))


def _weighted(plan: Plan, terms: list[tuple[str, str]], blocks: Blocks) -> str:
    """The formula of a linear or task-arithmetic-family merge of (weight, name) terms."""
    name = plan.recipe.merge_method
    if name == "linear":
        body = " + ".join(f"{w} * {n}" for w, n in terms)
        if _global(plan, blocks, "normalize") is True:
            return f"merged = ({body}) / ({' + '.join(w for w, _ in terms)})"
        return f"merged = {body}"
    lam = _global(plan, blocks, "lambda")
    deltas = [f"{w} * ({n} - base)" for w, n in terms]
    if name == "task_arithmetic":
        body = " + ".join(deltas)
        return f"merged = base + {body}" if lam == 1.0 else f"merged = base + {fmt(lam)} * ({body})"
    scale = "" if lam == 1.0 else f"{fmt(lam)} * "
    return f"merged = base + {scale}{name}({', '.join(deltas)})"


def formula(plan: Plan) -> str:
    """The merge written out with the real numbers and short model names; with slices
    whose numbers differ, one line per slice (``slice 1: merged = ...``); with modules,
    each module's lines (``vision_tower: merged = ...``)."""
    recipe, name = plan.recipe, plan.recipe.merge_method
    if recipe.parts:
        return "\n".join(f"{part.name}: {line}" for part in parts(plan)
                         for line in formula(part.plan).splitlines())
    short = [s.short_name for s in plan.sources]
    moe = moe_summary(plan)
    if moe is not None:
        names = {ref_key(s.ref): s.short_name for s in plan.sources}
        experts = ", ".join(names[ref_key(e.ref)] for e in recipe.moe.experts)
        shared = "".join(f" + shared {names[ref_key(e.ref)]}" for e in recipe.moe.shared_experts)
        return (f"merged = {moe['architecture']}({short[0]} attention; experts {experts}"
                f"{shared}; {moe['experts_per_token']} per token, gate_mode {moe['gate_mode']})")
    if name not in TASK_ARITHMETIC_FAMILY and name != "linear":
        return f"merged = {name}({', '.join(short)})"
    wide = [recipe.module_parameters, recipe.parameters]
    if recipe.slices is None:
        terms = [(r.weight, n) for r, n in zip(model_rows(plan), short, strict=True)
                 if r.role == "donor"]
        return _weighted(plan, terms, wide)
    lines = []
    for row, out_slice in zip(slice_rows(plan), recipe.slices, strict=True):
        terms = [(fmt(s.params.get("weight", "")), short[s.source]) for s in row.sources
                 if s.role == "donor"]
        lines.append(_weighted(plan, terms, [out_slice.parameters, *wide]))
    if len(set(lines)) == 1:
        return lines[0]
    return "\n".join(f"slice {i}: {line}" for i, line in enumerate(lines))


def moe_summary(plan: Plan) -> dict | None:
    """An MoE recipe's routing and experts as plain JSON (None for a merge recipe): the
    architecture, ``gate_mode``, ``experts_per_token`` and, per expert (then the shared
    one), its model, pinned revision, prompts and scales."""
    spec = plan.recipe.moe
    if spec is None:
        return None
    sources = {ref_key(s.ref): s for s in plan.sources}

    def entry(expert) -> dict:
        source = sources[ref_key(expert.ref)]
        found = {"model": source.name, "revision": source.revision,
                 "positive_prompts": list(expert.positive_prompts),
                 "negative_prompts": list(expert.negative_prompts)}
        if expert.noise_scale:
            found["noise_scale"] = expert.noise_scale
        if expert.residual_scale != 1.0:
            found["residual_scale"] = expert.residual_scale
        return found

    return {"architecture": getattr(plan, "architecture", spec.architecture),
            "gate_mode": spec.gate_mode, "experts_per_token": spec.experts_per_token,
            "experts": [entry(e) for e in spec.experts],
            "shared_experts": [entry(e) for e in spec.shared_experts]}


def licenses(plan: Plan) -> dict[str, str | None]:
    """The license of every model and LoRA adapter merged (None: unknown)."""
    found: dict[str, str | None] = {}
    for source in plan.sources:
        found[source.ref.path] = source.card_data.get("license")
        if source.adapter is not None:
            found[source.adapter.name] = source.adapter.card_data.get("license")
    return found


def license_note(found: Mapping[str, str | None]) -> str:
    """"the sources have different licenses (a: mit, b: unknown); check each before use"."""
    named = ", ".join(f"{n}: {v or 'unknown'}" for n, v in found.items())
    return f"the sources have different licenses ({named}); check each before use"


def license_warning(plan: Plan) -> str | None:
    """:func:`license_note` when the models and adapters do not all have one license."""
    found = licenses(plan)
    return license_note(found) if len({v or "unknown" for v in found.values()}) > 1 else None


def _row_json(row: ModelRow) -> dict:
    """A model row as JSON: role, name, revision, weight, other parameters."""
    return {"role": row.role, "name": row.name, "revision": row.revision,
            "weight": row.weight, "others": row.others}


def plan_json(plan: Plan) -> dict:
    """A plan as plain JSON (the bot's ``POST /api/validate`` answer and the Space's
    check): method, formula, models (revision, weight, license, bytes), output size and
    warnings, a license warning included when the models and adapters disagree; for a
    multi-part recipe, ``modules``: each module's formula, parameters and models."""
    models = []
    for row, source in zip(model_rows(plan), plan.sources, strict=True):
        models.append({
            **_row_json(row),
            "license": source.card_data.get("license"),
            "bytes": sum(t.end - t.begin for t in source.tensors.values()),
        })
    warnings = list(plan.warnings)
    note = license_warning(plan)
    if note:
        warnings.append(note)
    answer = {
        "ok": True,
        "method": plan.recipe.merge_method,
        "formula": formula(plan),
        "parameters": {k: fmt(v) for k, v in plan.recipe.parameters.items()},
        "models": models,
        "output_bytes": plan.output_bytes,
        "parameter_count": plan.parameter_count,
        "warnings": warnings,
    }
    moe = moe_summary(plan)
    if moe is not None:
        answer["moe"] = moe
    if plan.recipe.parts:
        answer["modules"] = [{
            "name": part.name,
            "formula": formula(part.plan),
            "parameters": {k: fmt(v) for k, v in part.plan.recipe.module_parameters.items()},
            "models": [_row_json(row) for row in model_rows(part.plan)],
            "parameter_count": part.plan.parameter_count,
        } for part in parts(plan)]
    return answer
