"""Sweep benchmark: what evaluation adds to a sweep's merges.

    python benchmarks/bench_sweep.py [--device cpu|cuda] [--data bench-data] [--samples 64]

The 0.19B generated llama family (``bench_merge.py``'s ``0.2b``: bf16, base + 2 donors),
given the byte-pair tokenizer of :mod:`merge_engine.trained` (its ids fall inside the
family's vocabulary; the weights are random, so the perplexities are large, but the work
is that of a real evaluation). ``task_arithmetic`` with donor 2's weight swept over five
values, doing the work a sweep's variant jobs do: each variant merged and its output
scored on the sets, and each source scored once (the bot caches a Hub source's scores by
repo, SHA and set; these local sources have no SHA, so the script scores them once
itself), against the same five merges without evaluation. Two evaluation sets of
``--samples`` texts each (the two languages of :mod:`merge_engine.trained`). Times are
wall seconds in this process (torch already imported), medians of ``--repeat``. The bot's
``best`` mode then merges the best variant once more to publish it: one plain merge more.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from merge_engine import EvalSet, evaluate_model, run_merge
from merge_engine.synth import BENCH_0_2B, write_family
from merge_engine.trained import sentences, train_tokenizer

ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5)


def family(data: Path) -> list[Path]:
    """The 0.2b family under ``data`` (generated once), each with the tokenizer files."""
    root = data / "family-0.2b"
    models = [root / "base", root / "donor-1", root / "donor-2"]
    if not all((m / "config.json").is_file() for m in models):
        models = write_family(root, BENCH_0_2B)
    tokenizer = data / "sweep-tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():
        train_tokenizer(tokenizer, 192, 0)
    for model in models:
        for f in tokenizer.iterdir():
            shutil.copyfile(f, model / f.name)
    return models


def recipe(models: list[Path], alpha: float) -> str:
    base, d1, d2 = models
    return (f"merge_method: task_arithmetic\nbase_model: {base}\ndtype: bfloat16\nmodels:\n"
            f"  - model: {d1}\n    parameters:\n      weight: 1.0\n"
            f"  - model: {d2}\n    parameters:\n      weight: {alpha}\n")


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    models = family(args.data)
    sets = [EvalSet(name=lang, texts=tuple(sentences(lang, args.samples, 99)),
                    samples=args.samples) for lang in ("north", "south")]
    out = args.data / "sweep-out"
    merges, sweeps, detail = [], [], []
    for _ in range(args.repeat):
        shutil.rmtree(out, ignore_errors=True)
        plain = sum(timed(lambda a=a: run_merge(recipe(models, a), out / f"plain-{a}",
                                                device=args.device, random_seed=0))
                    for a in ALPHAS)
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        for model in models:
            evaluate_model(model, sets, device=args.device)
        for a in ALPHAS:
            result = run_merge(recipe(models, a), out / f"variant-{a}", device=args.device,
                               random_seed=0)
            scores = evaluate_model(result.out_dir, sets, device=args.device)
            detail.append({"alpha": a, **{s.set: round(s.perplexity, 2) for s in scores}})
        merges.append(plain)
        sweeps.append(time.perf_counter() - started)
        shutil.rmtree(out, ignore_errors=True)
    merge_s, sweep_s = statistics.median(merges), statistics.median(sweeps)
    print(json.dumps({
        "device": args.device, "samples_per_set": args.samples, "variants": len(ALPHAS),
        "five_plain_merges_s": round(merge_s, 2), "sweep_with_evaluation_s": round(sweep_s, 2),
        "evaluation_adds_s": round(sweep_s - merge_s, 2),
        "evaluation_over_merges": round((sweep_s - merge_s) / merge_s, 3),
        "variants_perplexity": detail[-len(ALPHAS):],
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
