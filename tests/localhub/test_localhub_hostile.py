"""localhub against hostile callers: LFS objects confined to their repo, bounded request
bodies, and the Hub's rules for file paths."""

from __future__ import annotations

import hashlib
import json
import time

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, HfApi

from bot.localhub import api_commit
from tests.hostile import alias_bomb
from tests.hubtools import USERS

SECRET = b"\x00weights only alice may read" * 100


def auth(user: str) -> dict:
    return {"Authorization": f"Bearer {USERS[user]}"}


def ndjson(*lines: dict) -> bytes:
    return b"\n".join(json.dumps(line).encode() for line in lines)


def raw_commit(hub, repo: str, user: str, *operations: dict) -> httpx2.Response:
    header = {"key": "header", "value": {"summary": "hostile"}}
    return httpx2.post(f"{hub.url}/api/models/{repo}/commit/main",
                       content=ndjson(header, *operations),
                       headers={**auth(user), "Content-Type": "application/x-ndjson"})


def lfs_batch(hub, repo: str, user: str, oid: str, size: int) -> dict:
    body = {"operation": "upload", "transfers": ["basic"],
            "objects": [{"oid": oid, "size": size}]}
    answer = httpx2.post(f"{hub.url}/{repo}.git/info/lfs/objects/batch", json=body,
                         headers=auth(user))
    assert answer.status_code == 200, answer.text
    return answer.json()["objects"][0]


def test_an_lfs_object_of_a_private_repo_cannot_be_copied_into_another(hub):
    alice, bob = hub.api("alice"), hub.api("bob")
    alice.create_repo("alice/secret", private=True)
    alice.upload_file(path_or_fileobj=SECRET, path_in_repo="w.bin", repo_id="alice/secret")
    oid, size = hashlib.sha256(SECRET).hexdigest(), len(SECRET)
    bob.create_repo("bob/copy")

    refused = raw_commit(hub, "bob/copy", "bob", {"key": "lfsFile", "value": {
        "path": "stolen.bin", "algo": "sha256", "oid": oid, "size": size}})
    assert refused.status_code == 400 and "never uploaded to bob/copy" in refused.text
    assert "actions" in lfs_batch(hub, "bob/copy", "bob", oid, size)  # must upload it
    verify = httpx2.post(f"{hub.url}/bob/copy.git/info/lfs/objects/verify",
                         json={"oid": oid, "size": size}, headers=auth("bob"))
    assert verify.status_code == 404
    assert [f for f in bob.list_repo_files("bob/copy")] == [".gitattributes"]

    # the owner's own repo may reuse it, and someone who has the bytes may upload them
    assert "actions" not in lfs_batch(hub, "alice/secret", "alice", oid, size)
    bob.upload_file(path_or_fileobj=SECRET, path_in_repo="mine.bin", repo_id="bob/copy")
    assert "mine.bin" in bob.list_repo_files("bob/copy")


def test_copies_inside_a_repo_still_work(hub):
    api = hub.api("alice")
    api.create_repo("alice/r")
    api.upload_file(path_or_fileobj=SECRET, path_in_repo="a.bin", repo_id="alice/r")
    answer = raw_commit(hub, "alice/r", "alice", {"key": "lfsFile", "value": {
        "path": "b.bin", "algo": "sha256", "oid": hashlib.sha256(SECRET).hexdigest(),
        "size": len(SECRET)}})
    assert answer.status_code == 200, answer.text
    assert set(api.list_repo_files("alice/r")) == {".gitattributes", "a.bin", "b.bin"}


BAD_PATHS = ["a\0b.txt", "dir\\evil.txt", "../up.txt", "a/../../etc/passwd", "/abs.txt",
             "a//b.txt", "a/", "./x.txt", ".git/config", "sub/.git/hooks/post-commit",
             ".cache/huggingface/x", "a\nb.txt", "x" * 256, ""]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_paths_the_hub_refuses_are_400_for_every_operation(hub, path):
    hub.api("alice").create_repo("alice/p", exist_ok=True)
    add = {"key": "file", "value": {"path": path, "content": "aGk=", "encoding": "base64"}}
    delete = {"key": "deletedFile", "value": {"path": path}}
    for operation in (add, delete):
        answer = raw_commit(hub, "alice/p", "alice", operation)
        assert answer.status_code == 400, (path, answer.text)
        assert "Invalid path in repo" in answer.json()["error"]
    answer = httpx2.post(f"{hub.url}/api/models/alice/p/preupload/main",
                         json={"files": [{"path": path, "size": 2, "sample": "aGk="}]},
                         headers=auth("alice"))
    assert answer.status_code == 400


def test_plain_paths_still_work(hub):
    api = hub.api("alice")
    api.create_repo("alice/ok")
    paths = ["a.txt", "dir/sub/b.txt", ".gitattributes", "ünï cödé.txt", "x" * 255]
    api.create_commit("alice/ok", [CommitOperationAdd(p, b"hi") for p in paths],
                      commit_message="plain")
    assert set(api.list_repo_files("alice/ok")) == set(paths)


def test_request_bodies_are_bounded(hub, monkeypatch):
    hub.api("alice").create_repo("alice/b")
    monkeypatch.setattr(api_commit, "COMMIT_BODY_LIMIT", 1000)
    big = {"key": "file", "value": {"path": "big.txt", "content": "A" * 2000}}
    answer = raw_commit(hub, "alice/b", "alice", big)
    assert answer.status_code == 413 and "over 1,000 bytes" in answer.json()["error"]
    huge = b'{"name": "' + b"x" * (3 * 2**20) + b'"}'
    for url in ("/api/repos/create", "/api/models/alice/b/preupload/main",
                "/alice/b.git/info/lfs/objects/batch", "/api/settings/webhooks"):
        answer = httpx2.post(f"{hub.url}{url}", content=huge, headers=auth("alice"))
        assert answer.status_code == 413, url


@pytest.mark.parametrize("body", [
    {"files": "nope"}, {"files": [1]}, {"files": [{"path": "a", "size": "9"}]},
    {"files": [{"path": "a", "size": -1}]},
])
def test_malformed_preupload_bodies_are_400(hub, body):
    hub.api("alice").create_repo("alice/m", exist_ok=True)
    answer = httpx2.post(f"{hub.url}/api/models/alice/m/preupload/main", json=body,
                         headers=auth("alice"))
    assert answer.status_code == 400, answer.text


@pytest.mark.parametrize("line", [
    {"key": "file", "value": "x"}, {"key": "header", "value": [1]},
    {"key": "header", "value": {"summary": "s", "parentCommit": 5}},
    {"key": "header", "value": {"summary": 5}}, "[" * 100_000,
])
def test_malformed_commit_lines_are_400(hub, line):
    hub.api("alice").create_repo("alice/c", exist_ok=True)
    body = line.encode() if isinstance(line, str) else ndjson(line)
    answer = httpx2.post(f"{hub.url}/api/models/alice/c/commit/main", content=body,
                         headers=auth("alice"))
    assert answer.status_code == 400, answer.text


def test_a_card_whose_aliases_explode_is_not_expanded(hub, monkeypatch):
    """A README of ~600 bytes whose front matter expands to 9^8 strings: validate-yaml
    refuses it with the budget's sentence (so the real client will not upload it); pushed
    by a client that skips that check, the repo's info answers at once without card data
    (it would be expanded into the JSON otherwise)."""
    card = f"---\n{alias_bomb()}---\n# hi\n"
    answer = httpx2.post(f"{hub.url}/api/validate-yaml",
                         json={"content": card, "repoType": "model"})
    assert answer.status_code == 400 and "more than 50,000 YAML nodes" in answer.text
    api = hub.api("alice")
    api.create_repo("alice/bomb")
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda *args, **kwargs: None)
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id="alice/bomb")
    started = time.perf_counter()
    assert api.model_info("alice/bomb").card_data is None
    assert time.perf_counter() - started < 5
