"""Deleting the target repos that jobs created and then failed to publish to.

Contracts:
- A job records its target repo before creating it (``jobs.created_repo``, through
  ``PublishRequest.before_create`` and :func:`queue.record_created_repo`), so a later
  attempt that finds the repo treats it as its own. When the job ends without success
  (``queue.finish``, ``queue.give_up``) a cleanup is queued in the same transaction; a
  repo that existed before the job is never recorded, so never cleaned up.
- :func:`clean_repos`, which workers call between jobs, deletes such a repo only when
  :func:`bot.publish.delete_if_unused` finds nothing in it beyond its creation; a repo
  with a merged model or any other commit, file or ref is kept and the job's log says
  why. It never runs while a job of the same recipe runs, and no such job starts while a
  cleanup is pending (:func:`queue.claim`).
- A failed try is logged in one sentence (no token) and retried with the queue's backoff,
  ``max_attempts`` tries in all; a worker killed during a try leaves it due again after
  a lease. Hub errors never escape :func:`clean_repos`.
"""

from __future__ import annotations

import logging

from huggingface_hub import HfApi

from . import queue
from .publish import delete_if_unused
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)


def clean_repos(settings: Settings, store: Store) -> int:
    """Run every due cleanup once; how many were tried."""
    api = HfApi(endpoint=settings.endpoint, token=settings.token)
    tried = 0
    while (cleanup := queue.claim_cleanup(store, hold=settings.lease_seconds)) is not None:
        _clean(settings, store, api, cleanup)
        tried += 1
    return tried


def _clean(settings: Settings, store: Store, api: HfApi, cleanup: queue.Cleanup) -> None:
    repo, job_id, tries = cleanup.repo_id, cleanup.job_id, cleanup.tries
    if tries > settings.max_attempts:  # the last try's worker died
        line = f"gave up deleting {repo}, which this job created, after {tries - 1} tries"
        _settle(store, job_id, line, outcome=queue.ABANDONED)
        return
    try:
        reason = delete_if_unused(api, repo)
    except Exception as exc:  # noqa: BLE001 - any failure is retried, bounded
        error = str(exc) or type(exc).__name__
        if tries >= settings.max_attempts:
            line = f"{error}; gave up deleting {repo} after {tries} tries"
            _settle(store, job_id, line, outcome=queue.ABANDONED)
        else:
            delay = settings.backoff(tries)
            _settle(store, job_id, f"{error}; retrying in {delay:.1f} s", retry_in=delay)
        return
    if reason is None:
        line = f"{repo}, which this job created and left empty, no longer exists"
        queue.settle_cleanup(store, job_id, line, outcome=queue.DELETED)
    else:
        line = f"kept {repo}, which this job created, because {reason}"
        queue.settle_cleanup(store, job_id, line, outcome=queue.KEPT)


def _settle(store: Store, job_id: int, line: str, **outcome) -> None:
    """Settle a failed try, logging it to the process log as well."""
    log.warning("job %s: %s", job_id, line)
    queue.settle_cleanup(store, job_id, line, **outcome)
