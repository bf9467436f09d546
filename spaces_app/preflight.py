"""Preflight: what a recipe will do, from safetensors headers only, in seconds.

    summary = check(recipe_text, endpoint="http://127.0.0.1:8765", token="hf_...")
    summary["ok"]        # False → summary["errors"] = [{"loc", "msg", "line"}]
    summary["formula"]   # "merged = base + 1.0 * (donor-1 - base) + 0.3 * (donor-2 - base)"

The UI's Check asks the bot (``POST /api/validate``); this is its fallback for when no bot
answers. The answer is the same JSON as the bot's (:func:`merge_engine.plan.summary.plan_json`).
It calls the engine's ``validate_stages`` (every stage of a multi-stage recipe; the one
plan of an ordinary recipe) with the *user's* token,
so a user only sees models they can read. No weight byte is downloaded.
"""

from __future__ import annotations

from merge_engine import (
    HubAccess,
    InputError,
    MergeEngineError,
    RecipeError,
    parse_stages,
    plan_json,
    validate_stages,
)


def check(recipe_text: str, *, endpoint: str | None, token: str | None) -> dict:
    """The plan summary of ``recipe_text``, or its errors; never raises for bad input."""
    if not recipe_text.strip():
        return failed("", "the recipe is empty; start from an example")
    try:
        plans = validate_stages(recipe_text, access=HubAccess(endpoint=endpoint,
                                                              token=token or None))
    except RecipeError as exc:
        return failed(exc.loc, exc.msg, getattr(exc, "line", None))
    except InputError as exc:
        return failed("", str(exc))
    except MergeEngineError as exc:
        return failed("", f"could not check the recipe against the Hub: {exc}")
    except OSError as exc:
        return failed("", f"could not reach the Hub at {endpoint}: {exc}")
    return plan_json(plans[-1])


def failed(loc: str, msg: str, line: int | None = None) -> dict:
    return {"ok": False, "errors": [{"loc": loc, "msg": msg, "line": line}]}


def line_of(recipe_text: str, loc: str) -> int | None:
    """The 1-based line of YAML path ``loc`` in ``recipe_text`` (for errors from the API)."""
    if not loc:
        return None
    try:
        staged = parse_stages(recipe_text)
    except RecipeError as exc:
        return getattr(exc, "line", None) if exc.loc == loc else None
    where = (staged.final.recipe if len(staged.stages) == 1 else staged).where(loc)
    if where.endswith(")") and "(line " in where:
        return int(where.rsplit("(line ", 1)[1][:-1])
    return None
