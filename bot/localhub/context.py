"""The state one localhub server shares between requests, and the per-request `Call`."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from . import errors
from .auth import User, Users, check_read, check_write
from .jobs import JobRunner
from .storage import RepoMeta, Storage, repo_key
from .testhooks import Faults, Stats
from .throttle import TokenBucket
from .webhooks import Dispatcher, WebhookStore


@dataclass
class HubContext:
    """Everything a handler needs; built once per server by `HubContext.open`."""

    storage: Storage
    users: Users
    webhooks: WebhookStore
    dispatcher: Dispatcher
    stats: Stats
    faults: Faults
    downloads: TokenBucket | None
    """Throttles bodies sent to clients."""
    uploads: TokenBucket | None
    """Throttles bodies received from clients (a link is full duplex: one budget each)."""
    test_hooks: bool
    secret: bytes
    jobs: JobRunner
    """Hugging Face Jobs, run as local subprocesses."""

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike,
        users: list[User],
        *,
        bandwidth_mbps: float | None = None,
        test_hooks: bool = False,
    ) -> HubContext:
        """Open (or create) the data directory. `bandwidth_mbps` is in megabytes/s (1e6 B)."""
        storage = Storage(Path(data_dir))
        stats = Stats()
        (storage.root / "jobs").mkdir(exist_ok=True)
        return cls(
            storage=storage,
            users=Users(users),
            webhooks=WebhookStore(storage.root / "webhooks.json", storage.tmp_dir),
            dispatcher=Dispatcher(stats.delivery),
            stats=stats,
            faults=Faults(),
            downloads=TokenBucket(bandwidth_mbps * 1e6) if bandwidth_mbps else None,
            uploads=TokenBucket(bandwidth_mbps * 1e6) if bandwidth_mbps else None,
            test_hooks=test_hooks,
            secret=secrets.token_bytes(32),
            jobs=JobRunner(storage.root / "jobs"),
        )

    def close(self) -> None:
        """Stop background delivery (pending deliveries are given a few seconds) and kill
        running Jobs."""
        self.dispatcher.stop()
        self.jobs.stop()

    def emit(self, meta: RepoMeta, event: dict) -> None:
        """Queue a webhook event about `meta` to its watchers."""
        self.dispatcher.send(self.webhooks, meta, event)


@dataclass
class Call:
    """One routed request: the Starlette request, the caller and the path parameters."""

    request: Request
    ctx: HubContext
    user: User | None
    params: dict[str, str]

    @property
    def base_url(self) -> str:
        return str(self.request.base_url).rstrip("/")

    @property
    def repo_id(self) -> str:
        return f"{self.params['ns']}/{self.params['name']}"

    @property
    def repo_type(self) -> str:
        """The repo type the path names: dataset for ``/api/datasets/...`` and
        ``/datasets/...``, else model."""
        kind = self.params.get("kind") or self.params.get("prefix")
        return "dataset" if kind == "datasets" else "model"

    @property
    def repo_key(self) -> str:
        """The addressed repo's storage key (``alice/x`` or ``datasets/alice/x``)."""
        return repo_key(self.repo_type, self.repo_id)

    def read_repo(self) -> RepoMeta:
        """The addressed repo if the caller may see it; RepoNotFound otherwise."""
        return check_read(self.user, self.ctx.storage.get_repo(self.repo_key))

    def write_repo(self) -> RepoMeta:
        """The addressed repo if the caller owns it; RepoNotFound/401/403 otherwise."""
        return check_write(self.user, self.ctx.storage.get_repo(self.repo_key))

    async def body(self, limit: int) -> bytes:
        """The request body; 413 as soon as it is known to be over ``limit`` bytes."""
        declared = self.request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise errors.too_large(limit)
        chunks, size = [], 0
        async for chunk in self.request.stream():
            size += len(chunk)
            if size > limit:
                raise errors.too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def flag(self, name: str) -> bool:
        """A boolean query parameter ("1", "true", "yes")."""
        return self.request.query_params.get(name, "").lower() in ("1", "true", "yes")
