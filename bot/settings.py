"""All of the bot's configuration, read once from the environment into one frozen object.

    settings = Settings.from_env()          # or Settings.from_env({"MERGEBOT_HOME": ...})

Variables (all optional; limits have defaults):
    HF_ENDPOINT              the Hub (default https://huggingface.co)
    HF_TOKEN                 the bot's token: writes merged repos, reads sources, webhooks
    WEBHOOK_SECRET           the secret the Hub sends as X-Webhook-Secret
    MERGEBOT_HOME            state (bot.sqlite3) and work dirs (default ./mergebot-home)
    MERGEBOT_DATABASE_URL    postgresql://... : a Postgres database shared by workers on
                             several machines (the fleet) instead of the SQLite file
    MERGEBOT_PUBLIC_URL      the URL the Hub calls back (webhooks are registered only if set)
    MERGEBOT_NAMESPACE       where merged repos go by default (default: the bot's user name)
    MERGEBOT_URL             where `mergebot submit`/`status` find a running server
                             (default http://127.0.0.1:7860)
    MERGEBOT_MAX_RECIPE_BYTES, MERGEBOT_MAX_MODELS, MERGEBOT_MAX_PARAMETERS,
    MERGEBOT_MAX_QUEUED_PER_OWNER, MERGEBOT_MAX_CHECKS_PER_OWNER, MERGEBOT_MAX_CHECKS,
    MERGEBOT_LEASE_SECONDS, MERGEBOT_MAX_ATTEMPTS,
    MERGEBOT_BACKOFF_SECONDS, MERGEBOT_POLL_SECONDS, MERGEBOT_WEBHOOK_SYNC_SECONDS,
    MERGEBOT_PERPLEXITY_FACTOR, MERGEBOT_STAGE_CACHE_BYTES, MERGEBOT_MAX_SWEEP_VARIANTS,
    MERGEBOT_MAX_SWEEP_BYTES,
    MERGEBOT_DEVICE          the limits and knobs below, same names in lower case
    MERGEBOT_BACKEND         where merges run: local (worker processes; default) or hf-jobs
    MERGEBOT_JOBS_IMAGE      hf-jobs: the Docker image with mergebot and CUDA torch
    MERGEBOT_JOBS_FLAVOR     hf-jobs: this flavor for every merge (default: the cheapest
                             that fits the plan)
    MERGEBOT_JOBS_NAMESPACE  hf-jobs: who runs (and pays for) the Jobs (default: the bot)
    MERGEBOT_JOBS_POLL_SECONDS, MERGEBOT_JOBS_MBPS (assumed transfer speed for estimates)

Tokens, the secret and the database URL (it may hold a password) never appear in
``repr``. Nothing else in the bot reads env vars; on a Hugging Face Space, :mod:`bot.space`
first renames the Space's variables into these (``/data`` -> MERGEBOT_HOME, SPACE_HOST ->
MERGEBOT_PUBLIC_URL), then this object reads them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
BACKENDS = ("local", "hf-jobs")
"""Where merges may run (:mod:`bot.backends`)."""


class SettingsError(ValueError):
    """An environment variable has a value the bot cannot use."""


@dataclass(frozen=True)
class Settings:
    """The bot's configuration; see the module docstring for the variables."""

    home: Path = Path("mergebot-home")
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    database_url: str | None = field(default=None, repr=False)
    """``postgresql://...``: the shared Postgres database; None for SQLite under home."""
    public_url: str | None = None
    namespace: str | None = None
    server_url: str = "http://127.0.0.1:7860"
    max_recipe_bytes: int = 64 * 1024
    max_models: int = 16
    max_parameters: int = 400_000_000_000
    """Total parameters read by one merge: the merged model's count times its inputs."""
    max_queued_per_owner: int = 5
    """Jobs an owner may have queued or running at once."""
    max_checks_per_owner: int = 2
    """Recipe checks (``POST /api/validate``) a caller may have in flight at once."""
    max_checks: int = 8
    """Recipe checks in flight at once, all callers together."""
    max_sweep_variants: int = 16
    """Variants (merges) one sweep may ask for."""
    max_sweep_bytes: int = 200 * 10**9
    """One sweep's output, all variants together (the plan's size times the variants)."""
    lease_seconds: float = 60.0
    max_attempts: int = 5
    backoff_seconds: float = 5.0
    """First retry delay; attempt n waits backoff * 2**(n-1), at most 1 hour."""
    poll_seconds: float = 1.0
    """How often an idle worker looks for work."""
    webhook_sync_seconds: float = 60.0
    """How often workers reconcile the Hub webhooks with the watched recipes."""
    perplexity_factor: float = 3.0
    """A merge whose perplexity exceeds this many times its worst source's is not
    published (unless its submission allows it); see merge_engine's check stage."""
    device: str = "auto"
    backend: str = "local"
    jobs_image: str | None = None
    jobs_flavor: str | None = None
    jobs_namespace: str | None = None
    jobs_poll_seconds: float = 10.0
    """How often the bot looks at a running Job (stage, logs, cancellation)."""
    jobs_mbps: float = 100.0
    """Transfer speed (MB/s) a Job's download and upload are estimated at."""
    stage_cache_bytes: int = 200_000_000_000
    """Multi-stage recipes: the intermediates kept under ``home/stage-cache`` (least
    recently used dropped first), so a webhook remerges only the stages downstream of the
    source that moved (:mod:`bot.stage_cache`)."""

    @property
    def db_path(self) -> Path:
        return self.home / "bot.sqlite3"

    @property
    def work_root(self) -> Path:
        return self.home / "work"

    @property
    def stage_cache_dir(self) -> Path:
        return self.home / "stage-cache"

    @property
    def webhook_url(self) -> str | None:
        """Where the Hub should POST events, or None when no public URL is set."""
        return f"{self.public_url}/webhooks/hub" if self.public_url else None

    @property
    def heartbeat_seconds(self) -> float:
        """How often a running job renews its lease and records its progress."""
        return max(min(self.lease_seconds / 4, 2.0), 0.05)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retrying after failed attempt number ``attempt`` (1-based)."""
        return min(self.backoff_seconds * 2 ** max(attempt - 1, 0), 3600.0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Read the variables from ``env`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if env is None else env
        values: dict = {
            "home": Path(env.get("MERGEBOT_HOME") or "mergebot-home"),
            "endpoint": (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            "token": env.get("HF_TOKEN") or None,
            "webhook_secret": env.get("WEBHOOK_SECRET") or None,
            "database_url": _database_url(env.get("MERGEBOT_DATABASE_URL") or None),
            "public_url": (env.get("MERGEBOT_PUBLIC_URL") or "").rstrip("/") or None,
            "namespace": env.get("MERGEBOT_NAMESPACE") or None,
            "server_url": (env.get("MERGEBOT_URL") or "http://127.0.0.1:7860").rstrip("/"),
            "device": env.get("MERGEBOT_DEVICE") or "auto",
            "backend": env.get("MERGEBOT_BACKEND") or "local",
            "jobs_image": env.get("MERGEBOT_JOBS_IMAGE") or None,
            "jobs_flavor": env.get("MERGEBOT_JOBS_FLAVOR") or None,
            "jobs_namespace": env.get("MERGEBOT_JOBS_NAMESPACE") or None,
        }
        if values["backend"] not in BACKENDS:
            raise SettingsError(
                f"MERGEBOT_BACKEND must be one of {', '.join(BACKENDS)}, not {values['backend']!r}")
        numeric = {f.name: f.type for f in fields(cls) if f.type in ("int", "float")}
        for name, kind in numeric.items():
            raw = env.get(f"MERGEBOT_{name.upper()}")
            if raw:
                values[name] = _number(
                    f"MERGEBOT_{name.upper()}", raw, int if kind == "int" else float
                )
        values.update(overrides)
        return cls(**values)


def _database_url(url: str | None) -> str | None:
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise SettingsError("MERGEBOT_DATABASE_URL must be a postgresql:// URL")
    return url


def _number(name: str, raw: str, kind: type) -> int | float:
    try:
        value = kind(raw.replace("_", ""))
    except ValueError:
        raise SettingsError(f"{name} must be a positive number, not {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be a positive number, not {raw!r}")
    return value
