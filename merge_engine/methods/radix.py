"""Exact order statistics of a tensor seen in chunks: radix select over float32 keys.

A float32 value's bit pattern, read as int32, is turned into a key that sorts like the
value (:func:`order_keys`). The keys at given ascending ranks are then found in two passes
over the chunks: the first counts the keys by their high 16 bits (:data:`HIGH_BINS`
bins), which gives the bin holding each rank; the second counts the keys of those bins by
their low 16 bits, which gives each rank's key, how many keys lie below it and how many
equal it. Counts are integers, so the result does not depend on how the tensor is cut or
in which order the chunks come: it is the value ``torch.kthvalue`` gives on the whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

HIGH_BINS = 1 << 16
"""First pass: keys by their high 16 bits (signed, offset by ``HIGH_OFFSET``)."""
HIGH_OFFSET = 1 << 15
LOW_BINS = 1 << 16
"""Second pass: the keys of one high bin by their low 16 bits."""


def order_keys(x: torch.Tensor) -> torch.Tensor:
    """int32 keys of float32 ``x`` in the values' order: a non-negative value keeps its bit
    pattern, a negative one has its 31 low bits flipped (so larger magnitudes come first,
    and -0.0 just below 0.0). NaN (positive) sorts above +inf, as torch sorts it."""
    bits = x.view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def key_value(key: int) -> torch.Tensor:
    """The float32 value (0-d tensor) of an :func:`order_keys` key."""
    bits = key ^ (0x7FFFFFFF if key < 0 else 0)
    return torch.tensor(bits, dtype=torch.int32).view(torch.float32)


@dataclass
class RankedKey:
    """What :class:`RadixSelect` finds for one rank."""

    rank: int
    """The ascending rank (from 0) asked for."""
    bin: int = 0
    below: int = 0
    """Keys below the rank's high bin, then (once found) below its key."""
    key: int = 0
    equal: int = 0
    """Keys equal to ``key``."""


class RadixSelect:
    """The keys at ranks ``ranks`` among all the keys of the chunks. While :attr:`phase`
    is not ``"done"``: :meth:`measure` every chunk, :meth:`add` each result (one at a
    time), then :meth:`finish`. The ranks may be set (:meth:`ask`) until the first
    :meth:`finish`. Keys are any int32 tensors ordered like their values
    (:func:`order_keys`, or the bit patterns of non-negative floats)."""

    def __init__(self, ranks: Sequence[int] = ()):
        self.found = [RankedKey(r) for r in ranks]
        self.phase = "high"
        self._high = torch.zeros(HIGH_BINS, dtype=torch.int64)
        self._low: dict[int, torch.Tensor] = {}

    def ask(self, ranks: Sequence[int]) -> None:
        """Find the keys at ``ranks`` (before the first :meth:`finish`)."""
        self.found = [RankedKey(r) for r in ranks]

    def measure(self, keys: torch.Tensor) -> object:
        """This pass's counts over one chunk's keys (1-D int32)."""
        high = (keys >> 16) + HIGH_OFFSET
        if self.phase == "high":
            return torch.bincount(high, minlength=HIGH_BINS)
        return {b: torch.bincount(keys[high == b] & 0xFFFF, minlength=LOW_BINS)
                for b in self._low}

    def add(self, partial: object) -> None:
        if self.phase == "high":
            self._high += partial.cpu()  # type: ignore[attr-defined]
        else:
            for b, counts in partial.items():  # type: ignore[attr-defined]
                self._low[b] += counts.cpu()

    def finish(self) -> None:
        """End a pass: locate each rank's bin, then its key."""
        if self.phase == "high" and not self.found:
            self.phase = "done"
        elif self.phase == "high":
            cumulative = self._high.cumsum(0)
            for f in self.found:
                f.bin = int(torch.searchsorted(cumulative, torch.tensor(f.rank), right=True))
                f.below = int(cumulative[f.bin] - self._high[f.bin])
                self._low[f.bin] = torch.zeros(LOW_BINS, dtype=torch.int64)
            self.phase = "low"
        elif self.phase == "low":
            for f in self.found:
                counts = self._low[f.bin]
                cumulative = counts.cumsum(0)
                j = int(torch.searchsorted(cumulative, torch.tensor(f.rank - f.below),
                                           right=True))
                f.key = (f.bin - HIGH_OFFSET) * LOW_BINS + j
                f.below += int(cumulative[j] - counts[j])
                f.equal = int(counts[j])
            self.phase = "done"
