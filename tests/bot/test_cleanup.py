"""Target repos a job created: owned across attempts, deleted when the job ends failed and
they hold nothing beyond their creation, never otherwise; against localhub."""

from __future__ import annotations

import time

import pytest
from huggingface_hub import CommitOperationAdd, HfApi

from bot import queue
from bot.settings import Settings
from bot.store import Store
from bot.worker import Worker
from tests.bot.botutil import BOT, wait_for
from tests.bot.test_worker import add_recipe, commits

REPO = f"{BOT}/merged"


class Killed(BaseException):
    """The worker's process dying: none of the worker's own failure handling runs."""


def create_repo_then_die(req, progress):
    """An attempt that creates the target repo the way publish does (recorded first, when
    it does not exist yet), then is killed before any commit."""
    api = HfApi(endpoint=req.endpoint, token=req.token)
    if not api.repo_exists(req.repo_id):
        req.before_create()
        api.create_repo(req.repo_id)
    raise Killed


def fast(settings: Settings, **overrides) -> Settings:
    return Settings(**{**settings.__dict__, "backoff_seconds": 0.1, **overrides})


def kill_attempts(settings: Settings, store: Store, job_id: int, count: int) -> None:
    """Run ``count`` attempts of the job, each killed after creating the repo; their
    leases are then expired, as they would be once the dead worker stops heartbeating."""
    for _ in range(count):
        with pytest.raises(Killed):
            Worker(settings, store, publish=create_repo_then_die).run_once()
        with store.write() as db:
            db.execute("UPDATE jobs SET lease_expires = 0 WHERE id = ?", (job_id,))


def cleanups(store: Store) -> list[tuple]:
    with store.read() as db:
        rows = db.execute("SELECT job_id, repo_id, tries, outcome FROM repo_cleanups")
        return [tuple(r) for r in rows]


def test_a_killed_job_given_up_leaves_no_repo(sources, settings, store):
    one = fast(settings, max_attempts=1)
    _, job_id = add_recipe(store)
    kill_attempts(one, store, job_id, 1)
    assert sources.api(BOT).repo_exists(REPO)  # created, then the worker died
    assert store.get_job(job_id).created_repo == REPO

    assert Worker(one, store).run_once() is None  # gives the job up, then cleans up
    job = store.get_job(job_id)
    assert job.status == "failed" and "giving up" in job.error
    assert not sources.api(BOT).repo_exists(REPO)
    assert cleanups(store) == [(job_id, REPO, 1, queue.DELETED)]
    log = store.log_tail(job_id)
    assert f"creating {REPO}" in log
    assert f"{REPO}, which this job created and left empty, no longer exists" in log


def test_a_later_attempt_owns_the_repo_and_deletes_it_when_it_fails(sources, settings, store):
    # The second attempt finds the repo the first one created and fails for good itself:
    # it deletes the repo like the first attempt would have.
    two = fast(settings, max_attempts=2)
    _, job_id = add_recipe(store)
    kill_attempts(two, store, job_id, 1)
    sources.add_fault(r"/api/models/mergebot/merged/commit/", 403, method="POST")
    Worker(two, store).run_once()
    job = store.get_job(job_id)
    assert job.status == "failed" and job.attempts == 2 and "may not write" in job.error
    assert not sources.api(BOT).repo_exists(REPO)
    assert cleanups(store) == [(job_id, REPO, 1, queue.DELETED)]


def test_a_killed_attempt_then_a_good_one_gives_one_repo_with_one_merge(sources, settings, store):
    _, job_id = add_recipe(store)
    kill_attempts(settings, store, job_id, 1)
    Worker(settings, store).run_once()
    job = store.get_job(job_id)
    assert job.status == "succeeded" and job.attempts == 2
    history = commits(sources, REPO)
    assert [c.title for c in history] == ["Submitted by @alice", "initial commit"]
    assert history[0].commit_id == job.commit_sha
    assert job.created_repo == REPO and cleanups(store) == []  # nothing to clean up
    Worker(settings, store).run_once()
    assert sources.api(BOT).repo_exists(REPO)


def test_a_repo_that_existed_before_the_job_is_never_deleted(sources, settings, store):
    one = fast(settings, max_attempts=1)
    sources.api(BOT).create_repo(REPO)  # the user's own, made before the job
    head = sources.api(BOT).model_info(REPO).sha
    _, job_id = add_recipe(store)
    sources.add_fault(r"/api/models/mergebot/merged/commit/", 403, method="POST")
    Worker(one, store).run_once()
    assert store.get_job(job_id).status == "failed"
    assert sources.api(BOT).model_info(REPO).sha == head  # still there, untouched
    assert store.get_job(job_id).created_repo is None and cleanups(store) == []


def test_a_remerge_given_up_keeps_the_published_repo(sources, settings, store):
    one = fast(settings, max_attempts=1)
    recipe_id, first = add_recipe(store)
    Worker(one, store).run_once()
    published = store.get_job(first).commit_sha
    with store.write() as db:
        again, _ = queue.enqueue(db, recipe_id, "alice", "remerge", force=True)
    kill_attempts(one, store, again, 1)
    Worker(one, store).run_once()
    assert store.get_job(again).status == "failed"
    assert sources.api(BOT).model_info(REPO).sha == published
    assert store.get_job(again).created_repo is None and cleanups(store) == []


@pytest.mark.parametrize(
    "foreign, reason",
    [
        ("commit", "it has 1 commit(s) made after its creation"),
        ("branch", "it has other refs (draft)"),
    ],
)
def test_a_created_repo_with_a_foreign_commit_is_kept(sources, settings, store, foreign, reason):
    one = fast(settings, max_attempts=1)
    _, job_id = add_recipe(store)
    kill_attempts(one, store, job_id, 1)
    api = sources.api(BOT)  # someone else working in the repo (here with the bot's account)
    if foreign == "branch":
        api.create_branch(REPO, branch="draft")
    else:
        api.create_commit(REPO, [CommitOperationAdd("notes.md", b"mine")], commit_message="notes")
    head = api.model_info(REPO).sha
    Worker(one, store).run_once()
    assert store.get_job(job_id).status == "failed"
    assert api.model_info(REPO).sha == head
    assert f"kept {REPO}, which this job created, because {reason}" in store.log_tail(job_id)
    assert cleanups(store) == [(job_id, REPO, 1, queue.KEPT)]


def test_a_failed_deletion_is_logged_and_retried(sources, settings, store):
    two = fast(settings, max_attempts=2)
    _, job_id = add_recipe(store)
    kill_attempts(two, store, job_id, 2)
    sources.add_fault(r"/api/repos/delete", 403, count=1, method="DELETE")
    worker = Worker(two, store)
    worker.run_once()  # gives the job up; the first deletion try fails
    assert sources.api(BOT).repo_exists(REPO)
    line = f"could not delete {REPO}: the bot's token may not write there; retrying in 0.1 s"
    assert line in store.log_tail(job_id)
    wait_for(lambda: worker.run_once() is None and not sources.api(BOT).repo_exists(REPO))
    assert cleanups(store) == [(job_id, REPO, 2, queue.DELETED)]


def test_deletion_is_retried_a_bounded_number_of_times(sources, settings, store, caplog):
    settings = fast(settings, max_attempts=2)
    _, job_id = add_recipe(store)
    kill_attempts(settings, store, job_id, 2)
    sources.add_fault(r"/api/repos/delete", 403, count=100, method="DELETE")
    worker = Worker(settings, store)
    deadline = time.monotonic() + 10
    while cleanups(store)[-1:] != [(job_id, REPO, 2, queue.ABANDONED)]:
        assert time.monotonic() < deadline, cleanups(store)
        worker.run_once()  # never raises for a Hub error
    assert sources.api(BOT).repo_exists(REPO)
    log = store.log_tail(job_id)
    assert f"could not delete {REPO}: the bot's token may not write there; gave up deleting " \
        f"{REPO} after 2 tries" in log
    assert settings.token not in caplog.text
