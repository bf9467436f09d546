"""Work dirs of jobs: removed on every way a job fails for good, and swept on start
without touching a dir that another live worker is merging in."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bot import queue, workdirs
from bot.errors import TransientError
from bot.settings import Settings
from bot.store import Job, Store
from bot.worker import Worker
from merge_engine.errors import SourceError
from tests.bot.botutil import BOT
from tests.bot.test_worker import add_recipe


def leave_dir(root: Path, job: Job) -> Path:
    """What a worker killed mid-merge leaves behind: its attempt's dir with a shard in it."""
    path = workdirs.path(root, job)
    (path / "sources").mkdir(parents=True)
    (path / "sources" / "model-00001.safetensors").write_bytes(b"x")
    return path


def fast(settings: Settings, **overrides) -> Settings:
    return Settings(**{**settings.__dict__, "backoff_seconds": 0.01, **overrides})


@pytest.mark.parametrize(
    "error",
    [
        SourceError("model repo alice/donor-2 does not exist, or the token used cannot read it"),
        RuntimeError("the merge produced NaN"),
        TransientError("the Hub answered HTTP 502"),  # until max_attempts
    ],
    ids=["recipe-error", "runtime-error", "transient-exhausted"],
)
def test_a_job_failing_for_good_leaves_no_work_dir(settings, store: Store, error):
    used: list[Path] = []

    def failing(req, progress):
        (req.work_dir / "out").mkdir()
        (req.work_dir / "out" / "model-00001.safetensors").write_bytes(b"x")
        used.append(req.work_dir)
        raise error

    _, job_id = add_recipe(store)
    worker = Worker(fast(settings, max_attempts=2), store, publish=failing)
    deadline = time.monotonic() + 10
    while store.get_job(job_id).status in queue.ACTIVE and time.monotonic() < deadline:
        worker.run_once()
    assert store.get_job(job_id).status == "failed"
    assert len(set(used)) == len(used) >= 1  # one dir per attempt
    assert not any(path.exists() for path in used)
    assert list(settings.work_root.iterdir()) == []


def test_a_job_given_up_after_lease_expiries_leaves_no_work_dir(settings, store: Store):
    root = settings.work_root
    _, job_id = add_recipe(store)
    left = []
    for _ in range(2):  # the worker running it is killed twice
        left.append(leave_dir(root, queue.claim(store, "killed", lease=0.01, max_attempts=2)))
        time.sleep(0.03)
    _, other_id = add_recipe(store, repo_id=f"{BOT}/other")
    other = leave_dir(root, queue.claim(store, "alive", lease=30, max_attempts=2))

    assert Worker(fast(settings, max_attempts=2), store).run_once() is None
    job = store.get_job(job_id)
    assert job.status == "failed" and "in 2 attempt(s); giving up" in job.error
    assert not any(path.exists() for path in left)
    assert other.exists() and store.get_job(other_id).status == "running"


def test_a_starting_worker_sweeps_orphans_but_not_live_leases(settings, store: Store):
    root = settings.work_root
    # job 1: its first attempt's worker was killed; a live worker now runs attempt 2
    add_recipe(store, repo_id=f"{BOT}/live")
    dead_attempt = leave_dir(root, queue.claim(store, "killed", lease=0.01, max_attempts=5))
    time.sleep(0.03)
    live = leave_dir(root, queue.claim(store, "alive", lease=30, max_attempts=5))
    # job 2: finished, but its dir was left behind
    _, done_id = add_recipe(store, repo_id=f"{BOT}/done")
    done = leave_dir(root, queue.claim(store, "w", lease=30, max_attempts=5))
    assert queue.finish(store, done_id, "w", queue.FAILED, error="boom")
    # job 3: its worker was killed (lease expired, attempts left: it will run again)
    add_recipe(store, repo_id=f"{BOT}/killed")
    killed = leave_dir(root, queue.claim(store, "killed", lease=0.01, max_attempts=5))
    (root / "job-99").mkdir()  # an earlier version's name, of a job that is not running
    (root / "notes").mkdir()  # not a job dir: never touched
    time.sleep(0.03)

    stop = threading.Event()
    stop.set()  # sweep, then stop before claiming anything
    Worker(settings, store).run(stop)
    assert sorted(p.name for p in root.iterdir()) == sorted([live.name, "notes"])
    assert (live / "sources" / "model-00001.safetensors").read_bytes() == b"x"
    assert not any(p.exists() for p in (dead_attempt, done, killed))
    assert workdirs.sweep(root, store) == []  # nothing left to sweep
