"""`POST /webhooks/hub`: the Hub's v3 webhook, turned into queued remerges.

Contracts:
- ``X-Webhook-Secret`` is compared with ``hmac.compare_digest``: missing → 401, wrong →
  403, and nothing is recorded; no secret configured → 503.
- A body that is not a v3 payload (not JSON, wrong types) → 400 with the reason.
- Everything else is answered 200 with ``{"action": ..., "reason": ...}`` and recorded in
  ``deliveries``. Only ``repo.content`` (or a narrower ``repo.content.*``) events where
  ``refs/heads/main`` moved, on a model repo that is a source of a watched recipe and not
  one of the bot's own output repos, enqueue one job per recipe (coalesced with a queued
  job). A delivery is identified by ``repo@oldSha..newSha`` of main: the same delivery
  again is a duplicate and enqueues nothing. (Keying on the old SHA too means that main
  moving back to an earlier commit still remerges.)
- A ``repo`` delete event marks every recipe using that repo broken with the reason; a
  ``repo``/``repo.config*`` event saying the repo is now private does the same.
- The handler only touches SQLite (in a worker thread): it answers in milliseconds.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from . import queue
from .settings import Settings
from .store import Store

MAX_BODY_BYTES = 1_000_000
MAIN = "refs/heads/main"


class PayloadError(ValueError):
    """The body is not a v3 webhook payload."""


@dataclass(frozen=True)
class UpdatedRef:
    ref: str
    old_sha: str | None
    new_sha: str | None


@dataclass(frozen=True)
class HubEvent:
    """The fields of a v3 payload the bot acts on."""

    action: str
    scope: str
    repo_type: str
    repo_name: str
    private: bool
    head_sha: str | None
    updated_refs: tuple[UpdatedRef, ...]

    @property
    def is_content(self) -> bool:
        return self.scope == "repo.content" or self.scope.startswith("repo.content.")

    def main_update(self) -> UpdatedRef | None:
        """The update of ``refs/heads/main`` in this event, if main moved."""
        return next((u for u in self.updated_refs if u.ref == MAIN), None)


def _str(obj: dict, key: str, where: str, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{where}.{key} must be a non-empty string")
    return value


def parse_event(body: object) -> HubEvent:
    """A :class:`HubEvent` from a decoded JSON body; PayloadError saying what is wrong."""
    if not isinstance(body, dict):
        raise PayloadError("the payload must be a JSON object")
    event, repo = body.get("event"), body.get("repo")
    if not isinstance(event, dict):
        raise PayloadError("event must be an object")
    if not isinstance(repo, dict):
        raise PayloadError("repo must be an object")
    refs = body.get("updatedRefs", [])
    if not isinstance(refs, list):
        raise PayloadError("updatedRefs must be a list")
    updated = []
    for i, item in enumerate(refs):
        if not isinstance(item, dict):
            raise PayloadError(f"updatedRefs[{i}] must be an object")
        updated.append(
            UpdatedRef(
                ref=_str(item, "ref", f"updatedRefs[{i}]"),
                old_sha=_str(item, "oldSha", f"updatedRefs[{i}]", optional=True),
                new_sha=_str(item, "newSha", f"updatedRefs[{i}]", optional=True),
            )
        )
    private = repo.get("private", False)
    if not isinstance(private, bool):
        raise PayloadError("repo.private must be a boolean")
    return HubEvent(
        action=_str(event, "action", "event"),
        scope=_str(event, "scope", "event"),
        repo_type=_str(repo, "type", "repo"),
        repo_name=_str(repo, "name", "repo"),
        private=private,
        head_sha=_str(repo, "headSha", "repo", optional=True),
        updated_refs=tuple(updated),
    )


def check_secret(expected: str | None, given: str | None) -> tuple[int, str] | None:
    """(status, message) when the request must be refused, None when the secret matches."""
    if expected is None:
        return 503, "the bot has no WEBHOOK_SECRET configured"
    if given is None:
        return 401, "missing X-Webhook-Secret header"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return 403, "wrong X-Webhook-Secret"
    return None


def handle_event(store: Store, event: HubEvent) -> dict:
    """Record the delivery and act on it in one transaction; the JSON answer."""
    label = f"{event.scope}:{event.action}"
    with store.write() as db:

        def answer(action: str, reason: str, identity: str | None = None, **extra) -> dict:
            fresh = store.record_delivery(
                db, identity=identity, event=label, repo=event.repo_name, outcome=action
            )
            if not fresh:
                return {"action": "duplicate", "reason": "this delivery was already handled"}
            return {"action": action, "reason": reason, **extra}

        if event.repo_type != "model":
            return answer("ignored", f"{event.repo_type} repos are never merge sources")
        if event.scope == "repo" and event.action == "delete":
            return _mark_broken(store, db, event, answer, f"source {event.repo_name} was deleted")
        if (event.scope == "repo" or event.scope.startswith("repo.config")) and event.private:
            return _mark_broken(
                store, db, event, answer, f"source {event.repo_name} became private"
            )
        if not event.is_content:
            return answer("ignored", f"{label} events do not change model weights")
        if store.is_output_repo(db, event.repo_name):
            return answer("ignored", "this repo is one of the bot's own merges")
        main = event.main_update()
        if main is None:
            return answer("ignored", "refs/heads/main did not move")
        if main.new_sha is None:
            return answer("ignored", "refs/heads/main was deleted")
        identity = f"{event.repo_name}@{main.old_sha or ''}..{main.new_sha}"
        recipes = store.watching_recipes(db, event.repo_name)
        if not recipes:
            return answer("ignored", "no watched recipe uses this repo", identity)
        fresh = store.record_delivery(
            db, identity=identity, event=label, repo=event.repo_name, outcome="enqueued"
        )
        if not fresh:
            return {"action": "duplicate", "reason": "this delivery was already handled"}
        trigger = f"{event.repo_name} main moved to {main.new_sha[:12]}"
        jobs = [queue.enqueue(db, r.id, r.owner, trigger)[0] for r in recipes]
        return {"action": "enqueued", "reason": trigger, "jobs": jobs}


def _mark_broken(store: Store, db, event: HubEvent, answer, reason: str) -> dict:
    recipes = [r for r in _recipes_using(store, db, event.repo_name) if r.broken != reason]
    for recipe in recipes:
        store.set_broken(db, recipe.id, reason)
    return answer("marked_broken", reason, recipes=[r.id for r in recipes])


def _recipes_using(store: Store, db, repo_id: str) -> list:
    rows = db.execute(
        "SELECT recipe_id FROM recipe_sources s JOIN recipes r ON r.id = s.recipe_id"
        " WHERE s.repo_id = ? AND r.deleted = 0",
        (repo_id,),
    ).fetchall()
    return [store.get_recipe(row["recipe_id"], db) for row in rows]


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def hub_webhook(request: Request) -> JSONResponse:
    """The Starlette endpoint; needs ``request.app.state.settings`` and ``.store``."""
    settings: Settings = request.app.state.settings
    store: Store = request.app.state.store
    refused = check_secret(settings.webhook_secret, request.headers.get("x-webhook-secret"))
    if refused is not None:
        status, message = refused
        return JSONResponse({"error": message}, status_code=status)
    raw = await read_body(request, MAX_BODY_BYTES)
    if raw is None:
        return JSONResponse({"error": "payload too large"}, status_code=413)
    try:
        event = parse_event(json.loads(raw))
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, PayloadError) else "the body is not valid JSON"
        return JSONResponse({"error": f"malformed payload: {reason}"}, status_code=400)
    return JSONResponse(await run_in_threadpool(handle_event, store, event))
