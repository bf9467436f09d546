"""Serving the UI inside the bot's ASGI app (``bot.server.create_app(ui=ui_factory)``).

    app = create_app(settings, ui=ui_factory)            # UI at /, API at /api

:func:`ui_factory` has the signature ``bot.server`` expects, ``(settings, services) ->
ASGI app``. The UI talks to the bot over HTTP like any client: its base URL is the
address the server was reached at (learned from the first request's ASGI scope), so it
works on whatever host and port ``mergebot serve`` listens. Gradio needs its lifespan
(queue start-up) to run; a Starlette ``Mount`` does not forward lifespan events, so
:class:`GradioASGI` enters it on the first request (or on a lifespan event, when it is
served directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from typing import Any

import gradio as gr
from fastapi import FastAPI

from spaces_app.app import CSS, THEME, AppConfig, build_app
from spaces_app.client import MergebotClient


class GradioASGI:
    """An ASGI app serving ``blocks`` at its root; records the address it is reached at."""

    def __init__(self, blocks: gr.Blocks) -> None:
        with warnings.catch_warnings():  # "OAuth is mocked outside a Space": the demo's case
            warnings.filterwarnings("ignore", message="Gradio does not support OAuth")
            self._app = gr.mount_gradio_app(FastAPI(), blocks, path="/", theme=THEME, css=CSS)
        self._started = False
        self._lock = asyncio.Lock()
        self._stack = contextlib.AsyncExitStack()
        self.address: str | None = None
        """``http://host:port`` of the server, once a request has arrived."""

    @property
    def routes(self) -> list:
        """Gradio's routes, so ``url_for`` from an enclosing Starlette app finds them (the
        login redirect needs its callback's URL)."""
        return self._app.routes

    def base_url(self) -> str:
        """The server's own address; RuntimeError before the first request."""
        if self.address is None:
            raise RuntimeError("the UI has not received a request yet, so its address is unknown")
        return self.address

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] == "lifespan":
            self._started = True  # served directly: the lifespan protocol starts Gradio
            await self._app(scope, receive, send)
            return
        if self.address is None and scope.get("server"):
            host, port = scope["server"][:2]
            host = f"[{host}]" if ":" in host else host
            self.address = f"http://{host}:{port}"
        if not self._started:
            async with self._lock:
                if not self._started:
                    await self._stack.enter_async_context(
                        self._app.router.lifespan_context(self._app)
                    )
                    self._started = True
        await self._app(scope, receive, send)


def ui_factory(settings, services, *, demo_token: str | None = None, **config: Any) -> GradioASGI:
    """The UI for ``bot.server.create_app(ui=...)``: talks to the same server's ``/api``.

    ``settings`` is the bot's Settings (its Hub endpoint and namespace are shown);
    ``demo_token`` is for the offline demo only; ``config`` overrides AppConfig fields.
    """
    namespace = settings.namespace
    if namespace is None:
        with contextlib.suppress(Exception):  # the bot's whoami; the UI works without it
            namespace = services.hub.namespace()
    app_config = AppConfig(
        hub_url=settings.endpoint, namespace=namespace, demo_token=demo_token, **config
    )
    holder: dict[str, GradioASGI] = {}
    client = MergebotClient(lambda: holder["asgi"].base_url())
    holder["asgi"] = asgi = GradioASGI(build_app(client, app_config))
    return asgi
