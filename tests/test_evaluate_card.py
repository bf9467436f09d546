"""Evaluation in a merge and in its card: run_merge scores the merge and each source, the
card's table shows those scores, ``model-index`` is what the Hub's client reads, and a
sweep's plot is a PNG of the scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image

from merge_engine import EvalRow, EvalScore, EvalSet, EvalTable, InputError, run_merge, validate
from merge_engine.card import render_card
from merge_engine.evaluate import EVALUATION_PLOT, evaluate_model, write_evaluation_plot
from merge_engine.trained import sentences

from .test_card import parse, table_rows

NORTH = EvalSet("north", tuple(sentences("north", 16, 7)))
SOUTH = EvalSet("south", tuple(sentences("south", 16, 7)))


def recipe(family, a1: float, a2: float) -> str:
    base, d1, d2 = family
    return (f"merge_method: task_arithmetic\nbase_model: {base}\ndtype: float32\nmodels:\n"
            f"  - model: {d1}\n    parameters:\n      weight: {a1}\n"
            f"  - model: {d2}\n    parameters:\n      weight: {a2}\n")


def test_a_merge_scores_itself_and_its_sources(trained_family, tmp_path):
    result = run_merge(recipe(trained_family, 0.5, 0.5), tmp_path / "out", device="cpu",
                       random_seed=0, evaluate=[NORTH, SOUTH])
    table = result.evaluation
    assert [(r.label, r.kind) for r in table.rows] == [
        ("merge", "merge"), *((str(p), "source") for p in trained_family)]
    for row, directory in zip(table.rows, [result.out_dir, *trained_family], strict=True):
        direct = evaluate_model(directory, [NORTH, SOUTH], device="cpu")
        assert [row.scores[s.set] for s in direct] == direct  # the same numbers, exactly
    card = (result.out_dir / "README.md").read_text()
    rows = table_rows(card, "| model | kind |")
    assert rows[0][:2] == ["this merge", "merge"]
    for cells, row in zip(rows, table.rows, strict=True):
        assert cells[2:] == [f"{row.scores['north'].nll:.4f}",
                             f"{row.scores['north'].perplexity:.3f}",
                             f"{row.scores['south'].nll:.4f}",
                             f"{row.scores['south'].perplexity:.3f}"]
    assert "- **north**: 16 texts pasted in (16 texts, " in card
    assert "model-index" not in parse(card).data.to_dict()  # pasted texts: no Hub dataset
    assert not (result.out_dir / EVALUATION_PLOT).exists()


def test_evaluation_needs_the_tokenizer_in_the_output(trained_family, tmp_path):
    with pytest.raises(InputError, match="evaluation needs the tokenizer files"):
        run_merge(recipe(trained_family, 0.5, 0.5), tmp_path / "out", device="cpu",
                  copy_tokenizer=False, evaluate=[NORTH])
    with pytest.raises(InputError, match=r"evaluate\[0\].name must be a label"):
        run_merge(recipe(trained_family, 0.5, 0.5), tmp_path / "out", device="cpu",
                  evaluate=[EvalSet("a|b", ("x y",))])
    assert not (tmp_path / "out").exists()


def score(name: str, nll: float, revision: str | None = None) -> EvalScore:
    import math

    return EvalScore(name, nll, math.exp(nll), tokens=100, samples=8, revision=revision)


def sweep_table() -> EvalTable:
    """Scores of a sweep as the bot gathers them (the numbers are inputs to the card)."""
    wiki = EvalSet("wiki", dataset="org/wiki", config="en", split="validation", samples=8)
    sha = "a" * 40
    path = "models[1].parameters.weight"
    rows = [EvalRow(f"weight={a}", "variant", {path: a},
                    {"wiki": score("wiki", 2.0 + a, sha), "north": score("north", 3.0 - a)})
            for a in (0.1, 0.3, 0.5)]
    rows.append(EvalRow("alice/base", "source", {}, {"wiki": score("wiki", 2.5, sha),
                                                     "north": score("north", 3.5)},
                        revision="b" * 40))
    rows.append(EvalRow("alice/base+bob/lora", "source", note="not scored (LoRA source)"))
    return EvalTable(sets=[wiki, NORTH], rows=rows, metric="wiki", chosen="weight=0.1")


def test_the_card_of_a_sweep(family, tmp_path):
    plan = validate(recipe(family, 1.0, 0.3))
    table = sweep_table()
    card = render_card(plan, seed=1, repo_id="alice/merged", evaluation=table,
                       hub_url="http://hub")
    rows = table_rows(card, "| model | kind |")
    assert rows[0][:3] == ["**weight=0.1** (published)", "variant", "0.1"]
    assert rows[2][:5] == ["weight=0.5", "variant", "0.5", "2.5000", "12.182"]
    assert rows[3][:3] == [f"[alice/base](http://hub/alice/base/tree/{'b' * 40})", "source",
                           "-"]
    assert rows[4][3:] == ["not scored (LoRA source)", "-", "not scored (LoRA source)", "-"]
    assert (f"- **wiki**: [org/wiki](http://hub/datasets/org/wiki/tree/{'a' * 40}) at "
            f"`{'a' * 40}`, config `en`, split `validation`, column `text` (8 texts, 100 "
            "tokens)") in card
    assert f"![perplexity against models[1].parameters.weight]({EVALUATION_PLOT})" in card
    data = parse(card).data
    assert data.model_name == "merged"
    [result] = data.eval_results
    assert (result.task_type, result.dataset_type, result.dataset_name, result.dataset_config,
            result.dataset_split, result.dataset_revision) == (
        "text-generation", "org/wiki", "wiki", "en", "validation", "a" * 40)
    assert (result.metric_type, result.metric_name) == ("perplexity", "Perplexity")
    assert result.metric_value == round(table.rows[0].scores["wiki"].perplexity, 4)
    readme = tmp_path / "README.md"
    readme.write_text(card)
    meta = metadata_load(readme)
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "merged" and len(results) == 1
    assert meta == yaml.safe_load(card.split("---\n")[1])
    assert ModelCard.load(readme).data.eval_results[0].dataset_revision == "a" * 40


def test_the_plot_shows_a_line_per_set(tmp_path):
    table = sweep_table()
    assert write_evaluation_plot(table, tmp_path / EVALUATION_PLOT)
    image = Image.open(tmp_path / EVALUATION_PLOT)
    assert image.format == "PNG" and image.size == (900, 540)
    colours = {c for _, c in image.convert("RGB").getcolors(1 << 20)}
    assert {(0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)} <= colours  # the two sets' lines
    single = EvalTable(sets=table.sets, rows=[table.rows[0], table.rows[3]])
    assert not write_evaluation_plot(single, tmp_path / "none.png")
    assert not Path(tmp_path / "none.png").exists()


def test_a_table_survives_json():
    table = sweep_table()
    again = EvalTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again == table
    assert again.best().label == "weight=0.1"  # lowest perplexity on the metric, wiki
    assert again.swept() == ["models[1].parameters.weight"]
