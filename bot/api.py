"""The REST API under ``/api`` (used by the UI and ``mergebot submit``/``status``).

    POST /api/recipes               {"recipe", "repo_id"?, "private"?, "watch"?, "force"?,
                                     "allow_high_perplexity"?, "publish"?: "full" |
                                     "adapter" | "both", "max_rank"?, "sv_cutoff"?,
                                     "evaluation"?: [sets]} → 201
                                    {"recipe_id", "job_id", "repo_id"}; the same recipe
                                    again is merged only if a source moved or force
    GET  /api/recipes?owner=NAME    recipes, newest first
    GET  /api/recipes/{id}          a recipe with its latest jobs
    POST /api/recipes/{id}/remerge  {"force"?: bool} → 202 {"job_id", "absorbed"}
    POST /api/validate              {"recipe", ...} → 200 the plan's summary (bot.validation);
                                    with hf-jobs, "backend": flavor, time and cost estimate
    DELETE /api/recipes/{id}        stop watching and forget the recipe (jobs are kept)
    GET  /api/jobs/{id}             status, stage, progress, SHAs, commit, error, log tail,
                                    "run": where it ran (hf-jobs: flavor, Job id, its log)
    POST /api/sweeps, GET /api/sweeps/{id}   sweeps of a recipe (:mod:`bot.api_sweeps`)

Writes and checks need ``Authorization: Bearer <hub token>``, checked with ``whoami`` on the Hub
(missing or invalid → 401). A recipe and its jobs are public unless the recipe is private:
then only its owner sees it (others get 404). Errors are ``{"error": "<one sentence>"}``;
a recipe the engine refuses is 422 ``{"errors": [{"loc", "msg", "line"}]}`` (from
``/api/validate`` with ``"ok": false``).

Submission checks, in order: token (401), body (400/413), recipe syntax and Hub-only
sources (422), limits on models and parameters (422), target repo (422 malformed, 403 the
bot cannot write it, 409 another owner's recipe publishes there), preflight from headers
with the *submitter's* token (422), the bot's token can read every source (422), jobs per
owner (429). The bot writes to its own namespace and to orgs its whoami lists (with a role
other than "read"); it never writes to a user's namespace other than its own.

Validation takes a submission's body and makes its checks of the recipe (token, body,
syntax, Hub-only sources, limits, preflight), not those of the target; its preflight reads
the sources with the *caller's* token only (never the bot's, so nobody reaches a model
they cannot read). Checks in flight are bounded per caller and in all (429). Preflights
download configs into a temporary cache that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from merge_engine import (
    AdapterOptions,
    EvalSet,
    HubAccess,
    InputError,
    MergeEngineError,
    Plan,
    Recipe,
    RecipeError,
    RecipeLimits,
    StagedRecipe,
    check_adapter_base,
    hub_refs_only,
    parse_eval_sets,
    parse_stages,
    validate,
    validate_stages,
)

from . import queue
from .backends import Backend, LocalBackend
from .errors import BotError, public_message
from .publish import PUBLISH_MODES, adapter_repo
from .settings import Settings
from .store import Store
from .validation import error_item, line_of, source_loc, summary
from .webhooks import read_body

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class ApiError(Exception):
    """An HTTP error answer: status and JSON body."""

    def __init__(self, status: int, message: str | None = None, *, errors: list | None = None):
        super().__init__(message or "invalid recipe")
        self.status = status
        self.body = {"errors": errors} if errors is not None else {"error": message}


def recipe_errors(*items: tuple) -> ApiError:
    """422 with an error ``{"loc", "msg", "line"}`` per item ``(loc, msg[, line])``."""
    return ApiError(422, errors=[error_item(*item) for item in items])


@dataclass
class HubGate:
    """Who is calling, and who the bot is (its whoami, fetched once and kept)."""

    settings: Settings
    _bot: dict | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def user(self, token: str | None) -> str:
        """The Hub user name of ``token``; ApiError 401 when missing or invalid."""
        if not token:
            raise ApiError(401, "missing 'Authorization: Bearer <hub token>' header")
        return self._whoami(token, "the token")["name"]

    def bot(self) -> dict:
        with self._lock:
            if self._bot is None:
                if not self.settings.token:
                    raise ApiError(503, "the bot has no HF_TOKEN configured")
                self._bot = self._whoami(self.settings.token, "the bot's token")
            return self._bot

    def _whoami(self, token: str, whose: str) -> dict:
        try:
            return HfApi(endpoint=self.settings.endpoint).whoami(token)
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise ApiError(401, f"{whose} is not a valid Hub token") from None
            raise ApiError(502, f"could not check {whose} with the Hub (HTTP {status})") from None
        except OSError as exc:
            raise ApiError(502, f"could not reach the Hub to check {whose}: {exc}") from None

    def namespace(self) -> str:
        """Where merged repos go by default."""
        return self.settings.namespace or self.bot()["name"]

    def check_writable(self, repo_id: str) -> None:
        """ApiError 403 unless the bot may create/push ``repo_id``."""
        namespace = repo_id.split("/", 1)[0]
        bot = self.bot()
        if namespace == bot["name"]:
            return
        for org in bot.get("orgs") or []:
            if org.get("name") == namespace and org.get("roleInOrg") != "read":
                return
        raise ApiError(
            403,
            f"the bot ({bot['name']}) cannot write to the namespace {namespace!r}; publish to "
            f"{self.namespace()!r} or to an organization the bot belongs to",
        )


@dataclass
class CheckSlots:
    """Preflights in flight, per caller and in all: each holds a thread and Hub requests."""

    _running: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def hold(self, user: str, settings: Settings) -> Iterator[None]:
        """A slot for one check by ``user``; ApiError 429 when none is free."""
        with self._lock:
            if self._running[user] >= settings.max_checks_per_owner:
                raise ApiError(
                    429,
                    f"you have {settings.max_checks_per_owner} checks running; "
                    "wait for one to finish",
                )
            if self._running.total() >= settings.max_checks:
                raise ApiError(429, "the bot is checking too many recipes; try again shortly")
            self._running[user] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[user] -= 1
                if not self._running[user]:
                    del self._running[user]


@dataclass(frozen=True)
class Services:
    """What the API needs; kept on ``app.state.services``."""

    settings: Settings
    store: Store
    hub: HubGate
    after_submit: Callable[[], None] = lambda: None
    """Run in the background after a recipe changes (e.g. reconcile Hub webhooks)."""
    checks: CheckSlots = field(default_factory=CheckSlots)
    backend: Backend = field(default_factory=LocalBackend)
    """Where merges run: what the job view and Check say about it."""


def _services(request: Request) -> Services:
    return request.app.state.services


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def recipe_limits(settings: Settings) -> RecipeLimits:
    """The engine's recipe budgets, with the bot's size limit."""
    return RecipeLimits(max_bytes=settings.max_recipe_bytes)


def recipe_body_limit(settings: Settings) -> int:
    """The largest body a recipe within the limit can need: JSON writes a byte in at most
    six characters (``\\u0000``), plus room for the other fields."""
    return 6 * settings.max_recipe_bytes + 4096


async def _json(request: Request, limit: int, too_large: str | None = None) -> dict:
    raw = await read_body(request, limit)
    if raw is None:
        raise ApiError(413, too_large or f"the request body is larger than {limit:,} bytes")
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: [[[[... nested past the stack
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _endpoint(fn):
    """Turn ApiError into its JSON answer."""

    async def wrapper(request: Request) -> JSONResponse:
        try:
            return await fn(request)
        except ApiError as exc:
            return JSONResponse(exc.body, status_code=exc.status)

    return wrapper


# submission -------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    recipe_text: str
    repo_id: str | None
    private: bool
    watch: bool
    allow_high_perplexity: bool = False
    """Publish even when the checks find the merge's perplexity far above its sources'."""
    force: bool = False
    """Merge even when the recipe and its sources' revisions are unchanged."""
    publish_intermediates: bool = False
    """A multi-stage recipe: publish each earlier stage's output on a branch too."""
    publish: str = "full"
    """The full weights, a LoRA adapter of the merge (``max_rank``, ``sv_cutoff``), or both
    (:mod:`bot.publish`)."""
    max_rank: int | None = None
    sv_cutoff: float = 0.0
    evaluation: tuple[EvalSet, ...] = ()
    """Sets every merge is scored on (the card gets the table; :mod:`merge_engine.evaluate`)."""


def parse_submission(body: dict, settings: Settings) -> Submission:
    """Field types and the recipe size limit."""
    text = body.get("recipe")
    if not isinstance(text, str):
        raise recipe_errors(("recipe", "'recipe' must be the recipe's YAML text"))
    if not text.strip():
        raise recipe_errors(("", "the recipe is empty; write a mergekit YAML recipe"))
    try:
        recipe_limits(settings).check_size(text)
    except RecipeError as exc:
        raise ApiError(413, exc.msg) from None
    repo_id = body.get("repo_id")
    if repo_id is not None and not isinstance(repo_id, str):
        raise recipe_errors(("repo_id", "'repo_id' must be a string like 'owner/name'"))
    for flag in ("private", "watch", "allow_high_perplexity", "force",
                 "publish_intermediates"):
        if not isinstance(body.get(flag, False), bool):
            raise recipe_errors((flag, f"'{flag}' must be true or false"))
    return Submission(text, repo_id or None, body.get("private", False), body.get("watch", False),
                      body.get("allow_high_perplexity", False), body.get("force", False),
                      body.get("publish_intermediates", False), *parse_publish(body),
                      evaluation=parse_evaluation(body))


def parse_evaluation(body: dict) -> tuple[EvalSet, ...]:
    """The submission's optional evaluation sets (the format of POST /api/sweeps); 422 at
    ``evaluation...``."""
    if body.get("evaluation") is None:
        return ()
    try:
        return tuple(parse_eval_sets(body["evaluation"], "evaluation"))
    except InputError as exc:
        raise recipe_errors(("evaluation", str(exc))) from None


def check_evaluation(sub: Submission, recipe: Recipe | StagedRecipe) -> None:
    """422 when evaluation sets come with what cannot be scored: several stages or an
    adapter publication."""
    if not sub.evaluation:
        return
    if isinstance(recipe, StagedRecipe):
        raise recipe_errors(("evaluation", "evaluation scores a single-stage recipe's merge; "
                                           "a multi-stage recipe cannot be evaluated yet"))
    if sub.publish != "full":
        raise recipe_errors(("evaluation", "evaluation scores the full weights it publishes; "
                                           "use 'publish': 'full' with evaluation sets"))


def parse_publish(body: dict) -> tuple[str, int | None, float]:
    """(publish, max_rank, sv_cutoff) of a submission; 422 at the field in error."""
    publish = body.get("publish", "full")
    publish = "both" if publish == "full+adapter" else publish
    if publish not in PUBLISH_MODES:
        raise recipe_errors(("publish", "'publish' must be one of 'full', 'adapter' or "
                                        f"'both', got {publish!r}"))
    max_rank, cutoff = body.get("max_rank"), body.get("sv_cutoff", 0.0)
    if publish == "full":
        extra = "max_rank" if max_rank is not None else "sv_cutoff" if cutoff else None
        if extra:
            raise recipe_errors((extra, f"'{extra}' is for an adapter; add \"publish\": "
                                        "\"adapter\" or \"both\""))
        return publish, None, 0.0
    if max_rank is None:
        raise recipe_errors(("max_rank", f"publishing an adapter ('publish': '{publish}') "
                                         "needs 'max_rank', its largest rank per module"))
    try:
        options = AdapterOptions(max_rank, cutoff)
    except InputError as exc:
        raise recipe_errors(("max_rank" if "max_rank" in str(exc) else "sv_cutoff",
                             str(exc))) from None
    return publish, options.max_rank, float(options.sv_cutoff)


def check_publish(sub: Submission, recipe: Recipe | StagedRecipe) -> None:
    """422 when an adapter is asked for and the recipe has no plain base to extract it
    against (or has several stages)."""
    if sub.publish == "full":
        return
    if isinstance(recipe, StagedRecipe):
        raise recipe_errors(("publish", "publishing an adapter of a multi-stage recipe is not "
                                        "supported; publish its full weights"))
    try:
        check_adapter_base(recipe)
    except InputError as exc:
        loc = "base_model" if recipe.base_model is not None else "merge_method"
        raise recipe_errors((loc, str(exc), line_of(recipe, loc))) from None


def hub_sources(recipe: Recipe | StagedRecipe) -> list[str]:
    """The Hub repo ids the recipe reads (of every stage, those no stage makes); 422 for
    any local path."""
    found: list[str] = []
    problems = []
    for model in recipe.inputs():
        loc = model.ref_loc
        for ref in (model.ref, model.ref.lora):
            if ref is None:
                continue
            if ref.is_local:
                problems.append(
                    (
                        loc,
                        f"{ref.path!r} is a local path; the bot merges Hub "
                        "repos only (use 'owner/name')",
                        line_of(recipe, loc),
                    )
                )
            elif ref.path not in found:
                found.append(ref.path)
    if problems:
        raise recipe_errors(*problems)
    return found


def target_repo(sub: Submission, recipe: Recipe, hub: HubGate) -> str:
    """``owner/name``: as given, ``name`` in the default namespace, or the recipe's name."""
    name = sub.repo_id or recipe.name
    if not name:
        raise recipe_errors(("repo_id", "give 'repo_id' (or a 'name' in the recipe)"))
    if "/" not in name:
        if not _NAME.match(name):
            raise recipe_errors(("repo_id", f"{name!r} is not a valid repo name"))
        name = f"{hub.namespace()}/{name}"
    if not _REPO_ID.match(name) or "--" in name or ".." in name:
        raise recipe_errors(("repo_id", f"{name!r} is not a valid repo id like 'owner/name'"))
    return name


def parse(recipe_text: str, settings: Settings) -> Recipe | StagedRecipe:
    """The parsed recipe (a StagedRecipe for one of several stages), within the budgets and
    never looking at the server's folders; 422 at the YAML path (and line) of its first
    mistake (prefixed by the stage and its document)."""
    try:
        with hub_refs_only():
            staged = parse_stages(recipe_text, recipe_limits(settings))
            return staged if len(staged.stages) > 1 else staged.final.recipe
    except RecipeError as exc:
        raise recipe_errors((exc.loc, exc.msg, getattr(exc, "line", None))) from None


def check_model_count(recipe: Recipe | StagedRecipe, settings: Settings) -> None:
    count = len(recipe.inputs())
    if count > settings.max_models:
        raise recipe_errors(
            (recipe.models_loc,
             f"the recipe has {count} models; the limit is {settings.max_models}")
        )


def preflight(recipe: Recipe | StagedRecipe, settings: Settings, token: str) -> list[Plan]:
    """Headers-only validation with the caller's token (never the bot's), plus the
    parameter limit; configs go to a temporary cache, removed on return. Its errors show
    no server paths (of that cache, say). The plan of each stage (one for an ordinary
    recipe; a later stage planned from the earlier stages' planned outputs)."""
    try:
        with tempfile.TemporaryDirectory(prefix="mergebot-check-") as cache:
            access = HubAccess(endpoint=settings.endpoint, token=token, cache_dir=Path(cache))
            with hub_refs_only():
                if isinstance(recipe, StagedRecipe):
                    plans = validate_stages(recipe, access=access, workspace=cache)
                else:
                    plans = [validate(recipe, access=access)]
    except RecipeError as exc:
        line = getattr(exc, "line", None) or line_of(recipe, exc.loc)
        raise recipe_errors((exc.loc, public_message(exc.msg), line)) from None
    except InputError as exc:
        message = public_message(str(exc))
        loc = source_loc(recipe, message)
        raise recipe_errors((loc, message, line_of(recipe, loc))) from None
    except MergeEngineError as exc:
        raise ApiError(502, "could not check the recipe against the Hub: "
                       + public_message(str(exc))) from None
    total = sum(math.prod(i.meta.shape) for plan in plans for task in plan.tasks
                for i in task.inputs)
    if total > settings.max_parameters:
        plan = plans[-1]
        what = (f"from {len(plan.sources)} models (output {plan.parameter_count:,})"
                if len(plans) == 1 else f"over its {len(plans)} stages")
        raise recipe_errors(
            ("", f"the merge reads {total:,} parameters {what}; the limit is "
                 f"{settings.max_parameters:,}")
        )
    return plans


def check_bot_can_read(recipe: Recipe, sources: list[str], settings: Settings) -> None:
    """422 when the bot's token cannot see a source (it reads them when merging)."""
    api = HfApi(endpoint=settings.endpoint, token=settings.token)
    for repo in sources:
        try:
            api.model_info(repo)
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403, 404):
                loc = source_loc(recipe, repo)
                msg = f"the bot cannot read {repo}; make it public or give the bot access"
                raise recipe_errors((loc, msg, line_of(recipe, loc))) from None
            raise ApiError(502, f"could not look up {repo} on the Hub (HTTP {status})") from None


def check_scorable(plan: Plan) -> None:
    """422 when the merge will have no tokenizer to be scored with (the engine takes the
    base's tokenizer files), before any variant or merge runs."""
    base = plan.sources[0]
    if "tokenizer.json" not in base.files:
        raise recipe_errors(("evaluation", f"evaluation scores the merge with its tokenizer, "
                                           f"and {base.name} has no tokenizer.json"))


def check_datasets(sets, token: str | None, settings: Settings) -> None:
    """422 unless every dataset an evaluation set names is readable with the submitter's
    token (so nobody scores a model on, and publishes the name of, a private dataset they
    cannot see through the bot) and with the bot's (it reads them when merging)."""
    for i, spec in enumerate(sets):
        if spec.dataset is None:
            continue
        loc = f"evaluation[{i}].dataset"
        for who, key in (("you", token), ("the bot", settings.token)):
            api = HfApi(endpoint=settings.endpoint, token=key)
            try:
                api.dataset_info(spec.dataset, revision=spec.revision)
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if status not in (401, 403, 404):
                    raise ApiError(502, f"could not look up dataset {spec.dataset} on the Hub "
                                        f"(HTTP {status})") from None
                at = f" at {spec.revision}" if spec.revision else ""
                msg = (f"dataset {spec.dataset}{at} does not exist or {who} cannot read it"
                       + ("" if who == "you" else "; make it public or give the bot access"))
                raise recipe_errors((loc, msg)) from None


def submit_recipe(services: Services, token: str | None, body: dict) -> dict:
    """The whole POST /api/recipes check-and-queue (blocking; run in a thread)."""
    settings, store, hub = services.settings, services.store, services.hub
    user = hub.user(token)
    sub = parse_submission(body, settings)
    recipe = parse(sub.recipe_text, settings)
    sources = hub_sources(recipe)
    check_model_count(recipe, settings)
    check_publish(sub, recipe)
    check_evaluation(sub, recipe)
    if sub.publish_intermediates and not isinstance(recipe, StagedRecipe):
        raise recipe_errors(("publish_intermediates", "publishing intermediates needs a "
                             "multi-stage recipe (several YAML documents separated by ---)"))
    repo_id = target_repo(sub, recipe, hub)
    sibling = adapter_repo(repo_id, sub.publish)
    if sibling is not None and not _REPO_ID.match(sibling):
        raise recipe_errors(("repo_id", f"{repo_id!r} is too long to name its adapter repo "
                                        f"{sibling!r}; choose a shorter name"))
    hub.check_writable(repo_id)
    with store.read() as db:
        existing = store.recipe_for_repo(db, repo_id)
        taken = store.recipe_for_repo(db, sibling) if sibling not in (None, repo_id) else None
    if existing is not None and existing.owner != user:
        raise ApiError(409, f"{repo_id} is already published by another user's recipe")
    if taken is not None and taken.owner != user:
        raise ApiError(409, f"{sibling}, where the adapter would go, is already published by "
                            "another user's recipe")
    plans = preflight(recipe, settings, token)
    check_bot_can_read(recipe, sources, settings)
    if sub.evaluation:
        check_scorable(plans[-1])
    check_datasets(sub.evaluation, token, settings)
    with store.write() as db:
        existing = claim_target(db, store, settings, user, repo_id)
        fields = {
            "yaml": sub.recipe_text,
            "private": sub.private,
            "watch": sub.watch,
            "sources": sources,
            "allow_high_perplexity": sub.allow_high_perplexity,
            "publish": sub.publish,
            "max_rank": sub.max_rank,
            "sv_cutoff": sub.sv_cutoff,
            "publish_intermediates": sub.publish_intermediates,
            "evaluation": sub.evaluation,
        }
        force = True
        if existing is None:
            recipe_id = store.add_recipe(db, owner=user, repo_id=repo_id, **fields)
            trigger = f"submitted by @{user}"
        elif unchanged(existing, sub):  # the worker skips it if the sources did not move
            recipe_id, force = existing.id, sub.force
            store.set_watch(db, recipe_id, sub.watch)
            trigger = f"submitted again unchanged by @{user}"
        else:
            recipe_id = existing.id
            store.replace_recipe(db, recipe_id, **fields)
            trigger = f"recipe updated by @{user}"
        job_id, _ = queue.enqueue(db, recipe_id, user, trigger, force=force)
    return {"recipe_id": recipe_id, "job_id": job_id, "repo_id": repo_id}


def claim_target(db, store, settings: Settings, user: str, repo_id: str):
    """In a write transaction: take the owner's and the repo's locks (held until commit on
    Postgres, so the checks below hold), 429 over the owner's queue quota, 409 when another
    user's recipe publishes to ``repo_id``; the recipe already there (or None)."""
    db.lock(f"owner:{user}")
    db.lock(f"repo:{repo_id}")
    if queue.active_jobs(db, user) >= settings.max_queued_per_owner:
        raise ApiError(429, f"you have {settings.max_queued_per_owner} jobs queued or "
                            "running; wait for one to finish")
    existing = store.recipe_for_repo(db, repo_id)
    if existing is not None and existing.owner != user:
        raise ApiError(409, f"{repo_id} is already published by another user's recipe")
    return existing


def unchanged(existing, sub: Submission) -> bool:
    """Is a submission the stored recipe again (same YAML and visibility, merged before)?"""
    return (
        not existing.deleted
        and not existing.broken
        and existing.yaml == sub.recipe_text
        and existing.private == sub.private
        and (existing.publish, existing.max_rank, existing.sv_cutoff)
        == (sub.publish, sub.max_rank, sub.sv_cutoff)
        and existing.publish_intermediates == sub.publish_intermediates
        and tuple(existing.evaluation) == tuple(sub.evaluation)
        and existing.last_shas is not None
    )


def check_recipe(services: Services, token: str | None, body: dict) -> dict:
    """The whole POST /api/validate (blocking; run in a thread): the plan's summary.

    A submission's checks of the recipe, the preflight with the caller's token included;
    nothing is stored or queued."""
    settings = services.settings
    user = services.hub.user(token)
    sub = parse_submission(body, settings)
    recipe = parse(sub.recipe_text, settings)
    hub_sources(recipe)
    check_model_count(recipe, settings)
    check_publish(sub, recipe)
    with services.checks.hold(user, settings):
        plans = preflight(recipe, settings, token)
    plan = plans[-1]
    answer = summary(plan)
    if isinstance(recipe, StagedRecipe):
        answer["stages"] = [{"name": stage.name, "document": stage.document, **summary(p)}
                            for stage, p in zip(recipe.stages, plans, strict=True)]
    try:
        quote = services.backend.quote(plan)
    except BotError as exc:  # e.g. no flavor fits: the submission would fail to run
        quote = {"backend": services.backend.name, "error": str(exc)}
        answer["warnings"].append(str(exc))
    if quote is not None:
        answer["backend"] = quote
    return answer


# endpoints --------------------------------------------------------------------------


async def _recipe_body(request: Request, settings: Settings) -> dict:
    """The JSON body of a submission or check; a body too large for any recipe within the
    limit gets the recipe limit's message."""
    limit = recipe_body_limit(settings)
    return await _json(request, limit, f"the recipe is more than {limit:,} bytes; the limit "
                       f"is {settings.max_recipe_bytes:,} bytes")


@_endpoint
async def post_recipe(request: Request) -> JSONResponse:
    services = _services(request)
    body = await _recipe_body(request, services.settings)
    result = await run_in_threadpool(submit_recipe, services, _bearer(request), body)
    return JSONResponse(result, status_code=201, background=BackgroundTask(services.after_submit))


@_endpoint
async def post_validate(request: Request) -> JSONResponse:
    services = _services(request)
    body = await _recipe_body(request, services.settings)
    try:
        result = await run_in_threadpool(check_recipe, services, _bearer(request), body)
    except ApiError as exc:
        if "errors" in exc.body:
            exc.body = {"ok": False, **exc.body}
        raise
    return JSONResponse(result)


def _viewer(services: Services, request: Request) -> str | None:
    """The caller's user name when a token is given, else None (anonymous)."""
    token = _bearer(request)
    return services.hub.user(token) if token else None


def _visible_recipe(services: Services, request: Request, recipe_id: int):
    recipe = services.store.get_recipe(recipe_id)
    if recipe is None or (recipe.private and _viewer(services, request) != recipe.owner):
        raise ApiError(404, f"recipe {recipe_id} not found")
    return recipe


def _owned_recipe(store, db, recipe_id: int, user: str, action: str):
    """The recipe, for a change only its owner may make: 404 when it is deleted or the
    caller may not see it (a private recipe of someone else), 403 when it is not theirs."""
    recipe = store.get_recipe(recipe_id, db)
    if recipe is None or recipe.deleted or (recipe.private and recipe.owner != user):
        raise ApiError(404, f"recipe {recipe_id} not found")
    if recipe.owner != user:
        raise ApiError(403, f"only the recipe's owner can {action}")
    return recipe


def _int_param(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not raw.isdigit():
        raise ApiError(404, f"{name} must be a number")
    return int(raw)


@_endpoint
async def get_recipe(request: Request) -> JSONResponse:
    services = _services(request)
    recipe_id = _int_param(request, "id")

    def load() -> dict:
        recipe = _visible_recipe(services, request, recipe_id)
        jobs = services.store.recipe_jobs(recipe.id)
        return {**recipe.to_api(), "jobs": [j.to_api() for j in jobs]}

    return JSONResponse(await run_in_threadpool(load))


@_endpoint
async def list_recipes(request: Request) -> JSONResponse:
    services = _services(request)
    owner = request.query_params.get("owner") or None

    def load() -> list[dict]:
        viewer = _viewer(services, request) if _bearer(request) else None
        recipes = services.store.list_recipes(owner)
        return [r.to_api() for r in recipes if not r.private or r.owner == viewer]

    return JSONResponse({"recipes": await run_in_threadpool(load)})


@_endpoint
async def remerge(request: Request) -> JSONResponse:
    services = _services(request)
    recipe_id = _int_param(request, "id")
    body = await _json(request, 4096)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise ApiError(400, "'force' must be true or false")

    def run() -> dict:
        user = services.hub.user(_bearer(request))
        store, settings = services.store, services.settings
        with store.write() as db:
            db.lock(f"owner:{user}")  # the quota check holds until commit (Postgres)
            recipe = _owned_recipe(store, db, recipe_id, user, "ask for a remerge")
            if queue.active_jobs(db, user) >= settings.max_queued_per_owner:
                raise ApiError(
                    429,
                    f"you have {settings.max_queued_per_owner} jobs queued or "
                    "running; wait for one to finish",
                )
            job_id, absorbed = queue.enqueue(
                db, recipe.id, user, f"remerge asked by @{user}", force=force
            )
        return {"job_id": job_id, "absorbed": absorbed}

    return JSONResponse(await run_in_threadpool(run), status_code=202)


@_endpoint
async def delete_recipe(request: Request) -> JSONResponse:
    services = _services(request)
    recipe_id = _int_param(request, "id")

    def run() -> dict:
        user = services.hub.user(_bearer(request))
        store = services.store
        with store.write() as db:
            recipe = _owned_recipe(store, db, recipe_id, user, "delete it")
            store.delete_recipe(db, recipe.id)
        return {"deleted": recipe_id}

    result = await run_in_threadpool(run)
    return JSONResponse(result, background=BackgroundTask(services.after_submit))


@_endpoint
async def get_job(request: Request) -> JSONResponse:
    services = _services(request)
    job_id = _int_param(request, "id")

    def load() -> dict:
        job = services.store.get_job(job_id)
        try:
            recipe = _visible_recipe(services, request, job.recipe_id) if job else None
        except ApiError:
            recipe = None  # someone else's private recipe: its jobs do not exist for them
        if recipe is None:
            raise ApiError(404, f"job {job_id} not found")
        return {
            **job.to_api(),
            "repo_id": recipe.repo_id,
            "log": services.store.log_tail(job.id),
            "run": services.backend.describe(job.id),
        }

    return JSONResponse(await run_in_threadpool(load))


ROUTES = [
    Route("/recipes", post_recipe, methods=["POST"]),
    Route("/recipes", list_recipes, methods=["GET"]),
    Route("/recipes/{id}", get_recipe, methods=["GET"]),
    Route("/recipes/{id}", delete_recipe, methods=["DELETE"]),
    Route("/recipes/{id}/remerge", remerge, methods=["POST"]),
    Route("/validate", post_validate, methods=["POST"]),
    Route("/jobs/{id}", get_job, methods=["GET"]),
]
