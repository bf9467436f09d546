"""Webhook benchmark: deliveries per second accepted by `mergebot serve` while a merge runs.

    python benchmarks/bench_webhooks.py [--clients 8] [--bandwidth 40] [--layers 8]

Starts a localhub process (throttled to BANDWIDTH MB/s so that the merge lasts a while) and
a `mergebot serve --workers 1` process (the worker merges in the same process as the web
server, as on a Space), submits a watched recipe, and while its job is running POSTs signed
v3 payloads to /webhooks/hub from CLIENTS concurrent connections: a third are the same
delivery again (duplicates), a third are new pushes to a watched source's main (they
coalesce into one queued job), a third are events to ignore (PR refs). It then does the same
with no merge running (baseline). Reports deliveries/s, latency percentiles, what the
answers were, how many jobs were created and whether the merge still succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import httpx2  # noqa: E402
from huggingface_hub import HfApi  # noqa: E402
from procs import free_port, start_localhub, wait_http  # noqa: E402

from merge_engine.synth import LlamaShape, write_family  # noqa: E402

TOKEN = "bench-token"
SECRET = "bench-secret"
REPOS = ["bench/base", "bench/donor-1", "bench/donor-2"]


def payload(kind: str, i: int) -> dict:
    repo = {"type": "model", "name": "bench/donor-1", "private": False}
    if kind == "duplicate":
        refs = [{"ref": "refs/heads/main", "oldSha": "a" * 40, "newSha": "b" * 40}]
    elif kind == "push":
        refs = [{"ref": "refs/heads/main", "oldSha": f"{i:040x}", "newSha": f"{i + 1:040x}"}]
    else:
        refs = [{"ref": "refs/pr/1", "oldSha": None, "newSha": f"{i:040x}"}]
    return {
        "event": {"action": "update", "scope": "repo.content"},
        "repo": repo,
        "updatedRefs": refs,
        "webhook": {"id": "bench", "version": 3},
    }


def blast(
    url: str, clients: int, seconds: float, until: threading.Event | None, offset: int
) -> dict:
    """POST deliveries from `clients` threads for `seconds` (or until `until` is set)."""
    latencies: list[float] = []
    answers: dict[str, int] = {}
    lock = threading.Lock()
    kinds = ("duplicate", "push", "ignored")
    stop_at = time.monotonic() + seconds

    def run(n: int) -> None:
        local_lat, local_ans = [], {}
        with httpx2.Client(headers={"X-Webhook-Secret": SECRET}, timeout=30) as client:
            i = 0
            while time.monotonic() < stop_at and not (until and until.is_set()):
                seq = offset + n * 1_000_000 + i
                started = time.perf_counter()
                r = client.post(f"{url}/webhooks/hub", json=payload(kinds[i % 3], seq))
                local_lat.append(time.perf_counter() - started)
                key = (
                    r.json().get("action", str(r.status_code))
                    if r.status_code == 200
                    else str(r.status_code)
                )
                local_ans[key] = local_ans.get(key, 0) + 1
                i += 1
        with lock:
            latencies.extend(local_lat)
            for k, v in local_ans.items():
                answers[k] = answers.get(k, 0) + v

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "deliveries": len(latencies),
        "seconds": round(elapsed, 2),
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
        "answers": answers,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--bandwidth", type=float, default=40.0, help="localhub MB/s")
    parser.add_argument("--layers", type=int, default=8, help="layers of the synthetic models")
    parser.add_argument("--seconds", type=float, default=30.0, help="longest blast")
    parser.add_argument("--data", type=Path, default=Path("bench-data/webhooks"))
    args = parser.parse_args()
    shape = LlamaShape(
        hidden=1024, intermediate=2816, layers=args.layers, vocab=16000, heads=16, kv_heads=8
    )
    models = args.data / f"models-{args.layers}"
    if not (models / "donor-2" / "config.json").exists():
        write_family(models, shape, donors=2, delta_scale=0.002)
    shutil.rmtree(args.data / "hub", ignore_errors=True)
    shutil.rmtree(args.data / "home", ignore_errors=True)
    env = {**os.environ, "HF_HUB_DISABLE_XET": "1"}
    procs: list[subprocess.Popen] = []
    try:
        hub, hub_url = start_localhub(args.data / "hub", "bench", TOKEN, args.bandwidth, env)
        procs.append(hub)
        api = HfApi(endpoint=hub_url, token=TOKEN)
        for name, repo in zip(("base", "donor-1", "donor-2"), REPOS, strict=True):
            api.create_repo(repo)
            api.upload_folder(folder_path=models / name, repo_id=repo)

        bot_port = free_port()
        bot_url = f"http://127.0.0.1:{bot_port}"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bot.cli",
                    "serve",
                    "--port",
                    str(bot_port),
                    "--workers",
                    "1",
                    "--log-level",
                    "warning",
                ],
                env={
                    **env,
                    "HF_ENDPOINT": hub_url,
                    "HF_TOKEN": TOKEN,
                    "WEBHOOK_SECRET": SECRET,
                    "MERGEBOT_HOME": str(args.data / "home"),
                    "MERGEBOT_DEVICE": "cpu",
                    "MERGEBOT_POLL_SECONDS": "0.2",
                },
            )
        )
        wait_http(f"{bot_url}/healthz", procs[-1])
        recipe = (
            f"merge_method: task_arithmetic\nbase_model: {REPOS[0]}\nmodels:\n"
            f"  - model: {REPOS[1]}\n    parameters: {{weight: 1.0}}\n"
            f"  - model: {REPOS[2]}\n    parameters: {{weight: 0.3}}\n"
        )
        answer = httpx2.post(
            f"{bot_url}/api/recipes",
            timeout=60,
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"recipe": recipe, "repo_id": "bench/merged", "watch": True},
        )
        answer.raise_for_status()
        job_id = answer.json()["job_id"]

        def job() -> dict:
            return httpx2.get(f"{bot_url}/api/jobs/{job_id}", timeout=30).json()

        while job()["status"] != "running":
            time.sleep(0.05)
        merge_started = time.perf_counter()
        finished = threading.Event()

        def watch() -> None:
            while job()["status"] == "running":
                time.sleep(0.1)
            finished.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        during = blast(bot_url, args.clients, args.seconds, finished, 0)
        merge_blasted = finished.is_set()
        watcher.join()
        merge_seconds = time.perf_counter() - merge_started
        merged = job()
        # Let the coalesced follow-up job run (it is skipped: the pushes were synthetic).
        time.sleep(2)
        baseline = blast(bot_url, args.clients, min(during["seconds"], 10), None, 10**9)
        jobs = [httpx2.get(f"{bot_url}/api/jobs/{i}", timeout=30).json() for i in range(1, 6)]
        jobs = [j for j in jobs if "status" in j]
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait()
    size = sum(f.stat().st_size for f in models.rglob("*.safetensors"))
    print(
        json.dumps(
            {
                "inputs_mb": round(size / 1e6),
                "bandwidth_mb_s": args.bandwidth,
                "clients": args.clients,
                "merge_seconds": round(merge_seconds, 1),
                "merge_status": merged["status"],
                "blast_ended_with_merge": merge_blasted,
                "during_merge": during,
                "no_merge": baseline,
                "jobs": [
                    {"id": j["id"], "status": j["status"], "triggers": j["triggers"]} for j in jobs
                ],
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
