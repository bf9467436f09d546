"""`/_localhub/*`: counters and fault injection for tests (shapes in `testhooks.py`).

Open to anyone when the server runs with `test_hooks=True` (`--test-hooks`); otherwise
they need a valid token. Fault injection never applies to these routes themselves.
"""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from . import errors
from .api_repos import json_body
from .auth import require_user
from .context import Call


def _guard(call: Call) -> None:
    if not call.ctx.test_hooks:
        require_user(call.user)


async def get_stats(call: Call) -> Response:
    _guard(call)
    return JSONResponse(call.ctx.stats.snapshot())


async def reset_stats(call: Call) -> Response:
    _guard(call)
    call.ctx.stats.reset()
    return JSONResponse({})


async def list_faults(call: Call) -> Response:
    _guard(call)
    return JSONResponse(call.ctx.faults.pending())


async def add_fault(call: Call) -> Response:
    _guard(call)
    try:
        fault = call.ctx.faults.add(await json_body(call))
    except ValueError as exc:
        raise errors.bad_request(str(exc)) from exc
    return JSONResponse(dict(fault.__dict__))


async def clear_faults(call: Call) -> Response:
    _guard(call)
    call.ctx.faults.clear()
    return JSONResponse({})


ROUTES = (
    ("GET", r"/_localhub/stats", get_stats),
    ("POST", r"/_localhub/stats/reset", reset_stats),
    ("GET", r"/_localhub/faults", list_faults),
    ("POST", r"/_localhub/faults", add_fault),
    ("DELETE", r"/_localhub/faults", clear_faults),
)
