"""The bot Space: the staged folder's start command (the Dockerfile's CMD) run as a
subprocess with the environment a Space gives it, against localhub; and the mapping of
that environment onto the bot's settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from starlette.testclient import TestClient

from bot.server import create_app
from bot.settings import Settings
from bot.space import space_environment
from spaces_app.stage import stage
from tests.bot.botutil import BOT, BOT_TOKEN, SECRET, recipe_yaml, wait_for
from tests.bot.test_service import free_port
from tests.bot.test_webhooks import payload
from tests.hubtools import USERS, Hub

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SPACE_HOST = "alice-mergebot.hf.space"
OAUTH_SECRET = "oauth-client-s3cret"


def dockerfile_cmd(folder: Path) -> list[str]:
    """The exec-form CMD of the staged Dockerfile."""
    lines = (folder / "Dockerfile").read_text().splitlines()
    return json.loads(next(line for line in lines if line.startswith("CMD ")).removeprefix("CMD "))


@pytest.fixture
def openid_provider():
    """A loopback stand-in for the Hub's OpenID provider: only its discovery document."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            body = json.dumps({
                "issuer": base,
                "authorization_endpoint": f"{base}/oauth/authorize",
                "token_endpoint": f"{base}/oauth/token",
                "userinfo_endpoint": f"{base}/oauth/userinfo",
                "jwks_uri": f"{base}/oauth/jwks",
            }).encode()
            self.send_response(200 if self.path == "/.well-known/openid-configuration" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class SpaceProcess:
    """The staged bot Space's CMD, started and stopped like a Space (SIGTERM on restart)."""

    def __init__(self, folder: Path, env: dict[str, str], data: Path) -> None:
        cmd = dockerfile_cmd(folder)
        assert cmd[0] == "mergebot"  # the console script; here, the staged copy's module
        self.argv = [sys.executable, "-m", "bot.cli", *cmd[1:], "--data", str(data),
                     "--host", "127.0.0.1", "--port", str(free_port())]
        self.url = f"http://127.0.0.1:{self.argv[-1]}"
        self.folder, self.env, self.log = folder, env, folder.parent / "space.log"
        self.proc: subprocess.Popen | None = None

    def start(self, workers: int) -> SpaceProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.argv, "--workers", str(workers)], cwd=self.folder, env=self.env,
                stdout=out, stderr=subprocess.STDOUT,
            )
        wait_for(self._healthy, timeout=180, every=0.2, what="the Space to serve /healthz")
        return self

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, self.logs()
        try:
            return httpx2.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx2.TransportError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def get(self, path: str, **kw) -> httpx2.Response:
        return httpx2.get(f"{self.url}{path}", timeout=30, **kw)


def space_env(folder: Path, hub: Hub, provider: str) -> dict[str, str]:
    """What a Space puts in the container's environment, plus the test's Hub and timings."""
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "TMPDIR") if k in os.environ}
    return {
        **keep,
        "HOME": str(folder.parent / "home"),
        "PYTHONPATH": str(folder),  # the staged copies, as `pip install .` puts them
        "PYTHONUNBUFFERED": "1",
        "SYSTEM": "spaces",
        "SPACE_ID": "alice/mergebot",
        "SPACE_HOST": SPACE_HOST,
        "SPACE_AUTHOR_NAME": "alice",
        "SPACE_REPO_NAME": "mergebot",
        "OAUTH_CLIENT_ID": "client-1234",
        "OAUTH_CLIENT_SECRET": OAUTH_SECRET,
        "OAUTH_SCOPES": "openid profile read-repos",
        "OPENID_PROVIDER_URL": provider,
        "HF_TOKEN": BOT_TOKEN,  # the Space's secrets
        "WEBHOOK_SECRET": SECRET,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(folder.parent / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "MERGEBOT_DEVICE": "cpu",
        "MERGEBOT_POLL_SECONDS": "0.1",
        "MERGEBOT_BACKOFF_SECONDS": "0.2",
    }


def test_staged_bot_space_serves_merges_and_keeps_its_queue_across_a_restart(
    sources: Hub, tmp_path: Path, openid_provider: str
) -> None:
    folder = stage(tmp_path / "bot-space", "bot")
    data = tmp_path / "data"
    data.mkdir()
    space = SpaceProcess(folder, space_env(folder, sources, openid_provider), data)
    public = f"https://{SPACE_HOST}"
    try:
        space.start(workers=0)  # nothing merges yet: the job must outlive this process
        assert "gradio" in space.get("/").text.lower()
        login = space.get("/login/huggingface")
        assert login.status_code in (302, 307), login.text
        target = urlsplit(login.headers["location"])
        query = parse_qs(target.query)
        assert f"{target.scheme}://{target.netloc}{target.path}" == (
            f"{openid_provider}/oauth/authorize"
        )
        assert query["client_id"] == ["client-1234"]
        assert query["redirect_uri"][0].startswith(f"{public}/login/callback")
        assert query["scope"] == ["openid profile read-repos"]

        answer = httpx2.post(
            f"{space.url}/api/recipes",
            json={"recipe": recipe_yaml(), "repo_id": f"{BOT}/space-merge", "watch": True},
            headers={"Authorization": f"Bearer {USERS['alice']}"},
            timeout=60,
        )
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["job_id"]
        hooks = wait_for(lambda: sources.api(BOT).list_webhooks(), timeout=30,
                         what="the bot to register its webhook")
        assert {h.url for h in hooks} == {f"{public}/webhooks/hub"}
        assert (data / "mergebot" / "bot.sqlite3").exists()
        page = space.get("/status").text
        assert "id='queued'>1<" in page and "id='running'>0<" in page
        assert "No persistent storage" not in page
        for secret in (BOT_TOKEN, SECRET, OAUTH_SECRET, USERS["alice"]):
            assert secret not in page
    finally:
        space.stop()

    try:
        space.start(workers=1)  # the Space restarted: the queued job is still there
        def done() -> dict | None:
            job = space.get(f"/api/jobs/{job_id}").json()
            assert job["status"] != "failed", (job, space.logs())
            return job if job["status"] == "succeeded" else None

        job = wait_for(done, timeout=120, what="the queued job to merge after the restart")
        assert sources.api(BOT).repo_info(f"{BOT}/space-merge").sha == job["commit"]

        main = sources.api("alice").list_repo_commits("alice/donor-1")[0].commit_id
        body = payload(**{"repo.headSha": main})
        body["updatedRefs"] = [{"ref": "refs/heads/main", "oldSha": "0" * 40, "newSha": main}]
        hook = httpx2.post(f"{space.url}/webhooks/hub", json=body,
                           headers={"X-Webhook-Secret": SECRET}, timeout=30)
        assert hook.status_code == 200, hook.text
        page = space.get("/status").text
        assert "Last delivery: repo.content:update on alice/donor-1, enqueued" in page
        assert f"registered at {public}/webhooks/hub" in page
    finally:
        space.stop()


def test_space_environment_maps_storage_host_and_secrets(tmp_path: Path) -> None:
    env = {"SPACE_ID": "a/b", "SPACE_HOST": "a-b.hf.space,merge.example.org",
           "HF_TOKEN": "t", "WEBHOOK_SECRET": "s", "OAUTH_CLIENT_ID": "c",
           "OAUTH_CLIENT_SECRET": "x", "OAUTH_SCOPES": "openid", "OPENID_PROVIDER_URL": "p"}
    mapped, notices = space_environment(env, tmp_path)
    settings = Settings.from_env(mapped)
    assert settings.home == tmp_path / "mergebot"
    assert settings.public_url == "https://a-b.hf.space"
    assert settings.webhook_url == "https://a-b.hf.space/webhooks/hub"
    assert (settings.token, settings.webhook_secret) == ("t", "s")
    assert notices == []
    explicit = {**env, "MERGEBOT_HOME": str(tmp_path / "x"), "MERGEBOT_PUBLIC_URL": "https://u"}
    settings = Settings.from_env(space_environment(explicit, tmp_path)[0])
    assert (settings.home, settings.public_url) == (tmp_path / "x", "https://u")


def test_without_persistent_storage_it_says_the_state_is_lost(tmp_path: Path) -> None:
    _, notices = space_environment({"SPACE_ID": "a/b"}, tmp_path / "absent")
    text = " ".join(notices)
    assert "No persistent storage" in text and "lost when the Space restarts" in text
    assert "HF_TOKEN is not set" in text and "WEBHOOK_SECRET is not set" in text
    assert "hf_oauth: true" in text  # OAuth variables missing


def test_status_page_escapes_and_shows_no_secret(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", endpoint="http://127.0.0.1:9",
                        token="hf_secret_token", webhook_secret="hook-secret",
                        public_url="https://a-b.hf.space")
    app = create_app(settings, workers=0, notices=["No persistent storage: <b>lost</b>"])
    with TestClient(app) as client:
        store = app.state.store
        with store.write() as db:
            store.record_delivery(db, identity=None, event="repo.content",
                                  repo="alice/<script>x</script>", outcome="ignored")
        page = client.get("/status")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "<script>" not in text and "alice/&lt;script&gt;x&lt;/script&gt;" in text
    assert "No persistent storage: &lt;b&gt;lost&lt;/b&gt;" in text
    assert "hf_secret_token" not in text and "hook-secret" not in text
    assert "id='queued'>0<" in text and "No job is running." in text
