"""POST /webhooks/hub: secret, parsing, what enqueues, dedupe, breakage (no Hub needed)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bot import queue
from bot.server import create_app
from bot.settings import Settings
from bot.store import Store
from bot.webhooks import PayloadError, parse_event
from tests.bot.botutil import SECRET

MAIN_PUSH = {
    "event": {"action": "update", "scope": "repo.content"},
    "repo": {
        "type": "model",
        "name": "alice/donor-1",
        "id": "64b8c1f2a7e3d90012345678",
        "private": False,
        "headSha": "9f1c2d3e4b5a69788796a5b4c3d2e1f0a9b8c7d6",
        "url": {"web": "https://hub/alice/donor-1", "api": "https://hub/api/models/alice/donor-1"},
        "owner": {"id": "6470a1b2c3d4e5f601234567"},
    },
    "updatedRefs": [
        {
            "ref": "refs/heads/main",
            "oldSha": "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d",
            "newSha": "9f1c2d3e4b5a69788796a5b4c3d2e1f0a9b8c7d6",
        }
    ],
    "webhook": {"id": "6655aa00bb11cc22dd33ee44", "version": 3},
}


def payload(**changes) -> dict:
    """MAIN_PUSH with top-level keys or "repo.x"/"event.x" keys replaced."""
    body = copy.deepcopy(MAIN_PUSH)
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            body[outer][inner] = value
        else:
            body[key] = value
    return body


@pytest.fixture
def bot(tmp_path: Path):
    """(client, store) of an app without workers; alice's recipe watches donor-1."""
    settings = Settings(
        home=tmp_path / "home", endpoint="http://127.0.0.1:9", token="hf_bot", webhook_secret=SECRET
    )
    app = create_app(settings, workers=0)
    with TestClient(app) as client:
        store: Store = app.state.store
        with store.write() as db:
            for repo, watch in (("mergebot/watched", True), ("mergebot/unwatched", False)):
                store.add_recipe(
                    db,
                    owner="alice",
                    yaml="x",
                    repo_id=repo,
                    private=False,
                    watch=watch,
                    sources=["alice/base", "alice/donor-1"],
                )
        yield client, store


def post(client: TestClient, body, secret: str | None = SECRET, raw: bytes | None = None):
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Webhook-Secret"] = secret
    data = raw if raw is not None else json.dumps(body).encode()
    return client.post("/webhooks/hub", content=data, headers=headers)


def test_main_push_enqueues_one_job_per_watched_recipe(bot):
    client, store = bot
    answer = post(client, MAIN_PUSH)
    assert answer.status_code == 200
    assert answer.json()["action"] == "enqueued" and answer.json()["jobs"] == [1]
    job = store.get_job(1)
    assert job.status == "queued" and job.trigger.startswith("alice/donor-1 main moved to 9f1c")
    assert store.count_jobs() == 1  # the unwatched recipe got nothing


def test_missing_and_wrong_secret_record_nothing(bot):
    client, store = bot
    missing = post(client, MAIN_PUSH, secret=None)
    assert missing.status_code == 401 and "missing" in missing.json()["error"]
    wrong = post(client, MAIN_PUSH, secret="nope")
    assert wrong.status_code == 403
    almost = post(client, MAIN_PUSH, secret=SECRET + "x")
    assert almost.status_code == 403
    assert store.count_jobs() == 0 and store.delivery_stats()["recorded"] == 0


def test_no_secret_configured_refuses_everything(tmp_path: Path):
    app = create_app(Settings(home=tmp_path), workers=0)
    with TestClient(app) as client:
        assert post(client, MAIN_PUSH).status_code == 503


def test_duplicate_deliveries_make_one_job(bot):
    client, store = bot
    answers = [post(client, MAIN_PUSH).json()["action"] for _ in range(100)]
    assert answers.count("enqueued") == 1 and answers.count("duplicate") == 99
    assert store.count_jobs() == 1
    assert store.delivery_stats() == {"recorded": 1, "received": 100, "by_outcome": {"enqueued": 1}}


def test_burst_of_pushes_coalesces_into_the_queued_job(bot):
    client, store = bot
    sha = "9f1c2d3e4b5a69788796a5b4c3d2e1f0a9b8c7d6"
    for i in range(20):
        new = f"{i:040x}"
        post(
            client, payload(updatedRefs=[{"ref": "refs/heads/main", "oldSha": sha, "newSha": new}])
        )
        sha = new
    assert store.count_jobs() == 1 and store.get_job(1).triggers == 20


def test_main_moving_back_to_an_old_sha_still_remerges(bot):
    client, store = bot
    a, b = "a" * 40, "b" * 40
    refs = [("0" * 40, a), (a, b), (b, a)]
    for old, new in refs:
        body = payload(updatedRefs=[{"ref": "refs/heads/main", "oldSha": old, "newSha": new}])
        assert post(client, body).json()["action"] == "enqueued"
    assert store.get_job(1).triggers == 3


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            payload(updatedRefs=[{"ref": "refs/pr/7", "oldSha": None, "newSha": "7" * 40}]),
            "main did not move",
        ),
        (
            payload(updatedRefs=[{"ref": "refs/heads/dev", "oldSha": None, "newSha": "7" * 40}]),
            "main did not move",
        ),
        (
            payload(updatedRefs=[{"ref": "refs/heads/main", "oldSha": "1" * 40, "newSha": None}]),
            "main was deleted",
        ),
        (payload(event={"action": "create", "scope": "discussion"}), "do not change"),
        (payload(event={"action": "create", "scope": "repo"}), "do not change"),
        (payload(**{"repo.name": "bob/other"}), "no watched recipe"),
        (payload(**{"repo.name": "mergebot/watched"}), "bot's own merges"),
        (payload(**{"repo.type": "dataset"}), "never merge sources"),
    ],
)
def test_other_events_are_answered_200_with_a_reason(bot, body, reason):
    client, store = bot
    answer = post(client, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["action"] == "ignored" and reason in answer.json()["reason"]
    assert store.count_jobs() == 0


def test_narrower_content_scope_counts_as_content(bot):
    client, store = bot
    answer = post(client, payload(event={"action": "update", "scope": "repo.content.lfs"}))
    assert answer.json()["action"] == "enqueued"


def test_deleted_source_marks_recipes_broken(bot):
    client, store = bot
    body = {
        "event": {"action": "delete", "scope": "repo"},
        "repo": {"type": "model", "name": "alice/base", "private": False},
    }
    answer = post(client, body).json()
    assert answer["action"] == "marked_broken" and answer["recipes"] == [1, 2]
    assert store.get_recipe(1).broken == "source alice/base was deleted"
    assert store.count_jobs() == 0


def test_source_turning_private_marks_recipes_broken(bot):
    client, store = bot
    body = payload(
        event={"action": "update", "scope": "repo.config"}, updatedRefs=[], **{"repo.private": True}
    )
    assert post(client, body).json()["action"] == "marked_broken"
    assert store.get_recipe(2).broken == "source alice/donor-1 became private"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b"null",
        b'"text"',
        b'{"event": 1}',
        b"\xff\xfe",
        b"[" * 100_000,
        json.dumps(payload(repo=None)).encode(),
        json.dumps(payload(event={"scope": "repo.content"})).encode(),
        json.dumps(payload(updatedRefs={"ref": "refs/heads/main"})).encode(),
        json.dumps(payload(updatedRefs=[{"ref": 5}])).encode(),
        json.dumps(payload(updatedRefs=["refs/heads/main"])).encode(),
        json.dumps(payload(updatedRefs=[{"ref": "refs/heads/main", "newSha": 7}])).encode(),
        json.dumps(payload(**{"repo.private": "yes"})).encode(),
        json.dumps(payload(**{"repo.name": ""})).encode(),
    ],
)
def test_malformed_payloads_are_400_and_enqueue_nothing(bot, raw):
    client, store = bot
    answer = post(client, None, raw=raw)
    assert answer.status_code == 400 and answer.json()["error"].startswith("malformed payload")
    assert store.count_jobs() == 0


def test_oversized_payload_is_refused(bot):
    client, store = bot
    answer = post(client, None, raw=b" " * 1_000_001)
    assert answer.status_code == 413 and store.count_jobs() == 0


def test_parse_event_reads_head_sha_in_camel_case():
    event = parse_event(MAIN_PUSH)
    assert event.head_sha == MAIN_PUSH["repo"]["headSha"]
    assert event.main_update().new_sha == MAIN_PUSH["updatedRefs"][0]["newSha"]
    with pytest.raises(PayloadError, match="repo.name"):
        parse_event(payload(**{"repo.name": 3}))


def test_running_job_does_not_absorb_a_new_push(bot):
    client, store = bot
    post(client, MAIN_PUSH)
    assert queue.claim(store, "w", lease=30, max_attempts=3).id == 1
    body = payload(updatedRefs=[{"ref": "refs/heads/main", "oldSha": "9" * 40, "newSha": "8" * 40}])
    assert post(client, body).json()["jobs"] == [2]


def test_ui_is_mounted_at_root_without_shadowing_routes(tmp_path: Path):
    from starlette.responses import PlainTextResponse

    seen = []

    def ui(settings, services):
        seen.append((settings, services))
        return PlainTextResponse("the UI")

    settings = Settings(home=tmp_path, webhook_secret=SECRET)
    with TestClient(create_app(settings, workers=0, ui=ui)) as client:
        assert client.get("/").text == "the UI"
        assert client.get("/healthz").json()["ok"] is True
        assert client.get("/api/jobs/1").status_code == 404
        assert post(client, MAIN_PUSH).json()["action"] == "ignored"
    assert seen[0][0] is settings and seen[0][1].store.path == settings.db_path
