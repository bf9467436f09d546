"""hf-jobs overhead: dispatch-to-commit of a merge run as a Job on localhub, against the
merge itself.

    python benchmarks/bench_jobs.py [--family 0.2b] [--runs 3] [--poll 1.0]

Against localhub (unthrottled, in this process; the Jobs are its subprocesses),
alternately:
- merge: ``merge_and_publish`` in this process, from resolving the sources to the commit;
- hf-jobs: ``HfJobsBackend.run`` from the dispatch (plan from headers, flavor, repo
  check, ``run_job``) until the bot holds the commit: localhub runs the Job's command
  (``python -m bot.cli run-job``) as a subprocess and the bot polls it every ``--poll``
  seconds. The Job pays for a fresh interpreter (torch and huggingface_hub imports) on
  top of the merge; on the Hub add the image pull and scheduling, which localhub has not.
Prints medians and the parts of the overhead: dispatch (until localhub created the Job),
the Job's own run (process start to exit) and the wait until the bot noticed its end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from huggingface_hub import HfApi  # noqa: E402

from bot import queue  # noqa: E402
from bot.backends import Dispatch, HfJobsBackend  # noqa: E402
from bot.localhub import serve_in_thread  # noqa: E402
from bot.publish import PublishRequest, merge_and_publish  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.store import Store  # noqa: E402
from merge_engine.synth import BENCH_0_2B, BENCH_0_9B, LlamaShape, write_family  # noqa: E402

FAMILIES = {"0.9b": BENCH_0_9B, "0.2b": BENCH_0_2B,
            "tiny": LlamaShape(hidden=64, intermediate=128, layers=2, vocab=128, heads=4,
                               kv_heads=2)}
TOKEN = "bench-token"
REPOS = ["bench/base", "bench/donor-1", "bench/donor-2"]
RECIPE = (f"merge_method: task_arithmetic\nbase_model: {REPOS[0]}\nmodels:\n"
          f"  - model: {REPOS[1]}\n    parameters: {{weight: 1.0}}\n"
          f"  - model: {REPOS[2]}\n    parameters: {{weight: 0.3}}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, default="0.2b")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--poll", type=float, default=1.0, help="jobs_poll_seconds")
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    args = parser.parse_args()
    root = args.data / f"{args.family}-jobs"
    if not (root / "donor-2" / "config.json").exists():
        print(f"generating {root} ...", file=sys.stderr)
        write_family(root, FAMILIES[args.family], donors=2, delta_scale=0.002)
    hub_data, home = args.data / "jobs-hub", args.data / "jobs-home"
    shutil.rmtree(hub_data, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
    hub = serve_in_thread(hub_data, {"bench": TOKEN})  # in this process: starts at once
    url = hub.url
    try:
        api = HfApi(endpoint=url, token=TOKEN)
        for name, repo in zip(("base", "donor-1", "donor-2"), REPOS, strict=True):
            api.create_repo(repo)
            api.upload_folder(folder_path=root / name, repo_id=repo)
        settings = Settings(home=home, endpoint=url, token=TOKEN, backend="hf-jobs",
                            jobs_image="mergebot-jobs:bench", jobs_poll_seconds=args.poll,
                            device="cpu")
        store = Store(settings.db_path)
        store.migrate()
        backend = HfJobsBackend(settings, store)
        rows = []
        for run in range(args.runs):
            work = home / f"work-{run}"
            start = time.perf_counter()
            merge_and_publish(PublishRequest(RECIPE, f"bench/local-{run}", TOKEN, work / "a",
                                             endpoint=url, device="cpu"))
            merge = time.perf_counter() - start
            with store.write() as db:
                recipe = store.add_recipe(db, owner="bench", yaml=RECIPE, private=False,
                                          repo_id=f"bench/jobs-{run}", watch=False, sources=[])
                job_id, _ = queue.enqueue(db, recipe, "bench", "bench")
            request = PublishRequest(RECIPE, f"bench/jobs-{run}", TOKEN, work / "b",
                                     endpoint=url, job_key=f"job-{job_id}", device="cpu")
            (work / "b").mkdir(parents=True)
            began = time.time()
            result = backend.run(Dispatch(job_id, 1, request), lambda stage, fraction: None)
            ended = time.time()
            info = api.inspect_job(job_id=store.last_run(job_id)["run_id"], namespace="bench")
            rows.append({
                "merge_s": merge, "jobs_s": ended - began,
                "dispatch_s": info.created_at.timestamp() - began,
                "job_process_s": (info.finished_at - info.started_at).total_seconds(),
                "noticed_after_s": ended - info.finished_at.timestamp(),
                "commit": result.commit_sha})
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                              for k, v in rows[-1].items()}), file=sys.stderr)
    finally:
        hub.stop()
    med = {k: round(statistics.median(r[k] for r in rows), 2)
           for k in ("merge_s", "jobs_s", "dispatch_s", "job_process_s", "noticed_after_s")}
    print(json.dumps({"family": args.family, "runs": args.runs, "poll_s": args.poll, **med,
                      "overhead_s": round(med["jobs_s"] - med["merge_s"], 2),
                      "jobs_over_merge": round(med["jobs_s"] / med["merge_s"], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
