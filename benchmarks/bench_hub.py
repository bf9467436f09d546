"""Hub benchmark: merge from and publish to `mergebot localhub --bandwidth`, end to end.

    python benchmarks/bench_hub.py [--family 0.9b] [--bandwidth 200] [--shard-mb 250]

Measures, against a localhub process throttled to BANDWIDTH MB/s each way:
- download alone: the time to download every source weight file at that bandwidth;
- end to end: `merge_and_publish` from resolving the sources to the commit (downloads,
  merge, upload of the output and the commit, overlapped);
- peak disk of the job's work directory, sampled every 0.1 s, against the bound
  (models + 1) x 2 shards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from huggingface_hub import HfApi, hf_hub_download  # noqa: E402
from procs import start_localhub  # noqa: E402

from bot.publish import PublishRequest, merge_and_publish  # noqa: E402
from merge_engine.synth import BENCH_0_2B, BENCH_0_9B, write_family  # noqa: E402

FAMILIES = {"0.9b": BENCH_0_9B, "0.2b": BENCH_0_2B}
TOKEN = "bench-token"
REPOS = ["bench/base", "bench/donor-1", "bench/donor-2"]


def tree_bytes(root: Path) -> int:
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):  # deleted while we looked
                total += os.path.getsize(os.path.join(d, f))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, default="0.9b")
    parser.add_argument("--bandwidth", type=float, default=200.0, help="MB/s each way")
    parser.add_argument("--shard-mb", type=int, default=250)
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    args = parser.parse_args()
    shard = args.shard_mb * 1_000_000
    root = args.data / f"{args.family}-shards-{args.shard_mb}mb"
    if not (root / "donor-2" / "config.json").exists():
        print(f"generating {root} ...", file=sys.stderr)
        write_family(root, FAMILIES[args.family], donors=2, delta_scale=0.002, shard_bytes=shard)
    local = [root / "base", root / "donor-1", root / "donor-2"]
    hub_data = args.data / "hub"
    shutil.rmtree(hub_data, ignore_errors=True)

    proc, url = start_localhub(hub_data, "bench", TOKEN)  # load the sources unthrottled
    api = HfApi(endpoint=url, token=TOKEN)
    for folder, repo in zip(local, REPOS, strict=True):
        api.create_repo(repo)
        api.upload_folder(folder_path=folder, repo_id=repo)
    proc.terminate()
    proc.wait()

    proc, url = start_localhub(hub_data, "bench", TOKEN, args.bandwidth)
    try:
        weights = [(repo, f) for repo in REPOS for f in HfApi(endpoint=url, token=TOKEN)
                   .list_repo_files(repo) if f.endswith(".safetensors")]
        scratch = args.data / "download-alone"
        shutil.rmtree(scratch, ignore_errors=True)
        start = time.perf_counter()
        with ThreadPoolExecutor(len(REPOS)) as pool:
            list(pool.map(lambda rf: hf_hub_download(rf[0], rf[1], endpoint=url, token=TOKEN,
                                                     local_dir=scratch / rf[0]), weights))
        download_alone = time.perf_counter() - start
        shutil.rmtree(scratch)

        work = args.data / "hub-job"
        shutil.rmtree(work, ignore_errors=True)
        recipe = (f"merge_method: task_arithmetic\nbase_model: {REPOS[0]}\nmodels:\n"
                  f"  - model: {REPOS[1]}\n    parameters: {{weight: 1.0}}\n"
                  f"  - model: {REPOS[2]}\n    parameters: {{weight: 0.3}}\n")
        peak, stop = [0], threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                peak[0] = max(peak[0], tree_bytes(work))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        result = merge_and_publish(PublishRequest(
            recipe_text=recipe, repo_id="bench/merged", token=TOKEN, work_dir=work,
            endpoint=url, device="cpu", random_seed=0, out_shard_size=shard))
        end_to_end = time.perf_counter() - start
        stop.set()
        sampler.join()
    finally:
        proc.terminate()
        proc.wait()
    largest = max(f.stat().st_size for p in local for f in p.glob("*.safetensors"))
    inputs = sum(f.stat().st_size for p in local for f in p.glob("*.safetensors"))
    print(json.dumps({
        "family": args.family, "bandwidth_mb_s": args.bandwidth, "input_gb": round(inputs / 1e9, 2),
        "shards_per_model": len(list(local[0].glob("*.safetensors"))),
        "download_alone_s": round(download_alone, 1), "end_to_end_s": round(end_to_end, 1),
        "end_to_end_over_download": round(end_to_end / download_alone, 2),
        "peak_work_dir_gb": round(peak[0] / 1e9, 2),
        "bound_gb": round((len(REPOS) + 1) * 2 * largest / 1e9, 2),
        "commit": result.commit_sha,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
