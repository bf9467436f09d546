"""What a plan will compute, in words people read: the formula and a row per model."""

from __future__ import annotations

from dataclasses import dataclass

from .methods.registry import REQUIRED
from .params import FilterList, Gradient, ParamValue
from .plan import Plan

TASK_ARITHMETIC_FAMILY = {
    "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties",
    "della", "della_linear",
}


@dataclass(frozen=True)
class ModelRow:
    """One input model as the card and ``validate`` show it."""

    role: str
    """"base" or "donor" (every input of a method without a base is a donor)."""
    name: str
    revision: str | None
    weight: str
    others: dict[str, str]
    """Other parameters that differ from the method's defaults, formatted."""
    values: dict[str, object]
    """The same parameters (weight included) as plain YAML/JSON values."""
    model: str = ""
    """The model without its adapter (``name`` is ``model+adapter`` for a LoRA source)."""
    adapter: str | None = None
    """The LoRA adapter (repo id or directory), if any."""
    adapter_revision: str | None = None
    """The commit SHA the adapter was pinned to (None: local, or no adapter)."""


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


def model_rows(plan: Plan) -> list[ModelRow]:
    """A row per input: the base first (if any), with effective per-model parameters."""
    recipe, method = plan.recipe, plan.method
    rows = []
    for i, (model, source) in enumerate(zip(plan.models, plan.sources, strict=True)):
        is_base = plan.has_base and i == 0
        values = {}
        if not is_base:
            for name, default in method.model_params.items():
                value = model.parameters.get(name, recipe.parameters.get(name, default))
                if value is not REQUIRED and (name == "weight" or value != default):
                    values[name] = value
        shown = {k: fmt(v) for k, v in values.items()}
        adapter = source.adapter.name if source.adapter is not None else None
        rows.append(ModelRow("base" if is_base else "donor", source.name, source.revision,
                             shown.pop("weight", ""), shown,
                             {k: plain(v) for k, v in values.items()},
                             source.ref.path, adapter, source.adapter_revision))
    return rows


def formula(plan: Plan) -> str:
    """The merge written out with the real numbers and short model names."""
    method, name = plan.method, plan.recipe.merge_method
    rows = model_rows(plan)
    short = [s.short_name for s in plan.sources]
    if name in TASK_ARITHMETIC_FAMILY:
        terms = [f"{r.weight} * ({n} - base)" for r, n in zip(rows[1:], short[1:], strict=True)]
        lam = plan.recipe.parameters.get("lambda", method.global_params.get("lambda", 1.0))
        if name == "task_arithmetic":
            body = " + ".join(terms)
            if lam != 1.0:
                body = f"{fmt(lam)} * ({body})"
            return f"merged = base + {body}"
        scale = "" if lam == 1.0 else f"{fmt(lam)} * "
        return f"merged = base + {scale}{name}({', '.join(terms)})"
    if name == "linear":
        terms = " + ".join(f"{r.weight} * {n}" for r, n in zip(rows, short, strict=True))
        normalize = plan.recipe.parameters.get("normalize", True)
        if normalize is True:
            return f"merged = ({terms}) / ({' + '.join(r.weight for r in rows)})"
        return f"merged = {terms}"
    return f"merged = {name}({', '.join(short)})"
