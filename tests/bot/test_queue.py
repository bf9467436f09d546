"""Store and queue: migrations, coalescing, atomic claims, leases, fencing, retries."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bot import queue, store_pg
from bot import store as store_module
from bot.database import open_store
from bot.settings import Settings, SettingsError
from bot.store import MIGRATIONS, Store
from bot.store_pg import PostgresStore


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Store:
    store = Store(tmp_path / "state" / "bot.sqlite3")
    store.migrate()
    return store


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path: Path) -> Store:
    """The store on SQLite and on Postgres: every queue rule holds on both."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_db")
        return
    store = PostgresStore(request.getfixturevalue("pg_url"))
    store.migrate()
    yield store
    store.close()


def new_recipe(store: Store, owner: str = "alice", repo: str = "bot/m") -> int:
    with store.write() as db:
        return store.add_recipe(
            db, owner=owner, yaml="x", repo_id=repo, private=False, watch=True, sources=["a/b"]
        )


def enqueue(store: Store, recipe_id: int, owner: str = "alice", trigger: str = "t"):
    with store.write() as db:
        return queue.enqueue(db, recipe_id, owner, trigger)


def test_migrations_are_versioned_and_idempotent(db: Store):
    assert [v for v, _ in store_pg.MIGRATIONS] == [v for v, _ in MIGRATIONS]  # same versions
    assert db.version() == MIGRATIONS[-1][0]
    assert db.migrate() == MIGRATIONS[-1][0]  # second run applies nothing
    with db.read() as conn:
        if not isinstance(db, PostgresStore):
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [v for v, _ in MIGRATIONS]


@pytest.fixture(params=["sqlite", "postgres"])
def fresh(request, tmp_path: Path):
    """(make a Store on one new, unmigrated database, its migrations module)."""
    if request.param == "sqlite":
        path = tmp_path / "bot.sqlite3"
        yield (lambda: Store(path)), store_module
        return
    url = request.getfixturevalue("pg_url")
    made: list[PostgresStore] = []

    def make() -> PostgresStore:
        made.append(PostgresStore(url))
        return made[-1]

    yield make, store_pg
    for store in made:
        store.close()


def test_migrate_from_two_processes_at_once(fresh):
    make, _ = fresh
    errors = []

    def run():
        try:
            make().migrate()
        except Exception as exc:  # pragma: no cover - the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and make().version() == MIGRATIONS[-1][0]


def test_write_rolls_back_on_error(db: Store):
    with pytest.raises(RuntimeError), db.write() as conn:
        db.add_recipe(
            conn, owner="a", yaml="x", repo_id="b/c", private=False, watch=False, sources=[]
        )
        raise RuntimeError("boom")
    assert db.list_recipes() == []


def test_queued_job_absorbs_triggers(db: Store):
    recipe = new_recipe(db)
    first, absorbed = enqueue(db, recipe, trigger="one")
    assert not absorbed
    for i in range(5):
        assert enqueue(db, recipe, trigger=f"more {i}") == (first, True)
    job = db.get_job(first)
    assert job.triggers == 6 and job.trigger == "one" and job.status == "queued"
    # A running job does not absorb: the new trigger may carry a newer SHA.
    claimed = queue.claim(db, "w1", lease=30, max_attempts=3)
    assert claimed.id == first
    second, absorbed = enqueue(db, recipe)
    assert second != first and not absorbed


def test_claim_is_atomic_across_threads(db: Store):
    jobs = {enqueue(db, new_recipe(db, repo=f"bot/m{i}"))[0] for i in range(20)}
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (job := queue.claim(db, name, lease=30, max_attempts=3)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(jobs)  # each job exactly once


def test_one_running_job_per_recipe(db: Store):
    recipe = new_recipe(db)
    first, _ = enqueue(db, recipe)
    assert queue.claim(db, "w1", lease=30, max_attempts=3).id == first
    second, _ = enqueue(db, recipe)
    assert queue.claim(db, "w2", lease=30, max_attempts=3) is None  # waits for the first
    assert queue.finish(db, first, "w1", queue.SUCCEEDED, commit="c")
    assert queue.claim(db, "w2", lease=30, max_attempts=3).id == second


def together(count: int, work) -> list:
    """Run ``work(i)`` in ``count`` threads released at once; their results."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_triggers_coalesce_into_one_queued_job(db: Store):
    recipe = new_recipe(db)
    for _ in range(5):
        results = together(8, lambda i: enqueue(db, recipe, trigger=f"t{i}"))
        assert len({job for job, _ in results}) == 1 and sum(not a for _, a in results) <= 1
    queued = [j for j in db.recipe_jobs(recipe) if j.status == queue.QUEUED]
    assert len(queued) == 1 and queued[0].triggers == 40


def test_concurrent_claims_never_run_one_recipe_twice(db: Store):
    for round_ in range(6):
        recipe = new_recipe(db, repo=f"bot/r{round_}")
        expiring, _ = enqueue(db, recipe)
        assert queue.claim(db, "dead", lease=0.01, max_attempts=9).id == expiring
        assert not enqueue(db, recipe)[1]  # a second runnable job of the recipe
        time.sleep(0.02)
        others = [enqueue(db, new_recipe(db, repo=f"bot/o{round_}-{i}"))[0] for i in range(2)]
        claimed = together(6, lambda i: queue.claim(db, f"w{i}", lease=30, max_attempts=9))
        ids = [job.id for job in claimed if job is not None]
        assert len(ids) == len(set(ids))  # no job twice
        assert len([job for job in claimed if job and job.recipe_id == recipe]) == 1
        assert set(others) <= set(ids)


def test_expired_lease_is_reclaimed_and_fenced(db: Store):
    job_id, _ = enqueue(db, new_recipe(db))
    assert queue.claim(db, "dead", lease=0.05, max_attempts=3).id == job_id
    assert queue.claim(db, "other", lease=30, max_attempts=3) is None  # lease still live
    time.sleep(0.1)
    again = queue.claim(db, "alive", lease=30, max_attempts=3)
    assert again.id == job_id and again.attempts == 2 and again.lease_owner == "alive"
    # The dead worker comes back: it can neither heartbeat nor finish.
    assert not queue.heartbeat(db, job_id, "dead", lease=30)
    assert not queue.finish(db, job_id, "dead", queue.SUCCEEDED)
    assert not queue.retry_later(db, job_id, "dead", error="x", delay=1)
    assert queue.heartbeat(db, job_id, "alive", lease=30, stage="merging", progress=0.5)
    job = db.get_job(job_id)
    assert (job.stage, job.progress) == ("merging", 0.5)
    assert queue.finish(db, job_id, "alive", queue.SUCCEEDED, commit="abc", source_shas={"a": "1"})
    job = db.get_job(job_id)
    assert job.status == "succeeded" and job.commit_sha == "abc" and job.lease_owner is None


def test_lease_expiring_too_often_fails_the_job(db: Store):
    job_id, _ = enqueue(db, new_recipe(db))
    for _ in range(2):
        assert queue.give_up(db, max_attempts=2) == []
        assert queue.claim(db, "dying", lease=0.01, max_attempts=2) is not None
        time.sleep(0.03)
    assert queue.claim(db, "w", lease=30, max_attempts=2) is None  # out of attempts
    assert db.get_job(job_id).status == "running"
    assert queue.give_up(db, max_attempts=2) == [job_id]
    job = db.get_job(job_id)
    assert job.status == "failed" and "in 2 attempt(s); giving up" in job.error
    assert queue.give_up(db, max_attempts=2) == []


def test_retry_later_waits_for_backoff(db: Store):
    job_id, _ = enqueue(db, new_recipe(db))
    queue.claim(db, "w", lease=30, max_attempts=3)
    assert queue.retry_later(db, job_id, "w", error="HTTP 503", delay=0.2)
    assert db.get_job(job_id).status == "queued"
    assert queue.claim(db, "w", lease=30, max_attempts=3) is None
    time.sleep(0.25)
    assert queue.claim(db, "w", lease=30, max_attempts=3).attempts == 2


def test_active_jobs_and_logs(db: Store):
    a, b = new_recipe(db, repo="bot/a"), new_recipe(db, repo="bot/b")
    enqueue(db, a)
    enqueue(db, b)
    enqueue(db, new_recipe(db, owner="bob", repo="bot/c"), owner="bob")
    with db.read() as conn:
        assert queue.active_jobs(conn, "alice") == 2
        assert queue.active_jobs(conn, "bob") == 1
    with pytest.raises(ValueError):
        queue.finish(db, 1, "w", queue.RUNNING)
    assert db.log_tail(1) == ["queued: t"]


def test_deliveries_dedupe(db: Store):
    with db.write() as conn:
        assert db.record_delivery(conn, identity="r@a..b", event="e", repo="r", outcome="x")
        assert not db.record_delivery(conn, identity="r@a..b", event="e", repo="r", outcome="x")
        assert db.record_delivery(conn, identity=None, event="e", repo="r", outcome="ignored")
        assert db.record_delivery(conn, identity=None, event="e", repo="r", outcome="ignored")
    stats = db.delivery_stats()
    assert stats == {"recorded": 3, "received": 4, "by_outcome": {"x": 1, "ignored": 2}}


def test_writers_wait_for_the_lock_instead_of_failing(sqlite_db: Store):
    # A second connection holding the write lock makes writers wait, not fail.
    db = sqlite_db
    blocker = sqlite3.connect(db.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    done = threading.Event()

    def write():
        new_recipe(db)
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    assert not done.wait(0.3)
    blocker.execute("COMMIT")
    blocker.close()
    assert done.wait(5)
    thread.join()


def test_settings_from_env_and_repr_hides_secrets(tmp_path: Path):
    env = {
        "HF_ENDPOINT": "http://hub.local/",
        "HF_TOKEN": "hf_secret_token",
        "WEBHOOK_SECRET": "whsecret",
        "MERGEBOT_HOME": str(tmp_path),
        "MERGEBOT_PUBLIC_URL": "https://bot.example/",
        "MERGEBOT_NAMESPACE": "merges",
        "MERGEBOT_MAX_MODELS": "3",
        "MERGEBOT_LEASE_SECONDS": "2.5",
    }
    s = Settings.from_env(env)
    assert s.endpoint == "http://hub.local" and s.token == "hf_secret_token"
    assert s.webhook_url == "https://bot.example/webhooks/hub"
    assert s.home == tmp_path and s.db_path == tmp_path / "bot.sqlite3"
    assert s.max_models == 3 and s.lease_seconds == 2.5 and s.namespace == "merges"
    assert "hf_secret_token" not in repr(s) and "whsecret" not in repr(s)
    assert [s.backoff(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert Settings.from_env({}).webhook_url is None
    with pytest.raises(SettingsError, match="MERGEBOT_MAX_MODELS"):
        Settings.from_env({"MERGEBOT_MAX_MODELS": "many"})
    with pytest.raises(SettingsError, match="positive"):
        Settings.from_env({"MERGEBOT_MAX_ATTEMPTS": "0"})


def test_migrating_a_version_1_database_keeps_its_jobs(fresh, monkeypatch):
    make, module = fresh
    old = make()
    with monkeypatch.context() as m:
        m.setattr(module, "MIGRATIONS", module.MIGRATIONS[:1])
        assert old.migrate() == 1
        with old.write() as conn:  # a recipe and a job of version 1, without later columns
            recipe = conn.execute(
                "INSERT INTO recipes (owner, yaml, repo_id, private, watch, sources, created_at,"
                " updated_at) VALUES ('alice', 'x', 'bot/m', 0, 0, '[]', 0, 0) RETURNING id"
            ).fetchone()["id"]
            conn.execute("INSERT INTO jobs (recipe_id, owner, trigger, status, created_at)"
                         " VALUES (?, 'alice', 't', 'queued', 0)", (recipe,))
    assert old.migrate() == MIGRATIONS[-1][0]
    job = queue.claim(old, "w", lease=30, max_attempts=3)
    assert job.created_repo is None and job.trigger == "t"


def fail_having_created(store: Store, recipe: int, repo: str = "bot/m") -> int:
    """A job that recorded creating ``repo``, then failed: its cleanup is pending."""
    job_id, _ = enqueue(store, recipe)
    assert queue.claim(store, "w", lease=30, max_attempts=3).id == job_id
    assert queue.record_created_repo(store, job_id, "w", repo)
    assert queue.finish(store, job_id, "w", queue.FAILED, error="boom")
    return job_id


def test_a_pending_cleanup_holds_back_the_recipes_next_job(db: Store):
    recipe = new_recipe(db)
    failed = fail_having_created(db, recipe)
    assert queue.claim(db, "w", lease=30, max_attempts=3) is None
    waiting, _ = enqueue(db, recipe)
    other, _ = enqueue(db, new_recipe(db, repo="bot/other"))
    assert queue.claim(db, "w", lease=30, max_attempts=3).id == other  # other recipes run
    cleanup = queue.claim_cleanup(db, hold=30)
    assert cleanup == queue.Cleanup(failed, "bot/m", 1)
    assert queue.claim_cleanup(db, hold=30) is None  # held by the first claimer
    assert queue.claim(db, "w", lease=30, max_attempts=3) is None
    queue.settle_cleanup(db, failed, "deleted", outcome=queue.DELETED)
    assert queue.claim(db, "w", lease=30, max_attempts=3).id == waiting


def test_a_cleanup_waits_for_a_running_job_of_its_recipe(db: Store):
    recipe = new_recipe(db)
    first, _ = enqueue(db, recipe)
    assert queue.claim(db, "dead", lease=0.01, max_attempts=1).id == first
    assert queue.record_created_repo(db, first, "dead", "bot/m")
    assert not queue.record_created_repo(db, first, "someone-else", "bot/m")  # fenced
    time.sleep(0.03)
    second, _ = enqueue(db, recipe)
    assert queue.claim(db, "alive", lease=30, max_attempts=1).id == second
    assert queue.give_up(db, max_attempts=1) == [first]  # its cleanup is now pending
    assert queue.claim_cleanup(db, hold=30) is None  # the second job is merging
    assert queue.finish(db, second, "alive", queue.SUCCEEDED, commit="c")
    assert queue.claim_cleanup(db, hold=30) == queue.Cleanup(first, "bot/m", 1)


def test_a_failed_cleanup_try_is_due_again_after_its_delay(db: Store):
    failed = fail_having_created(db, new_recipe(db))
    assert queue.claim_cleanup(db, hold=30).tries == 1
    queue.settle_cleanup(db, failed, "could not delete bot/m: HTTP 500", retry_in=0.05)
    assert queue.claim_cleanup(db, hold=30) is None
    time.sleep(0.06)
    assert queue.claim_cleanup(db, hold=30).tries == 2
    assert db.log_tail(failed)[-1] == "could not delete bot/m: HTTP 500"


def test_database_url_picks_postgres_and_stays_out_of_repr(tmp_path: Path):
    url = "postgresql://bot:pa55word@db.example/mergebot"
    s = Settings.from_env({"MERGEBOT_HOME": str(tmp_path), "MERGEBOT_DATABASE_URL": url})
    assert s.database_url == url and "pa55word" not in repr(s)
    store = open_store(s)
    assert isinstance(store, PostgresStore) and "pa55word" not in repr(store)
    sqlite = open_store(Settings(home=tmp_path))
    assert type(sqlite) is Store and sqlite.path == tmp_path / "bot.sqlite3"
    with pytest.raises(SettingsError, match="MERGEBOT_DATABASE_URL must be a postgresql://"):
        Settings.from_env({"MERGEBOT_DATABASE_URL": "mysql://db/x"})
