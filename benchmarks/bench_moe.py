"""MoE recipes: wall time and peak memory of `merge-engine run` per gate_mode.

A 0.2B llama-shaped bf16 family (BENCH_0_2B: hidden 2048, 2 layers, vocab 32000) of a
base and 3 donors, with a word-level tokenizer.json on the base; a 4-expert Mixtral (the
base and the donors as experts, 2 per token, 2 prompts each). The I/O floor is the time
to read the inputs once and write a file of the output's size (page cache warm).

    python benchmarks/bench_moe.py [--keep DIR] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import wall_and_peak_rss  # noqa: E402

from merge_engine import validate  # noqa: E402
from merge_engine.synth import BENCH_0_2B, write_family  # noqa: E402

MODES = ("random", "cheap_embed", "hidden")
PROMPTS = [["w1 w2 w3", "w4 w5"], ["w10 w11", "w12"], ["w20", "w21 w22 w23"], ["w30", "w31"]]


def tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>"]
                                         + [f"w{i}" for i in range(100)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))


def recipe(paths: list[Path], mode: str) -> str:
    lines = [f"base_model: {paths[0]}", f"gate_mode: {mode}", "experts_per_token: 2",
             "experts:"]
    for path, prompts in zip(paths, PROMPTS, strict=True):
        lines += [f"  - source_model: {path}", f"    positive_prompts: {json.dumps(prompts)}"]
    return "\n".join(lines) + "\n"


def floor(inputs: list[Path], out_bytes: int, scratch: Path) -> float:
    """Read every input file once, write ``out_bytes``: seconds."""
    start = time.perf_counter()
    for path in inputs:
        for f in sorted(path.glob("*.safetensors")):
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass
    block = b"\0" * (1 << 24)
    with open(scratch, "wb") as fh:
        for _ in range(0, out_bytes, len(block)):
            fh.write(block)
    scratch.unlink()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", type=Path, help="keep the family here")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        paths = write_family(root / "family", BENCH_0_2B, donors=3)
        tokenizer(paths[0])
        print("| gate_mode | I/O floor | wall | peak RSS | output | parameters |")
        print("| --- | --- | --- | --- | --- | --- |")
        for mode in MODES:
            text = root / f"{mode}.yml"
            text.write_text(recipe(paths, mode))
            out = root / f"out-{mode}"
            wall, rss = wall_and_peak_rss([
                sys.executable, "-m", "merge_engine", "run", str(text), str(out),
                "--device", args.device, "--random-seed", "0"])
            size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
            config = json.loads((out / "config.json").read_text())
            assert config["num_local_experts"] == 4
            params = validate(text).parameter_count
            print(f"| {mode} | {floor(paths, size, root / 'floor.bin'):.2f} s | {wall:.2f} s | "
                  f"{rss / 1e6:,.0f} MB | {size / 1e9:.2f} GB | {params / 1e6:,.0f}M |")


if __name__ == "__main__":
    main()
