"""One fleet worker process whose merge is a fixed-duration stand-in, for the multi-process
tests and ``benchmarks/bench_scale.py``: ``python -m tests.fleet_worker HOLD_SECONDS``.

It reads its settings from the environment like ``mergebot worker`` (the shared
``MERGEBOT_DATABASE_URL``, ``HF_ENDPOINT``, ``HF_TOKEN``, its own ``MERGEBOT_HOME``) and
runs the real :class:`bot.worker.Worker` (claims, leases, heartbeats, retries, fencing);
only ``publish`` is replaced: it reports progress for HOLD seconds, then publishes one
small commit the way ``merge_and_publish`` does (recording the repo before creating it,
the job key in the commit message, an existing commit for the key reused). Each hold is
appended to ``$MERGEBOT_HOME/holds.jsonl`` ({job, repo, pid, start, end}) so a test can check
that holds of one recipe never overlap. ``$MERGEBOT_HOME/ready`` appears once the worker
polls; SIGTERM stops it after the running job.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time

from huggingface_hub import CommitOperationAdd, HfApi

from bot.database import open_store
from bot.publish import JOB_MARKER, PublishRequest, PublishResult, find_job_commit
from bot.settings import Settings
from bot.worker import Worker


def stand_in(settings: Settings, hold: float):
    holds = settings.home / "holds.jsonl"

    def publish(req: PublishRequest, report) -> PublishResult:
        api = HfApi(endpoint=req.endpoint, token=req.token)
        url = f"{req.endpoint}/{req.repo_id}"
        if req.job_key and (done := find_job_commit(api, req.repo_id, req.job_key)):
            return PublishResult(req.repo_id, done, url, {}, created_repo=False,
                                 reused_commit=True)
        start = time.time()
        steps = 10
        for i in range(steps):
            report("merging", i / steps)
            time.sleep(hold / steps)
        end = time.time()
        with holds.open("a") as f:
            f.write(json.dumps({"job": req.job_key, "repo": req.repo_id, "pid": os.getpid(),
                                "start": start, "end": end}) + "\n")
        created = not api.repo_exists(req.repo_id)
        if created:
            if req.before_create is not None:
                req.before_create()
            api.create_repo(req.repo_id, exist_ok=True)
        info = api.create_commit(
            req.repo_id,
            [CommitOperationAdd("merge.json", io.BytesIO(json.dumps(
                {"job": req.job_key, "start": start, "end": end}).encode()))],
            commit_message=req.trigger,
            commit_description=f"stand-in merge\n\n{JOB_MARKER}{req.job_key}",
        )
        return PublishResult(req.repo_id, info.oid, url, {}, created_repo=created,
                             reused_commit=False)

    return publish


def main() -> None:
    hold = float(sys.argv[1])
    settings = Settings.from_env()
    store = open_store(settings)
    store.migrate()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: threading.Thread(target=stop.set).start())
        # not stop.set() itself: the handler runs in the main thread, which may be inside
        # stop.wait() holding the event's lock (a deadlock seen in a fleet test)
    worker = Worker(settings, store, publish=stand_in(settings, hold))
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "ready").write_text(worker.name)
    worker.run(stop)


if __name__ == "__main__":
    main()
