"""Sweeps in the bot: submission checks and access (API, no workers), and the queue's
bookkeeping of a sweep's jobs (SQLite and Postgres)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from bot import queue, sweeps
from bot.store import Store
from merge_engine import EvalScore, expand_sweep, parse_eval_sets
from tests.bot.botutil import BOT, recipe_yaml
from tests.bot.test_api import ALICE, BOB, make_client  # noqa: F401

WEIGHT = "models[1].parameters.weight"
TEXTS = [{"name": "north", "texts": ["the red river watches the stone ."]},
         {"name": "south", "texts": ["ka orvak tesli zu dravi mo vindo sarel lo brumo !"]}]


def sweep_body(**fields) -> dict:
    return {"recipe": recipe_yaml(), "repo_id": f"{BOT}/swept",
            "sweep": {WEIGHT: [0.2, 0.5, 0.8]}, "evaluation": TEXTS, "metric": "south",
            **fields}


@pytest.fixture
def client(make_client) -> TestClient:  # noqa: F811
    return make_client()


def test_a_sweep_is_stored_with_one_job_per_variant_and_shown_whole(scorable, client: TestClient):
    answer = client.post("/api/sweeps", json=sweep_body(), headers=ALICE)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["variants"] == ["weight=0.2", "weight=0.5", "weight=0.8"]
    assert len(created["job_ids"]) == 3
    sweep = client.get(f"/api/sweeps/{created['sweep_id']}").json()
    assert sweep["status"] == "running" and sweep["publish"] == "best"
    assert sweep["metric"] == "south" and sweep["repo_id"] == f"{BOT}/swept"
    assert [v["status"] for v in sweep["variants"]] == ["queued"] * 3
    assert [v["job_id"] for v in sweep["variants"]] == created["job_ids"]
    assert [r["label"] for r in sweep["table"]["rows"]] == created["variants"]
    assert "weight: 0.5" in sweep["variants"][1]["recipe"]
    job = client.get(f"/api/jobs/{created['job_ids'][1]}").json()
    assert job["sweep_id"] == created["sweep_id"] and job["variant"] == 1


@pytest.mark.parametrize("fields, status, loc, words", [
    ({"sweep": {"models[7].parameters.weight": [1]}}, 422, "sweep.models[7].parameters.weight",
     "no models[7]"),
    ({"sweep": {WEIGHT: ["x"]}}, 422, f"sweep.{WEIGHT}", "expected a number"),
    ({"sweep": {WEIGHT: list(range(1, 18))}}, 422, f"sweep.{WEIGHT}", "the limit is 16"),
    ({"sweep": {}}, 422, "sweep", "one or two YAML paths"),
    ({"evaluation": []}, 422, "evaluation", None),
    ({"metric": "east"}, 422, "metric", "north, south"),
    ({"publish": "all"}, 422, "publish", "'best' or 'branches'"),
    ({"sweep": {"models[0].model": ["alice/donor-1", "bob/private"]}}, 422,
     "sweep.models[0].model", "must read the recipe's own models"),
])
def test_bad_sweeps_are_4xx_at_the_field(client: TestClient, fields, status, loc, words):
    answer = client.post("/api/sweeps", json=sweep_body(**fields), headers=ALICE)
    assert answer.status_code == status, answer.text
    error = answer.json()["errors"][0]
    assert error["loc"] == loc
    assert words is None or words in error["msg"]


def test_sweep_limits_are_settings(scorable, make_client):  # noqa: F811
    small = make_client(max_sweep_variants=2, max_sweep_bytes=10**12)
    answer = small.post("/api/sweeps", json=sweep_body(), headers=ALICE)
    assert answer.status_code == 422
    assert "3 variants; the limit is 2" in answer.json()["errors"][0]["msg"]
    tight = make_client(max_sweep_bytes=1000)
    answer = tight.post("/api/sweeps", json=sweep_body(), headers=ALICE)
    assert answer.status_code == 422
    msg = answer.json()["errors"][0]["msg"]
    assert "(3 variants of" in msg and "the limit is 1,000" in msg


def test_hf_jobs_refuses_sweeps_with_a_reason(make_client):  # noqa: F811
    client = make_client(backend="hf-jobs", jobs_image="img")
    answer = client.post("/api/sweeps", json=sweep_body(), headers=ALICE)
    assert answer.status_code == 422
    assert "not on the hf-jobs backend" in answer.json()["errors"][0]["msg"]


def test_a_private_sweep_is_not_found_by_others(scorable, client: TestClient):
    created = client.post("/api/sweeps", json=sweep_body(private=True), headers=ALICE).json()
    path = f"/api/sweeps/{created['sweep_id']}"
    assert client.get(path, headers=ALICE).status_code == 200
    for headers in (BOB, {}):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 404
        assert answer.json() == {"error": f"sweep {created['sweep_id']} not found"}
    assert client.get("/api/sweeps/999").json() == {"error": "sweep 999 not found"}
    assert client.post("/api/sweeps", json=sweep_body()).status_code == 401


# the queue's bookkeeping ----------------------------------------------------------------


def new_sweep(store: Store, publish: str = "best", values=(0.2, 0.5, 0.8)) -> tuple[int, int]:
    variants = expand_sweep(recipe_yaml(), {WEIGHT: list(values)})
    with store.write() as db:
        recipe_id = store.add_recipe(db, owner="alice", yaml=recipe_yaml(), repo_id="b/s",
                                     private=False, watch=False, sources=["alice/base"])
        sweep_id = sweeps.add_sweep(db, recipe_id=recipe_id, owner="alice", yaml=recipe_yaml(),
                                    axes={WEIGHT: list(values)},
                                    evaluation=parse_eval_sets(TEXTS), metric="south",
                                    publish=publish, variants=variants)
        queue.enqueue_sweep(db, sweep_id, recipe_id, "alice", [v.label for v in variants])
    return recipe_id, sweep_id


def run_next(store: Store, status: str, commit: str | None = None) -> int:
    job = queue.claim(store, "w", lease=30, max_attempts=3)
    assert queue.finish(store, job.id, "w", status, commit=commit,
                        error="boom" if status == queue.FAILED else None)
    return job.id


def score(name: str, perplexity: float) -> EvalScore:
    return EvalScore(set=name, nll=0.0, perplexity=perplexity, tokens=10, samples=1,
                     revision=None)


def test_the_last_variant_queues_the_publishing_job(store: Store):
    recipe_id, sweep_id = new_sweep(store)
    with store.write() as db:  # a trigger for the recipe is not absorbed by a variant's job
        plain, absorbed = queue.enqueue(db, recipe_id, "alice", "remerge")
    assert not absorbed
    run_next(store, queue.SUCCEEDED)
    run_next(store, queue.FAILED)
    assert sweeps.sweep_jobs(store, sweep_id)[1] is None  # one variant is still queued
    run_next(store, queue.SUCCEEDED)
    assert store.get_job(plain).sweep_id is None  # the plain job runs in its turn
    run_next(store, queue.SUCCEEDED)
    variant_jobs, publishing = sweeps.sweep_jobs(store, sweep_id)
    assert [variant_jobs[i].status for i in range(3)] == ["succeeded", "failed", "succeeded"]
    assert publishing is not None and publishing.status == "queued"
    assert sweeps.get_sweep(store, sweep_id).status == "publishing"
    assert run_next(store, queue.SUCCEEDED, commit="c0ffee") == publishing.id
    sweep = sweeps.get_sweep(store, sweep_id)
    assert (sweep.status, sweep.commit_sha, sweep.error) == ("succeeded", "c0ffee", None)


def test_a_sweep_fails_when_every_variant_fails(store: Store):
    _, sweep_id = new_sweep(store, values=(0.1, 0.2))
    run_next(store, queue.FAILED)
    run_next(store, queue.FAILED)
    sweep = sweeps.get_sweep(store, sweep_id)
    assert sweep.status == "failed" and "no variant of the sweep succeeded" in sweep.error
    assert sweeps.sweep_jobs(store, sweep_id)[1] is None
    assert queue.claim(store, "w", lease=30, max_attempts=3) is None


def test_variants_given_up_count_as_ended(store: Store):
    _, sweep_id = new_sweep(store, values=(0.1,))
    queue.claim(store, "w", lease=-1, max_attempts=1)  # its lease is already expired
    assert queue.give_up(store, max_attempts=1)
    assert sweeps.get_sweep(store, sweep_id).status == "failed"


def test_scores_pick_the_best_and_fill_the_table(store: Store):
    _, sweep_id = new_sweep(store)
    for index, (north, south) in enumerate([(5.0, 9.0), (6.0, 4.0), (7.0, 4.5)]):
        sweeps.record_variant(store, sweep_id, index,
                              {"north": score("north", north), "south": score("south", south)},
                              [])
    sweep = sweeps.get_sweep(store, sweep_id)
    assert sweep.pick_best().label == "weight=0.5"  # lowest perplexity on the metric
    sweeps.record_best(store, sweep_id, 1)
    table = sweeps.get_sweep(store, sweep_id).table()
    assert table.chosen == "weight=0.5" and table.metric == "south"
    assert [r.scores["south"].perplexity for r in table.rows] == [9.0, 4.0, 4.5]
    assert [r.values for r in table.rows][2] == {WEIGHT: 0.8}


def test_branch_names_are_the_values():
    variants = expand_sweep(recipe_yaml(), {WEIGHT: [0.25], "models[0].parameters.weight": [1]})
    variant = sweeps.SweepVariant(0, variants[0].label, variants[0].values, "", None)
    name = sweeps.branch_name(variant)
    assert name == "sweep-models-1-.parameters.weight-0.25-models-0-.parameters.weight-1"
    assert ".." not in name and " " not in name


@pytest.mark.parametrize("publish, side_by_side", [("best", True), ("branches", False)])
def test_variants_of_a_best_sweep_run_side_by_side(store: Store, publish, side_by_side):
    recipe_id, sweep_id = new_sweep(store, publish=publish)
    first = queue.claim(store, "w1", lease=30, max_attempts=3)
    second = queue.claim(store, "w2", lease=30, max_attempts=3)
    assert first.variant == 0
    assert (second is not None and second.variant == 1) == side_by_side
    with store.write() as db:  # a plain job of the recipe waits for the variants
        plain, _ = queue.enqueue(db, recipe_id, "alice", "remerge")
    assert queue.finish(store, first.id, "w1", queue.SUCCEEDED)
    third = queue.claim(store, "w3", lease=30, max_attempts=3)
    assert third is not None and third.sweep_id == sweep_id and third.id != plain
