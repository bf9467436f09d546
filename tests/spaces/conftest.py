"""Fixtures for the UI tests: the offline demo (local Hub + bot + UI) in a subprocess.

The demo runs as ``python -m spaces_app.demo`` exactly as a person starts it, on free
loopback ports, with its state in a temporary directory; one demo serves the whole session.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from tests.bot.botutil import wait_for

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # gradio phones home otherwise
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[2]


def bot_missing() -> str | None:
    """Why the bot service cannot run, or None when it can."""
    try:
        import bot.server  # noqa: F401
        import bot.settings  # noqa: F401
    except ImportError as exc:
        return f"the bot service is not importable yet ({exc})"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Demo:
    """A running ``python -m spaces_app.demo``."""

    url: str
    home: Path
    proc: subprocess.Popen
    log: Path

    @property
    def hub_url(self) -> str:
        return json.loads((self.home / "demo.json").read_text())["hub_url"]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def push_donor(self, number: int) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "spaces_app.demo", "push-donor", str(number)]
            + ["--home", str(self.home)],
            cwd=ROOT,
            env=demo_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "SPACE_"))}
    return {**env, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Demo:
    """The offline demo, started once per session (skips if the bot is not there yet)."""
    reason = bot_missing()
    if reason:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("demo")
    port = free_port()
    log = home / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spaces_app.demo", "--home", str(home), "--port", str(port)]
            + ["--hub-port", str(free_port())],  # not the fixed default: tests run side by side
            cwd=ROOT,
            env=demo_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Demo(f"http://127.0.0.1:{port}", home, proc, log)

    def healthy() -> bool:
        assert proc.poll() is None, f"the demo exited early:\n{running.logs()}"
        try:
            return httpx2.get(f"{running.url}/healthz", timeout=2).status_code == 200
        except httpx2.TransportError:
            return False

    try:
        wait_for(healthy, 180, every=0.2, what="the demo to serve /healthz")
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
