"""Uploads (regular, LFS, preupload + one commit), downloads, ranges, persistence, throttle,
fault injection."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
    CommitOperationDelete,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import HfHubHTTPError

from tests.hubtools import safetensors_bytes


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(safetensors_bytes({"w": [8, 8], "b": [8]}))
    (folder / "config.json").write_text('{"hidden_size": 8}')
    return folder


def test_upload_folder_and_download_back(hub, tmp_path):
    api = hub.api("alice")
    api.create_repo("alice/up")
    folder = _folder(tmp_path)
    info = api.upload_folder(repo_id="alice/up", folder_path=folder, commit_message="upload")

    siblings = {s.rfilename: s for s in api.model_info("alice/up", files_metadata=True).siblings}
    weights = (folder / "model.safetensors").read_bytes()
    assert siblings["model.safetensors"].lfs is not None  # .gitattributes sends it to LFS
    assert siblings["model.safetensors"].lfs.size == len(weights)
    assert siblings["config.json"].lfs is None
    assert hub.stats()["upload"]["lfs_bytes"] == len(weights)

    path = hf_hub_download("alice/up", "model.safetensors", endpoint=hub.url, token=False)
    assert Path(path).read_bytes() == weights
    assert info.oid in path  # cached under the commit sha the server reported
    snap = Path(snapshot_download("alice/up", endpoint=hub.url, token=False))
    assert (snap / "config.json").read_text() == '{"hidden_size": 8}'
    assert (snap / "model.safetensors").read_bytes() == weights

    by_sha = hf_hub_download("alice/up", "config.json", revision=info.oid, endpoint=hub.url)
    assert Path(by_sha).read_text() == '{"hidden_size": 8}'


def test_client_defaults_via_hf_endpoint(hub, hf_endpoint, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", hub.tokens["alice"])
    huggingface_hub.create_repo("alice/env")
    huggingface_hub.upload_file(path_or_fileobj=b"e", path_in_repo="e.txt", repo_id="alice/env")
    assert huggingface_hub.list_repo_files("alice/env") == [".gitattributes", "e.txt"]
    assert Path(hf_hub_download("alice/env", "e.txt")).read_bytes() == b"e"
    assert huggingface_hub.HfApi().whoami()["name"] == "alice"


def test_resolve_headers_and_ranges(hub):
    api = hub.api("alice")
    api.create_repo("alice/rng")
    data = bytes(range(256)) * 40
    commit = api.upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id="alice/rng")
    url = f"{hub.url}/alice/rng/resolve/main/blob.bin"

    head = httpx2.head(url)
    assert head.status_code == 200
    assert head.headers["X-Repo-Commit"] == commit.oid
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["X-Linked-Size"] == str(len(data))
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["ETag"].strip('"') == head.headers["X-Linked-Etag"].strip('"')

    part = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert httpx2.get(url, headers={"Range": "bytes=-5"}).content == data[-5:]
    tail = httpx2.get(url, headers={"Range": f"bytes={len(data) - 3}-99999999"})
    assert tail.status_code == 206 and tail.content == data[-3:]
    bad = httpx2.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert bad.status_code == 416
    assert bad.headers["Content-Range"] == f"bytes */{len(data)}"

    by_sha = httpx2.get(f"{hub.url}/alice/rng/resolve/{commit.oid}/blob.bin")
    assert by_sha.content == data
    missing = httpx2.head(f"{hub.url}/alice/rng/resolve/main/nope.bin")
    assert missing.status_code == 404
    assert missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == commit.oid


def test_safetensors_metadata_reads_headers_only(hub):
    api = hub.api("alice")
    api.create_repo("alice/st")
    weights = safetensors_bytes({"big": [512, 512]})  # 1 MiB of tensor data
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id="alice/st")
    hub.reset_stats()

    meta = api.get_safetensors_metadata("alice/st")
    assert meta.sharded is False
    assert meta.files_metadata["model.safetensors"].tensors["big"].shape == [512, 512]

    stats = hub.stats()["safetensors"]
    header_len = 8 + int.from_bytes(weights[:8], "little")
    assert stats["full_requests"] == 0
    assert stats["range_requests"] == 1
    assert stats["header_bytes"] == header_len
    assert stats["data_bytes"] <= 100_001 - header_len  # the client's fixed 100 kB probe


def test_preupload_then_one_commit(hub):
    api = hub.api("alice")
    api.create_repo("alice/shards")
    before = len(api.list_repo_commits("alice/shards"))
    shards = [safetensors_bytes({f"t{i}": [64]}, fill=bytes([i + 1])) for i in range(3)]
    ops = [
        CommitOperationAdd(f"model-0000{i + 1}-of-00003.safetensors", data)
        for i, data in enumerate(shards)
    ]
    for op in ops:  # as the bot does: upload each shard when it is written
        api.preupload_lfs_files("alice/shards", additions=[op])
    assert len(api.list_repo_commits("alice/shards")) == before
    assert hub.stats()["upload"]["lfs_bytes"] == sum(len(s) for s in shards)

    head = api.model_info("alice/shards").sha
    readme = CommitOperationAdd("README.md", b"---\nlicense: mit\n---\n")
    info = api.create_commit(
        "alice/shards", [*ops, readme], commit_message="merge", parent_commit=head
    )
    commits = api.list_repo_commits("alice/shards")
    assert len(commits) == before + 1
    assert commits[0].commit_id == info.oid
    files = api.list_repo_files("alice/shards")
    assert {op.path_in_repo for op in ops} <= set(files)
    # No LFS bytes were sent twice.
    assert hub.stats()["upload"]["lfs_bytes"] == sum(len(s) for s in shards)


def test_parent_commit_conflict_is_412(hub):
    api = hub.api("alice")
    api.create_repo("alice/race")
    first = api.model_info("alice/race").sha
    api.upload_file(path_or_fileobj=b"1", path_in_repo="one.txt", repo_id="alice/race")
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_commit(
            "alice/race",
            [CommitOperationAdd("two.txt", b"2")],
            commit_message="stale",
            parent_commit=first,
        )
    assert excinfo.value.response.status_code == 412
    assert "two.txt" not in api.list_repo_files("alice/race")


def test_delete_and_copy_operations(hub):
    api = hub.api("alice")
    api.create_repo("alice/ops")
    weights = safetensors_bytes({"w": [4]})
    api.create_commit(
        "alice/ops",
        [
            CommitOperationAdd("model.safetensors", weights),
            CommitOperationAdd("dir/a.txt", b"a"),
            CommitOperationAdd("dir/b.txt", b"b"),
        ],
        commit_message="add",
    )
    api.create_commit(
        "alice/ops",
        [
            CommitOperationCopy("model.safetensors", "copy.safetensors"),
            CommitOperationCopy("dir/a.txt", "a-copy.txt"),
            CommitOperationDelete("dir/"),
        ],
        commit_message="copy and delete",
    )
    files = api.list_repo_files("alice/ops")
    assert files == [".gitattributes", "a-copy.txt", "copy.safetensors", "model.safetensors"]
    copied = api.hf_hub_download("alice/ops", "copy.safetensors")
    assert Path(copied).read_bytes() == weights
    with pytest.raises(HfHubHTTPError):
        api.delete_file("nope.txt", repo_id="alice/ops")


def test_persistence_across_restart(hub, receiver):
    api = hub.api("alice")
    api.create_repo("alice/keep", private=True)
    info = api.upload_file(path_or_fileobj=b"kept", path_in_repo="k.txt", repo_id="alice/keep")
    hook = api.create_webhook(url=receiver.url, watched=[{"type": "model", "name": "alice/keep"}])
    hub.restart()
    api = hub.api("alice")
    assert api.model_info("alice/keep").sha == info.oid
    assert api.model_info("alice/keep").private is True
    assert Path(api.hf_hub_download("alice/keep", "k.txt")).read_bytes() == b"kept"
    assert [h.id for h in api.list_webhooks()] == [hook.id]


def test_bandwidth_throttle(hub_factory):
    slow = hub_factory(bandwidth_mbps=20)
    api = slow.api("alice")
    api.create_repo("alice/slow")
    data = b"\x07" * 4_000_000
    started = time.monotonic()
    api.upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id="alice/slow")
    assert time.monotonic() - started >= 0.15
    started = time.monotonic()
    body = httpx2.get(f"{slow.url}/alice/slow/resolve/main/w.bin").content
    elapsed = time.monotonic() - started
    assert body == data
    assert 0.15 <= elapsed < 10


def test_fault_injection(hub):
    api = hub.api("alice")
    api.create_repo("alice/flaky")
    hub.add_fault(r"/api/models/alice/flaky/commit/", 503)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/flaky")
    assert excinfo.value.response.status_code == 503
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/flaky")

    # One 5xx on a download: the client's retry gets through.
    hub.add_fault(r"/alice/flaky/resolve/", 502, count=1, method="HEAD")
    assert Path(api.hf_hub_download("alice/flaky", "x.txt")).read_bytes() == b"x"
    assert hub.stats()["faults_triggered"] == 2
    assert httpx2.get(f"{hub.url}/_localhub/faults").json() == []


def test_test_hooks_need_a_token_without_the_flag(hub_factory):
    closed = hub_factory(test_hooks=False)
    assert httpx2.get(f"{closed.url}/_localhub/stats").status_code == 401
    auth = {"Authorization": f"Bearer {closed.tokens['bob']}"}
    assert httpx2.get(f"{closed.url}/_localhub/stats", headers=auth).status_code == 200
