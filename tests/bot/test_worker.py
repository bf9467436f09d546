"""Workers against localhub: real merges and publishes, skips, retries, breakage, webhooks."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from bot import queue
from bot.publish import merge_and_publish
from bot.settings import Settings
from bot.store import Store
from bot.worker import WebhookSync, Worker
from tests.bot.botutil import BOT, SOURCES, recipe_yaml


def add_recipe(
    store: Store,
    repo_id: str = f"{BOT}/merged",
    watch: bool = True,
    text: str | None = None,
    force: bool = True,
) -> tuple[int, int]:
    with store.write() as db:
        recipe_id = store.add_recipe(
            db,
            owner="alice",
            yaml=text or recipe_yaml(),
            repo_id=repo_id,
            private=False,
            watch=watch,
            sources=list(SOURCES),
        )
        job_id, _ = queue.enqueue(db, recipe_id, "alice", "submitted by @alice", force=force)
    return recipe_id, job_id


def card_meta(hub, repo_id: str, revision: str | None = None) -> dict:
    path = hub.api(BOT).hf_hub_download(repo_id, "README.md", revision=revision)
    text = Path(path).read_text()
    return yaml.safe_load(text.split("---")[1])


def commits(hub, repo_id: str) -> list:
    return hub.api(BOT).list_repo_commits(repo_id)


def test_job_merges_and_publishes_with_card(sources, settings: Settings, store: Store):
    recipe_id, job_id = add_recipe(store)
    worker = Worker(settings, store)
    assert worker.run_once().id == job_id
    job = store.get_job(job_id)
    assert job.status == "succeeded", store.log_tail(job_id)
    assert job.attempts == 1 and job.stage == "done"
    heads = {repo: sources.api("alice").model_info(repo).sha for repo in SOURCES}
    assert job.source_shas == heads
    assert job.commit_sha == sources.api(BOT).model_info(f"{BOT}/merged").sha
    meta = card_meta(sources, f"{BOT}/merged")
    assert meta["merge"]["base_model"] == {"model": "alice/base", "revision": heads["alice/base"]}
    assert [m["revision"] for m in meta["merge"]["models"]] == [
        heads["alice/donor-1"],
        heads["alice/donor-2"],
    ]
    recipe = store.get_recipe(recipe_id)
    assert recipe.last_shas == heads and recipe.last_commit == job.commit_sha
    log = store.log_tail(job_id)
    assert any("stage: merging" in line for line in log)
    assert not (settings.work_root / f"job-{job_id}").exists()

    # Unchanged sources: the next (unforced) job is skipped without a commit.
    with store.write() as db:
        again, _ = queue.enqueue(db, recipe_id, "alice", "remerge")
    worker.run_once()
    assert store.get_job(again).status == "skipped"
    assert store.get_job(again).commit_sha == job.commit_sha  # the commit that holds it
    assert any("unchanged since commit" in line for line in store.log_tail(again))
    titles = [c.title for c in commits(sources, f"{BOT}/merged")]
    assert titles.count("Submitted by @alice") == 1


def test_transient_commit_failure_is_retried(sources, settings: Settings, store: Store):
    # More 503s than publish's own retries: the job fails its first attempt and is
    # retried by the queue with backoff.
    sources.add_fault(r"/api/models/mergebot/merged/commit/", 503, count=4, method="POST")
    _, job_id = add_recipe(store)
    worker = Worker(settings, store)
    worker.run_once()
    job = store.get_job(job_id)
    assert job.status == "queued" and job.attempts == 1 and "HTTP 503" in job.error
    assert not sources.api(BOT).repo_exists(f"{BOT}/merged")  # nothing half-published
    wait = job.not_before - time.time()
    assert 0 < wait <= settings.backoff(1)
    while worker.run_once() is None:
        pass
    job = store.get_job(job_id)
    assert job.status == "succeeded" and job.attempts == 2
    merged = [c for c in commits(sources, f"{BOT}/merged") if c.title.startswith("Submitted")]
    assert len(merged) == 1


def test_recipe_error_fails_without_retry_and_marks_broken(sources, settings, store):
    sources.api("alice").delete_repo("alice/donor-2")
    recipe_id, job_id = add_recipe(store)
    Worker(settings, store).run_once()
    job = store.get_job(job_id)
    assert job.status == "failed" and job.attempts == 1
    assert "alice/donor-2" in job.error
    assert store.get_recipe(recipe_id).broken == job.error
    assert queue.claim(store, "w", lease=5, max_attempts=5) is None


def test_transient_errors_give_up_after_max_attempts(settings, store):
    from bot.errors import TransientError

    calls = []

    def flaky(req, progress):
        calls.append(req.job_key)
        raise TransientError("the Hub answered HTTP 502")

    fast = Settings(**{**settings.__dict__, "max_attempts": 3, "backoff_seconds": 0.01})
    _, job_id = add_recipe(store)
    worker = Worker(fast, store, publish=flaky)
    deadline = time.monotonic() + 10
    while store.get_job(job_id).status == "queued" and time.monotonic() < deadline:
        worker.run_once()
    job = store.get_job(job_id)
    assert job.status == "failed" and job.attempts == 3 and "502" in job.error
    assert calls == [f"job-{job_id}"] * 3


def test_webhook_sync_registers_and_removes(sources, make_settings):
    settings = make_settings(public_url="http://127.0.0.1:9")
    store = Store(settings.db_path)
    store.migrate()
    sync = WebhookSync(settings, store)
    recipe_id, _ = add_recipe(store)
    assert sync.run() == {"created": sorted(SOURCES), "deleted": []}
    hooks = sources.api(BOT).list_webhooks()
    assert sorted(h.watched[0].name for h in hooks) == sorted(SOURCES)
    assert {h.url for h in hooks} == {"http://127.0.0.1:9/webhooks/hub"}
    assert all(h.secret == settings.webhook_secret and h.domains == ["repo"] for h in hooks)
    assert sync.run() == {"created": [], "deleted": []}  # idempotent
    with store.write() as db:
        store.delete_recipe(db, recipe_id)
    assert sorted(sync.run()["deleted"]) == sorted(SOURCES)
    assert sources.api(BOT).list_webhooks() == []


def test_publish_is_exactly_once_per_job_key(sources, settings, store):
    """A second attempt of the same job (e.g. after its worker died) reuses the commit."""
    _, job_id = add_recipe(store)
    worker = Worker(settings, store)
    worker.run_once()
    first = store.get_job(job_id).commit_sha
    with store.write() as db:  # pretend the worker died after committing, before recording
        db.execute(
            "UPDATE jobs SET status='running', lease_expires=0, lease_owner='dead' WHERE id = ?",
            (job_id,),
        )
    Worker(settings, store, publish=merge_and_publish).run_once()
    job = store.get_job(job_id)
    assert job.status == "succeeded" and job.commit_sha == first and job.attempts == 2
    assert any("reused existing commit" in line for line in store.log_tail(job_id))


def test_an_moe_job_publishes_a_mixtral_with_its_experts_pinned(sources, settings, store):
    text = ("base_model: alice/base\ngate_mode: random\nexperts_per_token: 1\nexperts:\n"
            "  - source_model: alice/donor-1\n    positive_prompts: [code]\n"
            "  - source_model: alice/donor-2\n")
    _, job_id = add_recipe(store, repo_id=f"{BOT}/moe", text=text)
    assert Worker(settings, store).run_once().id == job_id
    job = store.get_job(job_id)
    assert job.status == "succeeded", store.log_tail(job_id)
    heads = {repo: sources.api("alice").model_info(repo).sha for repo in SOURCES}
    assert job.source_shas == heads
    meta = card_meta(sources, f"{BOT}/moe")
    experts = meta["merge"]["moe"]["experts"]
    assert [(e["model"], e["revision"]) for e in experts] == [
        (repo, heads[repo]) for repo in SOURCES[1:]]
    assert experts[0]["positive_prompts"] == ["code"]
    config = sources.api(BOT).hf_hub_download(f"{BOT}/moe", "config.json")
    assert '"MixtralForCausalLM"' in Path(config).read_text()
