"""Multi-stage recipes: what validating and re-running a two-stage recipe costs.

A 0.2B llama-shaped family (BENCH_0_2B, bf16: a base and three donors). Stage ``mid`` is a
linear merge of donors 1 and 2, stage ``final`` a task_arithmetic of mid and donor 3 onto
the base. Measured, each as a fresh process (wall time, peak RSS):
- ``merge-engine validate`` of the two stages (stage 2 planned from a skeleton of mid:
  real headers over sparse data) and the skeleton's apparent vs allocated bytes;
- ``run_stages`` with an empty stage cache (both stages merged), then again with mid in
  the cache (only the final stage merged), against one plain ``run_merge`` of one stage.

    python benchmarks/bench_multistage.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import wall_and_peak_rss  # noqa: E402

from merge_engine.multistage import validate_stages, write_skeleton  # noqa: E402
from merge_engine.synth import BENCH_0_2B, write_family  # noqa: E402

RUN = """
import sys, time
from pathlib import Path
from bot.stage_cache import StageDirCache
from merge_engine.multistage import run_stages
cache = StageDirCache(Path(sys.argv[3]), 10**12)
started = time.perf_counter()
run_stages(Path(sys.argv[1]).read_text(), sys.argv[2], cache=cache, device="cpu", random_seed=0)
print(f"  in process: {time.perf_counter() - started:.2f} s", file=sys.stderr)
"""


def recipe(base: Path, d1: Path, d2: Path, d3: Path) -> str:
    return (f"name: mid\nmerge_method: linear\nmodels:\n"
            f"  - model: {d1}\n    parameters: {{weight: 0.5}}\n"
            f"  - model: {d2}\n    parameters: {{weight: 0.5}}\n---\n"
            f"name: final\nmerge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
            f"  - model: mid\n    parameters: {{weight: 1.0}}\n"
            f"  - model: {d3}\n    parameters: {{weight: 0.3}}\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        family = write_family(root / "family", BENCH_0_2B, donors=3)
        text = recipe(*family)
        path = root / "multi.yml"
        path.write_text(text)
        py = sys.executable
        single = root / "single.yml"
        single.write_text(text.split("---\n")[0])
        for label, what in (("2 stages", path), ("stage mid alone", single)):
            wall, rss = wall_and_peak_rss([py, "-m", "merge_engine", "validate", str(what)])
            print(f"validate, {label}: {wall:.2f} s, peak RSS {rss / 2**20:.0f} MiB")
        started = time.perf_counter()
        plans = validate_stages(text)
        print(f"  validate_stages in process: {time.perf_counter() - started:.2f} s")
        skeleton = root / "skeleton"
        write_skeleton(plans[0], skeleton)
        st = (skeleton / "model.safetensors").stat()
        print(f"  skeleton of mid: {st.st_size / 1e6:.0f} MB apparent, "
              f"{st.st_blocks * 512 / 1e6:.2f} MB allocated")
        script = root / "run.py"
        script.write_text(RUN)
        cache = root / "cache"
        for label, out in (("empty cache (both stages)", "a"), ("mid cached (final only)", "b")):
            wall, rss = wall_and_peak_rss([py, str(script), str(path), str(root / out),
                                           str(cache)])
            print(f"run_stages, {label}: {wall:.2f} s, peak RSS {rss / 2**20:.0f} MiB")
        wall, rss = wall_and_peak_rss([py, "-m", "merge_engine", "run", str(single),
                                       str(root / "c"), "--device", "cpu", "--quiet"])
        print(f"run_merge of stage mid alone: {wall:.2f} s, peak RSS {rss / 2**20:.0f} MiB")
        print(f"cpu count {os.cpu_count()}")


if __name__ == "__main__":
    main()
