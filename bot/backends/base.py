"""Where a merge runs: the seam between the queue and the machines.

A worker holding a job's lease builds a :class:`Dispatch` and calls
``backend.run(dispatch, report)``. The queue, leases, coalescing, retries, repo cleanups
and the commit marker stay in :mod:`bot.worker` and :mod:`bot.queue`; a backend only
decides where :func:`bot.publish.merge_and_publish` runs. Contract of ``run``:
- it returns the :class:`~bot.publish.PublishResult` of the job's one commit, made now or
  found by the job's marker (``request.job_key``): an earlier attempt's, or that of a run
  it adopted instead of starting another;
- it calls ``report(stage, fraction)`` as the merge goes;
- it raises merge_engine's ``InputError`` for a mistake in the recipe or its sources (the
  job fails at once), :class:`~bot.errors.TransientError` when a retry may succeed,
  :class:`~bot.errors.BotError` otherwise, and :class:`Cancelled` when
  ``dispatch.cancelled()`` became true before the commit (the run is stopped);
- it may be called again for the same job (a later attempt, a duplicate dispatch): the
  target repo still gets one commit per job.
``describe(job_id)`` is what the job view shows about where the job ran (at least
``{"backend": name}``); ``quote(plan)`` what Check shows (None: nothing to say).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from merge_engine import Plan

from ..errors import BotError
from ..publish import Progress, PublishRequest, PublishResult


class Cancelled(BotError):
    """The job was cancelled (its recipe deleted) before its commit."""


@dataclass(frozen=True)
class Dispatch:
    """One attempt of one job, handed to a backend."""

    job_id: int
    attempt: int
    request: PublishRequest
    """What to merge and publish; ``before_create`` records the repo as the job's."""
    cancelled: Callable[[], bool] = lambda: False


class Backend(Protocol):
    name: str

    def run(self, dispatch: Dispatch, report: Progress) -> PublishResult: ...

    def describe(self, job_id: int) -> dict: ...

    def quote(self, plan: Plan) -> dict | None: ...

