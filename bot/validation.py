"""The answer of ``POST /api/validate``: a header-only plan as plain JSON, and recipe errors.

    summary(plan)   # {"ok": True, "method", "formula", "parameters", "models",
                    #  "output_bytes", "parameter_count", "warnings"}
    error_item(loc, msg, line)  # {"loc", "msg", "line"}; an answer with errors is
                    # {"ok": False, "errors": [...]}

The Space's local fallback (``spaces_app/preflight.py``) builds the same shape; a test
keeps the two in step.
"""

from __future__ import annotations

from merge_engine.plan import Plan
from merge_engine.recipe import Recipe
from merge_engine.summary import fmt, formula, model_rows


def summary(plan: Plan) -> dict:
    """A plan as JSON: method, formula, models (revision, weight, license, bytes), warnings."""
    models = []
    for row, source in zip(model_rows(plan), plan.sources, strict=True):
        models.append(
            {
                "role": row.role,
                "name": row.name,
                "revision": row.revision,
                "weight": row.weight,
                "others": row.others,
                "license": source.card_data.get("license"),
                "bytes": sum(t.end - t.begin for t in source.tensors.values()),
            }
        )
    warnings = list(plan.warnings)
    licenses = {m["license"] or "unknown" for m in models}
    if len(licenses) > 1:
        named = ", ".join(f"{m['name']}: {m['license'] or 'unknown'}" for m in models)
        warnings.append(f"the sources have different licenses ({named}); check each before use")
    return {
        "ok": True,
        "method": plan.recipe.merge_method,
        "formula": formula(plan),
        "parameters": {k: fmt(v) for k, v in plan.recipe.parameters.items()},
        "models": models,
        "output_bytes": plan.output_bytes,
        "parameter_count": plan.parameter_count,
        "warnings": warnings,
    }


def error_item(loc: str, msg: str, line: int | None = None) -> dict:
    """One recipe error: its YAML path (``""``: the recipe as a whole), message and line."""
    return {"loc": loc, "msg": msg, "line": line}


def line_of(recipe: Recipe, loc: str) -> int | None:
    """The 1-based line of YAML path ``loc`` (or of its nearest enclosing path), if known."""
    where = recipe.where(loc) if loc else ""
    if where.endswith(")") and "(line " in where:
        return int(where.rsplit("(line ", 1)[1][:-1])
    return None
