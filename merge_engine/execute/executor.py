"""Runs a plan: read chunk -> float32 math on the device -> round once -> write, pipelined.

Stages, each on its own thread(s), overlap:

1. a reader fills recycled host buffers with raw tensor bytes (``pread``, no mmap, so
   resident memory is the buffers), fetching files through the :class:`Prefetcher`;
2. compute workers convert to float32 on the device, run the merge method and round to
   the output dtype straight into the chunk's output buffer;
3. a writer appends results to the output shards in plan order and checks for NaN/inf.

Chunkable tensors (element- or row-wise methods) go ``chunk_elems`` elements at a time,
small enough to stay in the CPU cache. A tensor whose method needs whole-tensor
statistics goes in passes when it spans more than :data:`MULTIPASS_MIN_CHUNKS` chunks
and the method has a multi-pass form (:mod:`merge_engine.methods.multipass`): the reader
emits its chunks once per statistics pass, workers measure them and fold the partials in
(writing nothing), and the reader waits until every chunk of the pass is folded in, and
the runner has finished the pass, before it emits the next pass's chunks: that wait is
the barrier, so no worker ever sees a chunk of a pass whose statistics are not complete.
The last pass's chunks are merged and written like any others. Other tensors go whole.
Row-mapped tensors (tokenizer merging) go by chunks of output rows too, in passes, or
whole, as the method allows: their inputs are read whole once, in their file dtype, and
every chunk gathers its rows from them (:func:`merge_engine.tokenizer.vocab.fill_rows`); one such
task's inputs are held at a time.
A fixed number of buffer slots circulates; the reader takes each chunk's slot in sequence
and the writer frees it in sequence (a statistics chunk's worker frees it at once), so
out-of-order workers can never starve the chunk the writer waits for, and memory stays
bounded whatever the model size.
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from merge_engine.errors import MergeEngineError, MergeError
from merge_engine.execute.prefetch import Prefetcher
from merge_engine.io.checkpoint import FileReader, ShardedWriter
from merge_engine.methods.multipass import Chunk, MultiPass
from merge_engine.plan.build import Plan, TensorTask
from merge_engine.tokenizer.vocab import fill_rows

DEFAULT_CHUNK_ELEMS = 1 << 18
MULTIPASS_MIN_CHUNKS = 4
"""A tensor that is not chunkable goes in passes (when its method can) only above this
many chunks; smaller ones are merged whole, faster (one read, no per-chunk overhead)
and in little memory."""
Progress = Callable[[int, int], None]
"""Called with (bytes written, total output bytes)."""
LoraParts = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
"""An input's LoRA A and B and its DoRA magnitude (None for plain LoRA), read whole."""


@dataclass
class Timings:
    """Seconds spent per stage (stages overlap, so they add up to more than ``wall``)."""

    read: float = 0.0
    compute: float = 0.0
    write: float = 0.0
    wall: float = 0.0


class _Passes:
    """A multi-pass tensor's runner and the barrier between its passes: workers
    :meth:`add` their chunks' partials (one at a time, as the runner's contract wants);
    the reader, having emitted a pass's chunks, waits in :meth:`wait` until every one of
    them is in, and only then finishes the pass (``runner.next_pass()``)."""

    def __init__(self, runner: MultiPass, failed: threading.Event):
        self.runner = runner
        self._failed = failed
        self._cond = threading.Condition()
        self._left = 0

    def start(self, chunks: int) -> None:
        """A statistics pass of ``chunks`` chunks begins (none of them emitted yet)."""
        self._left = chunks

    def add(self, index: int, partial: object) -> None:
        with self._cond:
            self.runner.add(index, partial)
            self._left -= 1
            if not self._left:
                self._cond.notify_all()

    def wait(self) -> None:
        with self._cond:
            while self._left:
                if self._failed.is_set():
                    raise _Stop
                self._cond.wait(0.2)


@dataclass
class _Chunk:
    seq: int
    """Write order; -1 for a chunk of a statistics pass (never written)."""
    task: TensorTask
    index: int
    row0: int
    rows: int
    slot: list[torch.Tensor]
    """Input buffers, then the output buffer as the last element."""
    passes: _Passes | None = None
    """The runner of a multi-pass tensor (its statistics and its apply passes)."""
    views: list[torch.Tensor] = field(default_factory=list)
    """Each input's rows of the chunk; of a row-mapped task, each input whole (shared by
    the task's chunks). Dropped once the chunk is merged."""
    loras: dict[int, LoraParts] = field(default_factory=dict)
    """Input index -> (A, B) of its LoRA update, whole (shared by the task's chunks)."""
    host: torch.Tensor | None = None
    bad: torch.Tensor | None = None
    event: object = None

    @property
    def last(self) -> bool:
        return self.row0 + self.rows == self.task.rows

    @property
    def stats(self) -> bool:
        return self.seq < 0

    @property
    def whole(self) -> bool:
        """Merged as one piece (not chunkable, not in passes)?"""
        return not self.task.chunkable and self.passes is None


class _Stop(Exception):
    """Another stage failed; this one stops quietly."""


class _Slots:
    """A free-list of host buffer sets; a wait gives up when the run has failed."""

    def __init__(self, count: int, sizes: list[int], pin: bool, failed: threading.Event):
        self._free: queue.Queue = queue.Queue()
        self._failed = failed
        for _ in range(count):
            self._free.put([torch.empty(n, dtype=torch.uint8, pin_memory=pin) for n in sizes])

    def take(self) -> list[torch.Tensor]:
        while True:
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                if self._failed.is_set():
                    raise _Stop from None

    def give(self, slot: list[torch.Tensor]) -> None:
        self._free.put(slot)


def cpu_layout() -> tuple[int, int]:
    """(compute workers, torch threads each) for CPU math on this machine.

    Torch's OpenMP threads spin while they wait: on 2 cores, two of them starved the
    reader and writer and the merge ran 2x slower than with one. Independent workers with
    one or few threads each scale instead (2 cores: 2 workers x 1 thread was fastest).
    """
    cores = len(os.sched_getaffinity(0))
    workers = min(4, cores)
    return workers, max(1, (cores - 2) // workers)


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
                 chunk_elems: int | None = None, prefetch_window: int = 2,
                 on_shard_done: Callable[[Path], None] | None = None):
        self.plan = plan
        self.device = device
        self.seed = seed
        self.progress = progress
        self.chunk_elems = chunk_elems or DEFAULT_CHUNK_ELEMS
        """Elements per chunk; None: :data:`DEFAULT_CHUNK_ELEMS`, read at construction
        (so tests can monkeypatch it)."""
        self.prefetch_window = prefetch_window
        self.writer = ShardedWriter(out_dir, [t.out for t in plan.tasks], max_shard_bytes)
        self.writer.on_shard_done = on_shard_done
        self.timings = Timings()
        self.workers, self.threads = (1, 0) if device.type == "cuda" else cpu_layout()
        self._failed = threading.Event()
        self._errors: list[BaseException] = []
        n_inputs = max(len(t.inputs) for t in plan.tasks)
        max_item = max(i.meta.torch_dtype.itemsize for t in plan.tasks for i in t.inputs)
        sizes = ([self.chunk_elems * max_item] * n_inputs
                 + [self.chunk_elems * plan.out_dtype.itemsize])
        self._slots = _Slots(self.workers + 2, sizes, device.type == "cuda", self._failed)
        self._mapped = threading.Semaphore(1)
        """Held from reading a row-mapped task's whole inputs until its last chunk is
        written: one such task's inputs in memory at a time."""
        self._scratch = threading.local()
        self.warnings: list[str] = []
        """Found while merging: buffers whose models disagree (see :meth:`_check_same`)."""
        self._warned: set[tuple[str, int]] = set()
        self._warn_lock = threading.Lock()

    def run(self) -> list[Path]:
        """Merge everything; return the output files (shards and index)."""
        threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> list[Path]:
        start = time.perf_counter()
        read_q: queue.Queue = queue.Queue()
        write_q: queue.Queue = queue.Queue()
        prefetcher = Prefetcher(self.plan, self.prefetch_window)
        stages = [threading.Thread(target=self._guard, args=(self._read_all, prefetcher, read_q))]
        stages += [threading.Thread(target=self._guard, args=(self._compute_all, read_q, write_q))
                   for _ in range(self.workers)]
        for stage in stages:
            stage.daemon = True
            stage.start()
        try:
            self._guard(self._write_all, write_q)
        finally:
            self._failed.set()
            prefetcher.close()
            for stage in stages:
                stage.join()
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

    def _multipass(self, task: TensorTask) -> MultiPass | None:
        """The runner of a tensor merged in passes, or None (chunked, or whole)."""
        make = self.plan.method.multipass
        numel = math.prod(task.out.shape)
        if (make is None or task.chunkable or task.copy or len(task.out.shape) < 2
                or numel <= MULTIPASS_MIN_CHUNKS * self.chunk_elems):
            return None
        return make(task.global_params, task.model_params, numel)

    def _spans(self, task: TensorTask, whole: bool) -> list[tuple[int, int]]:
        """(first row, rows) of each chunk of a task."""
        if whole:
            return [(0, task.rows)]
        step = max(1, self.chunk_elems // math.prod(task.out.shape[1:]))
        return [(row0, min(step, task.rows - row0)) for row0 in range(0, task.rows, step)]

    def _read_all(self, prefetcher: Prefetcher, read_q: queue.Queue) -> None:
        """Emit every task's chunks in plan order: a multi-pass task's once per statistics
        pass, waiting at the barrier after each, then once to be merged and written."""
        reader = FileReader()
        seq = 0
        try:
            for t, task in enumerate(self.plan.tasks):
                seq = self._read_task(t, task, seq, prefetcher, reader, read_q)
                for path in prefetcher.task_done(t):
                    reader.close(path)
        finally:
            reader.close()
            for _ in range(self.workers):
                read_q.put(None)

    def _read_task(self, t: int, task: TensorTask, seq: int, prefetcher: Prefetcher,
                   reader: FileReader, read_q: queue.Queue) -> int:
        """Emit one task's chunks, the first to be written numbered ``seq``; returns the
        next number. What the chunks share (LoRA factors, a row-mapped task's whole inputs)
        is referenced by them alone once this returns, so it goes with the last of them."""
        t0 = time.perf_counter()
        loras = self._read_loras(t, task, prefetcher, reader)
        mapped = self._read_mapped(task, prefetcher, reader)
        self.timings.read += time.perf_counter() - t0
        runner = self._multipass(task)
        passes = None if runner is None else _Passes(runner, self._failed)
        spans = self._spans(task, passes is None and not task.chunkable)
        if passes is not None:
            while passes.runner.next_pass():
                passes.start(len(spans))
                for index, (row0, rows) in enumerate(spans):
                    read_q.put(self._read_chunk(-1, task, index, row0, rows, loras, mapped,
                                                passes, prefetcher, reader))
                passes.wait()
        for index, (row0, rows) in enumerate(spans):
            read_q.put(self._read_chunk(seq, task, index, row0, rows, loras, mapped, passes,
                                        prefetcher, reader))
            seq += 1
        return seq

    def _read_chunk(self, seq: int, task: TensorTask, index: int, row0: int, rows: int,
                    loras: dict[int, LoraParts], mapped: list[torch.Tensor] | None,
                    passes: _Passes | None, prefetcher: Prefetcher,
                    reader: FileReader) -> _Chunk:
        """Rows ``[row0, row0 + rows)`` of every input of a task, into a free slot (of a
        row-mapped task: its whole inputs, ``mapped``, from which the rows are gathered)."""
        chunk = _Chunk(seq, task, index, row0, rows, self._slots.take(), passes)
        chunk.loras = loras
        if not task.inputs:
            if task.value is None:
                raise MergeEngineError(f"tensor {task.out.name} was planned but not computed")
            chunk.views = [task.value[row0:row0 + rows]]
            return chunk
        if mapped is not None:
            chunk.views = mapped
            return chunk
        t0 = time.perf_counter()
        for k, inp in enumerate(task.inputs):
            path = prefetcher.path(inp.model, inp.meta.file)
            nbytes = rows * inp.meta.row_bytes if inp.meta.shape else (
                inp.meta.end - inp.meta.begin)
            buf = chunk.slot[k]
            if nbytes > buf.numel():
                buf = torch.empty(nbytes, dtype=torch.uint8)
            chunk.views.append(reader.read(path, inp.meta, row0, rows, buf, inp.name))
        self.timings.read += time.perf_counter() - t0
        return chunk

    def _read_mapped(self, task: TensorTask, prefetcher: Prefetcher,
                     reader: FileReader) -> list[torch.Tensor] | None:
        """Every input of a row-mapped task, whole and in its file dtype, in fresh buffers
        (its chunks gather their rows from any of its rows); None for other tasks. Waits
        until the previous row-mapped task is written (:attr:`_mapped`)."""
        if not task.inputs or task.inputs[0].row_map is None:
            return None
        while not self._mapped.acquire(timeout=0.2):
            if self._failed.is_set():
                raise _Stop
        views = []
        for inp in task.inputs:
            buf = torch.empty(inp.rows * inp.meta.row_bytes, dtype=torch.uint8)
            views.append(reader.read(prefetcher.path(inp.model, inp.meta.file), inp.meta, 0,
                                     inp.rows, buf, inp.name))
        return views

    def _read_loras(self, t: int, task: TensorTask, prefetcher: Prefetcher,
                    reader: FileReader) -> dict[int, LoraParts]:
        """A, B and the DoRA magnitude (or None) of every LoRA input of a task, read whole
        into fresh buffers (they are small: ``r * (in + out) + out`` elements) once for all
        its chunks."""
        found = {}
        for k, inp in enumerate(task.inputs):
            if inp.lora is None:
                continue
            path = prefetcher.path(self.plan.adapter_index(inp.model), inp.lora.a.file)
            parts = []
            for name, meta in ((inp.lora.a_name, inp.lora.a), (inp.lora.b_name, inp.lora.b),
                               (inp.lora.magnitude_name, inp.lora.magnitude)):
                if meta is None:
                    parts.append(None)
                    continue
                buf = torch.empty(meta.end - meta.begin, dtype=torch.uint8)
                parts.append(reader.read(path, meta, 0, meta.shape[0], buf, name))
            found[k] = (parts[0], parts[1], parts[2])
        return found

    def _compute_all(self, read_q: queue.Queue, write_q: queue.Queue) -> None:
        try:
            while (chunk := read_q.get()) is not None:
                if self._failed.is_set():
                    raise _Stop
                t0 = time.perf_counter()
                if chunk.stats:
                    self._measure(chunk)
                else:
                    self._compute(chunk)
                chunk.views = []  # so a row-mapped task's inputs go with its last chunk
                self.timings.compute += time.perf_counter() - t0
                if not chunk.stats:
                    write_q.put(chunk)
        finally:
            write_q.put(None)

    def _compute(self, chunk: _Chunk) -> None:
        """Merge one chunk and round it into its host output buffer (``chunk.host``),
        with its NaN/inf flag (``chunk.bad``) and, on a GPU, its completion event."""
        if chunk.task.copy:
            self._check_same(chunk)
        result = chunk.views[0] if chunk.task.copy else self._merge(chunk)
        chunk.host, rounded = self._round_to_host(result, chunk.task.out.dtype,
                                                  chunk.slot[-1])
        if not chunk.task.copy:
            chunk.bad = not_finite(rounded)
        if self.device.type == "cuda":
            chunk.event = torch.cuda.Event()
            chunk.event.record()

    def _check_same(self, chunk: _Chunk) -> None:
        """A copied tensor (a buffer) is taken from its first input; each other input,
        there only to be compared, that holds other values gets a warning, once."""
        task, first = chunk.task, chunk.views[0]
        for k, view in enumerate(chunk.views[1:], 1):
            model = task.inputs[k].model
            if torch.equal(first, view) or (task.out.name, model) in self._warned:
                continue
            names = [self.plan.sources[task.inputs[j].model].name for j in (0, k)]
            with self._warn_lock:
                if (task.out.name, model) not in self._warned:
                    self._warned.add((task.out.name, model))
                    self.warnings.append(
                        f"tensor {task.inputs[k].name} has other values in {names[1]} than in "
                        f"{names[0]}; it is not merged, {names[0]}'s is kept")

    def _scratch_for(self, k: int, numel: int) -> torch.Tensor | None:
        """This worker's k-th float32 chunk buffer, when ``numel`` fits in it."""
        if numel > self.chunk_elems:
            return None
        buffers = getattr(self._scratch, "buffers", None)
        if buffers is None:
            buffers = self._scratch.buffers = []
        while len(buffers) <= k:
            buffers.append(torch.empty(self.chunk_elems, dtype=torch.float32,
                                       device=self.device))
        return buffers[k][:numel]

    def _pass_chunk(self, chunk: _Chunk) -> Chunk:
        """The float32 inputs of one chunk on the device, split into base and donors as
        the method takes them, with the chunk's generator."""
        task = chunk.task
        if task.inputs[0].row_map is not None:
            xs = fill_rows(lambda k, rows: self._take(chunk, k, rows),
                           [inp.row_map for inp in task.inputs], self.plan.has_base,
                           task.row_rules, chunk.row0, chunk.row0 + chunk.rows)
        else:
            xs = []
            for k, view in enumerate(chunk.views):
                src = self._to_device(view)
                scratch = None if chunk.whole else self._scratch_for(k, src.numel())
                x = (src.to(torch.float32) if scratch is None
                     else scratch.view(src.shape).copy_(src))
                if k in chunk.loras:
                    x = self._add_lora(x, chunk, k, slice(chunk.row0, chunk.row0 + chunk.rows),
                                       scratch is not None)
                xs.append(x)
        base, tensors = (xs[0], xs[1:]) if self.plan.has_base else (None, xs)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(chunk_seed(self.seed, task.out.name, chunk.index))
        return Chunk(chunk.index, tensors, base, generator)

    def _to_device(self, view: torch.Tensor) -> torch.Tensor:
        """Read bytes on the device, in the recipe's ``dtype`` when it sets one."""
        src = view.to(self.device, non_blocking=True)
        if self.plan.read_dtype is not None and src.dtype != self.plan.read_dtype:
            src = src.to(self.plan.read_dtype)
        return src

    def _take(self, chunk: _Chunk, k: int, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` (CPU int64 indices) of input ``k`` of a row-mapped chunk (read
        whole): gathered on the host, then float32 on the device with the LoRA update."""
        x = self._to_device(chunk.views[k][rows]).to(torch.float32)
        if k in chunk.loras:
            x = self._add_lora(x, chunk, k, rows, True)
        return x

    def _merge(self, chunk: _Chunk) -> torch.Tensor:
        """The float32 merge of one chunk, on the device."""
        inputs = self._pass_chunk(chunk)
        if chunk.passes is not None:
            return chunk.passes.runner.apply(inputs)
        task = chunk.task
        return self.plan.method.merge(inputs.tensors, inputs.base, task.model_params,
                                      task.global_params, inputs.generator)

    def _measure(self, chunk: _Chunk) -> None:
        """A statistics pass over one chunk: its partial goes to the runner, its slot
        back to the free list (once the device has copied its buffers), nothing out."""
        assert chunk.passes is not None
        partial = chunk.passes.runner.measure(self._pass_chunk(chunk))
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        self._slots.give(chunk.slot)
        chunk.passes.add(chunk.index, partial)

    def _add_lora(self, x: torch.Tensor, chunk: _Chunk, k: int, rows: slice | torch.Tensor,
                  inplace: bool) -> torch.Tensor:
        """``x + scale * delta`` for rows ``rows`` (a slice, or int64 indices) of input
        ``k``: ``B[rows] @ A``, or ``A[:, rows].T @ B.T`` for a transposed update
        (embeddings, ``fan_in_fan_out``).

        Computed in float64 and rounded once to float32: float32 matmul kernels differ
        with the chunk's shape (gemv vs gemm), which made chunked and whole results differ
        in the last bit; this way they agree, and the delta costs ``r`` multiply-adds per
        element, small next to the reads.

        DoRA (a magnitude ``m``): each row of that sum is then scaled by
        ``m[row] / ||row||``, the norm taken in float64 over the whole row (a chunk holds
        whole rows), as PEFT merges it."""
        delta = chunk.task.inputs[k].lora
        a, b, magnitude = chunk.loras[k]
        left, right = (a[:, rows].T, b.T) if delta.transpose else (b[rows], a)
        left = left.to(self.device, torch.float64, non_blocking=True)
        right = right.to(self.device, torch.float64, non_blocking=True)
        exact = torch.addmm(x.double(), left, right, alpha=delta.scale)
        if magnitude is not None:
            m = magnitude[rows].to(self.device, torch.float64, non_blocking=True)
            exact *= (m / exact.norm(dim=1)).unsqueeze(1)
        return x.copy_(exact) if inplace else exact.float()

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
        """Write chunks in sequence order; fail a tensor whose math gave NaN or inf."""
        done, total = 0, sum(t.out.nbytes for t in self.plan.tasks)
        pending: dict[int, _Chunk] = {}
        next_seq, finished, bad = 0, 0, False
        while finished < self.workers:
            chunk = write_q.get()
            if chunk is None:
                finished += 1
                continue
            pending[chunk.seq] = chunk
            while next_seq in pending:
                chunk = pending.pop(next_seq)
                next_seq += 1
                t0 = time.perf_counter()
                if chunk.event is not None:
                    chunk.event.synchronize()
                bad = bad or (chunk.bad is not None and bool(chunk.bad))
                if chunk.last and bad:
                    raise MergeError(
                        f"merging tensor {chunk.task.out.name} produced NaN or infinite "
                        "values; check the recipe's weights and the input models")
                if chunk.last:
                    bad = False
                self.writer.write(chunk.task.out.name, chunk.host)
                self._slots.give(chunk.slot)
                if chunk.last and chunk.task.inputs and chunk.task.inputs[0].row_map is not None:
                    self._mapped.release()
                done += chunk.host.numel() * chunk.host.element_size()
                self.timings.write += time.perf_counter() - t0
                if self.progress:
                    self.progress(done, total)
        if self._failed.is_set():
            raise _Stop
        if next_seq == 0 or pending:
            raise MergeEngineError("the merge stopped before every tensor was written")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MergeEngineError("--device cuda was asked for but no CUDA GPU is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise MergeEngineError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)
