"""The job queue on top of :mod:`bot.store`: enqueue with coalescing, leases, retries.

Contracts:
- ``enqueue``: a recipe has at most one *new* queued job: a trigger for a recipe that
  already has a queued job is absorbed by it (``triggers`` counts them). A job that is
  running does not absorb: the new trigger may carry a newer SHA, so it gets a queued job.
- ``claim``: one atomic ``UPDATE ... WHERE id = (SELECT ...) RETURNING`` inside a write
  transaction hands a job to exactly one worker, with a lease until ``now + lease``. It
  takes queued jobs whose backoff has passed and running jobs whose lease expired (their
  worker died) with attempts left, never a job of a recipe that another live lease is
  merging (but for the variants of one ``best`` sweep, which publish nothing and run side
  by side) or whose repo cleanup is pending.
- ``give_up``: a running job whose lease expired after its ``max_attempts``-th attempt
  is failed; workers call it before ``claim`` and remove the work dirs of the ids it
  returns.
- ``heartbeat``/``finish``/``retry_later``/``record_created_repo`` are fenced by the
  lease owner: a worker that lost its lease changes nothing (they return False).
- Sweeps (:mod:`bot.sweeps`): ``enqueue_sweep`` queues one job per variant, never
  absorbed into another job nor absorbing one. When a variant's job ends (``finish`` or
  ``give_up``) and none of its sweep's variants is left to run, the same transaction
  queues the sweep's publishing job, or fails the sweep when no variant succeeded; when
  the publishing job ends, the sweep ends with it.
- Repo cleanups: a job that recorded ``created_repo`` and ends without success
  (``finish`` failed or skipped, ``give_up``) gets a pending cleanup in the same
  transaction. ``claim_cleanup`` hands a due one to one worker, never while a job of its
  recipe runs under a live lease; ``settle_cleanup`` ends it or makes it due again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

from .store import Job, Store, job_from_row

QUEUED, RUNNING, SUCCEEDED, FAILED, SKIPPED = "queued", "running", "succeeded", "failed", "skipped"
ACTIVE = (QUEUED, RUNNING)
DONE = (SUCCEEDED, FAILED, SKIPPED)
DELETED, KEPT, ABANDONED = "deleted", "kept", "abandoned"
"""How a repo cleanup ended."""


@dataclass(frozen=True)
class Cleanup:
    """A pending cleanup of the repo ``job_id`` created, on its ``tries``-th try."""

    job_id: int
    repo_id: str
    tries: int


def enqueue(
    db: sqlite3.Connection, recipe_id: int, owner: str, trigger: str, *, force: bool = False
) -> tuple[int, bool]:
    """Queue a job for the recipe inside the caller's transaction: (job id, absorbed).
    Holds the recipe's lock (:func:`recipe_lock`) until the transaction ends, so that
    concurrent enqueues and claims of one recipe take turns."""
    db.lock(recipe_lock(recipe_id))
    row = db.execute(
        "SELECT id FROM jobs WHERE recipe_id = ? AND status = ? AND sweep_id IS NULL"
        " ORDER BY id DESC LIMIT 1",
        (recipe_id, QUEUED),
    ).fetchone()
    if row is not None:
        db.execute(
            "UPDATE jobs SET triggers = triggers + 1,"
            " force = CASE WHEN ? = 1 THEN 1 ELSE force END WHERE id = ?",
            (int(force), row["id"]),
        )
        _log(db, row["id"], f"absorbed trigger: {trigger}")
        return int(row["id"]), True
    row = db.execute(
        "INSERT INTO jobs (recipe_id, owner, trigger, force, status, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (recipe_id, owner, trigger, int(force), QUEUED, time.time()),
    ).fetchone()
    job_id = int(row["id"])
    _log(db, job_id, f"queued: {trigger}")
    return job_id, False


def enqueue_sweep(db: sqlite3.Connection, sweep_id: int, recipe_id: int, owner: str,
                  labels: list[str]) -> list[int]:
    """Queue one job per variant of the sweep (labels in variant order), inside the
    caller's transaction; their ids."""
    db.lock(recipe_lock(recipe_id))
    ids = []
    for index, label in enumerate(labels):
        row = db.execute(
            "INSERT INTO jobs (recipe_id, owner, trigger, force, status, created_at, sweep_id,"
            " variant) VALUES (?, ?, ?, 1, ?, ?, ?, ?) RETURNING id",
            (recipe_id, owner, f"sweep {sweep_id}: {label}", QUEUED, time.time(), sweep_id,
             index),
        ).fetchone()
        ids.append(int(row["id"]))
        _log(db, ids[-1], f"queued: variant {label} of sweep {sweep_id}")
    return ids


def _sweep_step(db: sqlite3.Connection, job_id: int) -> None:
    """After a job ended: move its sweep on (see the module docstring)."""
    job = db.execute("SELECT id, sweep_id, variant, recipe_id, owner, status, commit_sha,"
                     " error FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if job is None or job["sweep_id"] is None:
        return
    sweep_id, now = job["sweep_id"], time.time()
    db.lock(f"sweep:{sweep_id}")  # variants ending at once (Postgres): one sees the others
    if job["variant"] is None:
        ok = job["status"] == SUCCEEDED
        db.execute(
            "UPDATE sweeps SET status = ?, commit_sha = ?, error = ?, finished_at = ?"
            " WHERE id = ?",
            ("succeeded" if ok else "failed", job["commit_sha"],
             None if ok else job["error"] or "publishing was skipped: the recipe was deleted",
             now, sweep_id),
        )
        return
    counts = {row["status"]: row["n"] for row in db.execute(
        "SELECT status, COUNT(*) AS n FROM jobs WHERE sweep_id = ? AND variant IS NOT NULL"
        " GROUP BY status", (sweep_id,))}
    if counts.get(QUEUED) or counts.get(RUNNING):
        return
    if not counts.get(SUCCEEDED):
        db.execute("UPDATE sweeps SET status = 'failed', error = ?, finished_at = ?"
                   " WHERE id = ? AND status = 'running'",
                   ("no variant of the sweep succeeded; see their jobs", now, sweep_id))
        return
    claimed = db.execute("UPDATE sweeps SET status = 'publishing' WHERE id = ?"
                         " AND status = 'running' RETURNING id", (sweep_id,)).fetchone()
    if claimed is None:
        return
    row = db.execute(
        "INSERT INTO jobs (recipe_id, owner, trigger, force, status, created_at, sweep_id)"
        " VALUES (?, ?, ?, 1, ?, ?, ?) RETURNING id",
        (job["recipe_id"], job["owner"], f"sweep {sweep_id}: publish the best variant",
         QUEUED, now, sweep_id),
    ).fetchone()
    _log(db, int(row["id"]), f"queued: publishing of sweep {sweep_id}")


def recipe_lock(recipe_id: int) -> str:
    """The key enqueues and claims of one recipe lock (:meth:`bot.store.Connection.lock`)."""
    return f"recipe:{recipe_id}"


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
            _schedule_cleanup(db, row["id"])
            _sweep_step(db, row["id"])
    return [row["id"] for row in lost]


_RUNNABLE = """
    ((j.status = :queued AND j.not_before <= :now)
     OR (j.status = :running AND j.lease_expires < :now AND j.attempts < :max_attempts))
    AND NOT EXISTS (
        SELECT 1 FROM jobs r WHERE r.recipe_id = j.recipe_id AND r.id != j.id
        AND r.status = :running AND r.lease_expires >= :now
        AND NOT (r.sweep_id = j.sweep_id AND r.variant IS NOT NULL AND j.variant IS NOT NULL
                 AND EXISTS (SELECT 1 FROM sweeps s WHERE s.id = j.sweep_id
                             AND s.publish = 'best')))
    AND NOT EXISTS (
        SELECT 1 FROM repo_cleanups c JOIN jobs d ON d.id = c.job_id
        WHERE d.recipe_id = j.recipe_id AND c.outcome IS NULL)
"""
"""A job ``j`` that may be claimed now (``:now``, ``:max_attempts``): no other job of its
recipe runs, except that the variants of a ``best`` sweep (which publish nothing) run
side by side on as many workers as claim them."""

CLAIM_CANDIDATES = 8
"""Runnable jobs one claim tries (others' claims may hold some of their recipes)."""


def claim(store: Store, worker: str, *, lease: float, max_attempts: int) -> Job | None:
    """The next runnable job, now leased to ``worker``; None when there is none.

    One candidate at a time, in id order, is locked, skipping rows other claims hold
    (Postgres); if its recipe's lock is free, the ``UPDATE`` checks again that it is
    runnable, in a statement that sees every claim committed before the lock was taken,
    so two workers never run jobs of one recipe at once."""
    now = time.time()
    params = {
        "running": RUNNING,
        "queued": QUEUED,
        "worker": worker,
        "now": now,
        "lease": lease,
        "max_attempts": max_attempts,
        "after": 0,
    }
    with store.write() as db:
        for _ in range(CLAIM_CANDIDATES):
            candidate = db.execute(
                f"SELECT j.id, j.recipe_id FROM jobs j WHERE j.id > :after AND {_RUNNABLE}"
                f" ORDER BY j.id LIMIT 1{db.skip_locked('j')}",
                params,
            ).fetchone()
            if candidate is None:
                return None
            params["after"] = candidate["id"]
            if not db.try_lock(recipe_lock(candidate["recipe_id"])):
                continue
            row = db.execute(
                f"""
                UPDATE jobs SET status = :running, lease_owner = :worker,
                    lease_expires = :now + :lease, attempts = attempts + 1,
                    started_at = :now, stage = 'claimed', progress = 0
                WHERE id = (SELECT j.id FROM jobs j WHERE j.id = :after AND {_RUNNABLE})
                RETURNING *
                """,
                params,
            ).fetchone()
            if row is not None:
                job = job_from_row(row)
                _log(db, job.id, f"attempt {job.attempts} claimed by {worker}")
                return job
        return None


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
    if status != SUCCEEDED:
        _schedule_cleanup(db, job_id)
    _sweep_step(db, job_id)
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


def record_created_repo(store: Store, job_id: int, worker: str, repo_id: str) -> bool:
    """Record, before creating it, that the job creates ``repo_id``; False if not held."""
    with store.write() as db:
        cur = db.execute(
            "UPDATE jobs SET created_repo = ? WHERE id = ? AND lease_owner = ? AND status = ?",
            (repo_id, job_id, worker, RUNNING),
        )
        if cur.rowcount != 1:
            return False
        _log(db, job_id, f"creating {repo_id}")
        return True


def claim_cleanup(store: Store, *, hold: float) -> Cleanup | None:
    """The next due cleanup, its try counted and held ``hold`` seconds (due again after
    that, should its worker die); None when there is none."""
    now = time.time()
    with store.write() as db:
        row = db.execute(
            f"""
            UPDATE repo_cleanups SET tries = tries + 1, not_before = :now + :hold
            WHERE outcome IS NULL AND not_before <= :now AND job_id = (
                SELECT c.job_id FROM repo_cleanups c JOIN jobs j ON j.id = c.job_id
                WHERE c.outcome IS NULL AND c.not_before <= :now
                  AND NOT EXISTS (
                      SELECT 1 FROM jobs r WHERE r.recipe_id = j.recipe_id
                      AND r.status = :running AND r.lease_expires >= :now)
                ORDER BY c.job_id LIMIT 1{db.skip_locked('c')})
            RETURNING job_id, repo_id, tries
            """,
            {"now": now, "hold": hold, "running": RUNNING},
        ).fetchone()
    return Cleanup(row["job_id"], row["repo_id"], row["tries"]) if row else None


def settle_cleanup(
    store: Store, job_id: int, line: str, *, outcome: str | None = None, retry_in: float = 0.0
) -> None:
    """Log ``line`` to the job; end its cleanup with ``outcome``, or with None make it
    due again in ``retry_in`` seconds."""
    with store.write() as db:
        db.execute(
            "UPDATE repo_cleanups SET outcome = ?, not_before = ? WHERE job_id = ?",
            (outcome, time.time() + retry_in, job_id),
        )
        _log(db, job_id, line)


def log(store: Store, job_id: int, line: str) -> None:
    """Append a line to a job's log."""
    store.append_log(job_id, line)


def _schedule_cleanup(db: sqlite3.Connection, job_id: int) -> None:
    """Queue the cleanup of the repo the job recorded creating, if any."""
    db.execute(
        "INSERT INTO repo_cleanups (job_id, repo_id)"
        " SELECT id, created_repo FROM jobs WHERE id = ? AND created_repo IS NOT NULL"
        " ON CONFLICT DO NOTHING",
        (job_id,),
    )


def _log(db: sqlite3.Connection, job_id: int, line: str) -> None:
    db.execute(
        "INSERT INTO job_logs (job_id, ts, line) VALUES (?, ?, ?)", (job_id, time.time(), line)
    )
