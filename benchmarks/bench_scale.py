"""Fleet scaling: N worker processes sharing only a Postgres URL and a localhub.

    python benchmarks/bench_scale.py [--workers 1 2 4 8] [--hold 2.0]

For each N: a fresh database on a throwaway Postgres server (tests/pgserver.py), N
processes of ``tests/fleet_worker.py`` (the real ``Worker``: claims, leases, heartbeats,
fencing; each with its own MERGEBOT_HOME), whose merge is a stand-in that holds HOLD
seconds and then publishes one small commit to localhub with the job key. Measures:
- throughput: 8N jobs on distinct recipes queued at once, wall time from the queueing
  to the last success; X(N) jobs per second and efficiency X(N) / (N X(1));
- exclusivity: one recipe submitted 8N times, one every HOLD/8 s, while N workers are
  idle; how many jobs that made (coalescing), whether any two of its holds overlapped,
  and that each job left exactly one commit.
The stand-in replaces the merge because this 2-core machine cannot run 8 real merges at
once: the figure measures the queue's coordination, not merge speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from huggingface_hub import HfApi  # noqa: E402
from procs import start_localhub  # noqa: E402

from bot import queue  # noqa: E402
from bot.publish import JOB_MARKER  # noqa: E402
from bot.store_pg import PostgresStore  # noqa: E402
from tests.pgserver import PgServer, unavailable  # noqa: E402

BOT, TOKEN = "mergebot", "hf_bench_token"


def start_workers(n: int, root: Path, hub: str, db_url: str, hold: float) -> list:
    procs = []
    for i in range(n):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": hub, "HF_TOKEN": TOKEN,
               "MERGEBOT_DATABASE_URL": db_url, "MERGEBOT_HOME": str(root / f"w{i}"),
               "MERGEBOT_LEASE_SECONDS": "10", "MERGEBOT_POLL_SECONDS": "0.05"}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.fleet_worker", str(hold)],
                                      env=env, cwd=ROOT, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 300
    while not all((root / f"w{i}" / "ready").exists() for i in range(n)):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit("the workers did not start")
        time.sleep(0.1)
    return procs


def wait_done(store: PostgresStore, jobs: list[int]) -> float:
    """Poll until every job succeeded; the time.time() it was seen."""
    while True:
        with store.read() as db:
            rows = db.execute("SELECT status FROM jobs WHERE id = ANY(?)", (jobs,)).fetchall()
        statuses = {r["status"] for r in rows}
        if statuses <= {queue.SUCCEEDED}:
            return time.time()
        if statuses & {queue.FAILED, queue.SKIPPED}:
            raise SystemExit(f"a job ended {statuses}")
        time.sleep(0.05)


def add_recipe(store: PostgresStore, db, repo: str) -> int:
    return store.add_recipe(db, owner="alice", yaml="merge_method: linear\n", repo_id=repo,
                            private=False, watch=False, sources=[])


def run(n: int, server: PgServer, hub: str, root: Path, hold: float) -> dict:
    url = server.database_url(f"scale{n}")
    store = PostgresStore(url)
    store.migrate()
    procs = start_workers(n, root / f"n{n}", hub, url, hold)
    try:
        with store.write() as db:
            recipes = [add_recipe(store, db, f"{BOT}/n{n}-r{i}") for i in range(8 * n)]
        start = time.time()
        with store.write() as db:
            jobs = [queue.enqueue(db, r, "alice", "bench", force=True)[0] for r in recipes]
        seconds = wait_done(store, jobs) - start
        with store.read() as db:
            timed = {f"job-{r['id']}": r for r in db.execute(
                "SELECT id, lease_owner, started_at, finished_at FROM jobs WHERE id = ANY(?)",
                (jobs,)).fetchall()}
        # One recipe submitted 8N times while the fleet is idle.
        repo = f"{BOT}/n{n}-same"
        with store.write() as db:
            same = add_recipe(store, db, repo)
        same_jobs = set()
        for i in range(8 * n):
            with store.write() as db:
                same_jobs.add(queue.enqueue(db, same, "alice", f"again {i}", force=True)[0])
            time.sleep(hold / 8)
        wait_done(store, sorted(same_jobs))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
        store.close()
    all_holds = [json.loads(line) for i in range(n)
                 for line in (root / f"n{n}" / f"w{i}" / "holds.jsonl").read_text().splitlines()]
    holds = sorted((h["start"], h["end"]) for h in all_holds if h["repo"] == repo)
    # Where a job's time goes besides the hold: claim -> hold start (the job-marker lookup),
    # hold end -> finish recorded (create the repo, commit, finish), and the worker's gap
    # between finishing one job and claiming the next.
    mine = [(timed[h["job"]], h) for h in all_holds if h["job"] in timed]
    before = sum(h["start"] - j["started_at"] for j, h in mine) / len(mine)
    after = sum(j["finished_at"] - h["end"] for j, h in mine) / len(mine)
    by_worker: dict = {}
    for job, h in mine:
        by_worker.setdefault(h["pid"], []).append((job["started_at"], job["finished_at"]))
    idle = [b[0] - a[1] for runs in by_worker.values()
            for a, b in zip(sorted(runs), sorted(runs)[1:], strict=False)]
    overlaps = sum(b[0] < a[1] for a, b in zip(holds, holds[1:], strict=False))
    messages = [f"{c.title}\n{c.message}" for c in HfApi(endpoint=hub, token=TOKEN)
                .list_repo_commits(repo)]
    once = all(sum(f"{JOB_MARKER}job-{j}" in m.splitlines() for m in messages) == 1
               for j in same_jobs)
    return {"workers": n, "jobs": 8 * n, "seconds": round(seconds, 2),
            "jobs_per_s": round(8 * n / seconds, 3), "same_recipe_submissions": 8 * n,
            "same_recipe_jobs": len(same_jobs), "same_recipe_overlaps": overlaps,
            "one_commit_per_job": once, "claim_to_hold_s": round(before, 3),
            "hold_to_finish_s": round(after, 3),
            "finish_to_next_claim_s": round(sum(idle) / max(len(idle), 1), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--hold", type=float, default=2.0, help="stand-in merge seconds")
    args = parser.parse_args()
    if (reason := unavailable()) is not None:
        raise SystemExit(f"no Postgres server: {reason}")
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    server = PgServer().start()
    hub_proc, hub = start_localhub(root / "hub", BOT, TOKEN)
    try:
        results = [run(n, server, hub, root, args.hold) for n in args.workers]
    finally:
        hub_proc.terminate()
        hub_proc.wait()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    base = results[0]["jobs_per_s"] / results[0]["workers"]
    for r in results:
        r["efficiency"] = round(r["jobs_per_s"] / (r["workers"] * base), 3)
        print(json.dumps(r))
    print("\n| N | jobs | s | jobs/s | efficiency | same recipe: submissions -> jobs, overlaps |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['jobs']} | {r['seconds']} | {r['jobs_per_s']} | "
              f"{r['efficiency']} | {r['same_recipe_submissions']} -> {r['same_recipe_jobs']},"
              f" {r['same_recipe_overlaps']} |")


if __name__ == "__main__":
    main()
