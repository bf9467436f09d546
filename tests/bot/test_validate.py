"""POST /api/validate against localhub: the plan's summary, recipe errors at their line,
the caller's own token (never the bot's), bounds, and no token in the logs."""

from __future__ import annotations

import logging
import math

import pytest
from starlette.testclient import TestClient

from bot.server import create_app
from tests.bot.botutil import BOT, BOT_TOKEN, SHAPE, SOURCES, recipe_yaml
from tests.hubtools import USERS

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


def check(client: TestClient, recipe: str, headers=ALICE):
    return client.post("/api/validate", json={"recipe": recipe}, headers=headers)


def private_copy(hub, owner: str, name: str, folder) -> str:
    repo = f"{owner}/{name}"
    api = hub.api(owner)
    api.create_repo(repo, private=True)
    api.upload_folder(repo_id=repo, folder_path=folder)
    return repo


def test_valid_recipe_answers_the_plan_summary_and_stores_nothing(client, sources):
    answer = check(client, recipe_yaml())
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert summary["ok"] is True and summary["method"] == "task_arithmetic"
    assert summary["formula"] == "merged = base + 1.0 * (donor-1 - base) + 0.3 * (donor-2 - base)"
    heads = {repo: sources.api("alice").model_info(repo).sha for repo in SOURCES}
    assert [(m["name"], m["revision"]) for m in summary["models"]] == list(heads.items())
    assert [m["role"] for m in summary["models"]] == ["base", "donor", "donor"]
    assert all(m["bytes"] > 0 for m in summary["models"])
    assert summary["output_bytes"] > 0 and summary["parameter_count"] > 0
    assert isinstance(summary["warnings"], list)
    assert client.get("/api/recipes").json()["recipes"] == []
    # the same body as a submission is accepted
    body = {"recipe": recipe_yaml(), "repo_id": f"{BOT}/x", "private": True, "watch": True}
    assert client.post("/api/validate", json=body, headers=ALICE).json()["ok"] is True


@pytest.mark.parametrize(
    ("old", "new", "loc", "msg", "line"),
    [
        ("weight: 0.3", "wieght: 0.3", "models[1].parameters.wieght", "did you mean", 9),
        ("merge_method: task_arithmetic", "merge_method: nope", "merge_method", "nope", 1),
        # a missing key: placed at the enclosing `parameters:` of models[1]
        ("weight: 0.3", "density: 0.3", "models[1].parameters.weight", "missing required", 8),
        # found when planning from the headers, not when parsing
        ("0.3", "[{filter: mlp, value: 0.5}]", "models[1].parameters.weight", "no filter", 9),
    ],
)
def test_recipe_errors_are_422_with_path_and_line(client, old, new, loc, msg, line):
    recipe = recipe_yaml().replace(old, new)
    answer = check(client, recipe)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["ok"] is False and len(body["errors"]) == 1
    error = body["errors"][0]
    assert error["loc"] == loc and msg in error["msg"] and error["line"] == line


def test_ignored_parameters_are_warnings_and_windows_paths_are_explained(client):
    answer = check(client, recipe_yaml() + "parameters:\n  t: 0.5\n")
    assert answer.status_code == 200, answer.text
    assert answer.json()["warnings"] == [
        "parameters.t (line 11): ignored: not a parameter of task_arithmetic"]
    answer = check(client, recipe_yaml(base="D:\\models\\base"))
    assert answer.status_code == 422
    assert answer.json()["errors"] == [{
        "loc": "base_model",
        "msg": "'D:\\\\models\\\\base' is a Windows path, a directory on another machine; use "
               "the model's Hub repo id (org/name) instead",
        "line": 2}]


def test_bad_requests_are_clear_4xx(make_client):
    client = make_client(max_recipe_bytes=400, max_models=2)
    assert "missing" in check(client, recipe_yaml(), headers={}).json()["error"]
    answer = check(client, recipe_yaml(), headers={"Authorization": "Bearer hf_wrong"})
    assert answer.status_code == 401 and "not a valid Hub token" in answer.json()["error"]
    answer = client.post("/api/validate", content=b"{", headers=ALICE)
    assert answer.status_code == 400 and answer.json()["error"].endswith("is not valid JSON")
    assert client.post("/api/validate", json=[1], headers=ALICE).status_code == 400
    answer = client.post("/api/validate", json={"recipe": 5}, headers=ALICE)
    assert answer.status_code == 422 and answer.json()["errors"][0]["loc"] == "recipe"
    answer = check(client, "models: []\n" + "#" * 500)
    assert answer.status_code == 413 and "limit is 400" in answer.json()["error"]
    answer = check(client, "merge_method: [unclosed\n")
    assert answer.status_code == 422 and answer.json()["ok"] is False
    answer = check(client, recipe_yaml(base="/etc"))  # never the bot's own disk
    assert answer.status_code == 422
    assert answer.json()["errors"][0] == {
        "loc": "base_model",
        "msg": "'/etc' is a local path; the bot merges Hub repos only (use 'owner/name')",
        "line": 2,
    }
    answer = check(client, recipe_yaml())
    assert answer.status_code == 422 and answer.json()["errors"][0]["loc"] == "models"


def test_a_private_model_is_checked_with_the_callers_token_only(client, sources, model_dirs):
    alices = private_copy(sources, "alice", "secret", model_dirs["alice/donor-1"])
    bots = private_copy(sources, BOT, "secret", model_dirs["alice/donor-1"])
    assert check(client, recipe_yaml(donors=(alices, "alice/donor-2"))).json()["ok"] is True

    def refusal(repo: str) -> tuple[int, dict]:
        answer = check(client, recipe_yaml(donors=(repo, "alice/donor-2")), headers=BOB)
        return answer.status_code, answer.json()

    status, body = refusal(alices)
    assert status == 422 and body["ok"] is False
    assert body["errors"] == [
        {
            "loc": "models[0].model",  # where the recipe names it
            "msg": "model repo alice/secret does not exist, or the token used cannot read it",
            "line": 4,
        }
    ]
    # exactly what a repo that does not exist gets: nothing more than the Hub says
    status_missing, missing = refusal("alice/nothing")
    assert (status_missing, missing) == (status, _renamed(body, "alice/secret", "alice/nothing"))
    # the bot can read its own private repo, but the check is made with bob's token
    status, body = refusal(bots)
    assert status == 422 and f"{bots} does not exist" in body["errors"][0]["msg"]


def _renamed(body: dict, old: str, new: str) -> dict:
    errors = [{**e, "msg": e["msg"].replace(old, new)} for e in body["errors"]]
    return {**body, "errors": errors}


def test_checks_in_flight_are_bounded(make_client):
    client = make_client(max_checks_per_owner=1, max_checks=2)
    services = client.app.state.services
    settings = services.settings
    with services.checks.hold("alice", settings):
        answer = check(client, recipe_yaml())
        assert answer.status_code == 429 and "wait for one to finish" in answer.json()["error"]
        assert check(client, recipe_yaml(), headers=BOB).json()["ok"] is True
        with services.checks.hold("carol", settings):
            answer = check(client, recipe_yaml(), headers=BOB)
            assert answer.status_code == 429 and "too many" in answer.json()["error"]
    assert check(client, recipe_yaml()).json()["ok"] is True  # slots are given back


def test_tokens_never_reach_the_logs(client, sources, model_dirs, caplog):
    caplog.set_level(logging.DEBUG)
    alices = private_copy(sources, "alice", "hidden", model_dirs["alice/donor-1"])
    answers = [
        check(client, recipe_yaml()),
        check(client, recipe_yaml().replace("weight: 0.3", "wieght: 0.3")),
        check(client, recipe_yaml(donors=(alices, "alice/donor-2")), headers=BOB),
        check(client, recipe_yaml(), headers={"Authorization": "Bearer hf_not_a_token"}),
    ]
    assert [a.status_code for a in answers] == [200, 422, 422, 401]
    assert caplog.records  # the requests were logged, without their tokens
    secrets = [*USERS.values(), BOT_TOKEN, "hf_not_a_token"]
    for text in [caplog.text, *(a.text for a in answers)]:
        assert not any(token in text for token in secrets)


MOE = """base_model: alice/base
gate_mode: random
experts_per_token: 1
experts:
  - source_model: alice/donor-1
  - source_model: alice/donor-2
"""


def test_an_moe_recipe_answers_its_experts_pinned_and_its_size(client, sources):
    answer = check(client, MOE)
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert summary["method"] == "moe" and summary["moe"]["gate_mode"] == "random"
    heads = {repo: sources.api("alice").model_info(repo).sha for repo in SOURCES}
    assert [(e["model"], e["revision"]) for e in summary["moe"]["experts"]] == [
        (repo, heads[repo]) for repo in SOURCES[1:]]
    assert [m["role"] for m in summary["models"]] == ["base", "donor", "donor"]
    shape = dict(SHAPE.tensors())
    dense = sum(math.prod(s) for s in shape.values())
    mlp = sum(math.prod(s) for n, s in shape.items() if ".mlp." in n)
    assert summary["parameter_count"] == dense + mlp + SHAPE.layers * 2 * SHAPE.hidden
    bad = check(client, MOE.replace("alice/donor-2", "./donor-2"))
    assert bad.status_code == 422
    error = bad.json()["errors"][0]
    assert (error["loc"], error["line"]) == ("experts[1].source_model", 6)


def test_the_parameter_limit_counts_what_an_moe_reads(make_client):
    shape = dict(SHAPE.tensors())
    dense = sum(math.prod(s) for s in shape.values())
    mlp = sum(math.prod(s) for n, s in shape.items() if ".mlp." in n)
    # the base without its MLPs, and one MLP per expert (the routers are computed)
    assert check(make_client(max_parameters=dense + mlp), MOE).status_code == 200
    answer = check(make_client(max_parameters=dense + mlp - 1), MOE)
    assert answer.status_code == 422
    assert f"reads {dense + mlp:,} parameters from 3 models" in answer.json()["errors"][0]["msg"]
