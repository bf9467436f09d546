"""Evaluation against localhub: a dataset set read at a commit SHA that the card's
``model-index`` names, Hub sources scored once per (repo@SHA, set) through the cache."""

from __future__ import annotations

import json
import shutil

import pytest
from huggingface_hub import ModelCard

from merge_engine import EvalSet, HubAccess, evaluate_model, run_merge
from merge_engine.cli import main
from merge_engine.trained import sentences
from tests.hubtools import USERS, hf_endpoint  # noqa: F401 - a fixture

from .conftest import publish_folder
from .test_datasets_hub import dataset, parquet, push

SOUTH_TEXTS = sentences("south", 40, 5)
NORTH = EvalSet("north", tuple(sentences("north", 12, 5)))
SOUTH = EvalSet("south", dataset="alice/south-text", samples=32)


def test_a_merge_evaluated_on_a_hub_dataset(hub, trained_family, tmp_path):
    repos = ["alice/base", "alice/donor-1", "alice/donor-2"]
    shas = []
    for path, repo in zip(trained_family, repos, strict=True):
        folder = shutil.copytree(path, tmp_path / "upload" / path.name)
        shas.append(publish_folder(hub, folder, repo))
    data_sha = dataset(hub, "alice/south-text", {
        "data/test-00000-of-00001.parquet": parquet({"text": SOUTH_TEXTS})})
    access = HubAccess(endpoint=hub.url, token=USERS["alice"], cache_dir=tmp_path / "hf")
    cache = tmp_path / "scores"
    recipe = (f"merge_method: task_arithmetic\nbase_model: {repos[0]}\ndtype: float32\n"
              f"models:\n  - model: {repos[1]}\n    parameters:\n      weight: 0.5\n"
              f"  - model: {repos[2]}\n    parameters:\n      weight: 0.5\n")

    def merge(name: str):
        return run_merge(recipe, tmp_path / name, device="cpu", random_seed=0, access=access,
                         evaluate=[NORTH, SOUTH], eval_cache_dir=cache)

    result = merge("first")
    table = result.evaluation
    merged, *sources = table.rows
    assert merged.scores["south"].revision == data_sha
    assert merged.scores["south"].samples == 32
    pasted = EvalSet("south", tuple(SOUTH_TEXTS[:32]))
    assert merged.scores["south"].nll == evaluate_model(result.out_dir, [pasted],
                                                        device="cpu")[0].nll
    assert [(r.label, r.revision) for r in sources] == list(zip(repos, shas, strict=True))
    for row, path in zip(sources, trained_family, strict=True):
        direct = evaluate_model(path, [NORTH, SOUTH], device="cpu", hub=access)
        assert [row.scores[s.set] for s in direct] == direct
    card = ModelCard.load(result.out_dir / "README.md")
    [south] = card.data.eval_results
    assert (south.dataset_type, south.dataset_revision, south.dataset_split) == (
        "alice/south-text", data_sha, "test")
    assert south.metric_value == round(merged.scores["south"].perplexity, 4)

    # The sources' scores come from the cache: 3 sources x 2 sets, read back as stored.
    files = sorted(cache.glob("*.json"))
    assert len(files) == 6
    for f in files:
        stored = json.loads(f.read_text())
        f.write_text(json.dumps({**stored, "nll": stored["nll"] + 100}))
    again = merge("second").evaluation
    assert again.rows[0].scores == merged.scores
    for row, before in zip(again.rows[1:], sources, strict=True):
        assert {k: v.nll for k, v in row.scores.items()} == pytest.approx(
            {k: v.nll + 100 for k, v in before.scores.items()})

    # A new dataset commit is another set: scored afresh; the pasted texts stay cached.
    new_sha = push(hub, "alice/south-text", {
        "data/test-00000-of-00001.parquet": parquet({"text": SOUTH_TEXTS[::-1]})})
    third = merge("third").evaluation
    for row, before in zip(third.rows[1:], sources, strict=True):
        assert row.scores["south"].revision == new_sha
        assert row.scores["south"].nll < 50
        assert row.scores["north"].nll == pytest.approx(before.scores["north"].nll + 100)


@pytest.mark.usefixtures("hf_endpoint")
def test_evaluate_cli_reads_a_dataset_at_a_revision(hub, trained_family, capsys):
    first = dataset(hub, "alice/south-text", {
        "data/test-00000-of-00001.parquet": parquet({"text": SOUTH_TEXTS})})
    push(hub, "alice/south-text", {
        "data/test-00000-of-00001.parquet": parquet({"text": SOUTH_TEXTS[::-1]})})
    model = str(trained_family[2])
    assert main(["evaluate", model, "--device", "cpu", "--json", "--eval-dataset",
                 f"alice/south-text:test:text:8@{first}"]) == 0
    [score] = json.loads(capsys.readouterr().out)["scores"]
    [direct] = evaluate_model(model, [EvalSet("south", tuple(SOUTH_TEXTS[:8]))], device="cpu")
    assert (score["set"], score["revision"], score["samples"]) == ("south-text", first, 8)
    assert score["nll"] == direct.nll
