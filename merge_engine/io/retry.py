"""Retrying Hub calls that failed for a passing reason (HTTP 5xx or 429, timeouts).

huggingface_hub raises ``HfHubHTTPError`` (with the response) for HTTP errors and
``httpx2`` transport errors for network faults; both may be wrapped in our own errors,
so :func:`is_transient` walks the cause chain.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx2
from huggingface_hub.errors import HfHubHTTPError

T = TypeVar("T")


def causes(exc: BaseException):
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """Would the same call likely succeed later?"""
    for e in causes(exc):
        if isinstance(e, HfHubHTTPError):
            status = e.response.status_code if e.response is not None else 0
            return status >= 500 or status in (408, 429)
        if isinstance(e, httpx2.TransportError | TimeoutError | ConnectionError):
            return True
    return False


def retry(call: Callable[[], T], *, attempts: int = 4, base_delay: float = 0.5,
          sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, retried with exponential backoff (0.5 s, 1 s, 2 s...) while the
    failure is transient; the last failure is raised as it is."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as e:
            if attempt == attempts - 1 or not is_transient(e):
                raise
            sleep(base_delay * 2**attempt)
    raise AssertionError("unreachable")
