"""Constants and helpers shared by the bot tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from merge_engine.synth import LlamaShape

BOT = "mergebot"
BOT_TOKEN = "hf_mergebot_token"
SECRET = "webhook-s3cret"
SHAPE = LlamaShape(hidden=32, intermediate=64, layers=2, vocab=64, heads=4, kv_heads=2)
SOURCES = ("alice/base", "alice/donor-1", "alice/donor-2")


def recipe_yaml(
    base: str = "alice/base",
    donors: tuple[str, ...] = SOURCES[1:],
    weights: tuple[float, ...] = (1.0, 0.3),
) -> str:
    lines = ["merge_method: task_arithmetic", f"base_model: {base}", "models:"]
    for donor, weight in zip(donors, weights, strict=True):
        lines += [f"  - model: {donor}", "    parameters:", f"      weight: {weight}"]
    return "\n".join(lines) + "\n"


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, every: float = 0.05,
             what: str | None = None):
    """Poll until `predicate()` is truthy; its value, or AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(every)
