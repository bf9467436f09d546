"""Dataset repos on localhub, through the real HfApi client: the Hub's `/api/datasets/...`
and `/datasets/...` URLs, a namespace of their own beside models, the same auth rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    HfFileSystem,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from tests.hubtools import USERS

PARQUET_LIKE = b"PAR1" + bytes(range(256)) * 40 + b"PAR1"  # binary: goes through LFS


def auth(user: str) -> dict:
    return {"Authorization": f"Bearer {USERS[user]}"}


def make_dataset(hub, repo: str = "alice/ds", private: bool = False) -> str:
    api = hub.api("alice")
    api.create_repo(repo, repo_type="dataset", private=private)
    return api.create_commit(repo, [
        CommitOperationAdd("README.md", b"---\nlicense: mit\n---\n# data\n"),
        CommitOperationAdd("data/train-00000-of-00001.parquet", PARQUET_LIKE),
        CommitOperationAdd("data/test.txt", b"hello\n"),
    ], commit_message="data", repo_type="dataset").oid


def test_dataset_repo_end_to_end(hub, tmp_path):
    api = hub.api("alice")
    url = api.create_repo("alice/ds", repo_type="dataset")
    assert url == f"{hub.url}/datasets/alice/ds" and url.repo_type == "dataset"
    (tmp_path / "up" / "sub").mkdir(parents=True)
    (tmp_path / "up" / "sub" / "b.txt").write_text("bee")
    (tmp_path / "up" / "a.parquet").write_bytes(PARQUET_LIKE)
    head = api.upload_folder(folder_path=tmp_path / "up", repo_id="alice/ds",
                             repo_type="dataset").oid

    info = api.dataset_info("alice/ds", files_metadata=True)
    assert info.id == "alice/ds" and info.sha == head and info.private is False
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes == {".gitattributes": sizes[".gitattributes"], "a.parquet": len(PARQUET_LIKE),
                     "sub/b.txt": 3}
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert lfs["a.parquet"].sha256 == hashlib.sha256(PARQUET_LIKE).hexdigest()
    assert api.repo_info("alice/ds", repo_type="dataset").sha == head
    assert api.list_repo_files("alice/ds", repo_type="dataset") == [
        ".gitattributes", "a.parquet", "sub/b.txt"]
    tree = list(api.list_repo_tree("alice/ds", repo_type="dataset", recursive=True))
    assert {(type(e), e.path) for e in tree} == {
        (RepoFile, ".gitattributes"), (RepoFile, "a.parquet"), (RepoFolder, "sub"),
        (RepoFile, "sub/b.txt")}
    [folder_entry] = [e for e in api.list_repo_tree("alice/ds", "sub", repo_type="dataset")]
    assert folder_entry.path == "sub/b.txt"
    paths = api.get_paths_info("alice/ds", ["a.parquet", "sub", "nope"], repo_type="dataset")
    assert [(type(p), p.path) for p in paths] == [(RepoFile, "a.parquet"), (RepoFolder, "sub")]

    local = hf_hub_download("alice/ds", "a.parquet", repo_type="dataset", endpoint=hub.url,
                            cache_dir=tmp_path / "cache")
    assert Path(local).read_bytes() == PARQUET_LIKE
    file_url = hf_hub_url("alice/ds", "a.parquet", repo_type="dataset", revision=head,
                          endpoint=hub.url)
    assert file_url == f"{hub.url}/datasets/alice/ds/resolve/{head}/a.parquet"
    meta = get_hf_file_metadata(file_url)
    assert meta.commit_hash == head and meta.size == len(PARQUET_LIKE)
    part = httpx2.get(file_url, headers={"Range": "bytes=4-9"})
    assert part.status_code == 206 and part.content == PARQUET_LIKE[4:10]
    assert part.headers["content-range"] == f"bytes 4-9/{len(PARQUET_LIKE)}"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/ds", "missing.txt", repo_type="dataset", endpoint=hub.url,
                        cache_dir=tmp_path / "cache")

    commits = api.list_repo_commits("alice/ds", repo_type="dataset")
    assert [c.commit_id for c in commits][0] == head and len(commits) == 2
    hub.restart()  # survives a restart
    api = hub.api("alice")
    assert api.dataset_info("alice/ds").sha == head
    api.delete_repo("alice/ds", repo_type="dataset")
    assert not api.repo_exists("alice/ds", repo_type="dataset")


def test_filesystem_and_snapshot_clients(hub, tmp_path):
    """HfFileSystem (what `hf://datasets/...` paths use) and snapshot_download."""
    make_dataset(hub)
    fs = HfFileSystem(endpoint=hub.url, token=USERS["alice"])
    assert fs.glob("datasets/alice/ds/**/*.parquet") == [
        "datasets/alice/ds/data/train-00000-of-00001.parquet"]
    with fs.open("datasets/alice/ds/data/train-00000-of-00001.parquet", "rb") as f:
        f.seek(4)
        assert f.read(8) == PARQUET_LIKE[4:12]
    folder = Path(snapshot_download("alice/ds", repo_type="dataset", endpoint=hub.url,
                                    token=USERS["alice"], cache_dir=tmp_path / "c"))
    assert (folder / "data" / "test.txt").read_bytes() == b"hello\n"
    assert (folder / "data" / "train-00000-of-00001.parquet").read_bytes() == PARQUET_LIKE


def test_branches_and_the_parquet_convert_ref(hub):
    api = hub.api("alice")
    main = make_dataset(hub)
    api.create_branch("alice/ds", branch="dev", repo_type="dataset")
    api.create_branch("alice/ds", branch="refs/convert/parquet", repo_type="dataset")
    converted = api.upload_file(path_or_fileobj=PARQUET_LIKE,
                                path_in_repo="default/train/0000.parquet", repo_id="alice/ds",
                                repo_type="dataset", revision="refs/convert/parquet").oid
    refs = api.list_repo_refs("alice/ds", repo_type="dataset")
    assert {(b.name, b.target_commit) for b in refs.branches} == {("main", main), ("dev", main)}
    assert [(c.name, c.ref, c.target_commit) for c in refs.converts] == [
        ("parquet", "refs/convert/parquet", converted)]
    assert api.dataset_info("alice/ds", revision="refs/convert/parquet").sha == converted
    files = api.list_repo_files("alice/ds", repo_type="dataset", revision="refs/convert/parquet")
    assert "default/train/0000.parquet" in files
    assert "default/train/0000.parquet" not in api.list_repo_files("alice/ds",
                                                                   repo_type="dataset")
    path = hf_hub_download("alice/ds", "default/train/0000.parquet", repo_type="dataset",
                           revision="refs/convert/parquet", endpoint=hub.url)
    assert Path(path).read_bytes() == PARQUET_LIKE
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info("alice/ds", revision="nope")
    # Models have no convert refs, as on the Hub.
    api.create_repo("alice/model")
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_branch("alice/model", branch="refs/convert/parquet")
    assert excinfo.value.response.status_code == 400
    api.delete_branch("alice/ds", branch="dev", repo_type="dataset")
    assert [b.name for b in api.list_repo_refs("alice/ds", repo_type="dataset").branches] == [
        "main"]


def test_model_and_dataset_of_one_name_stay_apart(hub, tmp_path):
    api = hub.api("alice")
    api.create_repo("alice/same")
    api.create_repo("alice/same", repo_type="dataset")
    model = api.upload_file(path_or_fileobj=b"model side", path_in_repo="f.txt",
                            repo_id="alice/same").oid
    dataset = api.upload_file(path_or_fileobj=b"dataset side", path_in_repo="f.txt",
                              repo_id="alice/same", repo_type="dataset").oid
    assert api.model_info("alice/same").sha == model
    assert api.dataset_info("alice/same").sha == dataset
    read = {kind: Path(hf_hub_download("alice/same", "f.txt", repo_type=kind, endpoint=hub.url,
                                       cache_dir=tmp_path / "c")).read_bytes()
            for kind in ("model", "dataset")}
    assert read == {"model": b"model side", "dataset": b"dataset side"}
    # A model commit cannot be read as a dataset revision, nor the other way round.
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info("alice/same", revision=model)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("alice/same", revision=dataset)
    api.delete_repo("alice/same", repo_type="dataset")
    assert api.model_info("alice/same").sha == model
    # Only the type asked for exists: a dataset id never reaches a model's files.
    for url in (f"{hub.url}/api/datasets/alice/same",
                f"{hub.url}/datasets/alice/same/resolve/main/f.txt",
                f"{hub.url}/api/datasets/alice/same/tree/main"):
        response = httpx2.get(url, headers=auth("alice"))
        assert response.status_code == 404, url
        assert response.headers["x-error-code"] == "RepoNotFound"


def test_hostile_dataset_paths(hub):
    make_dataset(hub)
    hub.api("alice").create_repo("alice/model")
    # A model cannot claim a reserved namespace to shadow dataset URLs.
    body = {"name": "alice", "organization": "datasets"}
    response = httpx2.post(f"{hub.url}/api/repos/create", json=body, headers=auth("alice"))
    assert response.status_code in (400, 403)
    for path in ("/datasets/alice/../alice/model/resolve/main/.gitattributes",
                 "/datasets/alice/model/resolve/main/.gitattributes",
                 "/datasets/alice%2Fmodel/x/resolve/main/.gitattributes",
                 "/spaces/alice/ds/resolve/main/README.md",
                 "/api/datasets/..%2F..%2Frepos/alice"):
        response = httpx2.get(hub.url + path, headers=auth("alice"))
        assert response.status_code in (400, 401, 404), path
        assert b"license" not in response.content
    # An LFS object uploaded to the dataset cannot be committed into the model by its sha256.
    oid = hashlib.sha256(PARQUET_LIKE).hexdigest()
    line = {"key": "lfsFile", "value": {"path": "stolen.bin", "algo": "sha256", "oid": oid,
                                        "size": len(PARQUET_LIKE)}}
    header = {"key": "header", "value": {"summary": "steal"}}
    content = b"\n".join(json.dumps(x).encode() for x in (header, line))
    response = httpx2.post(f"{hub.url}/api/models/alice/model/commit/main", content=content,
                           headers={**auth("alice"), "Content-Type": "application/x-ndjson"})
    assert response.status_code == 400 and "never uploaded" in response.text
    # ...while the dataset itself may reuse it.
    response = httpx2.post(f"{hub.url}/api/datasets/alice/ds/commit/main", content=content,
                           headers={**auth("alice"), "Content-Type": "application/x-ndjson"})
    assert response.status_code == 200, response.text
    # Bob cannot write to alice's dataset.
    with pytest.raises(HfHubHTTPError) as excinfo:
        hub.api("bob").upload_file(path_or_fileobj=b"x", path_in_repo="x.txt",
                                   repo_id="alice/ds", repo_type="dataset")
    assert excinfo.value.response.status_code == 403


def test_private_dataset_needs_the_owners_token(hub, tmp_path):
    make_dataset(hub, "alice/secret", private=True)
    assert hub.api("alice").dataset_info("alice/secret").private is True
    for user, status in ((None, 401), ("bob", 404)):
        with pytest.raises(RepositoryNotFoundError) as excinfo:
            hub.api(user).dataset_info("alice/secret")
        assert excinfo.value.response.status_code == status
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("alice/secret", "data/test.txt", repo_type="dataset",
                            endpoint=hub.url, token=USERS[user] if user else False,
                            cache_dir=tmp_path / "c")
        response = httpx2.get(f"{hub.url}/datasets/alice/secret/resolve/main/data/test.txt",
                              headers=auth(user) if user else {})
        assert response.status_code == status and b"hello" not in response.content
    path = hf_hub_download("alice/secret", "data/test.txt", repo_type="dataset",
                           endpoint=hub.url, token=USERS["alice"], cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == b"hello\n"


def test_dataset_webhooks_and_pages(hub, receiver):
    api = hub.api("alice")
    api.create_repo("alice/ds", repo_type="dataset")
    api.create_repo("alice/ds")  # a model of the same name: its watcher must stay silent
    api.create_webhook(url=receiver.url, watched=[{"type": "dataset", "name": "alice/ds"}])
    api.upload_file(path_or_fileobj=b"m", path_in_repo="m.txt", repo_id="alice/ds")
    info = api.upload_file(path_or_fileobj=b"d", path_in_repo="d.txt", repo_id="alice/ds",
                           repo_type="dataset")
    _, payload = receiver.next()
    assert payload["repo"]["type"] == "dataset" and payload["repo"]["headSha"] == info.oid
    assert payload["repo"]["url"] == {"web": f"{hub.url}/datasets/alice/ds",
                                      "api": f"{hub.url}/api/datasets/alice/ds"}
    assert receiver.empty_for(0.3)
    page = httpx2.get(f"{hub.url}/datasets/alice/ds")
    assert page.status_code == 200 and "d.txt" in page.text and "m.txt" not in page.text
    assert 'href="/datasets/alice/ds/tree/main"' in page.text
    user = httpx2.get(f"{hub.url}/alice")
    assert 'href="/datasets/alice/ds"' in user.text and 'href="/alice/ds"' in user.text
    assert "Dataset card" in page.text
