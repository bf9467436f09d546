"""Whole-tensor methods over row-chunks: statistics passes, then an apply pass.

A method whose result hangs on whole-tensor statistics (a top-k cut value, a norm, a
cosine) need not hold the tensor. The executor streams the tensor's row-chunks once per
statistics pass; each chunk's partial statistics are folded into the runner; a last pass
merges each chunk with the finished statistics. For a runner made by
``MethodSpec.multipass(global_params, model_params, numel)``::

    while runner.next_pass():          # one thread, while no chunk of the tensor is out
        for each chunk (any order, several threads at once):
            partial = runner.measure(chunk)     # reads the runner, changes nothing in it
            runner.add(chunk.index, partial)    # one at a time (the caller holds a lock)
    for each chunk (any order, several threads at once):
        rows = runner.apply(chunk)              # the merged float32 rows of the chunk

Every pass sees the same chunks: rows ``[row0, row0 + rows)`` along dim 0 of every input,
numbered 0, 1, ... in row order, as float32 tensors the call owns (it may change them in
place), and a generator seeded per chunk index, the same in every pass, so random draws
repeat from pass to pass. Float statistics are sums of the blocks of
:mod:`~merge_engine.methods.reductions`, kept per chunk and added in chunk order: they do
not depend on scheduling, and they equal the whole-tensor sums bit for bit when every
chunk starts at a block boundary (otherwise within the float64 sums' rounding).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Chunk:
    """What a pass sees of one row-chunk."""

    index: int
    """The chunk's number, 0 for the first rows; the same in every pass."""
    tensors: list[torch.Tensor]
    """The donors' rows (float32, owned by the call), as ``merge``'s ``tensors``."""
    base: torch.Tensor | None
    """The base's rows, or None, as ``merge``'s ``base``."""
    generator: torch.Generator | None
    """Seeded from the chunk index: the same draws in every pass."""


class MultiPass(ABC):
    """One tensor's merge as statistics passes and an apply pass; see the module
    docstring for the calling contract."""

    @abstractmethod
    def next_pass(self) -> bool:
        """Finish the pass that just ended (if any); True when another statistics pass
        must run, False when :meth:`apply` may."""

    @abstractmethod
    def measure(self, chunk: Chunk) -> object:
        """This pass's partial statistics of one chunk: small, on any device."""

    @abstractmethod
    def add(self, index: int, partial: object) -> None:
        """Fold in the partial of chunk ``index``."""

    @abstractmethod
    def apply(self, chunk: Chunk) -> torch.Tensor:
        """The merged float32 rows of one chunk, after the last statistics pass."""


class ChunkSums:
    """Whole-tensor sums from per-chunk parts, added in chunk order.

    A chunk's partial is a list of 1-D tensors, one per sum (block parts such as
    :func:`~merge_engine.methods.reductions.dot_parts`, or counts); the total of sum ``k``
    is the float64 sum of every chunk's ``k``-th parts concatenated in chunk order, as the
    whole-tensor reductions add their blocks.
    """

    def __init__(self) -> None:
        self._parts: dict[int, list[torch.Tensor]] = {}

    def add(self, index: int, parts: Sequence[torch.Tensor]) -> None:
        self._parts[index] = [p.reshape(-1).cpu() for p in parts]

    def totals(self) -> list[float]:
        chunks = [self._parts[i] for i in sorted(self._parts)]
        if not chunks:
            return []
        return [float(torch.cat([c[k] for c in chunks]).double().sum())
                for k in range(len(chunks[0]))]


class SumPasses(MultiPass):
    """A runner whose statistics passes only sum: ``passes`` of them, each measuring a
    list of parts per chunk (:meth:`sums`) and turning the totals into what the next pass
    or :meth:`apply` needs (:meth:`finish`)."""

    passes = 1

    def __init__(self) -> None:
        self._stage = -1
        self._sums = ChunkSums()

    def next_pass(self) -> bool:
        if self._stage >= 0:
            self.finish(self._stage, self._sums.totals())
        self._stage += 1
        self._sums = ChunkSums()
        return self._stage < self.passes

    def measure(self, chunk: Chunk) -> object:
        return self.sums(self._stage, chunk)

    def add(self, index: int, partial: object) -> None:
        self._sums.add(index, partial)  # type: ignore[arg-type]

    @abstractmethod
    def sums(self, stage: int, chunk: Chunk) -> list[torch.Tensor]:
        """Pass ``stage``'s parts of one chunk."""

    @abstractmethod
    def finish(self, stage: int, totals: list[float]) -> None:
        """Take pass ``stage``'s totals (in the order :meth:`sums` gave its parts)."""
