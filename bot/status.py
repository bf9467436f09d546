"""``GET /status``: a plain HTML page for whoever runs the bot (a Space's owner above all).

It shows the queue depth, the running jobs, the last webhook delivery, the workers, where
the state lives, whether webhooks can be registered, and the start-up notices (e.g. "no
persistent storage"). It shows no secret: tokens and the webhook secret only as "set" or
"not set". Every value is HTML-escaped; the page refreshes itself every 10 seconds.
"""

from __future__ import annotations

import time
from html import escape

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from . import queue
from .settings import Settings
from .store import Job, Store

RUNNING_SHOWN = 20
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;"
    "text-align:left}.notice{background:#fff3cd;padding:.5em;margin:.3em 0}"
)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _row(*cells: object) -> str:
    return "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>"


def _running_table(store: Store, jobs: list[Job]) -> str:
    if not jobs:
        return "<p>No job is running.</p>"
    head = "<tr>" + "".join(
        f"<th>{name}</th>" for name in ("job", "repo", "stage", "progress", "attempt", "started")
    ) + "</tr>"
    rows = []
    for job in jobs:
        recipe = store.get_recipe(job.recipe_id)
        progress = f"{job.progress:.0%}" if job.progress is not None else "-"
        rows.append(_row(job.id, recipe.repo_id if recipe else "-", job.stage or "-",
                         progress, job.attempts, _when(job.started_at)))
    return f"<table>{head}{''.join(rows)}</table>"


def _webhook_line(settings: Settings, last: dict | None) -> str:
    if settings.webhook_url and settings.webhook_secret and settings.token:
        where = f"registered at {escape(settings.webhook_url)}"
    else:
        where = "not registered (needs MERGEBOT_PUBLIC_URL, WEBHOOK_SECRET and HF_TOKEN)"
    if last is None:
        return f"<p>Hub webhook: {where}; no delivery received yet.</p>"
    seen = f"{last['count']} time(s)" if last["count"] > 1 else "once"
    return (
        f"<p>Hub webhook: {where}.</p><p>Last delivery: {escape(last['event'])} on "
        f"{escape(last['repo'] or '-')}, {escape(last['outcome'])}, at "
        f"{escape(_when(last['last_at']))} (received {seen}).</p>"
    )


def render(settings: Settings, store: Store, workers: int, notices: tuple[str, ...]) -> str:
    """The page's HTML (blocking: reads the store)."""
    queued = store.count_jobs(queue.QUEUED)
    running = store.jobs_with_status(queue.RUNNING, RUNNING_SHOWN)
    setting = [
        ("Hub", settings.endpoint),
        ("state", settings.home),
        ("public URL", settings.public_url or "not set"),
        ("HF_TOKEN", "set" if settings.token else "not set"),
        ("WEBHOOK_SECRET", "set" if settings.webhook_secret else "not set"),
        ("device", settings.device),
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<meta http-equiv='refresh' content='10'><title>mergebot status</title>",
        f"<style>{STYLE}</style></head><body><h1>mergebot status</h1>",
        *(f"<p class='notice'>{escape(n)}</p>" for n in notices),
        f"<p>Queue: <b id='queued'>{queued}</b> job(s) waiting; "
        f"<b id='running'>{len(running)}</b> running; {workers} worker(s) alive.</p>",
        _running_table(store, running),
        _webhook_line(settings, store.last_delivery()),
        "<h2>Settings</h2><table>",
        *(_row(name, value) for name, value in setting),
        "</table><p><a href='/'>UI</a> · <a href='/healthz'>/healthz</a></p></body></html>",
    ]
    return "".join(parts)


async def status_page(request: Request) -> HTMLResponse:
    state = request.app.state
    workers = sum(t.is_alive() for t in state.worker_threads)
    html = await run_in_threadpool(
        render, state.settings, state.store, workers, tuple(state.notices)
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})
