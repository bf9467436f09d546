"""LoRA extraction: the error curve over ranks, time and peak memory.

A 0.2B llama-shaped base (BENCH_0_2B, float32) and a donor = base + a rank-32 change on
every weight matrix with singular values 1/i (i = 1..32) times a per-matrix scale.
`merge-engine extract-lora` at max ranks 1, 4, 8, 16, 32: the largest relative error
over modules, against the exact one sqrt(sum_{i>k} 1/i^2 / sum_i 1/i^2), with wall time
and peak RSS of the process.

``--merge``: instead, `merge-engine run` of task_arithmetic(base, donor x 0.5) (a merge
that is base + a rank-32 change) without and with `--adapter --max-rank 32`: wall time,
peak RSS, the adapter's worst error and its size against the full weights'.

    python benchmarks/bench_extract.py [--keep DIR] [--merge]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import wall_and_peak_rss  # noqa: E402

from merge_engine.synth import BENCH_0_2B, write_model  # noqa: E402

CHANGE_RANK = 32
RANKS = (1, 4, 8, 16, 32)


def make_family(root: Path) -> tuple[Path, Path]:
    generated = write_model(root / "gen", BENCH_0_2B, seed=3)
    config = json.loads((generated / "config.json").read_text()) | {"torch_dtype": "float32"}
    singular = torch.tensor([1.0 / i for i in range(1, CHANGE_RANK + 1)], dtype=torch.float64)
    out = {name: root / name for name in ("base", "donor")}
    for d in out.values():
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
    tensors = {k: v.float() for f in sorted(generated.glob("*.safetensors"))
               for k, v in load_file(f).items()}
    save_file(tensors, out["base"] / "model.safetensors", metadata={"format": "pt"})
    gen = torch.Generator().manual_seed(0)
    for t in tensors.values():
        if t.dim() == 2:
            u, _ = torch.linalg.qr(torch.randn(t.shape[0], CHANGE_RANK, generator=gen))
            v, _ = torch.linalg.qr(torch.randn(t.shape[1], CHANGE_RANK, generator=gen))
            t += 0.05 * float(t.norm()) * (u * singular.float()) @ v.T
    save_file(tensors, out["donor"] / "model.safetensors", metadata={"format": "pt"})
    return out["base"], out["donor"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", type=Path, help="keep the family here")
    parser.add_argument("--merge", action="store_true",
                        help="time a merge without and with its adapter")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        base, donor = make_family(root)
        if args.merge:
            merge_with_adapter(root, base, donor)
            return
        inv = [1.0 / i**2 for i in range(1, CHANGE_RANK + 1)]
        print("| max rank | worst relative error | exact | wall | peak RSS | adapter size |")
        print("| --- | --- | --- | --- | --- | --- |")
        for rank in RANKS:
            out = root / f"r{rank}"
            wall, rss = wall_and_peak_rss([
                sys.executable, "-m", "merge_engine", "extract-lora", str(donor), str(base),
                str(out), "--max-rank", str(rank), "--device", "cpu"])
            card = (out / "README.md").read_text()
            worst = card.split("worst relative error: ")[1].split("\n")[0]
            exact = math.sqrt(sum(inv[rank:]) / sum(inv))
            size = (out / "adapter_model.safetensors").stat().st_size
            print(f"| {rank} | {worst} | {exact:.3g} | {wall:.1f} s | {rss / 1e6:,.0f} MB | "
                  f"{size / 1e6:.1f} MB |")


def merge_with_adapter(root: Path, base: Path, donor: Path) -> None:
    recipe = root / "recipe.yml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                      f"  - model: {donor}\n    parameters:\n      weight: 0.5\n"
                      "dtype: float32\n")
    print("| run | wall | peak RSS | worst relative error | adapter | full weights |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, extra in (("merge", []), ("merge + adapter (max rank 32)",
                                         ["--adapter", str(root / "ad"), "--max-rank", "32"])):
        out = root / f"merged-{len(extra)}"
        wall, rss = wall_and_peak_rss([
            sys.executable, "-m", "merge_engine", "run", str(recipe), str(out), "--device",
            "cpu", "--quiet", *extra])
        full = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        worst = size = "-"
        if extra:
            card = (root / "ad" / "README.md").read_text()
            worst = card.split("worst relative error: ")[1].split("\n")[0]
            size = f"{(root / 'ad' / 'adapter_model.safetensors').stat().st_size / 1e6:.1f} MB"
        print(f"| {label} | {wall:.1f} s | {rss / 1e6:,.0f} MB | {worst} | {size} | "
              f"{full / 1e6:,.0f} MB |")


if __name__ == "__main__":
    main()
