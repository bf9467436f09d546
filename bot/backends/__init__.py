"""Where a merge runs (the contract is in :mod:`bot.backends.base`): ``local`` (the
worker's own process, the default) or ``hf-jobs`` (a Hugging Face Job per merge)."""

from __future__ import annotations

from ..settings import Settings
from ..store import Store
from .base import Backend, Cancelled, Dispatch
from .hf_jobs import HfJobsBackend
from .local import LocalBackend

__all__ = ["Backend", "Cancelled", "Dispatch", "HfJobsBackend", "LocalBackend", "make_backend"]


def make_backend(settings: Settings, store: Store) -> Backend:
    """The backend ``settings.backend`` names."""
    if settings.backend == "hf-jobs":
        return HfJobsBackend(settings, store)
    return LocalBackend()
