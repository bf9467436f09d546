"""The API facing hostile callers: recipe budgets before any work, one size message, answers
that do not depend on the server's folders, private jobs "not found", no server paths."""

from __future__ import annotations

import json
import os

import pytest
from starlette.testclient import TestClient

from bot.errors import public_message
from bot.server import create_app
from tests.bot.botutil import BOT, recipe_yaml
from tests.hubtools import USERS
from tests.test_recipe_limits import HOSTILE

ALICE = {"Authorization": f"Bearer {USERS['alice']}"}
BOB = {"Authorization": f"Bearer {USERS['bob']}"}


@pytest.fixture
def make_client(sources, make_settings):
    clients = []

    def make(**overrides) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides), workers=0))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.mark.parametrize("route", ["/api/validate", "/api/recipes"])
@pytest.mark.parametrize("name", ["aliases", "flow depth", "NUL", "huge int", "bad date"])
def test_hostile_recipes_are_422_at_a_line_before_any_hub_request(client, sources, route, name):
    text, message, line = HOSTILE[name]
    sources.reset_stats()
    answer = client.post(route, json={"recipe": text, "repo_id": f"{BOT}/m"}, headers=ALICE)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["errors"]
    assert message in error["msg"] and error["line"] == line and error["loc"] == ""
    assert sources.stats()["requests"] == 2  # the caller's whoami and this stats call


def test_a_large_recipe_gets_the_engines_size_message_on_both_routes(make_client):
    client = make_client(max_recipe_bytes=1000)
    big = recipe_yaml() + "#" * 5000
    for route in ("/api/validate", "/api/recipes"):
        answer = client.post(route, json={"recipe": big}, headers=ALICE)
        assert answer.status_code == 413
        message = f"the recipe is {len(big):,} bytes; the limit is 1,000 bytes"
        assert answer.json()["error"] == message
    escaped = "\x01" * 999  # six bytes each in JSON, still within the body limit
    answer = client.post("/api/validate", json={"recipe": escaped + "ab"}, headers=ALICE)
    assert answer.json()["error"] == "the recipe is 1,001 bytes; the limit is 1,000 bytes"
    huge = json.dumps({"recipe": "#" * 20_000})
    answer = client.post("/api/validate", content=huge, headers=ALICE)
    assert answer.status_code == 413
    assert answer.json()["error"].endswith("the limit is 1,000 bytes")


def test_local_paths_get_one_answer_whether_or_not_they_exist(client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alice" / "donor-1").mkdir(parents=True)  # a folder named like a source
    (tmp_path / "present").mkdir()
    answers = {}
    for ref in ("./present", "./absent", str(tmp_path / "present"), str(tmp_path / "absent")):
        answer = client.post("/api/validate", json={"recipe": recipe_yaml(base=ref)},
                             headers=ALICE)
        assert answer.status_code == 422
        answers[ref] = answer.json()["errors"][0]["msg"].replace(ref, "REF")
    assert len(set(answers.values())) == 1, answers
    answer = client.post("/api/validate", json={"recipe": recipe_yaml()}, headers=ALICE)
    assert answer.status_code == 200, answer.text  # alice/donor-1 read from the Hub
    assert answer.json()["models"][1]["name"] == "alice/donor-1"


def test_jobs_of_someone_elses_private_recipe_are_not_found(client: TestClient):
    body = {"recipe": recipe_yaml(), "repo_id": f"{BOT}/merged", "private": True}
    assert client.post("/api/recipes", json=body, headers=ALICE).status_code == 201
    missing = client.get("/api/jobs/2", headers=BOB)
    hidden = client.get("/api/jobs/1", headers=BOB)
    assert (hidden.status_code, missing.status_code) == (404, 404)
    assert hidden.json() == {"error": "job 1 not found"}
    assert missing.json() == {"error": "job 2 not found"}
    assert client.get("/api/jobs/1").json() == {"error": "job 1 not found"}
    assert client.get("/api/jobs/1", headers=ALICE).status_code == 200


def test_job_errors_and_api_errors_show_no_server_paths():
    home = os.path.join("/srv", "mergebot-home", "work", "job-3", "out")
    message = f"cannot write {home}/model-00001.safetensors: No space left on device"
    assert public_message(message) == ("cannot write model-00001.safetensors: "
                                      "No space left on device")
    kept = "could not reach http://127.0.0.1:8765/alice/base (alice/base@main)"
    assert public_message(kept) == kept


def test_deeply_nested_json_bodies_are_400(client: TestClient):
    for route in ("/api/validate", "/api/recipes", "/api/recipes/1/remerge"):
        answer = client.post(route, content=b"[" * 3000, headers=ALICE)
        assert answer.status_code == 400 and answer.json()["error"].endswith("not valid JSON")


@pytest.mark.parametrize("ref", ["a" * 97 + "/b", "org/model.git", "base"])
def test_refs_the_hub_client_refuses_are_422_on_one_line(client: TestClient, ref):
    answer = client.post("/api/validate", json={"recipe": recipe_yaml(base=ref)}, headers=ALICE)
    assert answer.status_code == 422, answer.text
    assert "\n" not in answer.json()["errors"][0]["msg"]
