"""Every layout transformers writes: for each family of the architecture table (and
BERT-style encoders), a tiny random base saved by transformers and donors perturbed from
it are merged; the output loads with the matching Auto class with no missing or
unexpected keys and is the float64 merge up to one rounding of the output dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from merge_engine import run_merge
from merge_engine.plan.architecture import FAMILIES as TABLE
from tests.conftest import recipe_text
from tests.tfmodels import (
    FAMILIES,
    Exact,
    assert_one_rounding,
    linear64,
    loading_info,
    task_arithmetic64,
    tensors,
    ties64,
    write_family,
)

WEIGHTS = (0.7, 0.4)
TIES_WEIGHTS = (0.75, 0.375)
"""Dyadic: TIES elects a sign from ``sum_i w_i d_i``, and with bf16 task vectors that sum
is often exactly 0 in real numbers, where float32 and float64 roundings of 0.7 and 0.4
would elect opposite signs."""
BF16 = (torch.bfloat16,) * 3
CLEAN = {"missing_keys": [], "mismatched_keys": [], "unexpected_keys": []}


def merge(tmp_path: Path, method: str, dirs: list[Path], extra: str = "") -> Path:
    base, donors = (dirs[0], dirs[1:]) if method != "linear" else (None, dirs)
    weights = weights_of(method)
    recipe = recipe_text(method, base, [(d, {"weight": w}) for d, w in
                                        zip(donors, weights, strict=True)], extra)
    out = tmp_path / "out"
    run_merge(recipe, out, device="cpu", random_seed=0)
    return out


def weights_of(method: str) -> tuple[float, ...]:
    """The weights of the donors (for linear: of every model, the base first)."""
    return {"linear": (0.5, *WEIGHTS), "ties": TIES_WEIGHTS}.get(method, WEIGHTS)


def reference(method: str, inputs: list[dict[str, torch.Tensor]], name: str) -> Exact:
    """The float64 merge of tensor ``name`` of the inputs (base first)."""
    xs = [model[name] for model in inputs]
    if method == "linear":
        return linear64(xs, weights_of(method))
    if method == "ties":
        return ties64(xs[0], xs[1:], weights_of(method))
    return task_arithmetic64(xs[0], xs[1:], weights_of(method))


def check_merge(out: Path, dirs: list[Path], method: str, dtype: torch.dtype,
                read: torch.dtype | None = None) -> None:
    """``out`` has the base's tensors, in ``dtype``, each the float64 merge of the inputs
    (first converted to ``read``, the recipe's ``dtype``, when given) rounded once."""
    inputs = [{k: v.to(read or v.dtype) for k, v in tensors(d).items()} for d in dirs]
    merged = tensors(out)
    assert sorted(merged) == sorted(inputs[0])
    for name, value in merged.items():
        assert value.dtype == dtype, name
        assert_one_rounding(value, reference(method, inputs, name), name)


def test_the_families_cover_the_architecture_table() -> None:
    table = {t for family in TABLE for t in family.model_types if t not in ("RefinedWeb",
                                                                             "RefinedWebModel")}
    assert table <= set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_saved_by_transformers_merges_and_loads(tmp_path: Path, family: str) -> None:
    dirs = write_family(tmp_path, family, BF16)
    out = merge(tmp_path, "task_arithmetic", dirs)
    assert loading_info(out, family) == CLEAN
    check_merge(out, dirs, "task_arithmetic", torch.bfloat16)


@pytest.mark.parametrize(("family", "method"), [
    ("llama", "linear"), ("llama", "ties"), ("gpt2", "ties"), ("bert", "linear"),
    ("gemma2", "ties"),
])
def test_linear_and_ties_match_the_float64_merge(tmp_path: Path, family: str,
                                                 method: str) -> None:
    dirs = write_family(tmp_path, family, BF16)
    out = merge(tmp_path, method, dirs)
    assert loading_info(out, family) == CLEAN
    check_merge(out, dirs, method, torch.bfloat16)


@pytest.mark.parametrize(("dtypes", "extra", "want"), [
    # the base's dtype, whatever the donors'
    ((torch.bfloat16, torch.float16, torch.bfloat16), "", torch.bfloat16),
    ((torch.float16, torch.bfloat16, torch.bfloat16), "", torch.float16),
    ((torch.bfloat16, torch.float16, torch.float32), "", torch.bfloat16),
    # out_dtype, else dtype, decides when given
    ((torch.bfloat16, torch.float16, torch.bfloat16), "out_dtype: float32\n", torch.float32),
    ((torch.bfloat16, torch.float16, torch.bfloat16), "dtype: float16\n", torch.float16),
])
def test_mixed_dtypes_give_the_base_dtype_rounded_once(
        tmp_path: Path, dtypes: tuple, extra: str, want: torch.dtype) -> None:
    dirs = write_family(tmp_path, "llama", dtypes, scale=0.2)
    out = merge(tmp_path, "task_arithmetic", dirs, extra)
    assert loading_info(out, "llama") == CLEAN
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == str(want).removeprefix("torch.")
    read = torch.float16 if extra.startswith("dtype") else None
    check_merge(out, dirs, "task_arithmetic", want, read)


def test_the_stored_dtype_decides_not_the_config(tmp_path: Path) -> None:
    """A base whose config.json declares float32 but whose files hold bfloat16."""
    dirs = write_family(tmp_path, "llama", BF16)
    config_file = dirs[0] / "config.json"
    config = json.loads(config_file.read_text())
    key = "dtype" if "dtype" in config else "torch_dtype"  # transformers 5 / 4
    config_file.write_text(json.dumps({**config, key: "float32"}))
    out = merge(tmp_path, "task_arithmetic", dirs)
    assert json.loads((out / "config.json").read_text())[key] == "bfloat16"
    check_merge(out, dirs, "task_arithmetic", torch.bfloat16)
