"""`/api/settings/webhooks[...]`: the webhook settings API `HfApi` drives.

List answers a JSON array; the others answer `{"webhook": {...}}`. A user only sees their
own webhooks (404 for anyone else's).
"""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from .api_repos import json_body
from .auth import require_user
from .context import Call


def _one(hook) -> Response:
    return JSONResponse({"webhook": hook.to_api()})


async def list_webhooks(call: Call) -> Response:
    user = require_user(call.user)
    return JSONResponse([h.to_api() for h in call.ctx.webhooks.list(user.name)])


async def create_webhook(call: Call) -> Response:
    user = require_user(call.user)
    return _one(call.ctx.webhooks.create(user.name, await json_body(call)))


async def get_webhook(call: Call) -> Response:
    user = require_user(call.user)
    return _one(call.ctx.webhooks.get(call.params["id"], user.name))


async def update_webhook(call: Call) -> Response:
    user = require_user(call.user)
    return _one(call.ctx.webhooks.update(call.params["id"], user.name, await json_body(call)))


async def enable_webhook(call: Call) -> Response:
    user = require_user(call.user)
    return _one(call.ctx.webhooks.set_disabled(call.params["id"], user.name, False))


async def disable_webhook(call: Call) -> Response:
    user = require_user(call.user)
    return _one(call.ctx.webhooks.set_disabled(call.params["id"], user.name, True))


async def delete_webhook(call: Call) -> Response:
    user = require_user(call.user)
    call.ctx.webhooks.delete(call.params["id"], user.name)
    return JSONResponse({})


ROUTES = (
    ("GET", r"/api/settings/webhooks", list_webhooks),
    ("POST", r"/api/settings/webhooks", create_webhook),
    ("GET", r"/api/settings/webhooks/{id}", get_webhook),
    ("POST", r"/api/settings/webhooks/{id}", update_webhook),
    ("DELETE", r"/api/settings/webhooks/{id}", delete_webhook),
    ("POST", r"/api/settings/webhooks/{id}/enable", enable_webhook),
    ("POST", r"/api/settings/webhooks/{id}/disable", disable_webhook),
)
