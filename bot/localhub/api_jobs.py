"""The Jobs API as ``HfApi`` calls it (runner in ``jobs.py``):

    GET  /api/jobs/hardware                     flavors with their prices
    POST /api/jobs/{ns}                         run a Job (body: the Job spec)
    GET  /api/jobs/{ns}?label=k=v&stage=S       list (every label must match)
    GET  /api/jobs/{ns}/{id}                    inspect
    GET  /api/jobs/{ns}/{id}/logs?tail=N        the logs so far, as server-sent events
    POST /api/jobs/{ns}/{id}/cancel
    POST /_localhub/jobs/faults                 (test hooks) {"action", "count", ...}

A namespace is the caller's own user name (no organizations here): another is a 403.
"""

from __future__ import annotations

import json
from email.utils import formatdate

from starlette.responses import JSONResponse, Response

from . import errors
from .api_repos import json_body
from .api_testhooks import _guard
from .auth import require_user
from .context import Call
from .jobs import LocalJob, hardware_json


def _namespace(call: Call) -> str:
    user = require_user(call.user)
    if call.params["ns"] != user.name:
        raise errors.HubError(403, f"You cannot access Jobs of {call.params['ns']}")
    return user.name


def _job(call: Call) -> LocalJob:
    job = call.ctx.jobs.get(_namespace(call), call.params["id"])
    if job is None:
        raise errors.HubError(404, f"Job {call.params['id']} not found")
    return job


async def hardware(call: Call) -> Response:
    return JSONResponse(hardware_json())


async def run_job(call: Call) -> Response:
    owner = _namespace(call)
    spec = await json_body(call)
    if not isinstance(spec.get("command"), list) or not spec["command"]:
        raise errors.bad_request("A Job needs a command (a list of strings).")
    if not (spec.get("dockerImage") or spec.get("spaceId")):
        raise errors.bad_request("A Job needs a dockerImage or a spaceId.")
    job = call.ctx.jobs.start(owner, spec, call.base_url)
    return JSONResponse(job.to_json())


async def list_jobs(call: Call) -> Response:
    owner = _namespace(call)
    query = call.request.query_params
    labels = dict(item.split("=", 1) for item in query.getlist("label") if "=" in item)
    jobs = call.ctx.jobs.list(owner, labels, query.getlist("stage"))
    return JSONResponse([j.to_json() for j in jobs])


async def inspect_job(call: Call) -> Response:
    return JSONResponse(_job(call).to_json())


async def job_logs(call: Call) -> Response:
    job = _job(call)
    lines = list(job.logs)
    tail = call.request.query_params.get("tail")
    if tail and tail.isdigit():
        lines = lines[-int(tail):] if int(tail) else []
    body = "".join(
        f"data: {json.dumps({'timestamp': ts, 'data': line})}\n\n" for ts, line in lines)
    # The client replays events up to this Date (+1 s): it must be now, not uvicorn's.
    headers = {"Date": formatdate(usegmt=True)}
    return Response(body, media_type="text/event-stream", headers=headers)


async def cancel_job(call: Call) -> Response:
    call.ctx.jobs.cancel(_job(call))
    return JSONResponse({})


async def add_job_fault(call: Call) -> Response:
    _guard(call)
    try:
        return JSONResponse(call.ctx.jobs.inject(await json_body(call)))
    except (ValueError, TypeError) as exc:
        raise errors.bad_request(f"bad Job fault: {exc}") from exc


ROUTES = (
    ("GET", r"/api/jobs/hardware", hardware),
    ("POST", r"/_localhub/jobs/faults", add_job_fault),
    ("POST", r"/api/jobs/(?P<ns>[^/]+)", run_job),
    ("GET", r"/api/jobs/(?P<ns>[^/]+)", list_jobs),
    ("GET", r"/api/jobs/(?P<ns>[^/]+)/{id}", inspect_job),
    ("GET", r"/api/jobs/(?P<ns>[^/]+)/{id}/logs", job_logs),
    ("POST", r"/api/jobs/(?P<ns>[^/]+)/{id}/cancel", cancel_job),
)
