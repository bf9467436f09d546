"""Generalized task arithmetic: one algorithm behind eight mergekit method names.

Per output tensor, with base ``b``, donors ``t_i``, weights ``w_i``, densities ``k_i``:

1. ``d_i = t_i - b`` (the task vector), sparsified on its own (density >= 1 keeps all,
   density <= 0 keeps none); with ``rescale`` the kept entries are scaled so that
   ``||d_i||_1`` is what it was before sparsification (skipped when either norm < 1e-7).
2. ``m_i = w_i * d_i``.
3. Sign consensus (ties, dare_ties, breadcrumbs_ties, della): the elected sign of an
   element is ``sign(sum_i m_i)``, 0 counting as +; ``m_i`` is kept where
   ``sign(m_i)`` equals it. A zero ``m_i`` has sign 0, so it is never "kept": it adds
   nothing to the sum and its weight does not count in the normalize divisor.
4. ``mixed = sum of kept m_i``; with ``normalize`` it is divided per element by the sum of
   the weights of the kept entries (0 -> 1). Without sign consensus every entry is kept,
   so the divisor is ``sum_i w_i`` (|sum| < 1e-8 -> 1), as in mergekit.
5. Result ``b + lambda * mixed``.

Sparsifiers (``k`` the density, ``n`` the number of elements of the tensor):

- magnitude: keep the ``int(k * n)`` entries of largest ``|d|``.
- random (DARE): keep each entry with probability ``k`` (drawn from ``generator``).
- breadcrumbs: over ``|d|`` sorted ascending, drop the top ``int(gamma * n)`` and the bottom
  ``n - int(k * n) - int(gamma * n)``; when that is negative, drop that many fewer from
  the top. Exactly ``int(k * n)`` entries stay.
- della: in each row (along dim 1; a 1-D tensor is one row) rank ``|d|`` ascending from
  0 to ``m - 1`` and keep with probability ``k - eps + rank / (m - 1) * 2 * eps``
  (a one-element row: ``k``). Needs ``0 < k - eps`` and ``k + eps < 1`` when ``k < 1``.

A large tensor whose sparsifier ranks the whole tensor (magnitude, breadcrumbs) or that
is rescaled is merged in passes over row-chunks (:class:`TaskArithmeticPasses`): the rank
cuts are found exactly by radix select (:class:`RankRange`), the L1 norms by sums.

The functions work in place on the donor tensors (the executor hands them over). The
plain path stays ``b + sum_i c_i (t_i - b)``: for bf16/fp16 inputs ``t_i - b`` is exact in
float32, so the rounding error scales with the small task vectors; regrouped as
``(1 - sum c_i) b + sum c_i t_i`` it scales with ``|b|`` and 8x more elements round wrong.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from merge_engine.errors import InputError
from merge_engine.methods.multipass import Chunk, ChunkSums, MultiPass
from merge_engine.methods.radix import RadixSelect
from merge_engine.methods.reductions import l1_norm, l1_parts
from merge_engine.methods.registry import REQUIRED, MethodSpec, Params, always_chunkable

RESCALE_EPS = 1e-7
"""Below this L1 norm (before or after sparsifying) rescaling is skipped."""
NORMALIZE_EPS = 1e-8
"""Without sign consensus, a weight sum smaller than this in magnitude divides by 1."""

Sparsifier = Callable[[torch.Tensor, Params, torch.Generator | None], torch.Tensor]
"""Sparsify one task vector in place given its model's parameters (density < 1 only)."""
Ranks = Callable[[int, Params], tuple[int, int]]
"""A rank sparsifier's window: ``(lo, hi)`` of the ascending ``|d|`` ranks it keeps among
``n`` entries, given its model's parameters."""


# --- sparsifiers ---------------------------------------------------------------------


def magnitude_keys(x: torch.Tensor) -> torch.Tensor:
    """``|x|`` in a form that sorts and compares like it, but faster: the bit patterns of
    non-negative float32 values, read as int32, are in the same order as the values."""
    magnitudes = x.abs()
    return magnitudes.view(torch.int32) if magnitudes.dtype == torch.float32 else magnitudes


def keep_rank_range(delta: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Zero the entries whose rank by ascending ``|delta|`` is outside ``[lo, hi)``.

    Equal magnitudes are ranked by position, so exactly ``hi - lo`` entries stay (or fewer
    non-zero ones, when zeros are among them). ``delta`` must be contiguous.
    """
    flat = delta.view(-1)
    n = flat.numel()
    if lo <= 0 and hi >= n:
        return delta
    if hi <= lo:
        return delta.zero_()
    keys = magnitude_keys(flat)
    if lo > 0:
        smallest_kept = torch.kthvalue(keys, lo + 1).values
        below = keys < smallest_kept
        flat.masked_fill_(below, 0)
        tied_to_drop = lo - int(below.sum())
        del below
        if tied_to_drop > 0 and smallest_kept != 0:
            flat[(keys == smallest_kept).nonzero().view(-1)[:tied_to_drop]] = 0
    if hi < n:
        largest_kept = torch.kthvalue(keys, hi).values
        above = keys > largest_kept
        flat.masked_fill_(above, 0)
        tied_to_drop = n - hi - int(above.sum())
        del above
        if tied_to_drop > 0 and largest_kept != 0:
            flat[(keys == largest_kept).nonzero().view(-1)[-tied_to_drop:]] = 0
    return delta


@dataclass
class _Cut:
    """One end of a :class:`RankRange` window."""

    lower: bool
    """Lower cut: drop smaller keys and the first ``drop`` equal ones; upper cut: drop
    larger keys and the last ``drop`` equal ones."""
    value: int = 0
    equal: int = 0
    drop: int = 0
    chunks: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Chunk index -> (keys equal to the value in the chunks before it, in it)."""

    @property
    def dropped(self) -> tuple[int, int]:
        """The ranks, among the keys equal to the value in position order, it drops."""
        return (0, self.drop) if self.lower else (self.equal - self.drop, self.equal)


class RankRange:
    """:func:`keep_rank_range` over a tensor of ``n`` entries seen in chunks.

    The two cut values (the magnitude keys at ranks ``lo`` and ``hi - 1``) are found
    exactly by radix select (:class:`~merge_engine.methods.radix.RadixSelect`, two
    passes), with how many keys lie below and equal each. When the whole-tensor rule drops
    only some keys equal to a cut value (the first ``lo - below`` by position at the lower
    cut, the last ``below + equal - hi`` at the upper; none when the value is 0), a third
    pass counts them per chunk, so that each chunk knows where its own stand among all.
    Then :meth:`apply` zeroes exactly the entries ``keep_rank_range`` zeroes, in any chunk
    order. Driven like a :class:`~merge_engine.methods.multipass.MultiPass`: while
    :attr:`phase` is not ``"done"``, :meth:`measure` and :meth:`add` every chunk, then
    :meth:`finish`. The window may be set after the first pass (before its ``finish``).
    """

    def __init__(self, n: int, lo: int | None = None, hi: int | None = None):
        self.n = n
        self.phase = "high"
        self._select = RadixSelect()
        self._cuts: list[_Cut] = []
        self._ties: dict[int, list[int]] = {}
        if lo is not None and hi is not None:
            self.select(lo, hi)

    def select(self, lo: int, hi: int) -> None:
        """Keep ascending ranks ``[lo, hi)``."""
        self.lo, self.hi = lo, hi
        if (lo <= 0 and hi >= self.n) or hi <= lo:
            self.phase = "done"
            return
        self._cuts = ([_Cut(lower=True)] if lo > 0 else []) + (
            [_Cut(lower=False)] if hi < self.n else [])
        self._select.ask(([lo] if lo > 0 else []) + ([hi - 1] if hi < self.n else []))

    def measure(self, x: torch.Tensor) -> object:
        """This pass's counts over one chunk ``x`` (float32, contiguous)."""
        keys = magnitude_keys(x.view(-1))
        if self.phase in ("high", "low"):
            return self._select.measure(keys)
        return [int((keys == c.value).sum()) if c.drop else 0 for c in self._cuts]

    def add(self, index: int, partial: object) -> None:
        if self.phase in ("high", "low"):
            self._select.add(partial)
        else:
            self._ties[index] = partial  # type: ignore[assignment]

    def finish(self) -> None:
        """End a pass: locate the cuts' bins, then their values, then the chunks' ties."""
        if self.phase in ("high", "low"):
            self._select.finish()
            self.phase = self._select.phase
            if self.phase == "done" and self._cuts:
                for c, f in zip(self._cuts, self._select.found, strict=True):
                    c.value, c.equal = f.key, f.equal
                    c.drop = (self.lo - f.below if c.lower else f.below + f.equal - self.hi
                              ) if c.value != 0 else 0
                self.phase = "ties" if any(c.drop for c in self._cuts) else "done"
        elif self.phase == "ties":
            for k, c in enumerate(self._cuts):
                seen = 0
                for index in sorted(self._ties):
                    c.chunks[index] = (seen, self._ties[index][k])
                    seen += self._ties[index][k]
            self.phase = "done"

    def apply(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Zero, in place, the entries of chunk ``index`` (``x``, contiguous) outside the
        window; returns ``x``."""
        flat = x.view(-1)
        if self.lo <= 0 and self.hi >= self.n:
            return x
        if self.hi <= self.lo:
            return x.zero_()
        keys = magnitude_keys(flat)
        for c in self._cuts:
            flat.masked_fill_(keys < c.value if c.lower else keys > c.value, 0)
            if not c.drop:
                continue
            before, count = c.chunks[index]
            start, stop = (max(r - before, 0) for r in c.dropped)
            if start < min(stop, count):
                ties = (keys == c.value).nonzero().view(-1)
                flat[ties[start:stop]] = 0
        return x


def magnitude_ranks(n: int, density: float) -> tuple[int, int]:
    """The window of :func:`magnitude_prune`: the top ``int(density * n)``."""
    return n - int(density * n), n


def breadcrumbs_ranks(n: int, density: float, gamma: float) -> tuple[int, int]:
    """The window of :func:`breadcrumbs_prune`."""
    n_top = int(gamma * n)
    n_bottom = n - int(density * n) - n_top
    if n_bottom < 0:
        n_top += n_bottom
        n_bottom = 0
    return n_bottom, n - n_top


def magnitude_prune(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density * n)`` entries of largest ``|delta|``, zero the rest."""
    return keep_rank_range(delta, *magnitude_ranks(delta.numel(), density))


def breadcrumbs_prune(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Drop the largest ``gamma`` fraction and the smallest entries of ``|delta|``.

    ``n_top = int(gamma * n)``, ``n_bottom = n - int(density * n) - n_top``; when
    ``n_bottom < 0`` the top cut shrinks by that much and ``n_bottom = 0``.
    """
    return keep_rank_range(delta, *breadcrumbs_ranks(delta.numel(), density, gamma))


def random_prune(
    delta: torch.Tensor, density: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Keep each entry independently with probability ``density`` (DARE's drop)."""
    keep = torch.empty_like(delta).uniform_(generator=generator).lt_(density)
    return delta.mul_(keep)


def della_bounds_error(density: float, epsilon: float) -> str | None:
    """Why (density, epsilon) cannot be used by della, or None when they can."""
    if 0 < density < 1 and not (density - epsilon > 0 and density + epsilon < 1):
        return (
            f"della needs 0 < density - epsilon and density + epsilon < 1, "
            f"got density={density} and epsilon={epsilon}"
        )
    return None


def della_prune(
    delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Per row, keep entry of ascending magnitude rank ``r`` (0..m-1) with probability
    ``density - epsilon + r / (m - 1) * 2 * epsilon`` (DELLA's MagPrune)."""
    rows = delta if delta.dim() >= 2 else delta.view(1, -1)
    m = rows.shape[1]
    if m == 1:
        return random_prune(delta, density, generator)
    order = torch.argsort(magnitude_keys(rows), dim=1)
    step = 2 * epsilon / (m - 1)
    probs_by_rank = torch.arange(m, dtype=rows.dtype, device=rows.device).mul_(step)
    probs_by_rank.add_(density - epsilon)
    rank_shape = [1] * rows.dim()
    rank_shape[1] = m
    keep = torch.empty_like(rows)
    keep.scatter_(1, order, probs_by_rank.view(rank_shape).expand_as(order))
    del order
    keep.gt_(torch.empty_like(rows).uniform_(generator=generator))  # P(u < p) = p
    rows.mul_(keep)
    return delta


def _magnitude(delta: torch.Tensor, p: Params, g: torch.Generator | None) -> torch.Tensor:
    return magnitude_prune(delta, float(p["density"]))


def _random(delta: torch.Tensor, p: Params, g: torch.Generator | None) -> torch.Tensor:
    return random_prune(delta, float(p["density"]), g)


def _breadcrumbs(delta: torch.Tensor, p: Params, g: torch.Generator | None) -> torch.Tensor:
    return breadcrumbs_prune(delta, float(p["density"]), float(p["gamma"]))


def _magnitude_ranks(n: int, p: Params) -> tuple[int, int]:
    return magnitude_ranks(n, float(p["density"]))


def _breadcrumbs_ranks(n: int, p: Params) -> tuple[int, int]:
    return breadcrumbs_ranks(n, float(p["density"]), float(p["gamma"]))


def _della(delta: torch.Tensor, p: Params, g: torch.Generator | None) -> torch.Tensor:
    density, epsilon = float(p["density"]), float(p["epsilon"])
    error = della_bounds_error(density, epsilon)
    if error:
        raise InputError(error)
    return della_prune(delta, density, epsilon, g)


# --- the merge -------------------------------------------------------------------------


def task_vector(
    tensor: torch.Tensor,
    base: torch.Tensor,
    params: Params,
    sparsify: Sparsifier | None,
    rescale: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``d = tensor - base`` (in place), sparsified; with ``rescale``, ``||d||_1`` kept."""
    delta = tensor.sub_(base)
    if sparsify is None:
        return delta
    density = float(params["density"])
    if density >= 1:
        return delta
    if density <= 0:
        return delta.zero_()
    if not delta.is_contiguous():
        delta = delta.contiguous()
    l1_before = l1_norm(delta) if rescale else None
    delta = sparsify(delta, params, generator)
    if l1_before is not None:
        l1_after = l1_norm(delta)
        if l1_before >= RESCALE_EPS and l1_after >= RESCALE_EPS:
            delta.mul_(l1_before / l1_after)
    return delta


def weighted_sum(deltas: Iterable[torch.Tensor], scales: Sequence[float]) -> torch.Tensor:
    """``sum_i scales_i * deltas_i``, accumulated in place into the first delta."""
    acc = None
    for delta, scale in zip(deltas, scales, strict=True):
        if acc is None:
            acc = delta if scale == 1 else delta.mul_(scale)
        else:
            acc.add_(delta, alpha=scale)
    assert acc is not None
    return acc


def sign_consensus_sum(
    deltas: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool
) -> torch.Tensor:
    """``sum_i m_i [sign(m_i) = e]`` with ``m_i = w_i d_i`` and ``e = sign(sum_j m_j)``
    (0 -> +), divided per element by ``sum_i w_i [sign(m_i) = e]`` (0 -> 1) when
    ``normalize``. Computed as ``e * sum_i max(e m_i, 0)``: the agreeing magnitudes."""
    weighted = [d.mul_(w) for d, w in zip(deltas, weights, strict=True)]
    elected = torch.add(weighted[0], weighted[1]) if len(weighted) > 1 else weighted[0].clone()
    for m in weighted[2:]:
        elected.add_(m)
    elected.ge_(0).mul_(2).sub_(1)  # e, +1 or -1
    divisor = torch.zeros_like(elected) if normalize else None
    kept = torch.empty_like(elected) if normalize else None
    mixed = None
    for m, w in zip(weighted, weights, strict=True):
        agreeing = m.mul_(elected).clamp_(min=0)
        if divisor is not None:
            divisor.add_(torch.sign(agreeing, out=kept), alpha=w)  # sign: 1 if kept, else 0
        mixed = agreeing if mixed is None else mixed.add_(agreeing)
    assert mixed is not None
    mixed.mul_(elected)
    if divisor is not None:
        divisor.masked_fill_(divisor == 0, 1)
        mixed.div_(divisor)
    return mixed


def generalized_task_arithmetic(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
    *,
    consensus: bool,
    sparsify: Sparsifier | None,
) -> torch.Tensor:
    """``b + lambda * mix(sparsify(t_i - b), w_i)``; see the module docstring."""
    if base is None:
        raise ValueError("task arithmetic methods need a base tensor")
    if not tensors:
        return base
    rescale = bool(global_params["rescale"])
    deltas = (
        task_vector(t, base, p, sparsify, rescale, generator)
        for t, p in zip(tensors, model_params, strict=True)
    )
    return mix(deltas, base, model_params, global_params, consensus)


def mix(deltas: Iterable[torch.Tensor], base: torch.Tensor, model_params: Sequence[Params],
        global_params: Params, consensus: bool) -> torch.Tensor:
    """Steps 2 to 5: ``b + lambda * mixed`` of the (sparsified) task vectors, in order."""
    weights = [float(p["weight"]) for p in model_params]
    lam = float(global_params["lambda"])
    normalize = bool(global_params["normalize"])
    if consensus:
        mixed = sign_consensus_sum(list(deltas), weights, normalize)
        if lam != 1:
            mixed.mul_(lam)
    else:
        mixed = weighted_sum(deltas, _mix_scales(weights, lam, normalize))
    return mixed.add_(base)


def _mix_scales(weights: Sequence[float], lam: float, normalize: bool) -> list[float]:
    """``c_i = lambda * w_i / sum_j w_j`` with ``normalize`` (|sum| < eps -> 1), else
    ``lambda * w_i``: the factor of each task vector when every entry is kept."""
    divisor = sum(weights) if normalize else 1.0
    if abs(divisor) < NORMALIZE_EPS:
        divisor = 1.0
    return [w * lam / divisor for w in weights]


# --- in passes over row-chunks ----------------------------------------------------------


class TaskArithmeticPasses(MultiPass):
    """:func:`generalized_task_arithmetic` over row-chunks (see ``multipass``).

    Rank sparsifiers (magnitude, breadcrumbs) find their cut values in two or three
    passes (:class:`RankRange`, the same window of every task vector at once); with
    ``rescale``, one more pass sums each sparsified task vector's L1 norm before and after
    (random sparsifiers draw from the chunk's generator, so the apply pass draws the same
    masks again). The apply pass sparsifies, rescales and mixes each chunk, all element-
    or row-wise. Rank cuts and the mixing are exact: the result is the whole-tensor one
    bit for bit, but for the rescale factors (float64 sums; see ``multipass``) and random
    draws (per chunk, as in chunked merges).
    """

    def __init__(self, global_params: Params, model_params: Sequence[Params], n: int, *,
                 consensus: bool, sparsify: Sparsifier | None, ranks: Ranks | None):
        self.global_params, self.model_params = global_params, model_params
        self.consensus, self.sparsify = consensus, sparsify
        self.densities = [float(p["density"]) for p in model_params]
        self.pruned = [sparsify is not None and 0 < d < 1 for d in self.densities]
        self.ranges = [RankRange(n, *ranks(n, p)) if ranks is not None and cut else None
                       for p, cut in zip(model_params, self.pruned, strict=True)]
        self.rescale = bool(global_params["rescale"]) and any(self.pruned)
        self.factors: list[float | None] = [None] * len(model_params)
        self._sums: ChunkSums | None = None
        self._stage = ""

    def next_pass(self) -> bool:
        if self._stage == "ranks":
            for r in self._open_ranges():
                r.finish()
        elif self._stage == "rescale":
            totals = iter(self._sums.totals())  # type: ignore[union-attr]
            for i in (i for i, cut in enumerate(self.pruned) if cut):
                before, after = next(totals), next(totals)
                if before >= RESCALE_EPS and after >= RESCALE_EPS:
                    self.factors[i] = before / after
        if any(self._open_ranges()):
            self._stage = "ranks"
        elif self.rescale and self._stage != "rescale":
            self._stage, self._sums = "rescale", ChunkSums()
        else:
            self._stage = "apply"
        return self._stage != "apply"

    def _open_ranges(self) -> list[RankRange]:
        return [r for r in self.ranges if r is not None and r.phase != "done"]

    def measure(self, chunk: Chunk) -> object:
        base = chunk.base
        if self._stage == "ranks":
            return [r.measure(t.sub_(base)) if r is not None and r.phase != "done" else None
                    for t, r in zip(chunk.tensors, self.ranges, strict=True)]
        parts = []
        for i, t in enumerate(chunk.tensors):
            delta = t.sub_(base)
            if self.pruned[i]:
                parts.append(l1_parts(delta))
                parts.append(l1_parts(self._sparsified(i, delta, chunk)))
        return parts

    def add(self, index: int, partial: object) -> None:
        if self._stage == "ranks":
            for r, p in zip(self.ranges, partial, strict=True):  # type: ignore[call-overload]
                if p is not None:
                    r.add(index, p)
        else:
            self._sums.add(index, partial)  # type: ignore[union-attr, arg-type]

    def _sparsified(self, i: int, delta: torch.Tensor, chunk: Chunk) -> torch.Tensor:
        """Task vector ``i``'s rows sparsified as :func:`task_vector` does (not rescaled)."""
        if self.densities[i] >= 1 or self.sparsify is None:
            return delta
        if self.densities[i] <= 0:
            return delta.zero_()
        r = self.ranges[i]
        if r is not None:
            return r.apply(delta, chunk.index)
        return self.sparsify(delta, self.model_params[i], chunk.generator)

    def apply(self, chunk: Chunk) -> torch.Tensor:
        base = chunk.base
        assert base is not None
        deltas = (self._sparsified(i, t.sub_(base), chunk) for i, t in enumerate(chunk.tensors))
        deltas = (d if f is None else d.mul_(f)
                  for d, f in zip(deltas, self.factors, strict=True))
        return mix(deltas, base, self.model_params, self.global_params, self.consensus)


def _multipass(consensus: bool, sparsify: Sparsifier | None, ranks: Ranks | None,
               global_params: Params, model_params: Sequence[Params],
               n: int) -> TaskArithmeticPasses | None:
    if not model_params:
        return None
    return TaskArithmeticPasses(global_params, model_params, n, consensus=consensus,
                                sparsify=sparsify, ranks=ranks)


# --- when chunk-by-chunk merging is exact ----------------------------------------------


def _dense(model_params: Sequence[Params]) -> bool:
    return all(float(p["density"]) >= 1 for p in model_params)


def _when_dense(global_params: Params, model_params: Sequence[Params]) -> bool:
    """Whole-tensor ranks (magnitude, breadcrumbs): exact only when nothing is pruned."""
    return _dense(model_params)


def _when_dense_or_no_rescale(global_params: Params, model_params: Sequence[Params]) -> bool:
    """Element- or row-wise pruning (random, della): exact unless rescale needs
    whole-tensor L1 norms. Della ranks along dim 1, so chunks must be ranges of dim 0
    of a tensor with 2+ dims (a 1-D tensor is one row: never split it)."""
    return _dense(model_params) or not bool(global_params["rescale"])


# --- the table --------------------------------------------------------------------------


def _spec(
    name: str,
    *,
    consensus: bool,
    sparsify: Sparsifier | None,
    normalize: bool,
    rescale: bool,
    extra_model_params: dict[str, object] | None = None,
    chunkable: Callable[[Params, Sequence[Params]], bool],
    ranks: Ranks | None = None,
) -> MethodSpec:
    return MethodSpec(
        name=name,
        needs_base=True,
        global_params=MappingProxyType(
            {"normalize": normalize, "rescale": rescale, "lambda": 1.0, "int8_mask": False}
        ),
        model_params=MappingProxyType(
            {"weight": REQUIRED, "density": 1.0, **(extra_model_params or {})}
        ),
        merge=functools.partial(
            generalized_task_arithmetic, consensus=consensus, sparsify=sparsify
        ),
        chunkable=chunkable,
        multipass=functools.partial(_multipass, consensus, sparsify, ranks),
    )


_GAMMA = {"gamma": 0.01}
_EPSILON = {"epsilon": 0.15}

SPECS: tuple[MethodSpec, ...] = (
    _spec("task_arithmetic", consensus=False, sparsify=None, normalize=False,
          rescale=False, chunkable=always_chunkable),
    _spec("ties", consensus=True, sparsify=_magnitude, normalize=True, rescale=False,
          chunkable=_when_dense, ranks=_magnitude_ranks),
    _spec("dare_linear", consensus=False, sparsify=_random, normalize=False, rescale=True,
          chunkable=_when_dense_or_no_rescale),
    _spec("dare_ties", consensus=True, sparsify=_random, normalize=False, rescale=True,
          chunkable=_when_dense_or_no_rescale),
    _spec("breadcrumbs", consensus=False, sparsify=_breadcrumbs, normalize=False,
          rescale=False, extra_model_params=_GAMMA, chunkable=_when_dense,
          ranks=_breadcrumbs_ranks),
    _spec("breadcrumbs_ties", consensus=True, sparsify=_breadcrumbs, normalize=False,
          rescale=False, extra_model_params=_GAMMA, chunkable=_when_dense,
          ranks=_breadcrumbs_ranks),
    _spec("della", consensus=True, sparsify=_della, normalize=True, rescale=True,
          extra_model_params=_EPSILON, chunkable=_when_dense_or_no_rescale),
    _spec("della_linear", consensus=False, sparsify=_della, normalize=False, rescale=True,
          extra_model_params=_EPSILON, chunkable=_when_dense_or_no_rescale),
)  # fmt: skip
"""The generalized task arithmetic family (mergekit's names, parameters and defaults)."""
