"""The Starlette application: one catch-all route that authenticates, injects faults,
routes on the raw path and renders `HubError`s the way the Hub does."""

from __future__ import annotations

import asyncio
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import (
    api_commit,
    api_files,
    api_jobs,
    api_repos,
    api_testhooks,
    api_webhooks,
    errors,
    pages,
)
from .context import Call, HubContext
from .routing import Router

log = logging.getLogger(__name__)

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]


def error_response(exc: errors.HubError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.response_headers())


def create_app(ctx: HubContext) -> Starlette:
    """An ASGI app serving the Hub API over `ctx` (which the caller owns and closes)."""
    router = Router(
        api_testhooks.ROUTES
        + api_jobs.ROUTES
        + api_repos.ROUTES
        + api_webhooks.ROUTES
        + api_commit.ROUTES
        + api_files.ROUTES
        + pages.ROUTES  # last: the API's paths win
    )

    async def dispatch(request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = raw_path.decode("latin-1")
        ctx.stats.incr("requests")
        try:
            if not path.startswith("/_localhub/"):
                status, delay = ctx.faults.take(request.method, path)
                if delay:
                    ctx.stats.incr("faults_triggered")
                    await asyncio.sleep(delay)
                elif status is not None:
                    ctx.stats.incr("faults_triggered")
                    raise errors.HubError(status, f"Injected fault ({status})")
            user = ctx.users.authenticate(request.headers.get("authorization"))
            handler, params = router.match(request.method, path)
            return await handler(Call(request, ctx, user, params))
        except errors.HubError as exc:
            return error_response(exc)
        except Exception:
            log.exception("localhub: internal error on %s %s", request.method, path)
            return error_response(errors.HubError(500, "Internal error in localhub"))

    return Starlette(routes=[Route("/{rest:path}", dispatch, methods=METHODS)])
