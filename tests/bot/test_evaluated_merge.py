"""A single merge asks for evaluation (``"evaluation"`` of POST /api/recipes): every merge
and remerge of the recipe is scored, its card gets the one-row table (plus the sources')
and ``model-index``; the submission's 422s; the stored sets on SQLite and Postgres."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from bot.store import Store
from bot.worker import Worker
from merge_engine import EvalSet, evaluate_model, parse_eval_sets
from merge_engine.trained import sentences
from tests.bot.botutil import BOT, recipe_yaml
from tests.bot.test_api import ALICE, BOB, make_client  # noqa: F401
from tests.bot.test_multistage_bot import two_stages
from tests.bot.test_sweep_runs import REPOS, card_rows, recipe, trained_hub  # noqa: F401
from tests.hub.test_datasets_hub import dataset, parquet

SOUTH_TEXTS = sentences("south", 16, 3)
EVALUATION = [{"name": "north", "texts": sentences("north", 8, seed=7)},
              {"name": "south", "dataset": "alice/south-text", "samples": 12}]


def run_jobs(settings) -> None:
    worker = Worker(settings, Store(settings.db_path))
    for _ in range(5):
        if worker.run_once() is None:
            break


def test_an_evaluated_merge_publishes_its_scores_and_remerges_score_again(
        trained_hub, make_client, settings, tmp_path):  # noqa: F811
    data_sha = dataset(trained_hub, "alice/south-text", {
        "data/test-00000-of-00001.parquet": parquet({"text": SOUTH_TEXTS})})
    client = make_client()
    body = {"recipe": recipe(), "repo_id": f"{BOT}/scored", "evaluation": EVALUATION}
    answer = client.post("/api/recipes", json=body, headers=ALICE)
    assert answer.status_code == 201, answer.text
    recipe_id, job_id = answer.json()["recipe_id"], answer.json()["job_id"]
    stored = client.get(f"/api/recipes/{recipe_id}").json()
    assert [s["name"] for s in stored["evaluation"]] == ["north", "south"]
    run_jobs(settings)
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    assert any(line.startswith("evaluated the merge on south: NLL") for line in job["log"])
    assert any(line.startswith(f"evaluated {REPOS[2]} on north") for line in job["log"])

    api = trained_hub.api(BOT)
    folder = Path(api.snapshot_download(f"{BOT}/scored", local_dir=tmp_path / "published"))
    rows = card_rows((folder / "README.md").read_text())
    assert set(rows) == {"this merge", *REPOS}  # one merge row, then the sources'
    assert rows["this merge"][0] == "merge"
    sets = [EvalSet("north", tuple(EVALUATION[0]["texts"])),
            EvalSet("south", tuple(SOUTH_TEXTS[:12]))]  # the dataset's first 12 texts
    direct = evaluate_model(folder, sets, device="cpu")
    assert [float(c) for c in rows["this merge"][1:]] == pytest.approx(
        [x for s in direct for x in (s.nll, s.perplexity)], abs=6e-4)
    [south] = ModelCard.load(folder / "README.md").data.eval_results
    assert (south.dataset_type, south.dataset_revision) == ("alice/south-text", data_sha)
    assert south.metric_value == pytest.approx(direct[1].perplexity, abs=1e-3)
    cached = sorted((settings.home / "evaluations").glob("*.json"))
    assert len(cached) == 2 * len(REPOS)  # each source scored once per set

    again = client.post(f"/api/recipes/{recipe_id}/remerge", json={"force": True},
                        headers=ALICE).json()["job_id"]
    run_jobs(settings)
    job = client.get(f"/api/jobs/{again}").json()
    assert job["status"] == "succeeded", job
    assert any(line.startswith("evaluated the merge on north") for line in job["log"])
    assert sorted((settings.home / "evaluations").glob("*.json")) == cached  # sources cached
    card = Path(api.hf_hub_download(f"{BOT}/scored", "README.md")).read_text()
    assert card_rows(card) == rows  # the same merge, the same scores


def test_submitting_other_sets_is_a_changed_recipe(scorable, sources, make_client):  # noqa: F811
    client = make_client()
    body = {"recipe": recipe_yaml(), "repo_id": f"{BOT}/m", "evaluation": EVALUATION[:1]}
    first = client.post("/api/recipes", json=body, headers=ALICE).json()
    other = {**body, "evaluation": [{"name": "north", "texts": ["one text ."]}]}
    second = client.post("/api/recipes", json=other, headers=ALICE).json()
    assert second["recipe_id"] == first["recipe_id"]
    recipe_now = client.get(f"/api/recipes/{first['recipe_id']}").json()
    assert recipe_now["evaluation"][0]["texts"] == ["one text ."]
    plain = client.post("/api/recipes", json={k: v for k, v in body.items()
                                              if k != "evaluation"}, headers=ALICE)
    assert plain.status_code == 201
    assert client.get(f"/api/recipes/{first['recipe_id']}").json()["evaluation"] is None


@pytest.mark.parametrize("fields, words", [
    ({"evaluation": []}, "non-empty list"),
    ({"evaluation": [{"name": "x", "dataset": "a/b", "samples": 5000}]}, "the limit is 1024"),
    ({"evaluation": "texts"}, "non-empty list"),
    ({"recipe": two_stages()}, "multi-stage recipe cannot be evaluated"),
    ({"publish": "adapter", "max_rank": 4}, "'publish': 'full'"),
])
def test_bad_evaluations_are_422_at_the_field(sources, make_client, fields, words):  # noqa: F811
    client = make_client()
    body = {"recipe": recipe_yaml(), "repo_id": f"{BOT}/m", "evaluation": EVALUATION[:1],
            **fields}
    answer = client.post("/api/recipes", json=body, headers=ALICE)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["errors"]
    assert error["loc"] == "evaluation" and words in error["msg"], error


@pytest.mark.parametrize("path", ["/api/recipes", "/api/sweeps"])
def test_a_dataset_the_submitter_or_the_bot_cannot_read_is_422(
        scorable, sources, make_client, path):  # noqa: F811
    dataset(sources, "alice/secret", {
        "data/test-00000-of-00001.parquet": parquet({"text": SOUTH_TEXTS})}, private=True)
    client = make_client()
    body = {"recipe": recipe_yaml(), "repo_id": f"{BOT}/m",
            "evaluation": [{"name": "s", "dataset": "alice/secret"}]}
    if path == "/api/sweeps":
        body["sweep"] = {"models[1].parameters.weight": [0.1, 0.2]}
    for who, words in ((BOB, "or you cannot read it"), (ALICE, "or the bot cannot read it")):
        answer = client.post(path, json=body, headers=who)
        assert answer.status_code == 422, answer.text
        [error] = answer.json()["errors"]
        assert error["loc"] == "evaluation[0].dataset" and words in error["msg"], error


def test_an_evaluated_merge_on_hf_jobs_gets_its_scores_from_the_job(
        trained_hub, make_client, make_settings, tmp_path):  # noqa: F811
    """The sets travel as a Job secret; the Job scores the merge, its card gets the table
    and its result line brings the scores back to the job log."""
    overrides = {"backend": "hf-jobs", "jobs_image": "img", "jobs_poll_seconds": 0.1}
    settings, client = make_settings(**overrides), make_client(**overrides)
    body = {"recipe": recipe(), "repo_id": f"{BOT}/job-scored", "evaluation": EVALUATION[:1]}
    answer = client.post("/api/recipes", json=body, headers=ALICE)
    assert answer.status_code == 201, answer.text
    run_jobs(settings)
    job = client.get(f"/api/jobs/{answer.json()['job_id']}").json()
    assert job["status"] == "succeeded", job
    assert any(line.startswith("hf-jobs: started Job") for line in job["log"])
    [line] = [ln for ln in job["log"] if ln.startswith("evaluated the merge on north")]
    folder = trained_hub.api(BOT).snapshot_download(f"{BOT}/job-scored",
                                                    local_dir=tmp_path / "published")
    [direct] = evaluate_model(folder, [EvalSet("north", tuple(EVALUATION[0]["texts"]))],
                              device="cpu")
    assert f"NLL {direct.nll:.4f}" in line
    rows = card_rows((Path(folder) / "README.md").read_text())
    assert set(rows) == {"this merge", *REPOS}


def test_the_sets_are_stored_on_both_databases(store: Store):
    assert store.version() >= 8
    sets = tuple(parse_eval_sets(EVALUATION))
    with store.write() as db:
        recipe_id = store.add_recipe(db, owner="alice", yaml="y", repo_id="a/b", private=False,
                                     watch=False, sources=[], evaluation=sets)
        plain_id = store.add_recipe(db, owner="alice", yaml="y", repo_id="a/c", private=False,
                                    watch=False, sources=[])
    assert store.get_recipe(recipe_id).evaluation == sets
    assert store.get_recipe(plain_id).evaluation == ()
    with store.write() as db:
        store.replace_recipe(db, recipe_id, yaml="z", private=False, watch=False, sources=[])
    assert store.get_recipe(recipe_id).evaluation == ()
