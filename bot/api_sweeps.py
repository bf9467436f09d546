"""The sweep endpoints under ``/api`` (:mod:`bot.sweeps`).

    POST /api/sweeps      a submission's fields ("recipe", "repo_id"?, "private"?, "watch"?,
                          "allow_high_perplexity"?) plus
                          "sweep": {"<YAML path>": [values], ...}   one or two axes
                          "evaluation": [{"name", "texts" | "dataset", ...}, ...]
                          "metric"?: a set's name (default the first; lower perplexity wins)
                          "publish"?: "best" (default) | "branches"
                          → 201 {"sweep_id", "recipe_id", "repo_id", "job_ids", "variants"}
    GET  /api/sweeps/{id} the whole sweep: variants with their jobs' states and scores, the
                          sources' scores, the table, the best variant, the commit

A sweep is checked like a submission (:func:`bot.api.submit_recipe`: token, recipe,
target repo, preflight with the submitter's token, the bot can read the sources), then:
its axes (:func:`merge_engine.expand_sweep`: 422 at the axis path, at most
``max_sweep_variants`` variants), its evaluation sets (422 at ``evaluation[i]...``), the
metric and mode (422), its total output, the plan's size times the variants (422 over
``max_sweep_bytes``), and where it runs (422 on the hf-jobs backend: sweeps run on the
bot's own workers). Like a submission, it is refused (429) while the owner has
``max_queued_per_owner`` jobs queued or running; its variants' jobs then count there.
It is visible to whoever may see its recipe: someone else's private sweep is "sweep N not
found" (404).
"""

from __future__ import annotations

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from merge_engine import (
    InputError,
    RecipeError,
    StagedRecipe,
    SweepLimits,
    expand_sweep,
    hub_refs_only,
    parse_eval_sets,
)

from . import queue, sweeps
from .api import (
    ApiError,
    Services,
    _bearer,
    _endpoint,
    _int_param,
    _recipe_body,
    _services,
    _visible_recipe,
    check_bot_can_read,
    check_datasets,
    check_model_count,
    check_scorable,
    claim_target,
    hub_sources,
    parse,
    parse_submission,
    preflight,
    recipe_errors,
    recipe_limits,
    target_repo,
)


def _axes(body: dict, settings) -> dict[str, list]:
    axes = body.get("sweep")
    if not isinstance(axes, dict) or not axes:
        raise recipe_errors(("sweep", "'sweep' must map one or two YAML paths to lists of "
                                      "values, e.g. {\"models[1].parameters.weight\": [0.1, 0.3]}"))
    return axes


def _variants(text: str, axes: dict, settings) -> list:
    limits = SweepLimits(max_variants=settings.max_sweep_variants)
    try:
        with hub_refs_only():
            return expand_sweep(text, axes, limits=limits, recipe_limits=recipe_limits(settings))
    except RecipeError as exc:
        loc = f"sweep.{exc.loc}" if exc.loc in axes else exc.loc
        raise recipe_errors((loc, exc.msg, getattr(exc, "line", None))) from None


def check_same_models(variants: list, sources: list[str], settings) -> None:
    """422 unless every variant reads the recipe's own models: only they are checked
    against the submitter's token (a variant naming another user's private repo would
    otherwise be merged with the bot's)."""
    for variant in variants:
        read = hub_sources(parse(variant.text, settings))
        if sorted(read) != sorted(sources):
            others = set(read) - set(sources)
            axis = next((p for p, v in variant.values.items()
                         if isinstance(v, str) and any(v.startswith(o) for o in others)),
                        next(iter(variant.values)))
            raise recipe_errors((f"sweep.{axis}", "a sweep tries values of the recipe's "
                                 "parameters; its variants must read the recipe's own models "
                                 "(submit other models as a recipe of their own)"))


def _evaluation(body: dict) -> tuple[list, str, str]:
    """(the sets, the metric, the publish mode); 422 at the field."""
    try:
        sets = parse_eval_sets(body.get("evaluation"), "evaluation")
    except InputError as exc:
        raise recipe_errors(("evaluation", str(exc))) from None
    if not sets:
        raise recipe_errors(("evaluation", "a sweep needs at least one evaluation set"))
    names = [s.name for s in sets]
    metric = body.get("metric", names[0])
    if metric not in names:
        raise recipe_errors(("metric", f"'metric' must name one of the evaluation sets "
                                       f"({', '.join(names)}), not {metric!r}"))
    publish = body.get("publish", "best")
    if publish not in sweeps.MODES:
        raise recipe_errors(("publish", f"'publish' must be 'best' or 'branches', not "
                                        f"{publish!r}"))
    return sets, metric, publish


def submit_sweep(services: Services, token: str | None, body: dict) -> dict:
    """The whole POST /api/sweeps check-and-queue (blocking; run in a thread)."""
    settings, store, hub = services.settings, services.store, services.hub
    user = hub.user(token)
    sub = parse_submission({k: v for k, v in body.items() if k != "publish"}, settings)
    recipe = parse(sub.recipe_text, settings)
    if isinstance(recipe, StagedRecipe) or sub.publish != "full" or sub.publish_intermediates:
        raise recipe_errors(("sweep", "a sweep merges a single-stage recipe and publishes its "
                                      "full weights; submit the other forms as recipes"))
    variants = _variants(sub.recipe_text, _axes(body, settings), settings)
    sets, metric, publish = _evaluation(body)
    if services.backend.name != "local":
        raise recipe_errors(("sweep", f"sweeps run on the bot's own workers, not on the "
                                      f"{services.backend.name} backend; submit the variants "
                                      "as separate recipes"))
    sources = hub_sources(recipe)
    check_same_models(variants, sources, settings)
    check_model_count(recipe, settings)
    repo_id = target_repo(sub, recipe, hub)
    hub.check_writable(repo_id)
    with store.read() as db:
        existing = store.recipe_for_repo(db, repo_id)
    if existing is not None and existing.owner != user:
        raise ApiError(409, f"{repo_id} is already published by another user's recipe")
    plan = preflight(recipe, settings, token)[-1]
    check_scorable(plan)
    total = plan.output_bytes * len(variants)
    if total > settings.max_sweep_bytes:
        raise recipe_errors(("sweep", f"the sweep writes {total:,} bytes ({len(variants)} "
                                      f"variants of {plan.output_bytes:,}); the limit is "
                                      f"{settings.max_sweep_bytes:,}"))
    check_bot_can_read(recipe, sources, settings)
    check_datasets(sets, token, settings)
    with store.write() as db:
        existing = claim_target(db, store, settings, user, repo_id)
        fields = {"yaml": sub.recipe_text, "private": sub.private, "watch": sub.watch,
                  "sources": sources, "allow_high_perplexity": sub.allow_high_perplexity}
        if existing is None:
            recipe_id = store.add_recipe(db, owner=user, repo_id=repo_id, **fields)
        else:
            recipe_id = existing.id
            store.replace_recipe(db, recipe_id, **fields)
        sweep_id = sweeps.add_sweep(db, recipe_id=recipe_id, owner=user, yaml=sub.recipe_text,
                                    axes={p: list(v) for p, v in body["sweep"].items()},
                                    evaluation=sets, metric=metric, publish=publish,
                                    variants=variants)
        job_ids = queue.enqueue_sweep(db, sweep_id, recipe_id, user, [v.label for v in variants])
    return {"sweep_id": sweep_id, "recipe_id": recipe_id, "repo_id": repo_id,
            "job_ids": job_ids, "variants": [v.label for v in variants]}


def load_sweep(services: Services, request: Request, sweep_id: int) -> dict:
    """GET /api/sweeps/{id}: 404 unless the caller may see the sweep's recipe."""
    sweep = sweeps.get_sweep(services.store, sweep_id)
    try:
        recipe = _visible_recipe(services, request, sweep.recipe_id) if sweep else None
    except ApiError:
        recipe = None  # someone else's private recipe: its sweeps do not exist for them
    if recipe is None:
        raise ApiError(404, f"sweep {sweep_id} not found")
    variant_jobs, publishing = sweeps.sweep_jobs(services.store, sweep_id)
    return sweeps.to_api(sweep, recipe.repo_id, variant_jobs, publishing)


@_endpoint
async def post_sweep(request: Request) -> JSONResponse:
    services = _services(request)
    body = await _recipe_body(request, services.settings)
    result = await run_in_threadpool(submit_sweep, services, _bearer(request), body)
    return JSONResponse(result, status_code=201, background=BackgroundTask(services.after_submit))


@_endpoint
async def get_sweep(request: Request) -> JSONResponse:
    services = _services(request)
    sweep_id = _int_param(request, "id")
    return JSONResponse(await run_in_threadpool(load_sweep, services, request, sweep_id))


ROUTES = [
    Route("/sweeps", post_sweep, methods=["POST"]),
    Route("/sweeps/{id}", get_sweep, methods=["GET"]),
]
