"""Webhook settings API and deliveries, checked by a loopback receiver."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd
from huggingface_hub.errors import HfHubHTTPError

# A copy of /work/shared/reference/webhooks/repo-content-main.json (the Hub's v3 shape).
REFERENCE = Path(__file__).with_name("repo-content-main.json")


def _shape(value):
    """Nested key structure of a JSON value (lists by their first item)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return None


def test_webhook_crud(hub, receiver):
    api = hub.api("alice")
    hook = api.create_webhook(
        url=receiver.url, watched=[{"type": "model", "name": "alice/m"}], secret="s3cret"
    )
    assert hook.url == receiver.url and hook.secret == "s3cret"
    assert hook.domains == ["repo", "discussion"] and hook.disabled is False
    assert [w.name for w in hook.watched] == ["alice/m"]
    assert [h.id for h in api.list_webhooks()] == [hook.id]
    assert hub.api("bob").list_webhooks() == []
    with pytest.raises(HfHubHTTPError) as excinfo:
        hub.api("bob").get_webhook(hook.id)
    assert excinfo.value.response.status_code == 404

    updated = api.update_webhook(hook.id, url=receiver.url + "?v=2", domains=["repo"])
    assert updated.url.endswith("?v=2") and updated.domains == ["repo"]
    assert [w.name for w in updated.watched] == ["alice/m"]  # empty `watched` keeps the list
    assert api.disable_webhook(hook.id).disabled is True
    assert api.enable_webhook(hook.id).disabled is False
    assert api.get_webhook(hook.id).url.endswith("?v=2")
    api.delete_webhook(hook.id)
    assert api.list_webhooks() == []


def test_commit_delivers_repo_content_event(hub, receiver):
    api = hub.api("alice")
    api.create_repo("alice/src")
    old = api.model_info("alice/src").sha
    hook = api.create_webhook(
        url=receiver.url, watched=[{"type": "model", "name": "alice/src"}], secret="s3cret"
    )
    info = api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="alice/src")

    headers, payload = receiver.next()
    assert headers["X-Webhook-Secret"] == "s3cret"
    assert headers["Content-Type"] == "application/json"
    assert payload["event"] == {"action": "update", "scope": "repo.content"}
    assert payload["repo"]["name"] == "alice/src"
    assert payload["repo"]["type"] == "model"
    assert payload["repo"]["headSha"] == info.oid
    assert payload["updatedRefs"] == [{"ref": "refs/heads/main", "oldSha": old, "newSha": info.oid}]
    assert payload["webhook"] == {"id": hook.id, "version": 3}
    assert payload["repo"]["url"]["api"] == f"{hub.url}/api/models/alice/src"
    assert _shape(payload) == _shape(json.loads(REFERENCE.read_text()))

    # A push to a new PR ref: oldSha is null, headSha stays main's head.
    pr = api.create_commit(
        "alice/src", [CommitOperationAdd("b.txt", b"2")], commit_message="pr", revision="refs/pr/1"
    )
    _, payload = receiver.next()
    assert payload["updatedRefs"] == [{"ref": "refs/pr/1", "oldSha": None, "newSha": pr.oid}]
    assert payload["repo"]["headSha"] == info.oid
    assert "b.txt" not in api.list_repo_files("alice/src")
    assert "b.txt" in api.list_repo_files("alice/src", revision="refs/pr/1")

    api.delete_repo("alice/src")
    _, payload = receiver.next()
    assert payload["event"] == {"action": "delete", "scope": "repo"}
    assert payload["repo"]["name"] == "alice/src"

    assert hub.stats()["webhooks"]["delivered"] == 3


def test_namespace_watch_and_visibility(hub, receiver):
    alice, bob = hub.api("alice"), hub.api("bob")
    alice.create_repo("alice/pub")
    alice.create_repo("alice/priv", private=True)
    bob.create_webhook(url=receiver.url, watched=[{"type": "user", "name": "alice"}])
    alice.upload_file(path_or_fileobj=b"p", path_in_repo="p.txt", repo_id="alice/priv")
    alice.upload_file(path_or_fileobj=b"q", path_in_repo="q.txt", repo_id="alice/pub")
    _, payload = receiver.next()
    # Bob never hears about alice's private repo.
    assert payload["repo"]["name"] == "alice/pub"
    assert receiver.empty_for(0.3)


def test_disabled_webhook_and_failing_receiver_never_break_commits(hub, receiver):
    api = hub.api("alice")
    api.create_repo("alice/x")
    dead = api.create_webhook(
        url="http://127.0.0.1:9/unreachable", watched=[{"type": "model", "name": "alice/x"}]
    )
    off = api.create_webhook(url=receiver.url, watched=[{"type": "model", "name": "alice/x"}])
    api.disable_webhook(off.id)
    started = time.monotonic()
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/x")
    assert time.monotonic() - started < 2  # delivery happens in the background
    assert receiver.empty_for(0.3)
    deadline = time.monotonic() + 15
    while hub.stats()["webhooks"]["failed"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    recent = hub.stats()["webhooks"]["recent"]
    assert recent[-1]["webhook_id"] == dead.id and recent[-1]["ok"] is False
    assert recent[-1]["attempts"] == 3
