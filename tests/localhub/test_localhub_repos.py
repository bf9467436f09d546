"""Accounts, repos, visibility and read APIs, through the real HfApi client."""

from __future__ import annotations

import threading

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def test_whoami_and_bad_token(hub):
    assert hub.api("alice").whoami()["name"] == "alice"
    assert hub.api("bob").whoami()["name"] == "bob"
    api = hub.api("alice")
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.whoami(token="hf_wrong")
    assert excinfo.value.response.status_code == 401
    # A bad token is refused everywhere, not only on whoami.
    api.create_repo("alice/public")
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.model_info("alice/public", token="hf_wrong")
    assert excinfo.value.response.status_code == 401


def test_create_conflict_exist_ok_and_delete(hub):
    api = hub.api("alice")
    url = api.create_repo("alice/m")
    assert url.repo_id == "alice/m"
    assert url.startswith(hub.url)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo("alice/m")
    assert excinfo.value.response.status_code == 409
    api.create_repo("alice/m", exist_ok=True)
    assert api.repo_exists("alice/m")
    # The Hub starts every repo with a .gitattributes commit.
    assert api.list_repo_files("alice/m") == [".gitattributes"]
    assert len(api.list_repo_commits("alice/m")) == 1
    api.delete_repo("alice/m")
    assert not api.repo_exists("alice/m")
    api.delete_repo("alice/m", missing_ok=True)
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("alice/m")


def test_cannot_create_in_other_namespace(hub):
    with pytest.raises(HfHubHTTPError) as excinfo:
        hub.api("bob").create_repo("alice/not-yours")
    assert excinfo.value.response.status_code == 403
    # The client validates names itself; the server checks too.
    headers = {"Authorization": f"Bearer {hub.tokens['alice']}"}
    body = {"name": "bad--name", "organization": None}
    response = httpx2.post(f"{hub.url}/api/repos/create", json=body, headers=headers)
    assert response.status_code == 400


def test_private_repo_is_invisible_to_others(hub):
    alice, bob, anon = hub.api("alice"), hub.api("bob"), hub.api(None)
    alice.create_repo("alice/secret", private=True)
    alice.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="alice/secret")
    assert alice.model_info("alice/secret").private is True
    for api in (bob, anon):
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("alice/secret")
        with pytest.raises(RepositoryNotFoundError):
            api.list_repo_files("alice/secret")
        with pytest.raises(RepositoryNotFoundError):
            api.hf_hub_download("alice/secret", "config.json")
        assert not api.repo_exists("alice/secret")
    alice.update_repo_settings("alice/secret", private=False)
    assert bob.model_info("alice/secret").private is False
    assert anon.list_repo_files("alice/secret") == [".gitattributes", "config.json"]


def test_gated_repo_hides_files_not_info(hub):
    alice = hub.api("alice")
    alice.create_repo("alice/gated")
    alice.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="alice/gated")
    alice.update_repo_settings("alice/gated", gated="auto")
    for api in (hub.api("bob"), hub.api(None)):
        assert api.model_info("alice/gated").gated == "auto"
        assert "config.json" in api.list_repo_files("alice/gated")
        with pytest.raises(GatedRepoError):
            api.hf_hub_download("alice/gated", "config.json")
    assert alice.hf_hub_download("alice/gated", "config.json")


def test_repo_ids_cannot_escape_the_data_dir(hub):
    for path in ("/api/models/..%2F..%2Fx/y", "/..%2F..%2Fetc/passwd/resolve/main/x"):
        response = httpx2.get(hub.url + path)
        assert response.status_code in (401, 404)
        assert response.headers["X-Error-Code"] == "RepoNotFound"


def test_writes_need_the_owner_token(hub):
    hub.api("alice").create_repo("alice/pub")
    with pytest.raises(HfHubHTTPError) as excinfo:
        hub.api("bob").upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/pub")
    assert excinfo.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as excinfo:
        hub.api(None).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/pub")
    assert excinfo.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError):
        hub.api("bob").delete_repo("alice/pub")
    assert hub.api("alice").repo_exists("alice/pub")


def test_model_info_card_data_revisions_and_commits(hub):
    api = hub.api("alice")
    api.create_repo("alice/card")
    readme = "---\nlicense: apache-2.0\nbase_model: org/base\ntags: [merge]\n---\n# Card\n"
    first = api.upload_file(
        path_or_fileobj=readme.encode(), path_in_repo="README.md", repo_id="alice/card"
    )
    second = api.upload_file(
        path_or_fileobj=b'{"v": 2}',
        path_in_repo="config.json",
        repo_id="alice/card",
        commit_message="add config",
        commit_description="longer text",
    )
    assert first.oid != second.oid and len(second.oid) == 40

    info = api.model_info("alice/card", files_metadata=True)
    assert info.sha == second.oid
    assert info.card_data.license == "apache-2.0"
    assert info.card_data.base_model == "org/base"
    assert "license:apache-2.0" in info.tags and "base_model:org/base" in info.tags
    assert info.last_modified is not None and info.private is False
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["config.json"] == 8

    old = api.model_info("alice/card", revision=first.oid)
    assert old.sha == first.oid
    assert "config.json" not in {s.rfilename for s in old.siblings}
    assert api.list_repo_files("alice/card", revision=first.oid) == [".gitattributes", "README.md"]

    commits = api.list_repo_commits("alice/card")
    assert [c.commit_id for c in commits][:2] == [second.oid, first.oid]
    assert len(commits) == 3
    assert commits[0].title == "add config" and commits[0].message == "longer text"
    assert commits[0].authors == ["alice"]

    with pytest.raises(RevisionNotFoundError):
        api.model_info("alice/card", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("alice/card", revision="0" * 40)
    with pytest.raises(EntryNotFoundError):
        api.hf_hub_download("alice/card", "missing.bin")


def test_tree_and_paths_info(hub):
    api = hub.api("alice")
    api.create_repo("alice/tree")
    ops = [
        CommitOperationAdd("a/b/c.txt", b"c"),
        CommitOperationAdd("a/d.txt", b"dd"),
        CommitOperationAdd("top.json", b"{}"),
    ]
    api.create_commit("alice/tree", ops, commit_message="tree")
    root = {e.path: type(e).__name__ for e in api.list_repo_tree("alice/tree")}
    assert root == {"a": "RepoFolder", ".gitattributes": "RepoFile", "top.json": "RepoFile"}
    sub = [e.path for e in api.list_repo_tree("alice/tree", path_in_repo="a")]
    assert sorted(sub) == ["a/b", "a/d.txt"]
    deep = [e.path for e in api.list_repo_tree("alice/tree", recursive=True)]
    assert "a/b/c.txt" in deep and "a/b" in deep
    infos = api.get_paths_info("alice/tree", ["a/d.txt", "a", "nope"])
    assert {e.path: type(e).__name__ for e in infos} == {"a/d.txt": "RepoFile", "a": "RepoFolder"}
    assert infos[0].size == 2
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("alice/tree", path_in_repo="nope"))


def test_branches_and_refs(hub):
    api = hub.api("alice")
    api.create_repo("alice/br")
    api.create_branch("alice/br", branch="dev")
    api.upload_file(
        path_or_fileobj=b"dev", path_in_repo="x.txt", repo_id="alice/br", revision="dev"
    )
    assert "x.txt" in api.list_repo_files("alice/br", revision="dev")
    assert "x.txt" not in api.list_repo_files("alice/br")
    refs = api.list_repo_refs("alice/br")
    assert sorted(b.name for b in refs.branches) == ["dev", "main"]
    api.create_branch("alice/br", branch="dev", exist_ok=True)
    api.delete_branch("alice/br", branch="dev")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files("alice/br", revision="dev")


def test_concurrent_commits_are_serialised(hub):
    api = hub.api("alice")
    api.create_repo("alice/busy")
    errors: list[Exception] = []

    def push(i: int) -> None:
        try:
            api.upload_file(
                path_or_fileobj=b"%d" % i, path_in_repo=f"f{i}.txt", repo_id="alice/busy"
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(api.list_repo_commits("alice/busy")) == 9
    assert len(api.list_repo_files("alice/busy")) == 9
