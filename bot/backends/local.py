"""The ``local`` backend: the merge runs in the worker's own process (the default)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from merge_engine import Plan

from ..publish import Progress, PublishResult, merge_and_publish
from .base import Cancelled, Dispatch


@dataclass
class LocalBackend:
    """``merge_and_publish`` in this process; a cancellation is noticed at the next
    progress report before the commit starts (the commit itself is never interrupted)."""

    publish: Callable[..., PublishResult] = merge_and_publish
    name: str = "local"

    def run(self, dispatch: Dispatch, report: Progress) -> PublishResult:
        def checked(stage: str, fraction: float) -> None:
            if stage != "committing" and dispatch.cancelled():
                raise Cancelled("cancelled: the recipe was deleted")
            report(stage, fraction)

        return self.publish(dispatch.request, checked)

    def describe(self, job_id: int) -> dict:
        return {"backend": self.name}

    def quote(self, plan: Plan) -> dict | None:
        return None
