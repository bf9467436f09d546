"""Processes the benchmarks start: a free loopback port, and `mergebot localhub`."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until ``url`` answers; fail at once if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[3]} exited with {proc.returncode}")
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def start_localhub(data: Path, user: str, token: str, bandwidth: float | None = None,
                   env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A `mergebot localhub` process serving ``data``; returns it and its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "bot.cli", "localhub", "--port", str(port), "--data",
           str(data), "--user", f"{user}:{token}", "--log-level", "warning"]
    if bandwidth:
        cmd += ["--bandwidth", str(bandwidth)]
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url, proc)
    return proc, url
