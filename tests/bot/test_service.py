"""End to end: a real `mergebot serve` (and `mergebot worker`) subprocess on loopback,
against localhub: submit, webhook-driven remerge, crashes, restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
import yaml
from huggingface_hub import CommitOperationAdd

from tests.bot.botutil import BOT, BOT_TOKEN, SECRET, SOURCES, recipe_yaml, wait_for
from tests.hubtools import USERS, Hub

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Bot:
    """`mergebot serve` in a subprocess; `worker()` starts `mergebot worker` processes."""

    def __init__(self, hub: Hub, home: Path, **env: str) -> None:
        self.hub, self.home = hub, home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": BOT_TOKEN,
            "WEBHOOK_SECRET": SECRET,
            "MERGEBOT_HOME": str(home),
            "MERGEBOT_PUBLIC_URL": self.url,
            "MERGEBOT_POLL_SECONDS": "0.1",
            "MERGEBOT_BACKOFF_SECONDS": "0.2",
            "MERGEBOT_DEVICE": "cpu",
            "HF_HUB_DISABLE_XET": "1",
            **env,
        }
        self.procs: list[subprocess.Popen] = []
        self.server: subprocess.Popen | None = None

    def _spawn(self, *args: str, name: str) -> subprocess.Popen:
        log = open(self.home.parent / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def start(self, workers: int = 1) -> Bot:
        self.server = self._spawn(
            "serve",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            name="serve",
        )
        wait_for(self._healthy, timeout=60, every=0.1)
        return self

    def _healthy(self) -> bool:
        assert self.server.poll() is None, self.logs()
        try:
            return httpx2.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx2.TransportError:
            return False

    def worker(self) -> subprocess.Popen:
        return self._spawn("worker", name="worker")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.home.parent.glob("*.log"))
        )

    def job(self, job_id: int) -> dict:
        return httpx2.get(f"{self.url}/api/jobs/{job_id}", timeout=10).json()

    def done(self, job_id: int) -> dict | None:
        job = self.job(job_id)
        assert job["status"] != "failed", (job, self.logs())
        return job if job["status"] in ("succeeded", "skipped") else None

    def submit(self, repo_id: str, *flags: str, token: str = USERS["alice"]) -> int:
        recipe = self.home.parent / f"{repo_id.replace('/', '_')}.yml"
        recipe.write_text(recipe_yaml())
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bot.cli",
                "submit",
                str(recipe),
                "--repo",
                repo_id,
                "--url",
                self.url,
                *flags,
            ],
            env={**self.env, "HF_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip())


@pytest.fixture
def bot_factory(tmp_path: Path):
    bots: list[Bot] = []

    def make(hub: Hub, **env: str) -> Bot:
        bot = Bot(hub, tmp_path / "bot-home", **env)
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        bot.stop()


def card(hub: Hub, repo_id: str, revision: str | None = None) -> dict:
    path = hub.api(BOT).hf_hub_download(repo_id, "README.md", revision=revision)
    return yaml.safe_load(Path(path).read_text().split("---")[1])


def job_commits(hub: Hub, repo_id: str) -> list[str]:
    return [
        c.commit_id
        for c in hub.api(BOT).list_repo_commits(repo_id)
        if "mergebot-job: " in (c.message or "")
    ]


def test_submit_then_webhook_remerge_then_duplicates(sources: Hub, bot_factory):
    bot = bot_factory(sources).start(workers=1)
    job = bot.submit(f"{BOT}/merged", "--watch")
    first = wait_for(lambda: bot.done(job), timeout=60)
    assert first["status"] == "succeeded" and first["attempts"] == 1
    donor = sources.api("alice").model_info("alice/donor-1").sha
    meta = card(sources, f"{BOT}/merged")
    assert meta["merge"]["models"][0] == {
        "model": "alice/donor-1",
        "revision": donor,
        "parameters": {"weight": 1.0},
    }
    # The bot watches every source through a Hub webhook to its public URL.
    hooks = wait_for(
        lambda: len(sources.api(BOT).list_webhooks()) == 3 and sources.api(BOT).list_webhooks()
    )
    assert {h.watched[0].name for h in hooks} == set(SOURCES)

    # A push to a donor's main: the hub calls the bot, which remerges.
    pushed = sources.api("alice").create_commit(
        "alice/donor-1", [CommitOperationAdd("notes.txt", b"v2")], commit_message="v2"
    )
    second = wait_for(lambda: bot.job(2)["status"] == "succeeded" and bot.job(2), timeout=60)
    assert second["trigger"] == f"alice/donor-1 main moved to {pushed.oid[:12]}"
    assert second["source_shas"]["alice/donor-1"] == pushed.oid
    assert card(sources, f"{BOT}/merged")["merge"]["models"][0]["revision"] == pushed.oid
    assert len(job_commits(sources, f"{BOT}/merged")) == 2

    # A push to a PR ref is delivered and answered, but nothing is queued.
    sources.api("alice").create_commit(
        "alice/donor-2",
        [CommitOperationAdd("pr.txt", b"x")],
        commit_message="pr",
        revision="refs/pr/1",
    )
    wait_for(
        lambda: any(
            d["repo"] == "alice/donor-2" and d["status"] == 200
            for d in sources.stats()["webhooks"]["recent"]
        )
    )

    # The same delivery 100 times more: all duplicates, no new job.
    replay = {
        "event": {"action": "update", "scope": "repo.content"},
        "repo": {"type": "model", "name": "alice/donor-1", "private": False, "headSha": pushed.oid},
        "updatedRefs": [{"ref": "refs/heads/main", "oldSha": donor, "newSha": pushed.oid}],
    }
    headers = {"X-Webhook-Secret": SECRET}
    with httpx2.Client(base_url=bot.url, headers=headers) as client:
        actions = [client.post("/webhooks/hub", json=replay).json()["action"] for _ in range(100)]
    assert set(actions) == {"duplicate"}
    time.sleep(0.5)
    assert bot.job(3).get("status") is None  # 404 body: no third job
    assert len(job_commits(sources, f"{BOT}/merged")) == 2

    out = subprocess.run(
        [sys.executable, "-m", "bot.cli", "status", "2", "--url", bot.url],
        env=bot.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "succeeded" in out.stdout and pushed.oid in out.stdout

    # A source is deleted: the hub tells the bot, which marks the recipe broken.
    sources.api("alice").delete_repo("alice/donor-2")

    def broken() -> str | None:
        return httpx2.get(f"{bot.url}/api/recipes/1").json()["broken"]

    assert wait_for(broken) == "source alice/donor-2 was deleted"


def test_kill_9_worker_mid_merge_still_one_commit(sources: Hub, bot_factory):
    # Slow transfers so that the merge is still running when the worker is killed.
    sources.options["bandwidth_mbps"] = 0.06
    sources.restart()
    bot = bot_factory(sources, MERGEBOT_LEASE_SECONDS="2").start(workers=0)
    victim = bot.worker()
    job = bot.submit(f"{BOT}/crash")
    # The target repo exists once resolving is over: downloads and math are under way.
    wait_for(lambda: sources.api(BOT).repo_exists(f"{BOT}/crash"), timeout=60)
    assert bot.job(job)["status"] == "running"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert bot.job(job)["status"] == "running"
    bot.worker()
    done = wait_for(lambda: bot.done(job), timeout=90)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert any("attempt 2 claimed" in line for line in done["log"])
    assert len(job_commits(sources, f"{BOT}/crash")) == 1
    titles = [c.title for c in sources.api(BOT).list_repo_commits(f"{BOT}/crash")]
    assert titles == ["Submitted by @alice", "initial commit"]  # the repo, then one merge
    assert not list((bot.home / "work").glob(f"job-{job}-*"))


def test_kill_9_worker_of_a_last_attempt_then_given_up_leaves_no_work_dir_nor_repo(
    sources: Hub, bot_factory
):
    sources.options["bandwidth_mbps"] = 0.06
    sources.restart()
    bot = bot_factory(sources, MERGEBOT_LEASE_SECONDS="2", MERGEBOT_MAX_ATTEMPTS="1")
    bot.start(workers=0)
    victim = bot.worker()
    job = bot.submit(f"{BOT}/given-up")
    wait_for(lambda: sources.api(BOT).repo_exists(f"{BOT}/given-up"), timeout=60)
    assert list((bot.home / "work").glob(f"job-{job}-*"))  # merging in its work dir
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    bot.worker()
    failed = wait_for(lambda: bot.job(job)["status"] == "failed" and bot.job(job), timeout=60)
    assert "in 1 attempt(s); giving up" in failed["error"]
    assert not list((bot.home / "work").glob(f"job-{job}-*"))
    # The repo the dead attempt created holds nothing of ours: the worker deletes it.
    wait_for(lambda: not sources.api(BOT).repo_exists(f"{BOT}/given-up"), timeout=30)
    assert f"{BOT}/given-up, which this job created and left empty, no longer exists" in (
        bot.job(job)["log"])


def test_restart_with_queued_jobs_runs_them(sources: Hub, bot_factory):
    bot = bot_factory(sources).start(workers=0)
    jobs = [bot.submit(f"{BOT}/queued-{i}") for i in range(2)]
    assert [bot.job(j)["status"] for j in jobs] == ["queued", "queued"]
    bot.stop()
    bot.start(workers=2)
    for job in jobs:
        assert wait_for(lambda job=job: bot.done(job), timeout=60)["status"] == "succeeded"
    assert [len(job_commits(sources, f"{BOT}/queued-{i}")) for i in range(2)] == [1, 1]
    health = httpx2.get(f"{bot.url}/healthz").json()
    assert health["workers"] == 2 and health["jobs"] == {"queued": 0, "running": 0}
    assert json.loads(json.dumps(health))  # plain JSON
