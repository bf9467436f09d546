"""Shared fixtures: tiny generated llama families (no downloads) and recipe helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merge_engine.synth import LlamaShape, write_family
from merge_engine.trained import write_trained_family
from tests import pgserver

TINY = LlamaShape(hidden=32, intermediate=64, layers=3, vocab=96, heads=4, kv_heads=2)
LLAMA_LAYER_SUFFIXES = [
    name.removeprefix("model.layers.0.")
    for name, _ in LlamaShape(layers=1).tensors()
    if name.startswith("model.layers.0.")
]
"""The tensors of one llama decoder layer, in transformers' order (input_layernorm...)."""


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway Postgres server for the session; skips where none can be had."""
    reason = pgserver.unavailable()
    if reason is not None:
        pytest.skip(f"no Postgres server: {reason}")
    server = pgserver.PgServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of an empty Postgres database (a fresh schema) on the session's server."""
    return pg_server.database_url()


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> list[Path]:
    """A bf16 base and two donors: [base, donor-1, donor-2]."""
    return write_family(tmp_path_factory.mktemp("family"), TINY, donors=2, delta_scale=0.01)


def load_model(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly sharded) safetensors model directory."""
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def recipe_text(method: str, base: Path | None, models: list[tuple[Path, dict]],
                extra: str = "") -> str:
    """A recipe in mergekit's YAML for local model directories."""
    lines = [f"merge_method: {method}"]
    if base is not None:
        lines.append(f"base_model: {base}")
    lines.append("models:")
    for path, params in models:
        lines.append(f"  - model: {path}")
        if params:
            lines.append("    parameters:")
            lines += [f"      {k}: {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n" + extra


@pytest.fixture(scope="session")
def trained_family(tmp_path_factory) -> list[Path]:
    """[base, donor-1, donor-2] of :mod:`merge_engine.trained`: trained once per session
    (seconds), donor 1 on the ``north`` language and donor 2 on ``south``."""
    return write_trained_family(tmp_path_factory.mktemp("trained"))
