"""Every bot job checks the merge before its commit: a merge that scrambles the weights
fails with the figures and the generation in its log and leaves the repo untouched; a
good one is published with the figures in its card and log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd

from bot import queue
from bot.store import Store
from bot.worker import Worker
from tests.bot.botutil import BOT, SOURCES, recipe_yaml
from tests.checkutil import tokenized_family

REPO = f"{BOT}/merged"


@pytest.fixture
def tokenized_sources(bothub, tmp_path):
    """alice/base, alice/donor-1, alice/donor-2 with a tokenizer the check text fits."""
    api = bothub.api("alice")
    for repo, path in zip(SOURCES, tokenized_family(tmp_path / "family"), strict=True):
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=path, commit_message="weights")
    return bothub


def run_job(store: Store, settings, weights, allow: bool = False) -> int:
    with store.write() as db:
        recipe_id = store.add_recipe(db, owner="alice", yaml=recipe_yaml(weights=weights),
                                     repo_id=REPO, private=False, watch=False,
                                     sources=list(SOURCES), allow_high_perplexity=allow)
        job_id, _ = queue.enqueue(db, recipe_id, "alice", "submitted by @alice", force=True)
    Worker(settings, store).run_once()
    return job_id


def readme(hub) -> str:
    return Path(hub.api(BOT).hf_hub_download(REPO, "README.md")).read_text()


def test_a_scrambling_merge_fails_before_the_commit_with_its_figures_logged(
        tokenized_sources, settings, store):
    api = tokenized_sources.api(BOT)
    api.create_repo(REPO)
    api.create_commit(REPO, [CommitOperationAdd("README.md", b"# earlier version\n")],
                      commit_message="earlier")
    head = api.model_info(REPO).sha
    job_id = run_job(store, settings, (1.0, 40))
    job = store.get_job(job_id)
    assert job.status == "failed" and job.attempts == 1
    assert "perplexity" in job.error and "above 3x the worst source's" in job.error
    log = store.log_tail(job_id)
    assert any(line.startswith("perplexity of the merge: ") for line in log)
    assert sum(line.startswith("perplexity of alice/") for line in log) == 3
    assert any(line.startswith("greedy generation: ") for line in log)
    assert api.model_info(REPO).sha == head  # untouched
    assert readme(tokenized_sources) == "# earlier version\n"


def test_a_good_merge_is_published_with_its_checks(tokenized_sources, settings, store):
    job_id = run_job(store, settings, (1.0, 0.3))
    assert store.get_job(job_id).status == "succeeded", store.log_tail(job_id)
    card = readme(tokenized_sources)
    assert "## Checks" in card and "| this merge |" in card
    assert all(f"| {repo} |" in card for repo in SOURCES)
    log = store.log_tail(job_id)
    merged = next(line for line in log if line.startswith("perplexity of the merge: "))
    assert f"| this merge | {merged.split(': ')[1]} |" in card
    assert any(line.startswith("check passed: tokenizer.json fits") for line in log)


def test_a_submission_may_allow_a_high_perplexity(tokenized_sources, settings, store):
    job_id = run_job(store, settings, (1.0, 40), allow=True)
    assert store.get_job(job_id).status == "succeeded", store.log_tail(job_id)
    assert "(exceeded; the submission allowed it)" in readme(tokenized_sources)


def test_hub_sources_perplexities_are_cached_by_commit(tokenized_sources, settings, store):
    first = run_job(store, settings, (1.0, 0.3))
    assert store.get_job(first).status == "succeeded", store.log_tail(first)
    cache = sorted((settings.home / "perplexities").glob("*.json"))
    assert len(cache) == 3
    entries = {json.loads(p.read_text())["source"].split("@")[0]: p for p in cache}
    assert set(entries) == set(SOURCES)
    base = json.loads(entries["alice/base"].read_text())
    entries["alice/base"].write_text(json.dumps(base | {"perplexity": 42.0}))
    with store.write() as db:
        again, _ = queue.enqueue(db, 1, "alice", "remerge", force=True)
    Worker(settings, store).run_once()
    assert store.get_job(again).status == "succeeded", store.log_tail(again)
    assert "perplexity of alice/base: 42.00" in store.log_tail(again)
