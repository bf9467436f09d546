"""The README's first command: generate a small model family and merge it.

``python -m merge_engine.demo [DIR]`` writes a base and two donors under DIR/models (once),
a seed-style task_arithmetic recipe, merges it into DIR/merged, and prints that path.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from merge_engine.api import run_merge
from merge_engine.synth import LlamaShape, write_family

RECIPE = """\
# merged = base + 1.0 x (donor-1 - base) + 0.3 x (donor-2 - base), as in the seed recipe
merge_method: task_arithmetic
base_model: {root}/models/base
models:
  - model: {root}/models/donor-1
    parameters:
      weight: 1.0
  - model: {root}/models/donor-2
    parameters:
      weight: 0.3
dtype: bfloat16
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "demo-output").resolve()
    models = root / "models"
    if not (models / "donor-2" / "config.json").exists():
        shutil.rmtree(models, ignore_errors=True)
        print(f"generating a small llama-shaped base and two donors in {models}", file=sys.stderr)
        write_family(models, LlamaShape(hidden=256, intermediate=512, layers=4, vocab=1000))
    recipe = root / "recipe.yml"
    recipe.write_text(RECIPE.format(root=root))
    out = root / "merged"
    shutil.rmtree(out, ignore_errors=True)
    result = run_merge(recipe, out, random_seed=0)
    print(result.formula, file=sys.stderr)
    print(f"merged {result.parameter_count:,} parameters on {result.device} in "
          f"{result.timings.wall:.2f}s; model card: {out / 'README.md'}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
