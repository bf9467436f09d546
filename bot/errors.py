"""The bot's errors: one sentence each; transient ones are retried with backoff."""

from __future__ import annotations

import re

import merge_engine


class BotError(Exception):
    """A failure to report as one clear sentence (not retried)."""


class TransientError(BotError):
    """A failure that may pass: HTTP 5xx/429, a timeout, a concurrent change of the
    target repo. The job is retried with backoff."""


def is_transient(exc: BaseException) -> bool:
    """Is ``exc`` (or what it was raised from) worth retrying?"""
    return (any(isinstance(e, TransientError) for e in merge_engine.error_causes(exc))
            or merge_engine.is_transient(exc))


_SERVER_PATH = re.compile(r"(?<![\w.:/~-])(?:~|/)[^\s'\"`,;()\[\]{}<>]*")


def public_message(message: str) -> str:
    """``message`` on one line, with every absolute file path of this machine cut to its
    last part (``/srv/home/work/job-3/out/model.safetensors`` -> ``model.safetensors``):
    what users see never shows the server's layout. URLs and repo ids are kept."""
    one_line = " ".join(message.split())
    return _SERVER_PATH.sub(lambda m: m.group().rstrip("/").rsplit("/", 1)[-1] or "/",
                            one_line)
