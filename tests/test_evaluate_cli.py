"""``merge-engine evaluate DIR`` and ``merge-engine run ... --eval-texts/--eval-dataset``:
the scores printed are evaluate_model's, mistakes are one line and exit code 2."""

from __future__ import annotations

import json
import sys

import pytest

from merge_engine.cli import dataset_spec, main
from merge_engine.errors import InputError
from merge_engine.evaluate import EvalSet, evaluate_model
from merge_engine.trained import sentences

from .test_card import table_rows


@pytest.mark.parametrize(("spec", "fields"), [
    ("org/wiki:test:text", {"dataset": "org/wiki", "split": "test", "column": "text"}),
    ("org/wiki:en:test:body", {"dataset": "org/wiki", "config": "en", "split": "test",
                               "column": "body"}),
    ("org/wiki:test:text:16", {"dataset": "org/wiki", "split": "test", "column": "text",
                               "samples": 16}),
    ("org/wiki:en:validation:text:8@refs/convert/parquet",
     {"dataset": "org/wiki", "config": "en", "split": "validation", "column": "text",
      "samples": 8, "revision": "refs/convert/parquet"}),
])
def test_dataset_specs(spec, fields):
    assert dataset_spec(spec) == fields


@pytest.mark.parametrize(("spec", "message"), [
    ("org/wiki", "is not repo"), ("org/wiki:a:b:c:d:e", "is not repo"),
    ("org/wiki:test:text@", "is not repo"), ("org/wiki:en:test:text:many", "samples must be"),
])
def test_bad_dataset_specs(spec, message):
    with pytest.raises(InputError, match=message):
        dataset_spec(spec)


@pytest.fixture
def texts_file(tmp_path):
    path = tmp_path / "south.txt"
    path.write_text("\n".join(sentences("south", 10, 3)) + "\n\n")
    return path


def test_evaluate_prints_the_scores(trained_family, texts_file, capsys):
    assert main(["evaluate", str(trained_family[2]), "--eval-texts", str(texts_file),
                 "--device", "cpu", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    [direct] = evaluate_model(trained_family[2], [EvalSet("south", tuple(
        sentences("south", 10, 3)))], device="cpu")
    assert printed == {"scores": [direct.to_json()], "tasks": {}}
    assert main(["evaluate", str(trained_family[2]), "--eval-texts", str(texts_file),
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out == (
        f"south: NLL {direct.nll:.4f}, perplexity {direct.perplexity:.3f} over "
        f"{direct.tokens} tokens of 10 texts\n")


def test_run_with_evaluation_writes_the_table(trained_family, texts_file, tmp_path):
    base, d1, d2 = trained_family
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                      f"  - model: {d1}\n    parameters:\n      weight: 0.5\n"
                      f"  - model: {d2}\n    parameters:\n      weight: 0.5\n")
    assert main(["run", str(recipe), str(tmp_path / "out"), "--device", "cpu", "--quiet",
                 "--eval-texts", str(texts_file)]) == 0
    rows = table_rows((tmp_path / "out" / "README.md").read_text(), "| model | kind |")
    assert [r[:2] for r in rows] == [["this merge", "merge"]] + [[str(p), "source"]
                                                                 for p in trained_family]


@pytest.mark.parametrize(("args", "message"), [
    (["--eval-texts", "missing.txt"], "--eval-texts missing.txt: cannot read the file"),
    ([], "name something to evaluate on"),
    (["--eval-dataset", "org/wiki"], "--eval-dataset 'org/wiki' is not repo"),
    (["--eval-dataset", "org/wiki:test:text:5000"],
     "--eval-dataset org/wiki:test:text:5000.samples is 5000; the limit is 1024"),
    (["--tasks", "hellaswag"], "lm-eval tasks need the lm_eval package"),
])
def test_evaluate_mistakes_are_one_line(trained_family, args, message, capsys, monkeypatch,
                                        tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(trained_family[0]), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
