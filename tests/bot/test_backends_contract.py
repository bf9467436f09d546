"""The backend contract (bot/backends/base.py), one suite for every backend: a real
`mergebot serve` and `mergebot worker` processes against localhub, each merge where the
backend runs it (`local`: in the worker; `hf-jobs`: a Job that localhub runs as a
subprocess; `fleet`: the local dispatch with the queue on a real Postgres server, which the
serve and worker processes share by its URL). Add a backend by adding an entry to
BACKENDS: a function of the test's fixture request returning the bot's extra environment.

Faults that hold a merge mid-way are localhub's request delays: on the commit (kill -9,
stall) or on the shard pre-upload (cancel)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest

from bot import queue
from bot.backends import Cancelled, Dispatch, make_backend
from bot.errors import TransientError
from bot.publish import PublishRequest
from bot.store import Store
from bot.store_pg import PostgresStore
from merge_engine import AdapterOptions
from tests.bot.botutil import BOT, SECRET, recipe_yaml, wait_for
from tests.bot.test_service import Bot, job_commits
from tests.hubtools import USERS, Hub

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HF_JOBS = {"MERGEBOT_BACKEND": "hf-jobs", "MERGEBOT_JOBS_IMAGE": "mergebot-jobs:test",
           "MERGEBOT_JOBS_POLL_SECONDS": "0.2"}
BACKENDS: dict[str, Callable[[pytest.FixtureRequest], dict[str, str]]] = {
    "local": lambda request: {},
    "hf-jobs": lambda request: dict(HF_JOBS),
    "fleet": lambda request: {"MERGEBOT_DATABASE_URL": request.getfixturevalue("pg_url")},
}


class ApiBot(Bot):
    """`mergebot serve --no-ui` (the API is all these tests need; starts faster)."""

    def start(self, workers: int = 1) -> ApiBot:
        self.server = self._spawn("serve", "--no-ui", "--port", str(self.port), "--workers",
                                  str(workers), "--log-level", "warning", name="serve")
        wait_for(self._healthy, timeout=120, every=0.1)
        return self

    def submit(self, repo_id: str, *flags: str, token: str = USERS["alice"]) -> int:
        """POST /api/recipes (what `mergebot submit` does, without a process start)."""
        body = {"recipe": recipe_yaml(), "repo_id": repo_id, "watch": "--watch" in flags}
        answer = httpx2.post(f"{self.url}/api/recipes", json=body, timeout=120,
                             headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 201, answer.text
        return answer.json()["job_id"]


@pytest.fixture
def bot_factory(tmp_path: Path):
    bots: list[Bot] = []

    def make(hub: Hub, **env: str) -> Bot:
        bots.append(ApiBot(hub, tmp_path / "bot-home", **env))
        return bots[-1]

    yield make
    for bot in bots:
        bot.stop()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> tuple[str, dict[str, str]]:
    """(name, the bot's environment for it)."""
    return request.param, BACKENDS[request.param](request)


def dispatched_by(name: str) -> str:
    """The backend a job's run names: a fleet dispatches locally."""
    return "local" if name == "fleet" else name


def bot_store(bot: Bot, env: dict[str, str]) -> Store:
    """The bot's database, as its processes open it."""
    url = env.get("MERGEBOT_DATABASE_URL")
    return PostgresStore(url) if url else Store(bot.home / "bot.sqlite3")


def hub_jobs(hub: Hub, job_id: int) -> list:
    return list(hub.api(BOT).list_jobs(labels={"mergebot-job": str(job_id)}, namespace=BOT))


def delay(hub: Hub, path_regex: str, seconds: float, method: str = "POST") -> None:
    spec = {"path_regex": path_regex, "delay": seconds, "method": method}
    httpx2.post(f"{hub.url}/_localhub/faults", json=spec).raise_for_status()


def push(donor_sha: str, new_sha: str) -> dict:
    return {
        "event": {"action": "update", "scope": "repo.content"},
        "repo": {"type": "model", "name": "alice/donor-1", "private": False, "headSha": new_sha},
        "updatedRefs": [{"ref": "refs/heads/main", "oldSha": donor_sha, "newSha": new_sha}],
    }


def test_webhook_burst_makes_one_job(sources: Hub, bot_factory, backend):
    name, env = backend
    bot = bot_factory(sources, **env).start(workers=0)
    job = bot.submit(f"{BOT}/burst", "--watch")
    old = sources.api("alice").model_info("alice/donor-1").sha
    with httpx2.Client(base_url=bot.url, headers={"X-Webhook-Secret": SECRET}) as client:
        answers = [client.post("/webhooks/hub", json=push(old, f"{i:040x}")).json()
                   for i in range(1, 21)]
    assert {a["action"] for a in answers} == {"enqueued"}
    assert bot.job(job)["triggers"] == 21 and bot.job(job + 1).get("status") is None
    bot.worker()
    done = wait_for(lambda: bot.done(job), timeout=90)
    assert done["status"] == "succeeded" and done["run"]["backend"] == dispatched_by(name)
    assert len(job_commits(sources, f"{BOT}/burst")) == 1
    if name == "hf-jobs":  # the job view shows the Job; Check shows its flavor and cost
        assert done["run"]["flavor"] == "t4-small" and done["run"]["hf_job_id"]
        assert done["run"]["hf_job_log"][-1].startswith("mergebot-result: ")
        check = httpx2.post(f"{bot.url}/api/validate", json={"recipe": recipe_yaml()},
                            headers={"Authorization": f"Bearer {USERS['alice']}"}).json()
        assert check["backend"]["flavor"] == "t4-small"
        assert check["backend"]["estimated_cost_usd"] > 0


def test_kill_9_of_the_bot_mid_merge_makes_one_commit(sources: Hub, bot_factory, backend):
    name, env = backend
    bot = bot_factory(sources, MERGEBOT_LEASE_SECONDS="2", **env).start(workers=0)
    delay(sources, f"/api/models/{BOT}/crash/commit/", 8.0)
    workers = {bot.worker().pid for _ in range(2)}  # one merges, the other waits
    job = bot.submit(f"{BOT}/crash")
    wait_for(lambda: sources.stats()["faults_triggered"] >= 1, timeout=120)  # committing
    owner = bot_store(bot, env).get_job(job).lease_owner
    victim = next(p for p in bot.procs if p.pid in workers and f":{p.pid}:" in owner)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = wait_for(lambda: bot.done(job), timeout=120)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert len(job_commits(sources, f"{BOT}/crash")) == 1
    if name == "hf-jobs":  # the second attempt adopted the Job the first one started
        assert len(hub_jobs(sources, job)) == 1
        assert done["run"]["hf_job_adopted"] and any("adopted" in x for x in done["log"])


def test_cancel_on_recipe_deletion(sources: Hub, bot_factory, backend):
    name, env = backend
    bot = bot_factory(sources, MERGEBOT_LEASE_SECONDS="2", **env).start(workers=1)
    delay(sources, f"/api/models/{BOT}/cancelled/preupload/", 4.0)
    job = bot.submit(f"{BOT}/cancelled")
    wait_for(lambda: sources.stats()["faults_triggered"] >= 1, timeout=90)  # uploading
    recipe = bot.job(job)["recipe_id"]
    headers = {"Authorization": f"Bearer {USERS['alice']}"}
    httpx2.delete(f"{bot.url}/api/recipes/{recipe}", headers=headers).raise_for_status()
    ended = wait_for(lambda: bot.job(job)["status"] in queue.DONE and bot.job(job), timeout=60)
    assert ended["status"] == "skipped", ended
    assert any(line.startswith("cancelled: the recipe was deleted") for line in ended["log"])
    if name == "hf-jobs":
        assert [j.status.stage for j in hub_jobs(sources, job)] == ["CANCELED"]
    # No commit: the repo the job created is removed again.
    wait_for(lambda: not sources.api(BOT).repo_exists(f"{BOT}/cancelled"), timeout=30)


def test_timeout_is_retried(sources: Hub, bot_factory, backend):
    """hf-jobs: the Job hits its timeout. local: the worker stalls (SIGSTOP) past its
    lease. Either way the next attempt publishes, once."""
    name, env = backend
    bot = bot_factory(sources, MERGEBOT_LEASE_SECONDS="2", **env).start(workers=0)
    if name == "hf-jobs":
        httpx2.post(f"{sources.url}/_localhub/jobs/faults",
                    json={"action": "hang", "timeout": 1}).raise_for_status()
        bot.worker()
        job = bot.submit(f"{BOT}/slow")
    else:
        delay(sources, f"/api/models/{BOT}/slow/preupload/", 2.0)
        stalled = bot.worker()
        job = bot.submit(f"{BOT}/slow")
        wait_for(lambda: sources.stats()["faults_triggered"] >= 1, timeout=90)
        stalled.send_signal(signal.SIGSTOP)
        bot.worker()
    done = wait_for(lambda: bot.done(job), timeout=90)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert len(job_commits(sources, f"{BOT}/slow")) == 1
    if name == "hf-jobs":
        assert any("timed out" in line for line in done["log"])
    else:
        stalled.send_signal(signal.SIGCONT)


def test_input_error_fails_at_once(sources: Hub, bot_factory, backend):
    name, env = backend
    bot = bot_factory(sources, **env).start(workers=0)
    job = bot.submit(f"{BOT}/broken")
    sources.api("alice").delete_repo("alice/donor-2")
    bot.worker()
    failed = wait_for(lambda: bot.job(job)["status"] in queue.DONE and bot.job(job), timeout=60)
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert "alice/donor-2" in failed["error"]
    if name == "hf-jobs":  # refused before any Job was started
        assert hub_jobs(sources, job) == []


def test_duplicate_dispatch_makes_one_commit(sources: Hub, make_settings, store, backend):
    name, env = backend
    settings = make_settings(
        backend=env.get("MERGEBOT_BACKEND", "local"), jobs_image=env.get("MERGEBOT_JOBS_IMAGE"),
        jobs_poll_seconds=0.2)
    with store.write() as db:
        recipes = [store.add_recipe(db, owner="alice", yaml=recipe_yaml(), repo_id=f"{BOT}/dup",
                                    private=False, watch=False, sources=[]) for _ in range(2)]
        job_id, _ = queue.enqueue(db, recipes[0], "alice", "test")
        job_two, _ = queue.enqueue(db, recipes[1], "alice", "again")

    def dispatch(job: int, attempt: int) -> Dispatch:
        work = settings.work_root / f"job-{job}-attempt-{attempt}"  # as the worker's
        work.mkdir(parents=True)
        request = PublishRequest(recipe_yaml(), f"{BOT}/dup", settings.token, work,
                                 endpoint=settings.endpoint, job_key=f"job-{job}",
                                 device="cpu")
        return Dispatch(job, attempt, request)

    first = make_backend(settings, store).run(dispatch(job_id, 1), lambda stage, fraction: None)
    second = make_backend(settings, store).run(dispatch(job_id, 2), lambda stage, fraction: None)
    assert second.commit_sha == first.commit_sha and second.reused_commit
    assert len(job_commits(sources, f"{BOT}/dup")) == 1
    if name == "hf-jobs":
        assert len(hub_jobs(sources, job_id)) == 1

    # Two dispatches at once: whichever commits first wins; the other reuses that commit
    # or fails transiently (the repo moved under it), never a second commit.
    outcomes: list = []

    def run(attempt: int) -> None:
        try:
            outcomes.append(make_backend(settings, store).run(
                dispatch(job_two, attempt), lambda stage, fraction: None).commit_sha)
        except (TransientError, Cancelled) as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in (1, 2)]
    for thread in threads:
        thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(120)
    assert len(job_commits(sources, f"{BOT}/dup")) == 2, outcomes  # one for each job
    commits = {o for o in outcomes if isinstance(o, str)}
    assert len(commits) == 1 and len(outcomes) == 2, outcomes


def test_an_adapter_is_published_beside_the_weights(sources: Hub, make_settings, backend):
    """``publish: both`` reaches wherever the backend merges (hf-jobs: the Job's flags and
    its result line): the full weights in the target, the adapter in ``<repo>-lora``."""
    name, env = backend
    settings = make_settings(
        backend=env.get("MERGEBOT_BACKEND", "local"), jobs_image=env.get("MERGEBOT_JOBS_IMAGE"),
        jobs_poll_seconds=0.2)
    store = Store(settings.db_path)
    store.migrate()
    with store.write() as db:
        recipe = store.add_recipe(db, owner="alice", yaml=recipe_yaml(), repo_id=f"{BOT}/both",
                                  private=False, watch=False, sources=[], publish="both",
                                  max_rank=2)
        job_id, _ = queue.enqueue(db, recipe, "alice", "test")
    work = settings.work_root / f"job-{job_id}-attempt-1"
    work.mkdir(parents=True)
    request = PublishRequest(recipe_yaml(), f"{BOT}/both", settings.token, work,
                             endpoint=settings.endpoint, job_key=f"job-{job_id}",
                             device="cpu", publish="both", adapter=AdapterOptions(max_rank=2))
    result = make_backend(settings, store).run(Dispatch(job_id, 1, request),
                                               lambda stage, fraction: None)
    api = sources.api(BOT)
    assert result.adapter_repo == f"{BOT}/both-lora"
    assert result.adapter_commit == api.model_info(f"{BOT}/both-lora").sha
    assert result.adapter_summary.startswith("adapter: 16 modules, rank <= 2")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(
        api.list_repo_files(f"{BOT}/both-lora"))
    assert "config.json" in api.list_repo_files(f"{BOT}/both")
