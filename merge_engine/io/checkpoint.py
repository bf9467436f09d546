"""Checkpoints on disk: tensor metadata, ranged reads into caller buffers (safetensors and
torch zip files alike), and a streaming safetensors writer.

Nothing here unpickles anything, and nothing maps a whole file: reads go through
``os.preadv`` into buffers the caller owns, so memory stays bounded by the buffers.
Headers are validated by :mod:`merge_engine.io.headers`; pickle checkpoints are read by
:mod:`merge_engine.io.pickled`.

Format (https://huggingface.co/docs/safetensors): 8-byte little-endian header length N,
N bytes of JSON ``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``,
then the data; offsets are relative to the end of the header.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from merge_engine.errors import MergeEngineError, SourceError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
BIN_SINGLE_NAME = "pytorch_model.bin"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class TensorMeta:
    """Where one tensor lives: its file and its byte range, relative to the data section of
    a safetensors file and to the start of a torch zip (``.bin``) file."""

    file: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def row_bytes(self) -> int:
        """Bytes of one slice along dim 0 (the whole tensor for 0-d tensors)."""
        rows = self.shape[0] if self.shape else 1
        return (self.end - self.begin) // max(rows, 1)


def header_size(path: Path) -> int:
    """Length N of the JSON header of a local safetensors file (data starts at 8 + N)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) != 8:
        raise SourceError(f"{path} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise SourceError(f"{path} is not a safetensors file (header of {n} bytes)")
    return n


def buffer_view(buf: torch.Tensor) -> memoryview:
    """A writable memoryview over a contiguous CPU uint8 tensor (pinned or not)."""
    array = (ctypes.c_char * buf.numel()).from_address(buf.data_ptr())
    return memoryview(array).cast("B")


def pread_into(fd: int, view: memoryview, offset: int, what: str) -> None:
    """Fill ``view`` from ``fd`` at ``offset``; a short file is an error naming ``what``."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise SourceError(f"{what} ends early: the file is truncated")
        done += n


class FileReader:
    """Ranged reads of tensors from local weight files, keeping their descriptors open."""

    def __init__(self) -> None:
        self._open: dict[Path, tuple[int, int]] = {}

    def _fd(self, path: Path) -> tuple[int, int]:
        if path not in self._open:
            data_start = 8 + header_size(path) if path.name.endswith(".safetensors") else 0
            self._open[path] = (os.open(path, os.O_RDONLY), data_start)
        return self._open[path]

    def read(self, path: Path, meta: TensorMeta, row0: int, rows: int, out: torch.Tensor,
             name: str) -> torch.Tensor:
        """Read rows ``[row0, row0 + rows)`` of a tensor into ``out`` (uint8, large enough).

        Returns a typed view of ``out`` with shape ``(rows, *shape[1:])`` (or the 0-d/1-d
        shape when the tensor has no rows to slice).
        """
        fd, data_start = self._fd(path)
        row_bytes = meta.row_bytes
        nbytes = rows * row_bytes if meta.shape else meta.end - meta.begin
        pread_into(fd, buffer_view(out)[:nbytes], data_start + meta.begin + row0 * row_bytes,
                   f"tensor {name} in {path}")
        shape = (rows, *meta.shape[1:]) if meta.shape else ()
        return out[:nbytes].view(meta.torch_dtype).view(shape)

    def close(self, path: Path | None = None) -> None:
        """Close one file (e.g. before deleting it), or all of them."""
        for p in [path] if path is not None else list(self._open):
            entry = self._open.pop(p, None)
            if entry:
                os.close(entry[0])


@dataclass(frozen=True)
class OutTensor:
    """One tensor of the output: its name, dtype and shape."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def shard_layout(tensors: Sequence[OutTensor], max_shard_bytes: int) -> list[list[OutTensor]]:
    """Split tensors, in order, into shards of at most ``max_shard_bytes`` (a bigger tensor
    gets a shard of its own)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """Hugging Face file names: ``model.safetensors``, or ``model-0000i-of-0000N.safetensors``."""
    if count == 1:
        return [SINGLE_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def encode_header(tensors: Sequence[OutTensor]) -> bytes:
    """The 8-byte length plus the JSON header for these tensors stored back to back,
    padded with spaces so the data section starts 8-byte aligned."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": DTYPE_CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


class ShardedWriter:
    """Writes the output's shards in the order given, tensor by tensor, chunk by chunk.

    Headers are known up front (names, dtypes and shapes come from the plan), so each shard
    is written sequentially with no seeking back and no tensor held whole in memory.
    """

    def __init__(self, directory: Path, tensors: Sequence[OutTensor], max_shard_bytes: int):
        self.directory = directory
        self.shards = shard_layout(tensors, max_shard_bytes)
        self.names = shard_names(len(self.shards))
        self._where = {
            t.name: (i, t) for i, shard in enumerate(self.shards) for t in shard
        }
        self._shard = -1
        self._fd: int | None = None
        self.on_shard_done: Callable[[Path], None] | None = None
        """Called with a shard's path once it is complete (e.g. to upload it)."""

    def _open_shard(self, i: int) -> None:
        self._finish_shard()
        self._shard = i
        path = self.directory / self.names[i]
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._write(encode_header(self.shards[i]))

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def _finish_shard(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if self.on_shard_done is not None:
            self.on_shard_done(self.directory / self.names[self._shard])

    def write(self, name: str, chunk: torch.Tensor) -> None:
        """Append the next chunk (contiguous CPU tensor) of tensor ``name``."""
        shard, _ = self._where[name]
        if shard != self._shard:
            if shard < self._shard:
                raise MergeEngineError(f"tensor {name} written out of order")
            self._open_shard(shard)
        if chunk.numel():
            flat = chunk.reshape(-1).view(torch.uint8)
            self._write(buffer_view(flat))

    def close(self) -> list[Path]:
        """Finish the last shard, write the index when sharded; return the files written."""
        self._finish_shard()
        files = [self.directory / n for n in self.names]
        if len(self.names) > 1:
            index = {
                "metadata": {"total_size": sum(t.nbytes for s in self.shards for t in s)},
                "weight_map": {n: self.names[i] for n, (i, _) in sorted(self._where.items())},
            }
            path = self.directory / INDEX_NAME
            path.write_text(json.dumps(index, indent=2) + "\n")
            files.append(path)
        return files

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
