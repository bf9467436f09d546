"""Webhooks: the settings store (`/api/settings/webhooks`) and background delivery.

Contracts:
- Webhooks persist in `<data>/webhooks.json`; a user sees and edits only their own.
- After a commit, every enabled webhook with the "repo" domain that watches the repo
  (`{"type": "model"|"dataset", "name": repo_id}`) or its namespace (`{"type": "user"|"org", ...}`)
  gets a v3 `repo.content` payload; creating or deleting a repo sends `{"action": "create"
  | "delete", "scope": "repo"}`. A private repo's events go only to its owner's webhooks.
- Delivery is a POST with `Content-Type: application/json` and `X-Webhook-Secret` (when a
  secret is set), from a background thread, 5 s timeout, 3 attempts. It never blocks or
  fails the request that caused it.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import errors
from .auth import namespace_uid
from .storage import RepoMeta, write_atomic

log = logging.getLogger(__name__)

WATCH_TYPES = ("model", "dataset", "space", "user", "org")
DOMAINS = ("repo", "discussion")


@dataclass
class Webhook:
    id: str
    owner: str
    url: str
    watched: list[dict]
    domains: list[str]
    secret: str | None = None
    disabled: bool = False

    def to_api(self) -> dict:
        """The JSON shape `HfApi` reads (`WebhookInfo`)."""
        return {
            "id": self.id,
            "url": self.url,
            "job": None,
            "watched": self.watched,
            "domains": self.domains,
            "secret": self.secret,
            "disabled": self.disabled,
        }

    def watches(self, meta: RepoMeta) -> bool:
        return any(
            (w["type"] == meta.repo_type and w["name"] == meta.repo_id)
            or (w["type"] in ("user", "org") and w["name"] == meta.namespace)
            for w in self.watched
        )


def _validate(spec: dict, partial: bool) -> dict:
    """Checked subset of a create/update body; 400 on anything malformed."""
    out: dict = {}
    url = spec.get("url")
    if url is not None or not partial:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise errors.bad_request("Webhook 'url' must be an http(s) URL.")
        out["url"] = url
    watched = spec.get("watched")
    if watched or not partial:
        if not isinstance(watched, list) or not watched:
            raise errors.bad_request("Webhook 'watched' must be a non-empty list.")
        for item in watched:
            if not (
                isinstance(item, dict)
                and item.get("type") in WATCH_TYPES
                and isinstance(item.get("name"), str)
            ):
                raise errors.bad_request(f"Invalid watched item: {item!r}")
        out["watched"] = [{"type": w["type"], "name": w["name"]} for w in watched]
    domains = spec.get("domains")
    if domains is not None or not partial:
        domains = list(DOMAINS) if domains is None else domains
        if not isinstance(domains, list) or any(d not in DOMAINS for d in domains):
            raise errors.bad_request(f"Webhook 'domains' must be a subset of {list(DOMAINS)}.")
        out["domains"] = domains
    if spec.get("secret") is not None:
        out["secret"] = str(spec["secret"])
    if spec.get("jobSourceId") is not None:
        raise errors.bad_request("Job webhooks are not supported by localhub.")
    return out


class WebhookStore:
    """Webhooks of all users, persisted as one JSON file. Thread-safe."""

    def __init__(self, path: Path, tmp_dir: Path) -> None:
        self._path = path
        self._tmp_dir = tmp_dir
        self._lock = threading.Lock()
        self._hooks: dict[str, Webhook] = {}
        if path.is_file():
            for item in json.loads(path.read_text()):
                self._hooks[item["id"]] = Webhook(**item)

    def _save(self) -> None:
        data = json.dumps([asdict(h) for h in self._hooks.values()], indent=1).encode()
        write_atomic(self._path, data, self._tmp_dir)

    def list(self, owner: str) -> list[Webhook]:
        with self._lock:
            return [h for h in self._hooks.values() if h.owner == owner]

    def get(self, webhook_id: str, owner: str) -> Webhook:
        with self._lock:
            hook = self._hooks.get(webhook_id)
            if hook is None or hook.owner != owner:
                raise errors.HubError(404, "Webhook not found")
            return hook

    def create(self, owner: str, spec: dict) -> Webhook:
        fields = _validate(spec, partial=False)
        hook = Webhook(id=secrets.token_hex(12), owner=owner, **fields)
        with self._lock:
            self._hooks[hook.id] = hook
            self._save()
        return hook

    def update(self, webhook_id: str, owner: str, spec: dict) -> Webhook:
        """Replace the fields present in `spec` (an empty `watched` keeps the old list)."""
        fields = _validate(spec, partial=True)
        hook = self.get(webhook_id, owner)
        with self._lock:
            for key, value in fields.items():
                setattr(hook, key, value)
            self._save()
        return hook

    def set_disabled(self, webhook_id: str, owner: str, disabled: bool) -> Webhook:
        hook = self.get(webhook_id, owner)
        with self._lock:
            hook.disabled = disabled
            self._save()
        return hook

    def delete(self, webhook_id: str, owner: str) -> None:
        self.get(webhook_id, owner)
        with self._lock:
            del self._hooks[webhook_id]
            self._save()

    def targets(self, meta: RepoMeta) -> list[Webhook]:
        """Enabled "repo"-domain webhooks that watch `meta` and may see it."""
        with self._lock:
            return [
                h
                for h in self._hooks.values()
                if not h.disabled
                and "repo" in h.domains
                and h.watches(meta)
                and (not meta.private or h.owner == meta.namespace)
            ]


def repo_block(meta: RepoMeta, base_url: str, head_sha: str | None) -> dict:
    """The payload's `repo` object (`headSha` is the default branch head)."""
    block: dict = {
        "type": meta.repo_type,
        "name": meta.repo_id,
        "id": meta.uid,
        "private": meta.private,
    }
    if head_sha is not None:
        block["headSha"] = head_sha
    block["url"] = {
        "web": f"{base_url}/{meta.key}",
        "api": f"{base_url}/api/{meta.repo_type}s/{meta.repo_id}",
    }
    block["owner"] = {"id": namespace_uid(meta.namespace)}
    return block


def content_event(meta: RepoMeta, base_url: str, ref: str, old: str | None, new: str) -> dict:
    """A `repo.content` update payload (without its `webhook` field)."""
    return {
        "event": {"action": "update", "scope": "repo.content"},
        "repo": repo_block(meta, base_url, meta.refs.get("refs/heads/main")),
        "updatedRefs": [{"ref": ref, "oldSha": old, "newSha": new}],
    }


def repo_event(meta: RepoMeta, base_url: str, action: str) -> dict:
    """A `repo` scope payload ("create" or "delete")."""
    head = meta.refs.get("refs/heads/main") if action != "delete" else None
    return {"event": {"action": action, "scope": "repo"}, "repo": repo_block(meta, base_url, head)}


@dataclass
class _Job:
    hook: Webhook
    payload: dict
    attempts: int = 0
    record: dict = field(default_factory=dict)


class Dispatcher:
    """Delivers payloads from one background thread; `on_result` gets a record per job."""

    def __init__(
        self,
        on_result: Callable[[dict], None],
        timeout: float = 5.0,
        retry_delays: tuple[float, ...] = (0.2, 1.0),
    ) -> None:
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._on_result = on_result
        self._timeout = timeout
        self._delays = retry_delays
        self._thread = threading.Thread(target=self._run, name="localhub-webhooks", daemon=True)
        self._thread.start()

    def send(self, store: WebhookStore, meta: RepoMeta, event: dict) -> None:
        """Queue `event` for every webhook that targets `meta`."""
        for hook in store.targets(meta):
            payload = {**event, "webhook": {"id": hook.id, "version": 3}}
            self._queue.put(_Job(hook, payload))

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._deliver(job)
            except Exception:  # a broken receiver must never kill the thread
                log.exception("webhook delivery crashed")

    def _deliver(self, job: _Job) -> None:
        body = json.dumps(job.payload).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "mergebot-localhub"}
        if job.hook.secret:
            headers["X-Webhook-Secret"] = job.hook.secret
        status: int | str = "unsent"
        attempts = 0
        for delay in (0.0, *self._delays):
            time.sleep(delay)
            attempts += 1
            request = urllib.request.Request(job.hook.url, body, headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self._timeout) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError as exc:
                status = type(exc).__name__
            if isinstance(status, int) and status < 500 and status != 429:
                break  # delivered, or refused for good (4xx): retrying cannot help
        event = job.payload["event"]
        self._on_result(
            {
                "webhook_id": job.hook.id,
                "event": f"{event['scope']}:{event['action']}",
                "repo": job.payload["repo"]["name"],
                "status": status,
                "attempts": attempts,
                "ok": isinstance(status, int) and 200 <= status < 300,
            }
        )
