"""The evaluation stage: sets parsed with their limits, mean token NLL and perplexity that
match a plain transformers computation, and the real shape of a task-arithmetic sweep
over a family trained on two languages."""

from __future__ import annotations

import json
import math
import shutil
import sys

import pytest
import torch

from merge_engine import run_merge
from merge_engine.errors import InputError, MergeEngineError
from merge_engine.evaluate import (
    EvalScore,
    EvalSet,
    evaluate_model,
    parse_eval_sets,
    run_tasks,
    score,
)
from merge_engine.evaluate.sets import MAX_SAMPLES, MAX_SETS
from merge_engine.trained import sentences

NORTH = EvalSet("north", tuple(sentences("north", 24, 99)))
SOUTH = EvalSet("south", tuple(sentences("south", 24, 99)))


def test_sets_parse_from_data():
    sets = parse_eval_sets([
        {"name": "mine", "texts": ["one text", "another"]},
        {"dataset": "org/wiki", "config": "en", "split": "validation", "column": "body",
         "samples": 16, "revision": "main"},
        EvalSet("again", ("x y",)),
    ])
    assert sets[0] == EvalSet("mine", ("one text", "another"), samples=2)
    assert sets[1] == EvalSet("wiki:en", dataset="org/wiki", config="en", split="validation",
                              column="body", samples=16, revision="main")
    assert sets[2].texts == ("x y",)


@pytest.mark.parametrize(("value", "message"), [
    ("texts", "evaluation must be a non-empty list"),
    ([{"name": "a", "texts": ["x"]}] * (MAX_SETS + 1), f"the limit is {MAX_SETS}"),
    ([{"name": "a", "texts": ["x"]}, {"name": "a", "texts": ["y"]}],
     r"evaluation\[1\].name: the name 'a' is used by an earlier set"),
    ([{"name": "a"}], r"evaluation\[0\] must have either texts or a dataset, not neither"),
    ([{"name": "a", "texts": ["x"], "dataset": "o/d"}], r"evaluation\[0\] .* not both"),
    ([{"dataset": "o/d", "samples": MAX_SAMPLES + 1}],
     rf"evaluation\[0\].samples is {MAX_SAMPLES + 1}; the limit is {MAX_SAMPLES}"),
    ([{"dataset": "o/d", "samples": 0}], r"evaluation\[0\].samples must be a positive"),
    ([{"dataset": "o/d", "samples": True}], r"evaluation\[0\].samples must be a positive"),
    ([{"dataset": "no-slash"}], r"evaluation\[0\].dataset must be a dataset repo id"),
    ([{"dataset": "o/d", "split": "a b"}], r"evaluation\[0\].split must be a name"),
    ([{"dataset": "o/d", "colour": "x"}], r"evaluation\[0\].colour is not a field"),
    ([{"texts": ["x"]}], r"evaluation\[0\].name is missing"),
    ([{"name": "a|b", "texts": ["x"]}], r"evaluation\[0\].name must be a label"),
    ([{"name": "a", "texts": ["x", ""]}], r"evaluation\[0\].texts\[1\] must be a non-empty"),
    ([{"name": "a", "texts": ["x" * 20_001]}], r"evaluation\[0\].texts\[0\] has 20001 char"),
    ([{"name": "a", "texts": ["x"], "revision": "main"}], r"evaluation\[0\].revision applies"),
])
def test_bad_sets_name_their_place(value, message):
    with pytest.raises(InputError, match=message) as info:
        parse_eval_sets(value)
    assert "\n" not in str(info.value)


def test_batches_stay_within_the_budget():
    lengths = [5, 40, 7, 12, 40, 3, 90]
    groups = score.batches(lengths, budget=80)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 80
    assert groups[0] == [6]  # longer than the budget: alone


def reference_nll(directory, texts: tuple[str, ...]) -> tuple[float, int]:
    """Token-weighted mean of transformers' own loss, one text at a time."""
    import transformers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok.encode(text).ids])
            n = ids.shape[1] - 1
            total += model(input_ids=ids, labels=ids).loss.item() * n
            count += n
    return total / count, count


@pytest.mark.parametrize("budget", [None, 24])
def test_scores_match_plain_transformers(trained_family, monkeypatch, budget):
    """Mixed lengths (padding), one batch or many: the same NLL as transformers' loss."""
    if budget is not None:
        monkeypatch.setattr(score, "token_budget", lambda *a: budget)
    texts = (*SOUTH.texts[:5], " ".join(SOUTH.texts[5:9]), "ka orvak", NORTH.texts[0])
    mixed = EvalSet("mixed", texts)
    for path in trained_family:
        [got] = evaluate_model(path, [mixed], device="cpu")
        nll, tokens = reference_nll(path, texts)
        assert got.tokens == tokens and got.samples == len(texts)
        assert got.nll == pytest.approx(nll, abs=1e-4)
        assert got.perplexity == pytest.approx(math.exp(got.nll))
        assert got.revision is None


def test_texts_are_cut_at_max_length(trained_family):
    [short] = evaluate_model(trained_family[0], [NORTH], device="cpu", max_length=5)
    assert short.tokens == 4 * len(NORTH.texts)


def test_task_arithmetic_sweep_has_the_real_shape(trained_family, tmp_path):
    """base + 0.5 (d1 - base) + a2 (d2 - base): as a2 grows, donor 2's language scores
    better and donor 1's worse, at every step."""
    base, d1, d2 = trained_family
    north, south = [], []
    for a2 in (0.0, 0.25, 0.5, 0.75, 1.0):
        recipe = (f"merge_method: task_arithmetic\nbase_model: {base}\ndtype: float32\n"
                  f"models:\n  - model: {d1}\n    parameters:\n      weight: 0.5\n"
                  f"  - model: {d2}\n    parameters:\n      weight: {a2}\n")
        out = run_merge(recipe, tmp_path / str(a2), device="cpu", random_seed=0).out_dir
        n, s = evaluate_model(out, [NORTH, SOUTH], device="cpu")
        north.append(n.nll)
        south.append(s.nll)
    assert all(a < b for a, b in zip(north, north[1:], strict=False)), north
    assert all(a > b for a, b in zip(south, south[1:], strict=False)), south
    assert south[-1] < south[0] - 0.3 and north[-1] > north[0] + 0.1


def test_each_donor_is_best_on_its_own_language(trained_family):
    scores = [evaluate_model(p, [NORTH, SOUTH], device="cpu") for p in trained_family]
    (_, _), (n1, s1), (n2, s2) = scores
    assert n1.nll < n2.nll and s2.nll < s1.nll


def test_models_that_cannot_be_evaluated(trained_family, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((trained_family[0] / "config.json").read_text())
    with pytest.raises(InputError, match=f"{bare} has no tokenizer.json"):
        evaluate_model(bare, [NORTH], device="cpu")
    config = json.loads((trained_family[0] / "config.json").read_text())
    (bare / "tokenizer.json").write_text("{}")
    (bare / "config.json").write_text(json.dumps({**config, "auto_map": {"x": "y"}}))
    with pytest.raises(InputError, match="needs remote code, which is never run"):
        evaluate_model(bare, [NORTH], device="cpu")
    with pytest.raises(InputError, match="has no text of two or more tokens"):
        evaluate_model(trained_family[0], [EvalSet("tiny", ("",))], device="cpu")


def test_lm_eval_tasks_say_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # not importable
    with pytest.raises(InputError, match="need the lm_eval package, which is not installed"):
        run_tasks(tmp_path, ["hellaswag"], device="cpu")
    monkeypatch.setitem(sys.modules, "lm_eval", type(sys)("lm_eval"))
    with pytest.raises(InputError, match="run only on a CUDA GPU, and the device here is cpu"):
        run_tasks(tmp_path, ["hellaswag"], device="cpu")
    with pytest.raises(InputError, match=r"tasks\[0\] must be an lm-eval task name"):
        run_tasks(tmp_path, ["bad task"], device="cpu")


def test_the_token_budget_follows_free_memory(monkeypatch):
    model = type("M", (), {"config": type("C", (), {"vocab_size": 32000, "hidden_size": 2048,
                                                     "intermediate_size": 8192})()})()
    per_token = 4 * (3 * 32000 + 4 * 2048 + 3 * 8192)
    monkeypatch.setattr(score.behaviour, "available_bytes", lambda device: 1000 * per_token)
    assert score.token_budget(model, "cuda", 256) == 500  # half the free memory
    assert score.token_budget(model, "cuda", 1024) == 1024  # one whole text at least
    monkeypatch.setattr(score.behaviour, "available_bytes", lambda device: 10**12)
    assert score.token_budget(model, "cuda", 1024) == 16384
    assert score.token_budget(model, "cpu", 1024) == 2048


def test_a_tokenizer_that_pads_or_cuts_is_read_as_it_encodes(trained_family, tmp_path):
    """tokenizer.json may turn padding and truncation on; neither changes the score."""
    from tokenizers import Tokenizer

    copy = shutil.copytree(trained_family[1], tmp_path / "padded")
    tok = Tokenizer.from_file(str(copy / "tokenizer.json"))
    tok.enable_padding(length=64, pad_id=0)
    tok.enable_truncation(max_length=6)
    tok.save(str(copy / "tokenizer.json"))
    [padded] = evaluate_model(copy, [NORTH], device="cpu")
    [plain] = evaluate_model(trained_family[1], [NORTH], device="cpu")
    assert padded == plain


def test_a_model_too_large_for_the_device_is_refused(trained_family, monkeypatch):
    monkeypatch.setattr(score.behaviour, "available_bytes", lambda device: 1000)
    with pytest.raises(MergeEngineError, match=r"cannot be evaluated: the model needs about "
                                               r"0\.\d GB to run but 0\.0 GB are free on cpu"):
        evaluate_model(trained_family[0], [NORTH], device="cpu")


@pytest.mark.parametrize("fields", [
    None, {"set": "other", "nll": 1.0, "perplexity": 2.7, "tokens": 3, "samples": 1},
    {"set": "s", "nll": float("nan"), "perplexity": 2.7, "tokens": 3, "samples": 1},
    {"set": "s", "nll": "1", "perplexity": 2.7, "tokens": 3, "samples": 1},
    {"set": "s", "nll": 1.0, "perplexity": 2.7, "tokens": 0, "samples": 1},
    {"set": "s", "nll": 1.0, "unknown": 1},
])
def test_a_damaged_cached_source_score_is_not_used(tmp_path, fields):
    from merge_engine.evaluate.sources import _cached
    from merge_engine.io.entries import entry_path, write_entry

    good = {"set": "s", "nll": 1.0, "perplexity": 2.718, "tokens": 3, "samples": 1}
    write_entry(tmp_path, "k", good)
    assert _cached(tmp_path, "k", "s") == EvalScore(**good)
    if fields is None:
        entry_path(tmp_path, "k").write_bytes(b"{not json")
    else:
        write_entry(tmp_path, "k", fields)
    assert _cached(tmp_path, "k", "s") is None


@pytest.mark.parametrize("item", [
    {"name": "x" * 100_000, "texts": ["a"]},
    {"name": "a", "dataset": "a/b", "column": "x" * 100_000},
    {"name": "a", "dataset": "a/b", "x" * 100_000: 1},
])
def test_a_hostile_set_is_named_not_echoed(item):
    with pytest.raises(InputError) as info:
        parse_eval_sets([item])
    assert str(info.value).startswith("evaluation[0].") and len(str(info.value)) < 200
