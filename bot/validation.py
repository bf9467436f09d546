"""The answer of ``POST /api/validate``: a header-only plan as plain JSON, and recipe errors.

    summary(plan)   # {"ok": True, "method", "formula", "parameters", "models",
                    #  "output_bytes", "parameter_count", "warnings"}
    error_item(loc, msg, line)  # {"loc", "msg", "line"}; an answer with errors is
                    # {"ok": False, "errors": [...]}

``summary`` is :func:`merge_engine.plan.summary.plan_json`, which the Space's local fallback
(``spaces_app/preflight.py``) uses too.
"""

from __future__ import annotations

import re

from merge_engine import Recipe
from merge_engine import plan_json as summary

__all__ = ["error_item", "line_of", "source_loc", "summary"]


def error_item(loc: str, msg: str, line: int | None = None) -> dict:
    """One recipe error: its YAML path (``""``: the recipe as a whole), message and line."""
    return {"loc": loc, "msg": msg, "line": line}


def line_of(recipe: Recipe, loc: str) -> int | None:
    """The 1-based line of YAML path ``loc`` (or of its nearest enclosing path), if known."""
    where = recipe.where(loc) if loc else ""
    if where.endswith(")") and "(line " in where:
        return int(where.rsplit("(line ", 1)[1][:-1])
    return None


def source_loc(recipe: Recipe, message: str) -> str:
    """The YAML path of the model a message names (``models[1].model``, ``base_model``),
    the longest repo id found in it; ``""`` when it names none."""
    best, best_len = "", 0
    for model in recipe.inputs():
        loc = model.ref_loc
        for ref in (model.ref, model.ref.lora):
            if ref is None or len(ref.path) <= best_len:
                continue
            if re.search(rf"(?<![\w./-]){re.escape(ref.path)}(?![\w/-])", message):
                best, best_len = loc, len(ref.path)
    return best
