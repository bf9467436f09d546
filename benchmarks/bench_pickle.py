"""Pickle (.bin) sources against safetensors: the same family, the same recipe.

    python benchmarks/bench_pickle.py --family 0.9b [--repeat 3] [--data bench-data]

The family is generated as safetensors shards (1 GB each) under --data, then copied as
``pytorch_model-0000i-of-0000N.bin`` shards with ``pytorch_model.bin.index.json`` (as
transformers saves them). A fresh ``merge-engine run`` process merges each copy with the
task_arithmetic recipe, alternately ``--repeat`` times; the medians of wall time and the
largest peak RSS of each, and their ratios (goals: wall <= 1.3x, RSS <= 1.2x), are
printed, and the two outputs are checked to be byte-identical.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import statistics
import sys
from pathlib import Path

from bench_merge import FAMILIES, recipe_text, run_merge_process

from merge_engine.synth import save_as_bin, write_family


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, default="0.9b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = args.data / args.family
    models = [root / "base", root / "donor-1", root / "donor-2"]
    if not (root / "donor-2" / "config.json").exists():
        print(f"generating the {args.family} family under {root} ...", file=sys.stderr)
        write_family(root, FAMILIES[args.family], donors=2, delta_scale=0.002,
                     shard_bytes=1_000_000_000)
    bins = [args.data / f"{args.family}-bin" / m.name for m in models]
    for model, copy in zip(models, bins, strict=True):
        if not (copy / "config.json").exists():
            print(f"saving {model.name} as .bin shards ...", file=sys.stderr)
            save_as_bin(model, copy)
    runs: dict[str, tuple[list[float], int]] = {"safetensors": ([], 0), "bin": ([], 0)}
    for _ in range(args.repeat):  # alternate, so drifting machine speed hits both alike
        for kind, family in (("safetensors", models), ("bin", bins)):
            recipe = args.data / f"recipe-pickle-{kind}.yml"
            recipe.write_text(recipe_text("task_arithmetic", family))
            wall, peak = run_merge_process(recipe, args.data / f"out-pickle-{kind}",
                                           args.device)
            walls, rss = runs[kind]
            runs[kind] = ([*walls, wall], max(rss, peak))
    outputs = [args.data / f"out-pickle-{kind}" for kind in runs]
    shards = sorted(p.name for p in outputs[0].glob("*.safetensors"))
    identical = bool(shards) and all(
        filecmp.cmp(outputs[0] / s, outputs[1] / s, shallow=False) for s in shards)
    wall = {kind: statistics.median(walls) for kind, (walls, _) in runs.items()}
    rss = {kind: peak for kind, (_, peak) in runs.items()}
    print(json.dumps({
        "family": args.family, "device": args.device, "cpus": os.cpu_count(),
        "runs": args.repeat,
        "bin_gb": round(sum(f.stat().st_size for m in bins for f in m.glob("*.bin")) / 1e9, 2),
        "wall_s": {k: round(v, 2) for k, v in wall.items()},
        "peak_rss_mb": {k: round(v / 1e6) for k, v in rss.items()},
        "wall_ratio": round(wall["bin"] / wall["safetensors"], 3),
        "rss_ratio": round(rss["bin"] / rss["safetensors"], 3),
        "outputs_identical": identical,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
