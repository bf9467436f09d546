"""What the check stage adds to a merge: ``merge-engine run`` with and without ``--check``.

    python benchmarks/bench_checks.py --family 0.2b [--repeat 3] [--data bench-data] [--parts]
        [--in-process]

The family is the engine benchmark's (generated under --data and reused), each model given
a word-level tokenizer of the family's 32,000-token vocabulary that covers the checks'
built-in text, so the behaviour checks run in full: the weights against the architecture,
the merge's perplexity and greedy generation, and the perplexity of each of the three
sources. Four fresh processes alternate ``--repeat`` times (interpreter and torch
start-up included): the merge alone, the merge with ``--check --structure-only``, the
merge with ``--check`` on a first merge (cold: every source measured) and on a remerge
(warm: ``--perplexity-cache`` holds the sources' figures from an earlier run, so only the
merge is measured); the medians of wall and CPU time (user + system, which the other
work on a shared machine disturbs far less) are reported, with the load average seen
during the runs.
The recipe is bench_merge.py's (task_arithmetic, weights 1.0 and 0.3).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench_merge import FAMILIES, recipe_text
from procs import wall_and_peak_rss

from merge_engine.check.behaviour import PROMPT, TEXT
from merge_engine.synth import write_family

CONFIGS = {"merge": [], "structure": ["--check", "--structure-only"], "cold": ["--check"],
           "warm": ["--check", "--perplexity-cache"]}
"""Each run's flags; ``warm`` is followed by the cache directory."""


def write_tokenizer(path: Path, size: int) -> None:
    """A word-level tokenizer of ``size`` ids: specials, the check text's words, fillers."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set((TEXT + " " + PROMPT).replace(".", " . ").replace(",", " , ").split()))
    specials = ["<unk>", "<s>", "</s>"]
    names = specials + words
    names += [f"w{i}" for i in range(size - len(names))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
        "bos_token": "<s>", "eos_token": "</s>"}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, default="0.2b")
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", action="store_true",
                        help="also time the behaviour checks' parts in this process")
    parser.add_argument("--in-process", action="store_true",
                        help="also time merges with and without checks in this process, "
                             "as a bot worker runs them")
    args = parser.parse_args()
    shape = FAMILIES[args.family]
    root = args.data / args.family
    models = [root / "base", root / "donor-1", root / "donor-2"]
    if not (root / "donor-2" / "config.json").exists():
        print(f"generating the {args.family} family under {root} ...", file=sys.stderr)
        write_family(root, shape, donors=2, delta_scale=0.002, shard_bytes=1_000_000_000)
    for model in models:
        if not (model / "tokenizer.json").exists():
            write_tokenizer(model, shape.vocab)
    recipe = root / "recipe-checks.yml"
    recipe.write_text(recipe_text("task_arithmetic", models))
    out = args.data / f"out-{args.family}-checks"
    cache = args.data / f"perplexities-{args.family}"
    shutil.rmtree(cache, ignore_errors=True)

    def merge(flags: list[str]) -> tuple[float, int, float]:
        """(wall s, peak RSS bytes, CPU s: user + system of the process and its helper)."""
        shutil.rmtree(out, ignore_errors=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall, peak = wall_and_peak_rss(
            [sys.executable, "-m", "merge_engine", "run", str(recipe), str(out),
             "--device", "cpu", "--quiet", "--random-seed", "0", *flags])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return wall, peak, cpu

    merge([*CONFIGS["warm"], str(cache)])  # the sources' figures for the warm runs
    walls: dict[str, list[float]] = {name: [] for name in CONFIGS}
    cpus: dict[str, list[float]] = {name: [] for name in CONFIGS}
    peaks: dict[str, int] = dict.fromkeys(CONFIGS, 0)
    loads = [os.getloadavg()[0]]
    for _ in range(args.repeat):
        for name, flags in CONFIGS.items():
            wall, peak, cpu = merge(flags + [str(cache)] * (name == "warm"))
            walls[name].append(wall)
            cpus[name].append(cpu)
            peaks[name] = max(peaks[name], peak)
            loads.append(os.getloadavg()[0])
    merge_wall = statistics.median(walls["merge"])
    figures = {"family": args.family, "cpus": os.cpu_count(), "runs": args.repeat,
               "load_average": [round(min(loads), 1), round(max(loads), 1)]}
    for name in CONFIGS:
        wall = statistics.median(walls[name])
        figures[name] = {"wall_s": round(wall, 2),
                         "range_s": [round(min(walls[name]), 2), round(max(walls[name]), 2)],
                         "added_pct": round(100 * (wall - merge_wall) / merge_wall, 1),
                         "cpu_s": round(statistics.median(cpus[name]), 2),
                         "peak_rss_mb": round(peaks[name] / 1e6)}
    if args.parts:
        figures["parts_s"] = parts(out, models)
    if args.in_process:
        figures["in_process"] = in_process(recipe, out, cache, args.repeat)
    print(json.dumps(figures))
    return 0


def in_process(recipe: Path, out: Path, cache: Path, repeat: int) -> dict[str, dict]:
    """As a bot worker merges: ``run_merge`` calls in one process whose imports are done
    (a first run with checks), the merge alone, cold checks and warm checks alternating;
    medians and what the checks add."""
    from merge_engine import CheckOptions, run_merge

    options = {"merge": None, "cold": CheckOptions(), "warm": CheckOptions(cache_dir=cache)}
    walls: dict[str, list[float]] = {name: [] for name in options}
    for name in ["warm", *[n for _ in range(repeat) for n in options]]:
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        run_merge(recipe, out, device="cpu", random_seed=0, checks=options[name])
        walls[name].append(time.perf_counter() - started)
    walls["warm"].pop(0)
    merge = statistics.median(walls["merge"])
    return {name: {"wall_s": round(statistics.median(w), 2),
                   "added_pct": round(100 * (statistics.median(w) - merge) / merge, 1)}
            for name, w in walls.items()}


def parts(merged: Path, models: list[Path]) -> dict[str, float]:
    """The behaviour checks' parts timed in this process, one model at a time as the
    check stage's threads compute them: the imports (transformers and the architecture's
    code), then per model the float32 load, the perplexity pass and (the merge only) the
    generation."""
    import torch

    from merge_engine.check import behaviour

    def timed(fn, *args):
        started = time.perf_counter()
        value = fn(*args)
        return value, round(time.perf_counter() - started, 3)

    config = json.loads((merged / "config.json").read_text())
    out = {"imports": timed(behaviour.meta_model, config)[1]}
    with behaviour.cpu_threads(), torch.inference_mode():
        for path in [merged, *models]:
            name = "merge" if path == merged else path.name
            tok = behaviour.tokenizer(path)
            ids = tok.encode(TEXT).ids[:behaviour.MAX_TOKENS]
            model, out[f"{name} load"] = timed(behaviour.load, path, "cpu")
            out[f"{name} perplexity ({len(ids)} tokens)"] = timed(
                behaviour.perplexity, model, ids)[1]
            if path == merged:
                prompt = tok.encode(PROMPT).ids
                out[f"merge generation ({behaviour.NEW_TOKENS} tokens)"] = timed(
                    behaviour.greedy, model, prompt, behaviour.NEW_TOKENS)[1]
            del model
    return out


if __name__ == "__main__":
    raise SystemExit(main())
