"""Engine benchmark: the seed recipe's method on a generated llama family.

    python benchmarks/bench_merge.py --family 0.9b [--device cpu|cuda] [--data bench-data]
    python benchmarks/bench_merge.py --family 0.2b --method ties   # density 0.5, no accuracy
    python benchmarks/bench_merge.py --family 0.2b --method karcher   # or slerp, nuslerp, ...

Measures, in one run:
- the I/O floor: time to read every input file once and write a file of the output's size;
- the merge: wall time and peak RSS of a fresh ``merge-engine run`` process (interpreter
  and torch start-up included);
floor and merge alternate ``--repeat`` times and the medians are reported;
- accuracy (task_arithmetic only): the fraction of output elements that differ from the
  correctly rounded float64 result, and for comparison the same for plain bf16 math (what
  mergekit does).
Other ``--method`` values merge the same models with a method that needs whole-tensor
statistics, so their peak RSS shows what the executor's multi-pass scheme bounds (see
:data:`RECIPES`): ``ties`` (density 0.5: each task vector's top half by magnitude),
``slerp`` (t 0.3, base and donor 1), ``karcher`` (all three), ``arcee_fusion`` (base and
donor 1), ``nuslerp`` (donors 1 and 2 over the base, one angle per column).
The family is generated once under --data and reused (page cache warm for both timings).
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

import torch
from procs import wall_and_peak_rss
from safetensors import safe_open

from merge_engine.synth import BENCH_0_2B, BENCH_0_9B, write_family

FAMILIES = {"0.9b": BENCH_0_9B, "0.2b": BENCH_0_2B}
WEIGHTS = (1.0, 0.3)
ROWS = 256
DENSITY = 0.5
"""``--method ties``: every donor's density."""
RECIPES = {
    "task_arithmetic": ("base", [{"weight": w} for w in WEIGHTS], {}),
    "ties": ("base", [{"weight": w, "density": DENSITY} for w in WEIGHTS], {}),
    "slerp": ("base", [{}], {"t": 0.3}),
    "karcher": (None, [{}, {}, {}], {}),
    "arcee_fusion": ("base", [{}], {}),
    "nuslerp": ("base", [{"weight": w} for w in WEIGHTS],
                {"nuslerp_flatten": False, "nuslerp_row_wise": True}),
}
"""method -> (base or None, each further model's parameters, global parameters): the
models are the family's base (unless the base is None), then donor 1, 2, ..."""


def recipe_text(method: str, models: list[Path]) -> str:
    """The benchmark's recipe for ``method`` over the family ``models`` (base first)."""
    base, params, glob = RECIPES[method]
    listed = models[1:] if base else models
    lines = [f"merge_method: {method}"] + ([f"base_model: {models[0]}"] if base else [])
    if glob:
        lines += ["parameters:"] + [f"  {k}: {str(v).lower()}" for k, v in glob.items()]
    lines.append("models:")
    if method == "slerp":
        lines.append(f"  - model: {models[0]}")
    for model, p in zip(listed, params, strict=False):
        lines.append(f"  - model: {model}")
        if p:
            lines += ["    parameters:"] + [f"      {k}: {v}" for k, v in p.items()]
    return "\n".join(lines) + "\n"


def io_floor(inputs: list[Path], out_bytes: int, scratch: Path) -> float:
    """Seconds to read all input files and write ``out_bytes`` to a new file."""
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    start = time.perf_counter()
    for path in inputs:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
    with open(scratch, "wb", buffering=0) as f:
        left = out_bytes
        while left:
            left -= f.write(view[: min(left, len(view))])
    elapsed = time.perf_counter() - start
    scratch.unlink()
    return elapsed


def run_merge_process(recipe: Path, out: Path, device: str) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a fresh merge-engine process."""
    shutil.rmtree(out, ignore_errors=True)
    return wall_and_peak_rss([sys.executable, "-m", "merge_engine", "run", str(recipe),
                              str(out), "--device", device, "--quiet", "--random-seed", "0"])


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    """float64 -> bfloat16, correctly rounded (half to even). torch's own conversion goes
    through float32 and so rounds twice, which is wrong for about 0.1% of such values."""
    mantissa, exponent = torch.frexp(x)
    rounded = torch.round(torch.ldexp(mantissa, torch.full_like(exponent, 8)))
    return torch.ldexp(rounded, exponent - 8).to(torch.bfloat16)


def accuracy(models: list[Path], out: Path) -> tuple[float, float, int]:
    """(fraction differing from rounded float64, same for bf16 math, elements compared)."""
    files = {}
    for p in [*models, out]:
        for f in p.glob("*.safetensors"):
            with safe_open(f, "pt") as h:
                for name in h.keys():  # noqa: SIM118 - safe_open has no __iter__
                    files.setdefault(p, {})[name] = f
    wrong = wrong_bf16 = total = 0
    for name, out_file in files[out].items():
        handles = [safe_open(files[m][name], "pt") for m in models]
        merged = safe_open(out_file, "pt").get_slice(name)
        rows = merged.get_shape()[0]
        for r in range(0, rows, ROWS):
            b, *ts = (h.get_slice(name)[r:r + ROWS] for h in handles)
            ref = b.double() + sum(w * (t.double() - b.double())
                                   for w, t in zip(WEIGHTS, ts, strict=True))
            ref = round_bf16(ref)
            got = merged[r:r + ROWS]
            naive = b + sum(w * (t - b) for w, t in zip(WEIGHTS, ts, strict=True))
            wrong += (got != ref).sum().item()
            wrong_bf16 += (naive != ref).sum().item()
            total += ref.numel()
    return wrong / total, wrong_bf16 / total, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, default="0.9b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--repeat", type=int, default=5, help="runs of floor + merge")
    parser.add_argument("--method", choices=tuple(RECIPES), default="task_arithmetic")
    args = parser.parse_args()
    root = args.data / args.family
    models = [root / "base", root / "donor-1", root / "donor-2"]
    if not (root / "donor-2" / "config.json").exists():
        print(f"generating the {args.family} family under {root} ...", file=sys.stderr)
        write_family(root, FAMILIES[args.family], donors=2, delta_scale=0.002,
                     shard_bytes=1_000_000_000)
    recipe = root / f"recipe-{args.method}.yml"
    recipe.write_text(recipe_text(args.method, models))
    inputs = sorted(f for m in models for f in m.glob("*.safetensors"))
    in_bytes = sum(f.stat().st_size for f in inputs)
    out = args.data / f"out-{args.family}-{args.method}"
    out_bytes = sum(f.stat().st_size for f in models[0].glob("*.safetensors"))
    io_floor(inputs, out_bytes, args.data / "floor.bin")  # warm the page cache once
    floors, walls, rss = [], [], 0
    for _ in range(args.repeat):  # alternate, so drifting machine speed hits both alike
        floors.append(io_floor(inputs, out_bytes, args.data / "floor.bin"))
        wall, peak = run_merge_process(recipe, out, args.device)
        walls.append(wall)
        rss = max(rss, peak)
    floor, wall = statistics.median(floors), statistics.median(walls)
    figures = {
        "family": args.family, "method": args.method, "device": args.device,
        "cpus": os.cpu_count(),
        "input_gb": round(in_bytes / 1e9, 2), "runs": args.repeat,
        "io_floor_s": round(floor, 2), "wall_s": round(wall, 2),
        "wall_over_floor": round(wall / floor, 2),
        "wall_range_s": [round(min(walls), 2), round(max(walls), 2)],
        "peak_rss_mb": round(rss / 1e6),
    }
    if not args.skip_accuracy and args.method == "task_arithmetic":  # the reference's math
        frac, frac_bf16, total = accuracy(models, out)
        figures |= {"elements": total, "differ_from_f64_pct": round(100 * frac, 4),
                    "bf16_math_differ_pct": round(100 * frac_bf16, 2)}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
