"""The job queue on top of :mod:`bot.store`: enqueue with coalescing, leases, retries.

Contracts:
- ``enqueue``: a recipe has at most one *new* queued job: a trigger for a recipe that
  already has a queued job is absorbed by it (``triggers`` counts them). A job that is
  running does not absorb: the new trigger may carry a newer SHA, so it gets a queued job.
- ``claim``: one atomic ``UPDATE ... WHERE id = (SELECT ...) RETURNING`` inside a write
  transaction hands a job to exactly one worker, with a lease until ``now + lease``. It
  takes queued jobs whose backoff has passed and running jobs whose lease expired (their
  worker died) with attempts left, never a job of a recipe that another live lease is
  merging.
- ``give_up``: a running job whose lease expired after its ``max_attempts``-th attempt
  is failed; workers call it before ``claim`` and remove the work dirs of the ids it
  returns.
- ``heartbeat``/``finish``/``retry_later`` are fenced by the lease owner: a worker that
  lost its lease changes nothing (they return False).
"""

from __future__ import annotations

import json
import sqlite3
import time

from .store import Job, Store, job_from_row

QUEUED, RUNNING, SUCCEEDED, FAILED, SKIPPED = "queued", "running", "succeeded", "failed", "skipped"
ACTIVE = (QUEUED, RUNNING)
DONE = (SUCCEEDED, FAILED, SKIPPED)


def enqueue(
    db: sqlite3.Connection, recipe_id: int, owner: str, trigger: str, *, force: bool = False
) -> tuple[int, bool]:
    """Queue a job for the recipe inside the caller's transaction: (job id, absorbed)."""
    row = db.execute(
        "SELECT id FROM jobs WHERE recipe_id = ? AND status = ? ORDER BY id DESC LIMIT 1",
        (recipe_id, QUEUED),
    ).fetchone()
    if row is not None:
        db.execute(
            "UPDATE jobs SET triggers = triggers + 1, force = MAX(force, ?) WHERE id = ?",
            (int(force), row["id"]),
        )
        _log(db, row["id"], f"absorbed trigger: {trigger}")
        return int(row["id"]), True
    cur = db.execute(
        "INSERT INTO jobs (recipe_id, owner, trigger, force, status, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (recipe_id, owner, trigger, int(force), QUEUED, time.time()),
    )
    job_id = int(cur.lastrowid)
    _log(db, job_id, f"queued: {trigger}")
    return job_id, False


def active_jobs(db: sqlite3.Connection, owner: str) -> int:
    """Jobs of ``owner`` queued or running."""
    return db.execute(
        "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN (?, ?)", (owner, *ACTIVE)
    ).fetchone()[0]


def give_up(store: Store, *, max_attempts: int) -> list[int]:
    """Fail the running jobs whose lease expired on their last attempt; their ids."""
    now = time.time()
    with store.write() as db:
        lost = db.execute(
            "UPDATE jobs SET status = ?, lease_owner = NULL, finished_at = ?,"
            " error = 'no worker finished it in ' || attempts || ' attempt(s); giving up'"
            " WHERE status = ? AND lease_expires < ? AND attempts >= ? RETURNING id",
            (FAILED, now, RUNNING, now, max_attempts),
        ).fetchall()
        for row in lost:
            _log(db, row["id"], "failed: lease expired too many times")
    return [row["id"] for row in lost]


def claim(store: Store, worker: str, *, lease: float, max_attempts: int) -> Job | None:
    """The next runnable job, now leased to ``worker``; None when there is none."""
    now = time.time()
    with store.write() as db:
        row = db.execute(
            """
            UPDATE jobs SET status = :running, lease_owner = :worker,
                lease_expires = :now + :lease, attempts = attempts + 1, started_at = :now,
                stage = 'claimed', progress = 0
            WHERE id = (
                SELECT j.id FROM jobs j
                WHERE ((j.status = :queued AND j.not_before <= :now)
                       OR (j.status = :running AND j.lease_expires < :now
                           AND j.attempts < :max_attempts))
                  AND NOT EXISTS (
                      SELECT 1 FROM jobs r WHERE r.recipe_id = j.recipe_id AND r.id != j.id
                      AND r.status = :running AND r.lease_expires >= :now)
                ORDER BY j.id LIMIT 1)
            RETURNING *
            """,
            {
                "running": RUNNING,
                "queued": QUEUED,
                "worker": worker,
                "now": now,
                "lease": lease,
                "max_attempts": max_attempts,
            },
        ).fetchone()
        if row is None:
            return None
        job = job_from_row(row)
        _log(db, job.id, f"attempt {job.attempts} claimed by {worker}")
        return job


def heartbeat(
    store: Store,
    job_id: int,
    worker: str,
    *,
    lease: float,
    stage: str | None = None,
    progress: float | None = None,
) -> bool:
    """Extend the lease (and record progress); False when the lease was lost."""
    with store.write() as db:
        cur = db.execute(
            "UPDATE jobs SET lease_expires = ?, stage = COALESCE(?, stage),"
            " progress = COALESCE(?, progress)"
            " WHERE id = ? AND lease_owner = ? AND status = ?",
            (time.time() + lease, stage, progress, job_id, worker, RUNNING),
        )
        return cur.rowcount == 1


def finish(
    store: Store,
    job_id: int,
    worker: str,
    status: str,
    *,
    source_shas: dict | None = None,
    commit: str | None = None,
    error: str | None = None,
    db: sqlite3.Connection | None = None,
) -> bool:
    """End a job the worker holds (succeeded, failed or skipped); False if not held."""
    if status not in DONE:
        raise ValueError(f"{status!r} is not a final status")
    if db is None:
        with store.write() as db:
            return finish(
                store,
                job_id,
                worker,
                status,
                source_shas=source_shas,
                commit=commit,
                error=error,
                db=db,
            )
    cur = db.execute(
        """
        UPDATE jobs SET status = :status, source_shas = COALESCE(:shas, source_shas),
            commit_sha = :commit, error = :error, finished_at = :now, lease_owner = NULL,
            lease_expires = NULL,
            stage = CASE WHEN :status = 'succeeded' THEN 'done' ELSE stage END,
            progress = CASE WHEN :status = 'succeeded' THEN 1.0 ELSE progress END
        WHERE id = :id AND lease_owner = :worker AND status = :running
        """,
        {
            "status": status,
            "shas": json.dumps(source_shas, sort_keys=True) if source_shas else None,
            "commit": commit,
            "error": error,
            "now": time.time(),
            "id": job_id,
            "worker": worker,
            "running": RUNNING,
        },
    )
    if cur.rowcount != 1:
        return False
    _log(db, job_id, f"{status}" + (f": {error}" if error else ""))
    return True


def retry_later(store: Store, job_id: int, worker: str, *, error: str, delay: float) -> bool:
    """Put a job the worker holds back in the queue, runnable after ``delay`` seconds."""
    with store.write() as db:
        cur = db.execute(
            "UPDATE jobs SET status = ?, not_before = ?, error = ?, lease_owner = NULL,"
            " lease_expires = NULL, stage = 'waiting to retry'"
            " WHERE id = ? AND lease_owner = ? AND status = ?",
            (QUEUED, time.time() + delay, error, job_id, worker, RUNNING),
        )
        if cur.rowcount != 1:
            return False
        _log(db, job_id, f"transient failure, retrying in {delay:.1f} s: {error}")
        return True


def log(store: Store, job_id: int, line: str) -> None:
    """Append a line to a job's log."""
    store.append_log(job_id, line)


def _log(db: sqlite3.Connection, job_id: int, line: str) -> None:
    db.execute(
        "INSERT INTO job_logs (job_id, ts, line) VALUES (?, ?, ?)", (job_id, time.time(), line)
    )
