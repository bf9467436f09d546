"""Merging from Hub references and publishing one commit, against localhub."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
import yaml
from huggingface_hub import CommitOperationAdd, snapshot_download

from bot.errors import BotError, TransientError
from bot.publish import PublishRequest, merge_and_publish
from merge_engine import PlanError, SourceError, run_merge
from merge_engine.synth import write_model
from tests.conftest import load_model
from tests.hubtools import USERS

from .conftest import SHAPE, Family, publish_folder

ALICE = USERS["alice"]


def publish(family: Family, tmp_path: Path, recipe: str | None = None, repo="alice/merged",
            progress=None, **options):
    request = PublishRequest(
        recipe_text=recipe or family.recipe(), repo_id=repo, token=ALICE,
        work_dir=tmp_path / "work", endpoint=family.hub.url, random_seed=0, device="cpu",
        **{"out_shard_size": 100_000, **options})
    return merge_and_publish(request, progress)


def download(family: Family, tmp_path: Path, repo="alice/merged", revision=None) -> Path:
    return Path(snapshot_download(repo, revision=revision, endpoint=family.hub.url,
                                  token=ALICE, cache_dir=tmp_path / "downloads"))


def local_merge(family: Family, tmp_path: Path, weights=(1.0, 0.3)) -> dict:
    recipe = family.recipe(weights, refs=[str(p) for p in family.local])
    run_merge(recipe, tmp_path / "local-merge", device="cpu", random_seed=0)
    return load_model(tmp_path / "local-merge")


def test_round_trip_equals_a_local_merge_in_one_commit(family, tmp_path):
    api = family.hub.api("alice")
    result = publish(family, tmp_path, provenance="Submitted by alice.")
    merged = load_model(download(family, tmp_path))
    local = local_merge(family, tmp_path)
    assert merged.keys() == local.keys()
    assert all((merged[n] == local[n]).all() for n in local)
    commits = api.list_repo_commits("alice/merged")
    assert len(commits) == 2  # the repo's initial commit, then exactly one merge commit
    assert commits[0].commit_id == result.commit_sha and result.created_repo
    assert commits[0].title == "Merge submitted"
    assert result.revisions == {r: api.model_info(r).sha for r in family.repos}
    files = set(api.list_repo_files("alice/merged"))
    assert {"README.md", "config.json", "mergekit_config.yml",
            "model.safetensors.index.json"} <= files
    assert not (tmp_path / "work" / "out").exists() or not any(
        (tmp_path / "work" / "out").glob("*.safetensors"))  # shards deleted once uploaded


def test_the_card_records_models_weights_revisions_and_provenance(family, tmp_path):
    api = family.hub.api("alice")
    publish(family, tmp_path, provenance="WizardLM moved main from 1a2b to 9f1c.")
    card = (download(family, tmp_path) / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    shas = {r: api.model_info(r).sha for r in family.repos}
    assert meta["base_model"] == family.repos
    assert meta["base_model_relation"] == "merge"
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"merge", "mergekit", "task_arithmetic"} <= set(meta["tags"])
    assert meta["merge"]["base_model"] == {"model": "alice/base", "revision": shas["alice/base"]}
    assert meta["merge"]["models"][1] == {
        "model": "alice/donor-2", "revision": shas["alice/donor-2"],
        "parameters": {"weight": 0.3}}
    assert "merged = base + 1.0 * (donor-1 - base) + 0.3 * (donor-2 - base)" in card
    url = family.hub.url
    assert f"[`{shas['alice/donor-1']}`]({url}/alice/donor-1/commit/{shas['alice/donor-1']})" \
        in card
    assert f"alice/donor-2@{shas['alice/donor-2']}" in card  # the pinned recipe to reproduce
    assert "WizardLM moved main from 1a2b to 9f1c." in card
    assert 'model_id = "alice/merged"' in card


def test_different_licenses_give_other_and_name_each(family, tmp_path):
    folder = write_model(tmp_path / "mit-donor", SHAPE, donor=5)
    publish_folder(family.hub, folder, "alice/mit-donor", license="mit")
    recipe = family.recipe(refs=["alice/base", "alice/donor-1", "alice/mit-donor"])
    publish(family, tmp_path, recipe)
    card = (download(family, tmp_path) / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["license"] == "other"
    assert "alice/mit-donor: mit" in card and "alice/base: apache-2.0" in card


def assert_nothing_downloaded_or_created(family: Family, stats: dict):
    assert stats["safetensors"]["data_bytes"] == 0
    assert stats["safetensors"]["full_requests"] == 0
    assert not family.hub.api("alice").repo_exists("alice/merged")


def test_shape_mismatch_fails_in_preflight_without_weight_bytes(family, tmp_path):
    wide = write_model(tmp_path / "wide", type(SHAPE)(**{**SHAPE.__dict__, "intermediate": 96}))
    publish_folder(family.hub, wide, "alice/wide")
    family.hub.reset_stats()
    with pytest.raises(PlanError, match=r"mlp\.gate_proj\.weight has shape \[96, 64\] in "
                                        r"alice/wide but \[128, 64\] in alice/base"):
        publish(family, tmp_path, family.recipe(refs=["alice/base", "alice/donor-1",
                                                      "alice/wide"]))
    assert_nothing_downloaded_or_created(family, family.hub.stats())


@pytest.mark.parametrize("ref, message", [
    ("alice/nothing-here", "alice/nothing-here does not exist, or the token used cannot"),
    ("bob/secret", "bob/secret does not exist, or the token used cannot read it"),
    ("alice/donor-2@0123456789abcdef0123456789abcdef01234567",
     "revision '0123456789abcdef0123456789abcdef01234567' does not exist in alice/donor-2"),
])
def test_unreadable_sources_fail_in_preflight(family, tmp_path, ref, message):
    bob = family.hub.api("bob")
    bob.create_repo("bob/secret", private=True)
    family.hub.reset_stats()
    with pytest.raises(SourceError, match=message):
        publish(family, tmp_path, family.recipe(refs=["alice/base", "alice/donor-1", ref]))
    assert_nothing_downloaded_or_created(family, family.hub.stats())


def test_a_source_moving_main_during_the_merge_changes_nothing(family, tmp_path):
    api = family.hub.api("alice")
    before = api.model_info("alice/donor-1").sha
    moved = []

    def push_new_weights(stage, fraction):
        if stage == "resolving" and fraction == 1.0 and not moved:
            other = write_model(tmp_path / "retrained", SHAPE, donor=9, delta_scale=0.05,
                                shard_bytes=150_000)
            moved.append(api.upload_folder(folder_path=other, repo_id="alice/donor-1").oid)

    result = publish(family, tmp_path, progress=push_new_weights)
    assert moved and api.model_info("alice/donor-1").sha == moved[0] != before
    assert result.revisions["alice/donor-1"] == before
    merged = load_model(download(family, tmp_path))
    local = local_merge(family, tmp_path)
    assert all((merged[n] == local[n]).all() for n in local)


def test_a_5xx_on_commit_is_retried(family, tmp_path):
    family.hub.add_fault(r"/commit/", 503, count=1)
    result = publish(family, tmp_path)
    assert family.hub.stats()["faults_triggered"] == 1
    assert family.hub.api("alice").list_repo_commits("alice/merged")[0].commit_id \
        == result.commit_sha


def test_a_failed_publish_leaves_no_commit_and_no_repo_it_created(family, tmp_path):
    family.hub.add_fault(r"/commit/", 500, count=20)
    with pytest.raises(TransientError, match="could not commit to alice/merged: HTTP 500"):
        publish(family, tmp_path)
    assert not family.hub.api("alice").repo_exists("alice/merged")


def test_an_existing_repo_gets_one_new_commit_and_survives_failure(family, tmp_path):
    api = family.hub.api("alice")
    api.create_repo("alice/merged")
    head = api.model_info("alice/merged").sha
    family.hub.add_fault(r"/commit/", 500, count=20)
    with pytest.raises(TransientError):
        publish(family, tmp_path)
    assert api.model_info("alice/merged").sha == head  # still there, untouched
    httpx2.delete(f"{family.hub.url}/_localhub/faults").raise_for_status()
    result = publish(family, tmp_path / "again")
    assert not result.created_repo
    assert [c.commit_id for c in api.list_repo_commits("alice/merged")][:2] == [
        result.commit_sha, head]


def test_the_same_job_key_never_commits_twice(family, tmp_path):
    first = publish(family, tmp_path / "a", job_key="job-7")
    again = publish(family, tmp_path / "b", job_key="job-7")
    assert again.reused_commit and again.commit_sha == first.commit_sha
    assert len(family.hub.api("alice").list_repo_commits("alice/merged")) == 2


def test_before_create_is_called_only_when_the_repo_is_created(family, tmp_path):
    api = family.hub.api("alice")
    seen = []
    publish(family, tmp_path / "a", before_create=lambda: seen.append(
        api.repo_exists("alice/merged")))
    assert seen == [False]  # recorded before the repo existed
    publish(family, tmp_path / "b", before_create=lambda: seen.append("again"))
    assert seen == [False]


def test_a_repo_an_earlier_attempt_created_is_deleted_when_this_one_fails(family, tmp_path):
    api = family.hub.api("alice")
    api.create_repo("alice/merged")  # made by the job's first attempt, which then died
    family.hub.add_fault(r"/commit/", 403, count=1)
    with pytest.raises(BotError, match="could not commit to alice/merged"):
        publish(family, tmp_path, repo_created_earlier=True)
    assert not api.repo_exists("alice/merged")


def test_a_failed_publish_keeps_a_repo_it_created_once_someone_committed(family, tmp_path):
    api = family.hub.api("alice")

    def someone_commits(stage, fraction):
        if stage == "resolving" and fraction == 1.0:  # the repo is created, its head read
            api.create_commit("alice/merged", [CommitOperationAdd("notes.md", b"mine")],
                              commit_message="notes")

    with pytest.raises(TransientError, match="the repo changed while the merge ran"):
        publish(family, tmp_path, progress=someone_commits)
    assert [c.title for c in api.list_repo_commits("alice/merged")] == [
        "notes", "initial commit"]
