"""Multi-stage recipes (mergekit-multi's format): parsing and its errors, running the
stages in order (byte-identical to running them by hand), validation without merging,
the card, the stage cache, and nothing half-done on failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from merge_engine import InputError, RecipeError, run_merge
from merge_engine.cli import main
from merge_engine.multistage import run_stages, validate_stages
from merge_engine.recipe import RecipeLimits, parse_stages
from merge_engine.synth import write_model

from .conftest import TINY, load_model


def two_stages(base: Path, d1: Path, d2: Path, final_extra: str = "") -> str:
    """Stage ``mid``: linear of the donors; stage ``final``: task arithmetic of mid onto
    the base with donor-2."""
    return f"""\
name: mid
merge_method: linear
models:
  - model: {d1}
    parameters: {{weight: 0.6}}
  - model: {d2}
    parameters: {{weight: 0.4}}
dtype: float32
---
name: final
merge_method: task_arithmetic
base_model: {base}
models:
  - model: mid
    parameters: {{weight: 0.7}}
  - model: {d2}
    parameters: {{weight: 0.3}}
{final_extra}"""


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_two_stages_equal_the_stages_run_by_hand(family, tmp_path):
    base, d1, d2 = family
    text = two_stages(base, d1, d2)
    result = run_stages(text, tmp_path / "out", random_seed=3, device="cpu")
    assert [(run.name, run.reused) for run in result.stages] == [("mid", False),
                                                                ("final", False)]

    first, second = text.split("---\n")
    run_merge(first, tmp_path / "hand" / "mid", random_seed=3, device="cpu")
    by_hand = second.replace("model: mid", f"model: {tmp_path / 'hand' / 'mid'}")
    run_merge(by_hand, tmp_path / "hand" / "final", random_seed=3, device="cpu")

    got, want = load_model(tmp_path / "out"), load_model(tmp_path / "hand" / "final")
    assert got.keys() == want.keys() == {name for name, _ in TINY.tensors()}
    for name in want:
        assert got[name].dtype == want[name].dtype
        assert torch.equal(got[name].view(torch.uint8), want[name].view(torch.uint8)), name
    # the stages really were chained: not the final recipe applied to a raw donor
    raw = load_model(d1)
    assert not torch.equal(got["model.norm.weight"], raw["model.norm.weight"])
    assert leftovers(tmp_path) == ["hand", "out"]  # the intermediates are gone
    assert (tmp_path / "out" / "mergekit_config.yml").read_text() == text


def test_card_pins_every_stage_and_names_the_final_one(family, tmp_path):
    base, d1, d2 = family
    run_stages(two_stages(base, d1, d2), tmp_path / "out", device="cpu")
    card = (tmp_path / "out" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["merge"]["stage"] == "final"
    stages = meta["merge"]["stages"]
    assert [(s["name"], s["document"], s["method"], s["output"]) for s in stages] == [
        ("mid", 1, "linear", "intermediate"), ("final", 2, "task_arithmetic", "this model")]
    assert stages[0]["models"] == [{"model": str(d1), "revision": None},
                                   {"model": str(d2), "revision": None}]
    assert {"stage": "mid"} in stages[1]["models"]
    assert "## Stages" in card and "| `mid` | 1 | linear |" in card
    assert "| donor | mid | stage `mid` of this recipe | 0.7 |" in card
    assert ".stages-" not in card  # no temporary directory leaks into the card


def test_keep_intermediates_and_the_cli(family, tmp_path, capsys):
    base, d1, d2 = family
    recipe = tmp_path / "multi.yml"
    recipe.write_text(two_stages(base, d1, d2))
    code = main(["run", str(recipe), str(tmp_path / "out"), "--device", "cpu",
                 "--keep-intermediates", str(tmp_path / "kept"), "--random-seed", "1"])
    assert code == 0
    err = capsys.readouterr().err
    assert "stage 'mid' (1 of 2): merged" in err and "stage 'final' (2 of 2): merged" in err
    assert leftovers(tmp_path / "kept") == ["mid"]
    mid = load_model(tmp_path / "kept" / "mid")
    assert all(t.dtype == torch.float32 for t in mid.values())  # the stage's own dtype
    run_merge(two_stages(base, d1, d2).split("---\n")[0], tmp_path / "hand", device="cpu")
    assert all(torch.equal(mid[k], v) for k, v in load_model(tmp_path / "hand").items())


def test_validate_plans_later_stages_from_the_earlier_plan(family, tmp_path, capsys):
    """Stage 1 stacks layers (3 -> 5); stage 2 reads it: its plan has 5 layers, made from
    the planned output without merging anything."""
    base, d1, d2 = family
    text = f"""\
name: tall
merge_method: passthrough
slices:
  - sources: [{{model: {d1}, layer_range: [0, 3]}}]
  - sources: [{{model: {d2}, layer_range: [1, 3]}}]
---
name: final
merge_method: linear
models:
  - model: tall
    parameters: {{weight: 1.0}}
"""
    plans = validate_stages(text)
    layers = {int(t.out.name.split(".")[2]) for t in plans[1].tasks
              if t.out.name.startswith("model.layers.")}
    assert layers == set(range(5))
    assert plans[1].parameter_count == plans[0].parameter_count
    assert [s.name for s in plans[1].sources] == ["tall"]
    assert leftovers(tmp_path) == []
    recipe = tmp_path / "r.yml"
    recipe.write_text(text)
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "stage 'tall' (document 1), 1 of 2:" in out
    assert "stage 'final' (document 2), 2 of 2:" in out

    mismatched = text + f"  - model: {base}\n    parameters: {{weight: 1.0}}\n"
    with pytest.raises(InputError) as err:
        validate_stages(mismatched)
    assert str(err.value).startswith("stage 'final' (document 2): tensor model.layers.3.")
    assert "stage 'tall' has it" in str(err.value)  # not the skeleton's directory


def test_a_failing_second_stage_leaves_nothing(family, tmp_path):
    """Stage 2 reads a model whose shapes differ from stage 1's output: stage 1 has been
    merged by then; its intermediate is removed and OUT is not written."""
    base, d1, d2 = family
    other = write_model(tmp_path / "models" / "wide", TINY.__class__(
        hidden=48, intermediate=64, layers=3, vocab=96, heads=4, kv_heads=2))
    text = two_stages(base, d1, d2).replace(f"  - model: {d2}\n    parameters: {{weight: 0.3}}",
                                            f"  - model: {other}\n    parameters: "
                                            "{weight: 0.3}")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InputError) as err:
        run_stages(text, work / "out", keep_intermediates=work / "kept", device="cpu")
    assert str(err.value).startswith("stage 'final' (document 2)")
    assert leftovers(work) == []


def test_a_cached_stage_is_not_merged_again(family, tmp_path):
    base, d1, d2 = family

    class Cache:
        def __init__(self):
            self.entries: dict[str, Path] = {}

        def fetch(self, key, dest):
            if key not in self.entries:
                return False
            shutil.copytree(self.entries[key], dest)
            return True

        def store(self, key, src):
            self.entries[key] = shutil.copytree(src, tmp_path / "cache" / key)

    cache = Cache()
    first = run_stages(two_stages(base, d1, d2), tmp_path / "a", cache=cache, device="cpu")
    again = run_stages(two_stages(base, d1, d2), tmp_path / "b", cache=cache, device="cpu")
    assert [r.reused for r in first.stages] == [False, False]
    assert [r.reused for r in again.stages] == [True, False]
    assert again.stages[0].key == first.stages[0].key
    a, b = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "intermediate, reused from an earlier run" in (tmp_path / "b" / "README.md").read_text()
    # the second stage's text changed: the first stage is still reused, the key of the
    # second differs
    changed = run_stages(two_stages(base, d1, d2).replace("weight: 0.7", "weight: 0.5"),
                         tmp_path / "c", cache=cache, device="cpu")
    assert [r.reused for r in changed.stages] == [True, False]
    assert changed.stages[1].key != first.stages[1].key

    # three stages: a change to the last one reuses both earlier ones (the second reads
    # the first through its key, not through the directory it happened to be in)
    third = "---\nname: last\nmerge_method: linear\nmodels:\n  - model: final\n" \
            "    parameters: {weight: 1.0}\n  - model: mid\n    parameters: {weight: %s}\n"
    runs = [run_stages(two_stages(base, d1, d2) + third % w, tmp_path / f"t{w}", cache=cache,
                       device="cpu").stages for w in (0.5, 0.25)]
    assert [r.reused for r in runs[1]] == [True, True, False]
    assert [r.key for r in runs[0][:2]] == [r.key for r in runs[1][:2]]


LINEAR = "merge_method: linear\nparameters: {weight: 1.0}\n"
MID = "name: mid\n" + LINEAR + "models:\n  - model: org/a\n  - model: org/b\n"


def stage(name: str | None, model: str, extra: str = "") -> str:
    """A second document (its ``name`` on line 8 after MID) merging ``model``."""
    own = f"name: {name}\n" if name else ""
    return f"---\n{own}{LINEAR}{extra}models:\n  - model: {model}\n"


@pytest.mark.parametrize("text, message", [
    (MID + stage("mid", "org/c"),
     "document 2, name (line 8): the stage name 'mid' is already used by document 1"),
    (MID + stage(None, "mid"),
     "document 2 (line 8): a recipe of several stages needs a 'name:' in every stage"),
    ("name: a\n" + LINEAR + "models:\n  - model: b\n" + stage("b", "a"),
     "stage 'a' (document 1), models[0].model (line 5): 'b' is stage 'b' (document 2), "
     "which runs later"),
    (MID + stage("fin", "fin"),
     "stage 'fin' (document 2), models[0].model (line 12): 'fin' is this stage itself"),
    (MID + stage("fin", "mdi"),
     "stage 'fin' (document 2), models[0].model (line 12): 'mdi' is not a stage above this "
     "one (those are: 'mid')"),
    (MID + stage("fin", "org/c", "base_model: mid@main\n"),
     "stage 'fin' (document 2), base_model (line 11): 'mid' is a stage of this recipe; a "
     "stage's output has no revision"),
    (MID + stage("fin", "org/c+mid"),
     "stage 'fin' (document 2), models[0].model (line 12): 'mid' is a stage of this recipe, "
     "a whole model, not a LoRA adapter"),
    (MID + stage("org/fin", "mid"),
     "document 2, name (line 8): 'org/fin' is not a stage name"),
    (MID + "---\n- merge_method: linear\n",
     "document 2 (line 8): expected a mapping of recipe keys, got a list"),
    (MID + stage("fin", "mid") + "    parameters: {weight: x}\n",
     "stage 'fin' (document 2), models[0].parameters.weight (line 13)"),
])
def test_errors_name_the_stage_document_and_path(text, message):
    with pytest.raises(RecipeError) as err:
        parse_stages(text)
    assert message in str(err.value)


def test_cli_exit_codes(tmp_path, capsys):
    recipe = tmp_path / "r.yml"
    recipe.write_text(MID + stage("fin", "mdi"))
    assert main(["validate", str(recipe)]) == 2
    assert main(["run", str(recipe), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: stage 'fin' (document 2), models[0].model (line 12): ") == 2
    single = tmp_path / "one.yml"
    single.write_text(MID)
    assert main(["run", str(single), str(tmp_path / "out"), "--keep-intermediates",
                 str(tmp_path / "k")]) == 2
    assert "--keep-intermediates needs a multi-stage recipe" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["one.yml", "r.yml"]


def test_budgets_hold_for_the_whole_text():
    """Each document is within the node budget, all of them together are not; and the
    number of stages is bounded."""
    models = "".join(f"  - model: org/m{j}\n" for j in range(40))
    docs = [f"name: s{i}\n{LINEAR}models:\n{models}" for i in range(4)]
    limits = RecipeLimits(max_nodes=300)
    parse_stages(docs[0], limits)
    with pytest.raises(RecipeError, match="more than 300 YAML nodes"):
        parse_stages("---\n".join(docs), limits)
    with pytest.raises(RecipeError, match="17 stages .* the limit is 16"):
        parse_stages("---\n".join(MID.replace("mid", f"s{i}") for i in range(17)))
    with pytest.raises(RecipeError, match="more than 32 YAML documents at line 33"):
        parse_stages("---\n" * 200_000)  # empty documents, 800 kB: refused at the 33rd


def test_a_single_document_is_an_ordinary_recipe():
    staged = parse_stages(MID)
    assert len(staged.stages) == 1 and staged.final.recipe.text == MID
    assert [str(m.ref) for m in staged.inputs()] == ["org/a", "org/b"]
