"""Work directories of jobs: ``MERGEBOT_HOME/work/job-N-attempt-M``, one per attempt.

Contracts:
- An attempt works only in its own directory, so a worker that lost its lease and a
  worker that took the job over never share files.
- ``remove(root, job_id)`` deletes the job's directories (with ``up_to``, only those of
  attempts up to that one); a worker calls it when it starts an attempt (leftovers of
  earlier, dead attempts) and for each job ``queue.give_up`` failed. An attempt removes
  its own directory when it ends.
- ``sweep(root, store)`` deletes every job directory that is not the current attempt of
  a job running under a live lease: what a killed worker left behind. It never touches a
  directory another live worker is merging in, nor files that are not job directories.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

from . import queue
from .store import Job, Store

log = logging.getLogger(__name__)

_NAME = re.compile(r"^job-(\d+)(?:-attempt-(\d+))?$")
"""``job-N-attempt-M``; ``job-N`` is the name of earlier versions (one dir per job)."""


def path(root: Path, job: Job) -> Path:
    """The directory of ``job``'s current attempt."""
    return root / f"job-{job.id}-attempt-{job.attempts}"


def remove(root: Path, job_id: int, *, up_to: int | None = None) -> None:
    """Delete the job's directories: every attempt's, or those of attempts <= ``up_to``."""
    for entry in _entries(root):
        match = _NAME.match(entry.name)
        attempt = int(match[2] or 0)
        if int(match[1]) == job_id and (up_to is None or attempt <= up_to):
            shutil.rmtree(entry, ignore_errors=True)


def sweep(root: Path, store: Store) -> list[str]:
    """Delete job directories that no live lease owns; the names deleted."""
    # List first, then read the leases: a dir in the list was made after its claim, which
    # the read then sees.
    entries = _entries(root)
    if not entries:
        return []
    live = _live_attempts(store)
    removed = []
    for entry in entries:
        match = _NAME.match(entry.name)
        job_id, attempt = int(match[1]), match[2]
        if job_id in live and (attempt is None or int(attempt) == live[job_id]):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    if removed:
        log.info("removed %d orphaned work dir(s): %s", len(removed), ", ".join(removed))
    return removed


def _entries(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and _NAME.match(p.name)]


def _live_attempts(store: Store) -> dict[int, int]:
    """{job id: attempt} of the jobs running under a lease that has not expired."""
    with store.read() as db:
        rows = db.execute(
            "SELECT id, attempts FROM jobs WHERE status = ? AND lease_expires >= ?",
            (queue.RUNNING, time.time()),
        ).fetchall()
    return {row["id"]: row["attempts"] for row in rows}
