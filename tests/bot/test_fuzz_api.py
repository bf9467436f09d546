"""Property: whatever a caller sends to the bot's API (recipe checks and submissions) or to
its webhook, the answer is a success or a 4xx with one-line JSON errors, never a 500."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from bot.server import create_app
from tests.bot.botutil import BOT, SECRET, SOURCES
from tests.bot.test_webhooks import MAIN_PUSH
from tests.hostile import json_values, recipe_texts
from tests.hubtools import USERS

ALICE = {"Authorization": f"Bearer {USERS['alice']}"}
FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def assert_clean(answer, ok: tuple[int, ...]) -> None:
    """A success in ``ok`` or a 4xx, with JSON error messages on one line each."""
    assert answer.status_code in ok or 400 <= answer.status_code < 500, answer.text
    body = answer.json()
    messages = [body["error"]] if "error" in body else [e["msg"] for e in body.get("errors", [])]
    for message in messages:
        assert isinstance(message, str) and message and "\n" not in message, message


def client_for(make_settings) -> TestClient:
    app = create_app(make_settings(max_queued_per_owner=10_000, max_checks_per_owner=100),
                     workers=0)
    return TestClient(app)


@FUZZ
@given(text=recipe_texts(list(SOURCES[1:]), base=SOURCES[0]),
       route=st.sampled_from(["/api/validate", "/api/recipes"]))
def test_any_recipe_sent_to_the_api_is_answered_without_a_500(sources, make_settings, text,
                                                               route):
    with client_for(make_settings) as client:
        answer = client.post(route, json={"recipe": text, "repo_id": f"{BOT}/fuzz"},
                             headers=ALICE)
    assert_clean(answer, (200, 201))


@FUZZ
@given(body=st.one_of(json_values, st.binary(max_size=200).map(lambda b: ("raw", b))))
def test_any_body_sent_to_the_api_is_answered_without_a_500(sources, make_settings, body):
    with client_for(make_settings) as client:
        if isinstance(body, tuple):
            answer = client.post("/api/validate", content=body[1], headers=ALICE)
        else:
            answer = client.post("/api/validate", json=body, headers=ALICE)
    assert_clean(answer, (200,))


def mutated_pushes():
    """MAIN_PUSH with one field anywhere replaced by a random JSON value."""
    paths = [("event",), ("event", "scope"), ("event", "action"), ("repo",), ("repo", "type"),
             ("repo", "name"), ("repo", "private"), ("repo", "headSha"), ("updatedRefs",)]

    def mutate(args):
        path, value = args
        body = json.loads(json.dumps(MAIN_PUSH))
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return body

    return st.tuples(st.sampled_from(paths), json_values).map(mutate)


@settings(FUZZ, max_examples=40)
@given(body=st.one_of(json_values, mutated_pushes(), st.binary(max_size=300)))
def test_any_webhook_body_is_answered_without_a_500(make_settings, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    app = create_app(make_settings(endpoint="http://127.0.0.1:9"), workers=0)
    with TestClient(app) as client:
        answer = client.post("/webhooks/hub", content=data,
                             headers={"X-Webhook-Secret": SECRET})
    assert_clean(answer, (200,))
