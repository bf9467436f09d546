"""A fleet: worker processes that share only a Postgres URL and the Hub finish every job
exactly once, survive a kill -9 mid-merge, and never run one recipe twice at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bot import queue
from bot.publish import JOB_MARKER
from bot.store_pg import PostgresStore
from tests.bot.botutil import BOT, BOT_TOKEN, recipe_yaml, wait_for

ROOT = Path(__file__).resolve().parents[2]


def start_worker(home: Path, hub_url: str, db_url: str, hold: float) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_DISABLE_XET": "1",
        "HF_ENDPOINT": hub_url,
        "HF_TOKEN": BOT_TOKEN,
        "MERGEBOT_DATABASE_URL": db_url,
        "MERGEBOT_HOME": str(home),
        "MERGEBOT_LEASE_SECONDS": "4",  # room for heartbeats on a loaded machine
        "MERGEBOT_POLL_SECONDS": "0.05",
        "MERGEBOT_BACKOFF_SECONDS": "0.1",
    }
    return subprocess.Popen([sys.executable, "-m", "tests.fleet_worker", str(hold)], env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def add_recipe(store: PostgresStore, repo: str) -> int:
    with store.write() as db:
        return store.add_recipe(db, owner="alice", yaml=recipe_yaml(), repo_id=repo,
                                private=False, watch=False, sources=[])


def submit(store: PostgresStore, recipe: int, trigger: str) -> int:
    with store.write() as db:
        return queue.enqueue(db, recipe, "alice", trigger, force=True)[0]


def job_commits(hub, repo: str, job_id: int) -> int:
    marker = f"{JOB_MARKER}job-{job_id}"
    return sum(marker in f"{c.title}\n{c.message}".splitlines()
               for c in hub.api(BOT).list_repo_commits(repo))


def test_worker_processes_sharing_only_the_database_finish_each_job_once(
    bothub, pg_url, tmp_path
):
    store = PostgresStore(pg_url)
    store.migrate()
    homes = [tmp_path / f"worker-{i}" for i in range(3)]
    procs = [start_worker(home, bothub.url, pg_url, hold=1.0) for home in homes]
    try:
        wait_for(lambda: all((home / "ready").exists() for home in homes), timeout=120,
                 what="the workers to start")
        # The same recipe submitted again and again while the fleet works.
        burst = add_recipe(store, f"{BOT}/burst")
        burst_jobs: set[int] = set()

        def keep_submitting() -> None:
            for i in range(16):
                burst_jobs.add(submit(store, burst, f"burst {i}"))
                time.sleep(0.3)

        submitter = threading.Thread(target=keep_submitting)
        submitter.start()
        repos = {submit(store, add_recipe(store, f"{BOT}/m{i}"), f"submitted {i}"):
                 f"{BOT}/m{i}" for i in range(6)}
        # kill -9 a worker in the middle of a merge
        victim = wait_for(lambda: next((j for j in map(store.get_job, repos)
                                        if j.stage == "merging"), None), timeout=60)
        os.kill(int(victim.lease_owner.split(":")[1]), signal.SIGKILL)
        submitter.join()
        for job_id in burst_jobs:
            repos[job_id] = f"{BOT}/burst"
        wait_for(lambda: all(store.get_job(j).status == queue.SUCCEEDED for j in repos),
                 timeout=90, what="every job to succeed")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        store.close()
    assert sum(proc.returncode == -signal.SIGKILL for proc in procs) == 1
    assert store.get_job(victim.id).attempts == 2  # another worker took it over
    for job_id, repo in repos.items():
        assert job_commits(bothub, repo, job_id) == 1, (
            f"job {job_id} on {repo}: {store.get_job(job_id)} {store.log_tail(job_id)} "
            f"{[(c.title, c.message) for c in bothub.api(BOT).list_repo_commits(repo)]}")
    holds = [json.loads(line) for home in homes if (home / "holds.jsonl").exists()
             for line in (home / "holds.jsonl").read_text().splitlines()]
    burst_holds = sorted((h["start"], h["end"]) for h in holds if h["repo"] == f"{BOT}/burst")
    assert len(burst_holds) >= 2  # the burst coalesced into a few jobs, not one per trigger
    assert len(burst_holds) < 16
    assert all(end <= next_start for (_, end), (next_start, _) in
               zip(burst_holds, burst_holds[1:], strict=False))  # one merge at a time
