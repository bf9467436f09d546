"""Tokenizer-merging benchmark: peak RSS of a ``tokenizer_source: union`` merge of models
with large, different vocabularies.

    python benchmarks/bench_vocab.py [--vocab 128000] [--hidden 2048] [--donors 1]
                                     [--method task_arithmetic] [--data bench-data]

Writes a llama family (``--layers`` small layers, so the embedding and the output head
dominate) whose word-level tokenizers share the base's words but each donor orders the
first ``--own`` of them otherwise and replaces the last ``--own`` by words of its own: the
union has ``vocab + donors * own`` rows, every donor's rows are found by token, and
``donors * own`` rows of each tensor lack some model (their default is a mean, or the
base's row). Then runs ``merge-engine run`` as a fresh process (the package found from
the current directory first, then ``PYTHONPATH``) and reports its wall time and peak RSS
(:func:`procs.wall_and_peak_rss`). The family is written by another process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
from pathlib import Path

from procs import wall_and_peak_rss

SPECIALS = ["<unk>", "<s>", "</s>"]


def write_tokenizer(path: Path, words: list[str]) -> None:
    """A word-level tokenizer (specials first, then ``words``) and its config."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + words)},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
        "bos_token": "<s>", "eos_token": "</s>"}))


def write_models(paths: list[Path], vocab: int, hidden: int, layers: int, own: int) -> None:
    """The family (``paths[0]`` the base, then the donors) with its tokenizers."""
    from merge_engine.synth import LlamaShape, write_family

    shape = LlamaShape(hidden=hidden, intermediate=hidden, layers=layers, vocab=vocab,
                       heads=16, kv_heads=16)
    write_family(paths[0].parent, shape, donors=len(paths) - 1, delta_scale=0.002,
                 shard_bytes=1_000_000_000)
    words = [f"w{i}" for i in range(vocab - len(SPECIALS))]
    write_tokenizer(paths[0], words)
    for i, path in enumerate(paths[1:], start=1):
        write_tokenizer(path, words[:own][::-1] + words[own:-own]
                        + [f"d{i}_{j}" for j in range(own)])


def run_merge_process(recipe: Path, out: Path, device: str) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a fresh merge-engine process."""
    shutil.rmtree(out, ignore_errors=True)
    return wall_and_peak_rss([sys.executable, "-m", "merge_engine", "run", str(recipe),
                              str(out), "--device", device, "--quiet", "--random-seed", "0"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=128000)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--donors", type=int, default=1)
    parser.add_argument("--own", type=int, default=1000,
                        help="words of its own per donor (and words it orders otherwise)")
    parser.add_argument("--method", choices=("task_arithmetic", "linear", "ties"),
                        default="task_arithmetic")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    args = parser.parse_args()
    name = f"vocab-{args.vocab}x{args.hidden}-{args.layers}l-{args.donors}d-{args.own}"
    root = args.data / name
    models = [root / "base"] + [root / f"donor-{i}" for i in range(1, args.donors + 1)]
    if not (models[-1] / "tokenizer.json").exists():
        print(f"generating the family under {root} ...", file=sys.stderr)
        writer = multiprocessing.get_context("spawn").Process(
            target=write_models, args=(models, args.vocab, args.hidden, args.layers, args.own))
        writer.start()
        writer.join()
        if writer.exitcode:
            raise SystemExit("writing the family failed")
    density = "      density: 0.5\n" if args.method == "ties" else ""
    recipe = root / f"recipe-{args.method}.yml"
    recipe.write_text(
        f"merge_method: {args.method}\nbase_model: {models[0]}\ntokenizer_source: union\n"
        "models:\n" + "".join(f"  - model: {m}\n    parameters:\n      weight: 0.5\n{density}"
                              for m in models[1:]))
    wall, rss = run_merge_process(recipe, args.data / f"out-{name}", args.device)
    elements = (args.vocab + args.donors * args.own) * args.hidden
    print(json.dumps({
        "method": args.method, "inputs": len(models), "device": args.device,
        "cpus": len(os.sched_getaffinity(0)), "vocab_out": args.vocab + args.donors * args.own,
        "hidden": args.hidden, "embedding_f32_mb": round(elements * 4 / 1e6),
        "input_gb": round(sum(f.stat().st_size for m in models
                              for f in m.glob("*.safetensors")) / 1e9, 2),
        "wall_s": round(wall, 2), "peak_rss_mb": round(rss / 1e6),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
