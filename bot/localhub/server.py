"""Running localhub: `serve` (blocking, for the CLI) and `serve_in_thread` (tests, demos)."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass

import uvicorn

from .app import create_app
from .auth import User, parse_user
from .context import HubContext


def _users(users: list[User] | list[str] | dict[str, str]) -> list[User]:
    """Accept `[User]`, `["name:token"]` or `{"name": "token"}`."""
    if isinstance(users, dict):
        return [User(name, token) for name, token in users.items()]
    return [u if isinstance(u, User) else parse_user(u) for u in users]


def _config(ctx: HubContext, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(ctx),
        log_level=log_level,
        access_log=log_level == "debug",
        lifespan="off",
        timeout_keep_alive=60,  # pooled client connections outlive uvicorn's 5 s default
        timeout_graceful_shutdown=2,
        # uvicorn's Date is refreshed by its event loop once a second and lags under load;
        # the Jobs log replay (api_jobs) stops at the Date, so responses set their own.
        date_header=False,
    )


def serve(
    data_dir: str | os.PathLike,
    users,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    bandwidth_mbps: float | None = None,
    test_hooks: bool = False,
    log_level: str = "info",
) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    ctx = HubContext.open(
        data_dir, _users(users), bandwidth_mbps=bandwidth_mbps, test_hooks=test_hooks
    )
    config = _config(ctx, log_level)
    config.host, config.port = host, port
    try:
        uvicorn.Server(config).run()
    finally:
        ctx.close()


@dataclass
class LocalHub:
    """A server running in a background thread. `url` has no trailing slash."""

    url: str
    ctx: HubContext
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self) -> None:
        """Stop serving and wait for the thread (idempotent)."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.ctx.close()

    def __enter__(self) -> LocalHub:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_thread(
    data_dir: str | os.PathLike,
    users,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    bandwidth_mbps: float | None = None,
    test_hooks: bool = False,
    log_level: str = "warning",
    start_timeout: float = 10.0,
) -> LocalHub:
    """Start localhub on `host:port` (0 = a free port) and return once it accepts requests."""
    ctx = HubContext.open(
        data_dir, _users(users), bandwidth_mbps=bandwidth_mbps, test_hooks=test_hooks
    )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(_config(ctx, log_level))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="localhub", daemon=True
    )
    thread.start()
    netloc = f"[{host}]" if ":" in host else host
    hub = LocalHub(f"http://{netloc}:{bound_port}", ctx, server, thread)
    deadline = threading.Event()
    for _ in range(int(start_timeout / 0.02)):
        if server.started or not thread.is_alive():
            break
        deadline.wait(0.02)
    if not server.started:
        hub.stop()
        raise RuntimeError(f"localhub did not start on {host}:{bound_port}")
    return hub
