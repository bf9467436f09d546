"""Which files hold a model's weights, and their tensors' metadata, for either format.

A model's weights are ``model.safetensors`` or the shards its
``model.safetensors.index.json`` names; failing those (safetensors wins where a repo has
both), ``pytorch_model.bin`` or the shards of ``pytorch_model.bin.index.json``, read
without running code by :mod:`merge_engine.io.pickled`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from merge_engine.errors import SourceError
from merge_engine.io.checkpoint import (
    BIN_INDEX_NAME,
    BIN_SINGLE_NAME,
    INDEX_NAME,
    PICKLE_SUFFIXES,
    TensorMeta,
)
from merge_engine.io.headers import index_files, join_shards, read_header
from merge_engine.io.pickled import bin_tensors


@dataclass(frozen=True)
class Layout:
    """How a model's weights are laid out: an index to read (None: ``files`` are the
    weights), and the weight files' suffix."""

    index: str | None
    files: list[str]
    suffix: str

    def weight_files(self, index_text: bytes | str | None, where: str) -> list[str]:
        """The weight files: ``files``, or those the index (its text given) names."""
        if self.index is None:
            return self.files
        return index_files(index_text or b"", where, self.index, self.suffix)


def weight_layout(files: Sequence[str], where: str) -> Layout:
    """The layout of a model with these files (paths relative to the model)."""
    if INDEX_NAME in files:
        return Layout(INDEX_NAME, [], ".safetensors")
    singles = sorted(f for f in files if f.endswith(".safetensors") and "/" not in f)
    if singles:
        return Layout(None, singles, ".safetensors")
    if BIN_INDEX_NAME in files:
        return Layout(BIN_INDEX_NAME, [], ".bin")
    if BIN_SINGLE_NAME in files:
        return Layout(None, [BIN_SINGLE_NAME], ".bin")
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise SourceError(
            f"{where} has no weights this engine reads: {pickles[0]} is not one of "
            f"model.safetensors, {BIN_SINGLE_NAME} or their sharded indexes")
    raise SourceError(f"{where} has no weights (model.safetensors, {BIN_SINGLE_NAME} or an "
                      "index of shards)")


def read_bin(path: Path) -> dict[str, TensorMeta]:
    """Validated tensor metadata of a local torch checkpoint (see :func:`bin_tensors`)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size

        def read_at(offset: int, length: int) -> bytes:
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise SourceError(f"{path} ends early: the file is truncated")
            return data

        return bin_tensors(read_at, size, path.name, str(path))
    finally:
        os.close(fd)


def local_tensors(directory: Path, files: Sequence[str]) -> dict[str, TensorMeta]:
    """Tensor metadata of a local model, reading only headers (and ``data.pkl``)."""
    layout = weight_layout(files, str(directory))
    index = (directory / layout.index).read_bytes() if layout.index else None
    parts = []
    for f in layout.weight_files(index, str(directory)):
        path = directory / f
        if not path.is_file():
            raise SourceError(f"{directory} lists {f} in its index but the file is missing")
        parts.append((f, read_header(path) if f.endswith(".safetensors") else read_bin(path)))
    return join_shards(parts, str(directory))
