"""Evaluation against merging: wall time and peak memory of one merge of the 0.19B family
(BENCH_0_2B: hidden 2048, 2 layers, vocabulary 32,000; bf16 on disk), of scoring the
merged model on two 64-text sets, and of one merge that scores itself and its three
sources (``run --eval-texts``). The family's tokenizer is the trained BPE of
``merge_engine.trained`` (its ids are a corner of the 32,000 rows); the texts are two
sentences of each synthetic language per text.

    python benchmarks/bench_evaluate.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import wall_and_peak_rss  # noqa: E402

from merge_engine.synth import BENCH_0_2B, write_family  # noqa: E402
from merge_engine.trained import sentences, train_tokenizer  # noqa: E402

SAMPLES = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", type=Path, help="keep the family here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        tok_dir = root / "tokenizer"
        train_tokenizer(tok_dir, 192, 0)
        family = write_family(root / "family", BENCH_0_2B, donors=2, delta_scale=0.01)
        for model in family:
            for f in tok_dir.iterdir():
                shutil.copy(f, model / f.name)
        sets = []
        for lang in ("north", "south"):
            lines = sentences(lang, 2 * SAMPLES, 11)
            path = root / f"{lang}.txt"
            path.write_text("\n".join(" ".join(lines[i:i + 2])
                                      for i in range(0, 2 * SAMPLES, 2)) + "\n")
            sets += ["--eval-texts", str(path)]
        recipe = root / "recipe.yml"
        recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {family[0]}\nmodels:\n"
                          f"  - model: {family[1]}\n    parameters:\n      weight: 0.5\n"
                          f"  - model: {family[2]}\n    parameters:\n      weight: 0.3\n")
        cli = [sys.executable, "-m", "merge_engine"]
        runs = {
            "merge (run)": [*cli, "run", str(recipe), str(root / "m1"), "--device", "cpu",
                            "--quiet"],
            f"evaluate the merge on 2 x {SAMPLES} texts": [
                *cli, "evaluate", str(root / "m1"), *sets, "--device", "cpu"],
            "merge + evaluate merge and 3 sources (run --eval-texts)": [
                *cli, "run", str(recipe), str(root / "m2"), "--device", "cpu", "--quiet",
                *sets],
        }
        print("| step | wall | peak RSS |")
        print("| --- | --- | --- |")
        for name, cmd in runs.items():
            wall, rss = wall_and_peak_rss(cmd)
            print(f"| {name} | {wall:.1f} s | {rss / 1e6:,.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
