"""Processes the benchmarks start: a free loopback port, `mergebot localhub`, and a
command's wall time and peak resident memory."""

from __future__ import annotations

import json
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


_PEAK = """import json, os, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
print(json.dumps([code, time.perf_counter() - start,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024]))
"""
"""Runs a command and prints its exit code, wall seconds and peak RSS in bytes."""


def wall_and_peak_rss(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of ``cmd``, which must succeed. Started from a small
    helper interpreter (no site packages): a child's peak counts the memory of the
    process it was started from, and a benchmark that has imported torch holds ~350 MB."""
    out = subprocess.run([sys.executable, "-S", "-c", _PEAK, *cmd], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    code, wall, peak = json.loads(out.strip().splitlines()[-1])
    if code:
        raise SystemExit(f"{cmd[:4]} exited with {code}")
    return wall, peak
