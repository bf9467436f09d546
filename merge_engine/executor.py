"""Runs a plan: read chunk -> float32 math on the device -> round once -> write, pipelined.

Three stages overlap: a reader thread fills recycled host buffers with raw tensor bytes
(``pread``, no mmap, so resident memory is the buffers), the calling thread converts them
to float32 on the device, runs the merge method and rounds to the output dtype, and a
writer thread appends the result to the output shards. A fixed number of buffer slots
circulates between the stages, so memory stays bounded whatever the model size.

Chunkable tensors (element- or row-wise methods) are processed ``chunk_elems`` elements at
a time, small enough to stay in the CPU cache; others whole.
"""

from __future__ import annotations

import hashlib
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import FileReader, OutTensor, ShardedWriter
from .errors import MergeEngineError, MergeError
from .plan import Plan, TensorTask

DEFAULT_CHUNK_ELEMS = 1 << 20
SLOTS = 4
Progress = Callable[[int, int], None]
"""Called with (bytes written, total output bytes)."""


@dataclass
class Timings:
    """Seconds spent per stage (stages overlap, so they add up to more than ``wall``)."""

    read: float = 0.0
    compute: float = 0.0
    write: float = 0.0
    wall: float = 0.0


@dataclass
class _Chunk:
    task: TensorTask
    index: int
    row0: int
    rows: int
    views: list[torch.Tensor] = field(default_factory=list)
    slot: list[torch.Tensor] | None = None


class _Stop(Exception):
    """Another stage failed; this one stops quietly."""


class _Slots:
    """A free-list of host buffer sets, shared by two stages; waits give up on failure."""

    def __init__(self, count: int, buffers: int, nbytes: int, pin: bool, failed: threading.Event):
        self._free: queue.Queue = queue.Queue()
        self._failed = failed
        for _ in range(count):
            self._free.put([torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
                            for _ in range(buffers)])

    def take(self) -> list[torch.Tensor]:
        while True:
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                if self._failed.is_set():
                    raise _Stop from None

    def give(self, slot: list[torch.Tensor]) -> None:
        self._free.put(slot)


def not_finite(x: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor: does ``x`` hold a NaN or an infinity?

    On the CPU a sum screens first (30x cheaper than ``isfinite`` over every element; a
    non-finite sum is confirmed element-wise, since finite values can overflow it). On a
    GPU the exact check runs on the device and nothing waits for it.
    """
    if x.is_cuda or not torch.isfinite(x.sum()):
        return ~torch.isfinite(x).all()
    return torch.zeros((), dtype=torch.bool)


def chunk_seed(seed: int, name: str, chunk: int) -> int:
    """A 63-bit seed for one chunk of one tensor, independent of scheduling."""
    digest = hashlib.blake2b(f"{seed}:{name}:{chunk}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Executor:
    """Merges every tensor of ``plan`` into shards under ``out_dir``."""

    def __init__(self, plan: Plan, out_dir: Path, *, device: torch.device,
                 max_shard_bytes: int, seed: int, progress: Progress | None = None,
                 chunk_elems: int = DEFAULT_CHUNK_ELEMS):
        self.plan = plan
        self.device = device
        self.seed = seed
        self.progress = progress
        self.chunk_elems = chunk_elems
        self.writer = ShardedWriter(out_dir, [t.out for t in plan.tasks], max_shard_bytes)
        self.timings = Timings()
        self._failed = threading.Event()
        self._errors: list[BaseException] = []
        n_inputs = max(len(t.inputs) for t in plan.tasks)
        max_item = max(i.meta.torch_dtype.itemsize for t in plan.tasks for i in t.inputs)
        pin = device.type == "cuda"
        self._in_slots = _Slots(SLOTS, n_inputs, chunk_elems * max_item, pin, self._failed)
        self._out_slots = _Slots(SLOTS, 1, chunk_elems * plan.out_dtype.itemsize, pin,
                                 self._failed)
        self._scratch: list[torch.Tensor] = [
            torch.empty(chunk_elems, dtype=torch.float32, device=device) for _ in range(n_inputs)
        ]

    def run(self) -> list[Path]:
        """Merge everything; return the output files (shards and index)."""
        start = time.perf_counter()
        read_q: queue.Queue = queue.Queue()
        write_q: queue.Queue = queue.Queue()
        reader = threading.Thread(target=self._guard, args=(self._read_all, read_q), daemon=True)
        writer = threading.Thread(target=self._guard, args=(self._write_all, write_q),
                                  daemon=True)
        reader.start()
        writer.start()
        try:
            self._guard(self._compute_all, read_q, write_q)
        finally:
            write_q.put(None)
            writer.join()
            self._failed.set()
            reader.join()
        if self._errors:
            self.writer.abort()
            raise self._errors[0]
        files = self.writer.close()
        self.timings.wall = time.perf_counter() - start
        return files

    def _guard(self, stage: Callable, *args) -> None:
        try:
            stage(*args)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to run() and re-raised there
            self._errors.append(e)
            self._failed.set()

    def _chunks(self):
        for task in self.plan.tasks:
            if not task.chunkable:
                yield _Chunk(task, 0, 0, task.rows)
                continue
            row_elems = math.prod(task.out.shape[1:])
            step = max(1, self.chunk_elems // row_elems)
            for index, row0 in enumerate(range(0, task.rows, step)):
                yield _Chunk(task, index, row0, min(step, task.rows - row0))

    def _read_all(self, read_q: queue.Queue) -> None:
        reader = FileReader()
        paths: dict[tuple[int, str], Path] = {}
        try:
            for chunk in self._chunks():
                t0 = time.perf_counter()
                chunk.slot = self._in_slots.take()
                for k, inp in enumerate(chunk.task.inputs):
                    key = (inp.model, inp.meta.file)
                    if key not in paths:
                        paths[key] = self.plan.sources[inp.model].fetch(inp.meta.file)
                    nbytes = chunk.rows * inp.meta.row_bytes if inp.meta.shape else (
                        inp.meta.end - inp.meta.begin)
                    buf = chunk.slot[k]
                    if nbytes > buf.numel():
                        buf = torch.empty(nbytes, dtype=torch.uint8)
                    chunk.views.append(reader.read(paths[key], inp.meta, chunk.row0,
                                                   chunk.rows, buf, inp.name))
                self.timings.read += time.perf_counter() - t0
                read_q.put(chunk)
        finally:
            reader.close()
            read_q.put(None)

    def _compute_all(self, read_q: queue.Queue, write_q: queue.Queue) -> None:
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        while True:
            chunk = read_q.get()
            if chunk is None:
                if self._failed.is_set():
                    raise _Stop
                return
            t0 = time.perf_counter()
            task = chunk.task
            result = chunk.views[0] if task.copy else self._merge(chunk)
            out_slot = self._out_slots.take()
            host, rounded = self._round_to_host(result, task.out.dtype, out_slot[0])
            if not task.copy:
                bad |= not_finite(rounded)
            event = None
            if self.device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
            if chunk.row0 + chunk.rows == task.rows and not task.copy:
                if bool(bad):
                    raise MergeError(
                        f"merging tensor {task.out.name} produced NaN or infinite values; "
                        "check the recipe's weights and the input models")
                bad.zero_()
            self.timings.compute += time.perf_counter() - t0
            write_q.put((task.out, host, event, chunk.slot, out_slot))

    def _merge(self, chunk: _Chunk) -> torch.Tensor:
        """The float32 merge of one chunk, on the device."""
        task = chunk.task
        xs = []
        for k, view in enumerate(chunk.views):
            src = view.to(self.device, non_blocking=True)
            if self.plan.read_dtype is not None and src.dtype != self.plan.read_dtype:
                src = src.to(self.plan.read_dtype)
            if task.chunkable and src.numel() <= self._scratch[k].numel():
                x = self._scratch[k][: src.numel()].view(src.shape).copy_(src)
            else:
                x = src.to(torch.float32)
            xs.append(x)
        base, tensors = (xs[0], xs[1:]) if self.plan.method.needs_base else (None, xs)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(chunk_seed(self.seed, task.out.name, chunk.index))
        return self.plan.method.merge(tensors, base, task.model_params, task.global_params,
                                      generator)

    @staticmethod
    def _round_to_host(result: torch.Tensor, dtype: torch.dtype,
                       buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Round ``result`` to ``dtype`` into host buffer ``buf`` (the one rounding step).

        Returns (host tensor, rounded tensor on the device); on the CPU they are the same.
        """
        nbytes = result.numel() * dtype.itemsize
        if nbytes > buf.numel():
            buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=result.is_cuda)
        host = buf[:nbytes].view(dtype).view(result.shape)
        if not result.is_cuda:
            return host.copy_(result), host
        rounded = result.to(dtype)
        return host.copy_(rounded, non_blocking=True), rounded

    def _write_all(self, write_q: queue.Queue) -> None:
        done, total = 0, sum(t.out.nbytes for t in self.plan.tasks)
        while True:
            item = write_q.get()
            if item is None:
                return
            out, host, event, in_slot, out_slot = item
            if self._failed.is_set():
                continue
            t0 = time.perf_counter()
            if event is not None:
                event.synchronize()
            self._in_slots.give(in_slot)
            self.writer.write(out.name, host)
            self._out_slots.give(out_slot)
            done += host.numel() * host.element_size()
            self.timings.write += time.perf_counter() - t0
            if self.progress:
                self.progress(done, total)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MergeEngineError("--device cuda was asked for but no CUDA GPU is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise MergeEngineError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)


__all__ = ["Executor", "OutTensor", "Timings", "resolve_device", "chunk_seed"]
