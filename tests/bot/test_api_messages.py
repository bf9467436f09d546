"""What a person reads from the API: one sentence per limit wherever it trips, missing
sources at their YAML place, an empty recipe said plainly, unchanged resubmissions."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from bot.server import create_app
from bot.store import Store
from tests.bot.botutil import BOT, recipe_yaml
from tests.hubtools import USERS

ALICE = {"Authorization": f"Bearer {USERS['alice']}"}


@pytest.fixture
def make_client(sources, make_settings):
    clients = []

    def make(**overrides) -> TestClient:
        settings = make_settings(**overrides)
        client = TestClient(create_app(settings, workers=0))
        client.__enter__()
        client.settings = settings
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def post(client: TestClient, path: str, recipe: str, **body):
    body = {"recipe": recipe, "repo_id": f"{BOT}/merged", **body}
    return client.post(path, json=body, headers=ALICE)


@pytest.mark.parametrize("path", ["/api/recipes", "/api/validate"])
def test_a_large_recipe_gets_one_message_whatever_its_size(make_client, path):
    client = make_client(max_recipe_bytes=1000)
    just_over = recipe_yaml() + "#" * 1000
    answers = [post(client, path, just_over),
               post(client, path, recipe_yaml() + "#" * 20_000)]  # past the body limit
    assert [a.status_code for a in answers] == [413, 413]
    size = len(just_over.encode())
    assert answers[0].json()["error"] == f"the recipe is {size:,} bytes; the limit is 1,000 bytes"
    assert answers[1].json()["error"] == "the recipe is more than 10,096 bytes; the limit is " \
                                         "1,000 bytes"


def test_empty_recipe_is_said_plainly(make_client):
    client = make_client()
    for text in ("", "  \n"):
        answer = post(client, "/api/validate", text)
        assert answer.status_code == 422
        assert answer.json()["errors"][0]["msg"] == (
            "the recipe is empty; write a mergekit YAML recipe"
        )


@pytest.mark.parametrize("path", ["/api/recipes", "/api/validate"])
def test_a_missing_source_is_reported_at_its_place(make_client, path):
    client = make_client()
    recipe = recipe_yaml(donors=("alice/donor-1", "alice/no-such-model"))
    answer = post(client, path, recipe)
    assert answer.status_code == 422
    error = answer.json()["errors"][0]
    assert error["loc"] == "models[1].model"
    assert "alice/no-such-model" in error["msg"]
    line = recipe.splitlines()[error["line"] - 1]
    assert "alice/no-such-model" in line


def test_an_unchanged_resubmission_is_not_forced(make_client):
    client = make_client()
    first = post(client, "/api/recipes", recipe_yaml(), watch=True).json()
    store = Store(client.settings.db_path)
    with store.write() as db:  # as the worker records a good merge
        db.execute("UPDATE jobs SET status = 'succeeded' WHERE id = ?", (first["job_id"],))
        store.record_success(db, first["recipe_id"], {"alice/base": "a" * 40}, "c" * 40)
    again = post(client, "/api/recipes", recipe_yaml(), watch=False).json()
    assert again["recipe_id"] == first["recipe_id"] and again["job_id"] != first["job_id"]
    job = store.get_job(again["job_id"])
    assert job.force is False and job.trigger == "submitted again unchanged by @alice"
    recipe = store.get_recipe(first["recipe_id"])
    assert recipe.last_shas is not None and recipe.watch is False
    with store.write() as db:
        db.execute("UPDATE jobs SET status = 'skipped' WHERE id = ?", (again["job_id"],))
    forced = post(client, "/api/recipes", recipe_yaml(), force=True).json()
    assert store.get_job(forced["job_id"]).force is True
    with store.write() as db:
        db.execute("UPDATE jobs SET status = 'skipped' WHERE id = ?", (forced["job_id"],))
    changed = post(client, "/api/recipes", recipe_yaml(weights=(0.5, 0.5))).json()
    assert store.get_job(changed["job_id"]).force is True
    assert post(client, "/api/recipes", recipe_yaml(), force="yes").status_code == 422


def test_commit_titles_keep_a_repo_ids_case():
    from dataclasses import replace

    from bot.store import Job
    from bot.worker import _commit_title

    job = Job(1, 1, "alice", "submitted by @alice", 1, False, "queued", None, None, 0, 0.0,
              None, None, None, None, None, 0.0, None, None, None)
    assert _commit_title(job) == "Submitted by @alice"
    moved = replace(job, trigger="demo/donor-1 main moved to 0123456789ab", triggers=2)
    assert _commit_title(moved) == "demo/donor-1 main moved to 0123456789ab (+1 more)"


def test_submit_without_repo_names_it_after_the_recipe_file(tmp_path):
    from pathlib import Path

    from bot.cli import _default_repo

    assert _default_repo("name: kept\nmerge_method: linear\n", Path("x.yml")) is None
    assert _default_repo("merge_method: linear\n", Path("my seed recipe.yml")) == "my-seed-recipe"
    assert _default_repo("merge_method: [\n", Path("a..b.yml")) == "a-b"
