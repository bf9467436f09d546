"""The bot as one ASGI app: REST API, Hub webhook, health check, workers, and a UI slot.

    app = create_app(Settings.from_env(), workers=2)      # uvicorn bot.server:app style
    serve(settings, host="127.0.0.1", port=7860, workers=1)

Routes: ``/api/...`` (:mod:`bot.api`, :mod:`bot.api_sweeps`), ``POST /webhooks/hub``
(:mod:`bot.webhooks`), ``GET /healthz``, and whatever ``ui(settings, services)`` returns
mounted at ``/`` (the Gradio UI plugs in there). The lifespan migrates the database, starts
``workers`` worker threads (0 for an API-only process) and stops them on shutdown; a merge
in progress at shutdown is abandoned to its lease, and another worker picks it up after it
expires. ``GET /status`` (:mod:`bot.status`) is a plain HTML page for whoever runs the bot.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from . import api, api_sweeps, queue
from .backends import make_backend
from .database import open_store
from .settings import Settings
from .status import status_page
from .store import Store
from .webhooks import hub_webhook
from .worker import WebhookSync, run_workers

log = logging.getLogger(__name__)

UiFactory = Callable[[Settings, "api.Services"], ASGIApp]
STOP_TIMEOUT = 5.0


async def healthz(request: Request) -> JSONResponse:
    store: Store = request.app.state.store

    def counts() -> dict:
        return {status: store.count_jobs(status) for status in queue.ACTIVE}

    threads = request.app.state.worker_threads
    return JSONResponse(
        {
            "ok": True,
            "jobs": await run_in_threadpool(counts),
            "workers": sum(t.is_alive() for t in threads),
        }
    )


def create_app(
    settings: Settings | None = None,
    *,
    workers: int = 1,
    ui: UiFactory | None = None,
    notices: Sequence[str] = (),
) -> Starlette:
    """The app; see the module docstring. ``notices``: sentences about what will not work
    (e.g. from :func:`bot.space.space_environment`), logged at start and shown on /status."""
    settings = settings or Settings.from_env()
    store = open_store(settings)
    sync = WebhookSync(settings, store)
    services = api.Services(
        settings, store, api.HubGate(settings), after_submit=sync.run,
        backend=make_backend(settings, store),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(store.migrate)
        for notice in notices:
            log.warning("%s", notice)
        if not sync.enabled:
            log.warning(
                "Hub webhooks are not registered: set MERGEBOT_PUBLIC_URL, "
                "WEBHOOK_SECRET and HF_TOKEN to remerge when sources change"
            )
        stop = threading.Event()
        app.state.worker_threads = run_workers(settings, workers, stop, store=store, sync=sync)
        log.info("mergebot serving with %d worker(s), state in %s", workers, settings.home)
        try:
            yield
        finally:
            stop.set()
            for thread in app.state.worker_threads:
                await run_in_threadpool(thread.join, STOP_TIMEOUT)

    routes: list[BaseRoute] = [
        Mount("/api", routes=api.ROUTES + api_sweeps.ROUTES),
        Route("/webhooks/hub", hub_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/status", status_page, methods=["GET"]),
    ]
    if ui is not None:
        try:
            routes.append(Mount("/", app=ui(settings, services)))
        except Exception as exc:  # noqa: BLE001 - the API and webhook must come up regardless
            log.error("the web UI could not start (%s); serving the API only", exc)
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store
    app.state.services = services
    app.state.worker_threads = []
    app.state.notices = tuple(notices)
    return app


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    workers: int = 1,
    ui: UiFactory | None = None,
    log_level: str = "info",
    notices: Sequence[str] = (),
) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    app = create_app(settings, workers=workers, ui=ui, notices=notices)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=3)


def run_worker_process(settings: Settings, count: int = 1) -> None:
    """``mergebot worker``: ``count`` workers against the shared state until SIGINT/SIGTERM."""
    store = open_store(settings)
    store.migrate()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: threading.Thread(target=stop.set).start())
        # not stop.set() itself: the handler runs in the main thread, which may be inside
        # stop.wait() holding the event's lock (a deadlock seen in a fleet test)
    threads = run_workers(settings, count, stop, store=store)
    while not stop.wait(0.5):
        pass
    for thread in threads:
        thread.join(STOP_TIMEOUT)
