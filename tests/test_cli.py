"""The command line: exit codes, one-line errors, nothing left at OUT."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from merge_engine.cli import main, parse_size
from merge_engine.synth import write_model

from .conftest import TINY, load_model, recipe_text
from .test_lora import write_adapter


def run_cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "merge_engine", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_run_prints_the_output_directory(family, tmp_path):
    base, d1, d2 = family
    recipe = tmp_path / "r.yml"
    recipe.write_text(recipe_text("task_arithmetic", base,
                                  [(d1, {"weight": 1.0}), (d2, {"weight": 0.3})]))
    code, out, err = run_cli("run", recipe, tmp_path / "out", "--device", "cpu",
                             "--random-seed", "1")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "out")
    assert "merged = base + 1.0 * (donor-1 - base) + 0.3 * (donor-2 - base)" in err
    assert load_model(tmp_path / "out").keys()


def test_validate_prints_the_plan_without_merging(family, tmp_path, capsys):
    base, d1, d2 = family
    recipe = tmp_path / "r.yml"
    recipe.write_text(recipe_text("ties", base, [(d1, {"weight": 1.0, "density": 0.5}),
                                                 (d2, {"weight": 0.3})]))
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "merged = base + ties(1.0 * (donor-1 - base), 0.3 * (donor-2 - base))" in out
    assert "density 0.5" in out
    assert f"{len(TINY.tensors())} tensors" in out
    assert "GB as bfloat16" in out


def test_ignored_parameters_are_warnings_in_validate_and_the_card(family, tmp_path, capsys):
    """A model_stock recipe as people publish it, with weights model_stock does not use."""
    base, d1, d2 = family
    recipe = tmp_path / "r.yml"
    recipe.write_text(recipe_text("model_stock", base, [(d1, {"weight": 0.5}),
                                                        (d2, {"weight": 0.5})],
                                  "parameters:\n  int8_mask: true\n"))
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    warned = ["parameters.int8_mask (line 11): ignored: not a parameter of model_stock",
              "models[0].parameters.weight (line 6): ignored: not a parameter of model_stock",
              "models[1].parameters.weight (line 9): ignored: not a parameter of model_stock"]
    assert [line for line in out.splitlines() if "ignored" in line] == [
        f"warning: {w}" for w in warned]
    assert main(["run", str(recipe), str(tmp_path / "out"), "--device", "cpu", "--quiet"]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert all(f"- {w}" in card for w in warned)


def test_validate_shows_a_lora_adapters_license(family, tmp_path, capsys):
    base, d1, _ = family
    adapter = write_adapter(tmp_path / "adapter")
    (adapter / "README.md").write_text("---\nlicense: mit\n---\n# LoRA\n")
    recipe = tmp_path / "r.yml"
    recipe.write_text(recipe_text("task_arithmetic", base,
                                  [(Path(f"{d1}+{adapter}"), {"weight": 0.5})]))
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert f"  donor  {d1}+{adapter}  @ local  weight 0.5  (license unknown; LoRA mit, " in out
    assert (f"warning: the sources have different licenses ({base}: unknown, {d1}: unknown, "
            f"{adapter}: mit); check each before use\n") in out


BAD_RECIPES = {
    "malformed": ("merge_method: task_arithmetic\nmodels: [\n", 2, "line"),
    "unknown method": ("merge_method: task_arithmatic\nmodels: []\n", 2,
                       "did you mean 'task_arithmetic'"),
    "missing weight": ("merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                       "  - model: {d1}\n", 2, "models[0].parameters.weight"),
    "missing path": ("merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                     "  - model: /nowhere/model\n    parameters: {{weight: 1}}\n", 2,
                     "/nowhere/model does not exist"),
    "bad tokenizer block": ("merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                            "  - model: {d1}\n    parameters: {{weight: 1}}\n"
                            "tokenizer:\n  pad_to_multiple_of: -8\n", 2,
                            "tokenizer.pad_to_multiple_of (line 7): expected a positive"),
}


@pytest.mark.parametrize("case", BAD_RECIPES)
def test_bad_recipes_fail_in_one_line(family, tmp_path, case):
    text, code_wanted, fragment = BAD_RECIPES[case]
    base, d1, _ = family
    recipe = tmp_path / "r.yml"
    recipe.write_text(text.format(base=base, d1=d1))
    code, out, err = run_cli("run", recipe, tmp_path / "out", "--device", "cpu")
    assert code == code_wanted
    assert fragment in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_pickle_is_exit_2_in_one_line(family, tmp_path):
    base, _, _ = family
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"not a torch checkpoint")
    recipe = tmp_path / "r.yml"
    recipe.write_text(recipe_text("task_arithmetic", base, [(pickled, {"weight": 1.0})]))
    code, _, err = run_cli("run", recipe, tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pytorch_model.bin is not a zip archive" in err
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_exit_2_and_nan_exit_1(family, tmp_path):
    base, d1, _ = family
    wide = write_model(tmp_path / "wide", type(TINY)(**{**TINY.__dict__, "hidden": 36}))
    recipe = tmp_path / "r.yml"
    recipe.write_text(recipe_text("task_arithmetic", base, [(wide, {"weight": 1.0})]))
    code, _, err = run_cli("run", recipe, tmp_path / "out")
    assert code == 2 and "has shape" in err
    huge = write_model(tmp_path / "huge", TINY, donor=1, delta_scale=1e37)
    recipe.write_text(recipe_text("task_arithmetic", base, [(huge, {"weight": 1000})]))
    code, _, err = run_cli("run", recipe, tmp_path / "out")
    assert code == 1 and "NaN or infinite" in err and "Traceback" not in err
    code, _, err = run_cli("run", recipe, tmp_path / "out", "-v")
    assert code == 1 and "Traceback" in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_parse_size():
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("500M") == 500_000_000
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("5e9") == 5_000_000_000
    with pytest.raises(Exception, match="not a size"):
        parse_size("five")
