"""Shared fixtures: a localhub server on a free loopback port, driven by the real client.

A test directory's conftest.py imports the fixtures it needs from here
(``from tests.hubtools import hf_env, hub, ...``).

`huggingface_hub` reads HF_HUB_DISABLE_XET, HF_HOME and HF_TOKEN_PATH at import time, so
they are patched on `huggingface_hub.constants` as well as in the environment.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # before the first huggingface_hub import

import httpx2  # noqa: E402
import pytest  # noqa: E402
from huggingface_hub import HfApi, constants, hf_api  # noqa: E402

from bot.localhub import LocalHub, serve_in_thread  # noqa: E402

USERS = {"alice": "hf_alice_token", "bob": "hf_bob_token"}


@pytest.fixture(autouse=True)
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolate the client: no Xet, a private HF_HOME, no stored or env token."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    return home


@dataclass
class Hub:
    """A running localhub plus helpers; `restart()` serves the same data dir again."""

    data_dir: Path
    tokens: dict[str, str]
    options: dict = field(default_factory=dict)
    server: LocalHub | None = None

    def start(self) -> Hub:
        self.server = serve_in_thread(self.data_dir, self.tokens, **self.options)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def api(self, user: str | None = "alice") -> HfApi:
        """An HfApi for `user` (None = anonymous)."""
        return HfApi(endpoint=self.url, token=self.tokens[user] if user else False)

    def stats(self) -> dict:
        return httpx2.get(f"{self.url}/_localhub/stats").json()

    def reset_stats(self) -> None:
        httpx2.post(f"{self.url}/_localhub/stats/reset").raise_for_status()

    def add_fault(self, path_regex: str, status: int, count: int = 1, method=None) -> None:
        spec = {"path_regex": path_regex, "status": status, "count": count, "method": method}
        httpx2.post(f"{self.url}/_localhub/faults", json=spec).raise_for_status()


@pytest.fixture
def hub(tmp_path: Path):
    """localhub with users alice and bob and test hooks on."""
    server = Hub(tmp_path / "hub-data", dict(USERS), {"test_hooks": True}).start()
    yield server
    server.stop()


@pytest.fixture
def hf_endpoint(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the client's *defaults* at `hub`, for code that passes no `endpoint=`.

    huggingface_hub 2.4 reads HF_ENDPOINT once at import into `constants.ENDPOINT` and
    `constants.HUGGINGFACE_CO_URL_TEMPLATE` (used by `hf_hub_url`), and the module-level
    functions (`huggingface_hub.model_info`, ...) are bound to `hf_api.api`, an HfApi built
    at import. All three are patched here, plus the env var for subprocesses.
    """
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
    return hub.url


@pytest.fixture
def hub_factory(tmp_path: Path):
    """Start extra servers with options (e.g. bandwidth_mbps=20); all stopped at teardown."""
    started: list[Hub] = []

    def make(**options) -> Hub:
        options = {"test_hooks": True, **options}
        server = Hub(tmp_path / f"hub-data-{len(started)}", dict(USERS), options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def safetensors_bytes(tensors: dict[str, list[int]], fill: bytes = b"\x01") -> bytes:
    """A valid F32 safetensors file with the given tensor shapes (no torch needed)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors.items():
        nbytes = 4
        for dim in shape:
            nbytes *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + (fill * offset)[:offset]


@dataclass
class Receiver:
    """A loopback HTTP server recording webhook POSTs."""

    url: str
    requests: queue.Queue

    def next(self, timeout: float = 10.0) -> tuple[dict, dict]:
        """(headers, json body) of the next delivery."""
        return self.requests.get(timeout=timeout)

    def empty_for(self, seconds: float) -> bool:
        try:
            self.requests.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


@pytest.fixture
def receiver():
    received: queue.Queue = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.put((dict(self.headers), json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Receiver(f"http://127.0.0.1:{server.server_address[1]}/webhooks/hub", received)
    server.shutdown()
    server.server_close()
