"""REST API against localhub (real whoami and preflight), no workers running."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from bot.server import create_app
from tests.bot.botutil import BOT, recipe_yaml
from tests.hubtools import USERS

ALICE = {"Authorization": f"Bearer {USERS['alice']}"}
BOB = {"Authorization": f"Bearer {USERS['bob']}"}


@pytest.fixture
def make_client(sources, make_settings):
    clients = []

    def make(**overrides) -> TestClient:
        app = create_app(make_settings(**overrides), workers=0)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def submit(client: TestClient, headers=ALICE, **body):
    body = {"recipe": recipe_yaml(), "repo_id": f"{BOT}/merged", **body}
    return client.post("/api/recipes", json=body, headers=headers)


def test_submit_then_read_job_recipe_and_list(client: TestClient):
    answer = submit(client, watch=True)
    assert answer.status_code == 201, answer.text
    ids = answer.json()
    assert ids == {"recipe_id": 1, "job_id": 1, "repo_id": f"{BOT}/merged"}
    job = client.get("/api/jobs/1").json()
    assert job["status"] == "queued" and job["trigger"] == "submitted by @alice"
    assert job["repo_id"] == f"{BOT}/merged" and job["log"] == ["queued: submitted by @alice"]
    recipe = client.get("/api/recipes/1").json()
    assert recipe["owner"] == "alice" and recipe["watch"] is True
    assert recipe["sources"] == ["alice/base", "alice/donor-1", "alice/donor-2"]
    assert [j["id"] for j in recipe["jobs"]] == [1]
    assert [r["id"] for r in client.get("/api/recipes?owner=alice").json()["recipes"]] == [1]
    assert client.get("/api/recipes?owner=bob").json()["recipes"] == []
    assert client.get("/api/jobs/99").status_code == 404
    assert client.get("/api/recipes/abc").status_code == 404


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing"),
        ({"Authorization": "Bearer hf_wrong"}, "not a valid Hub token"),
        ({"Authorization": "Basic abc"}, "missing"),
    ],
)
def test_token_is_required_and_checked(client: TestClient, headers, message):
    answer = submit(client, headers=headers)
    assert answer.status_code == 401 and message in answer.json()["error"]
    assert client.post("/api/recipes/1/remerge", headers=headers).status_code == 401


@pytest.mark.parametrize(
    ("recipe", "loc", "msg"),
    [
        (
            recipe_yaml().replace("      weight: 0.3\n", "      density: 0.3\n"),
            "models[1].parameters.weight",
            "missing required parameter 'weight'",
        ),
        (
            recipe_yaml().replace("weight: 0.3", "wieght: 0.3"),
            "models[1].parameters.wieght",
            "weight",
        ),
        ("merge_method: nope\nmodels: []\n", "merge_method", "nope"),
        (recipe_yaml(base="./local/dir"), "base_model", "local path"),
        (recipe_yaml(donors=("/tmp/x", "alice/donor-2")), "models[0].model", "local path"),
        (recipe_yaml(donors=("alice/missing", "alice/donor-2")), "", "alice/missing"),
    ],
)
def test_invalid_recipes_are_422_with_locations(client: TestClient, recipe, loc, msg):
    answer = submit(client, recipe=recipe)
    assert answer.status_code == 422, answer.text
    errors = answer.json()["errors"]
    assert errors[0]["loc"].startswith(loc) and msg in errors[0]["msg"]
    assert client.get("/api/jobs/1").status_code == 404  # nothing queued


def test_target_namespace_must_be_writable_by_the_bot(client: TestClient):
    answer = submit(client, repo_id="alice/merged")
    assert answer.status_code == 403 and "cannot write" in answer.json()["error"]


def test_default_target_is_the_bot_namespace(make_client):
    client = make_client(namespace=None)
    assert submit(client, repo_id="short").json()["repo_id"] == f"{BOT}/short"
    named = "name: from-recipe\n" + recipe_yaml()
    answer = submit(client, repo_id=None, recipe=named)
    assert answer.json()["repo_id"] == f"{BOT}/from-recipe"
    assert submit(client, repo_id=None).status_code == 422
    assert submit(client, repo_id="bad name").status_code == 422


def test_another_owners_target_is_409_and_own_resubmission_updates(client: TestClient):
    assert submit(client).status_code == 201
    assert submit(client, headers=BOB).status_code == 409
    again = submit(client, recipe=recipe_yaml(weights=(0.5, 0.5)))
    assert again.status_code == 201 and again.json()["recipe_id"] == 1
    assert again.json()["job_id"] == 1  # absorbed by the still queued job
    assert "0.5" in client.get("/api/recipes/1").json()["recipe"]


def test_limits_are_clear_4xx(make_client):
    small = make_client(max_recipe_bytes=100)
    answer = submit(small)
    assert answer.status_code == 413 and "limit is 100" in answer.json()["error"]
    few = make_client(max_models=2)
    answer = submit(few)
    assert answer.status_code == 422 and answer.json()["errors"][0]["loc"] == "models"
    tiny = make_client(max_parameters=1000)
    answer = submit(tiny)
    assert answer.status_code == 422 and "parameters" in answer.json()["errors"][0]["msg"]
    one = make_client(max_queued_per_owner=1)
    assert submit(one).status_code == 201
    answer = submit(one, repo_id=f"{BOT}/second")
    assert answer.status_code == 429 and "wait" in answer.json()["error"]
    assert submit(one, headers=BOB, repo_id=f"{BOT}/bobs").status_code == 201


def test_sources_must_be_readable_by_submitter_and_bot(client: TestClient, sources, model_dirs):
    api = sources.api("alice")
    api.create_repo("alice/secret", private=True)
    api.upload_folder(repo_id="alice/secret", folder_path=model_dirs["alice/donor-1"])
    recipe = recipe_yaml(donors=("alice/secret", "alice/donor-2"))
    by_bob = submit(client, headers=BOB, recipe=recipe)
    assert by_bob.status_code == 422 and "alice/secret" in by_bob.json()["errors"][0]["msg"]
    by_alice = submit(client, recipe=recipe)
    assert by_alice.status_code == 422
    assert "the bot cannot read alice/secret" in by_alice.json()["errors"][0]["msg"]


def test_private_recipe_is_visible_to_its_owner_only(client: TestClient):
    assert submit(client, private=True).status_code == 201
    assert client.get("/api/jobs/1").status_code == 404
    assert client.get("/api/recipes/1", headers=BOB).status_code == 404
    assert client.get("/api/recipes/1", headers=ALICE).status_code == 200
    assert client.get("/api/jobs/1", headers=ALICE).json()["status"] == "queued"
    assert client.get("/api/recipes").json()["recipes"] == []
    assert len(client.get("/api/recipes", headers=ALICE).json()["recipes"]) == 1


def test_remerge_and_delete(client: TestClient):
    assert submit(client).status_code == 201
    answer = client.post("/api/recipes/1/remerge", headers=ALICE)
    assert answer.status_code == 202 and answer.json() == {"job_id": 1, "absorbed": True}
    assert client.post("/api/recipes/1/remerge", headers=BOB).status_code == 403
    assert client.post("/api/recipes/7/remerge", headers=ALICE).status_code == 404
    bad = client.post("/api/recipes/1/remerge", headers=ALICE, json={"force": "yes"})
    assert bad.status_code == 400
    assert client.delete("/api/recipes/1", headers=BOB).status_code == 403
    assert client.delete("/api/recipes/1", headers=ALICE).json() == {"deleted": 1}
    assert client.post("/api/recipes/1/remerge", headers=ALICE).status_code == 404
    assert client.get("/api/recipes?owner=alice").json()["recipes"] == []


def test_bad_bodies(client: TestClient):
    bad_json = client.post("/api/recipes", content=b"{", headers=ALICE)
    assert bad_json.status_code == 400
    assert client.post("/api/recipes", json=[1], headers=ALICE).status_code == 400
    answer = client.post("/api/recipes", json={"recipe": 5}, headers=ALICE)
    assert answer.status_code == 422 and answer.json()["errors"][0]["loc"] == "recipe"
    answer = submit(client, watch="yes")
    assert answer.status_code == 422 and answer.json()["errors"][0]["loc"] == "watch"


def test_allow_high_perplexity_is_a_stored_submission_option(client: TestClient):
    answer = submit(client, allow_high_perplexity="yes")
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["loc"] == "allow_high_perplexity"
    assert submit(client).status_code == 201
    assert client.get("/api/recipes/1").json()["allow_high_perplexity"] is False
    assert submit(client, allow_high_perplexity=True).status_code == 201
    assert client.get("/api/recipes/1").json()["allow_high_perplexity"] is True


def test_healthz(client: TestClient):
    assert client.get("/healthz").json() == {
        "ok": True,
        "jobs": {"queued": 0, "running": 0},
        "workers": 0,
    }
