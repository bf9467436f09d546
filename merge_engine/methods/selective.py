"""Selective merges: methods that choose, entry by entry, how much of each task vector to
take (sce, nearswap, ram, ramplus_tl, arcee_fusion).

Notation: ``b`` the base tensor, ``t_i`` the donors, ``d_i = t_i - b`` their task vectors.
A large tensor of sce, ramplus_tl or arcee_fusion is merged in passes over row-chunks
(``multipass``): sce's variance window as TIES finds its cut, then its mean squares,
ramplus_tl's counts, arcee_fusion's three quantiles by radix select (each exact).

- sce: with ``select_topk < 1``, keep in every ``d_i`` only the entries at the
  ``int(nnz * select_topk)`` positions of largest variance across the ``d_i`` (``nnz`` the
  positions of non-zero variance; ``select_topk <= 0`` keeps none). Then sign consensus:
  the elected sign of a position is ``sign(sum_i d_i)`` (0 counts as +), and ``d_i`` is
  kept where its sign equals it (a zero entry never is). Each model's weight is
  ``w_i = mean(d_i ** 2) / sum_j mean(d_j ** 2)`` over the (selected) whole tensor, or
  ``1 / n`` when that sum is below 1e-6. Result ``b + sum_i w_i k_i d_i / max(sum_i w_i k_i,
  1e-6)`` with ``k_i`` the consensus mask.
- nearswap: one donor, global ``t``: ``w = clamp(t / max(|t_1 - b|, 1e-6), 0, 1)`` per entry,
  result ``lerp(b, t_1, w)``: entries close to the base move all the way to the donor.
- ram: an entry of ``d_i`` with ``|d_i| <= epsilon`` counts as absent. Where one model has
  it, it is taken as is; where several do, their mean; result ``b + sum_i [present] d_i /
  max(count, 1)``.
- ramplus_tl: as ram, but an entry present in one model only is multiplied by
  ``1 + r * clamp(shared_i / max(unique_i, epsilon), 0, alpha)``, with ``shared_i`` and
  ``unique_i`` the numbers of model i's present entries that other models share / do not.
- arcee_fusion: one donor. Importance ``|d| * KL`` with ``KL = sum p log(p / q)`` along the
  last dim, ``p = softmax(t_1) + 1e-8``, ``q = softmax(b) + 1e-8``; entries whose importance
  is at least ``median + 1.5 * (q3 - q1)`` of all importances take the donor's value, the
  rest keep the base's. The quantile ``q`` is the sorted value at index
  ``floor(q * (n - 1))``; mergekit takes it from a random sample of 1e6 entries on larger
  tensors, here it is exact (and so deterministic).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import torch

from merge_engine.errors import InputError
from merge_engine.methods.multipass import Chunk, ChunkSums, MultiPass, SumPasses
from merge_engine.methods.radix import RadixSelect, key_value, order_keys
from merge_engine.methods.reductions import dot, dot_parts
from merge_engine.methods.registry import REQUIRED, MethodSpec, Params, always_chunkable
from merge_engine.methods.task_arithmetic import RankRange, keep_rank_range

SCE_WEIGHT_SUM_MIN = 1e-6
"""sce: below this sum of mean squares, every model weighs ``1 / n``."""
SCE_DIVISOR_MIN = 1e-6
"""sce: the per-entry sum of kept weights is clamped to at least this."""
NEARSWAP_DIFF_MIN = 1e-6
"""nearswap: ``|t_1 - b|`` is clamped to at least this."""
FUSION_SOFTMAX_EPS = 1e-8
"""arcee_fusion: added to both softmax distributions before the KL divergence."""


def _one_donor(method: str, tensors: Sequence[torch.Tensor]) -> None:
    if len(tensors) != 1:
        raise InputError(
            f"{method} merges exactly two models, base_model and one other, but this "
            f"tensor has {len(tensors) + 1}"
        )


# --- sce -----------------------------------------------------------------------------------


def sce_select_mask(deltas: Sequence[torch.Tensor], select_topk: float) -> torch.Tensor:
    """True at the ``int(nnz * select_topk)`` positions of largest variance across
    ``deltas`` (ties by position); ``nnz`` the positions whose variance is not zero."""
    if select_topk <= 0:
        return torch.zeros_like(deltas[0], dtype=torch.bool)
    spread = _spread(deltas)
    keep = _sce_keep(int(torch.count_nonzero(spread)), select_topk)
    if keep == 0:
        return torch.zeros_like(spread, dtype=torch.bool)
    n = spread.numel()
    return keep_rank_range(spread, n - keep, n) != 0


def _spread(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """``n^2`` times the variance across ``deltas``, as the sum over pairs of squared
    differences: exactly 0 where all agree."""
    spread = torch.zeros_like(deltas[0])
    diff = torch.empty_like(spread)
    for i in range(len(deltas)):
        for j in range(i + 1, len(deltas)):
            torch.sub(deltas[i], deltas[j], out=diff)
            spread.addcmul_(diff, diff)
    return spread


def _sce_keep(nonzero: int, select_topk: float) -> int:
    """mergekit's count of kept positions, its float32 product included."""
    return int(torch.tensor(nonzero) * select_topk)


def sce(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``b + sum_i w_i k_i d_i / max(sum_i w_i k_i, 1e-6)``; see the module docstring."""
    if base is None:
        raise ValueError("sce needs a base tensor")
    if not tensors:
        return base
    deltas = [t.sub_(base) for t in tensors]
    select_topk = float(global_params["select_topk"])
    if select_topk < 1:
        selected = sce_select_mask(deltas, select_topk)
        for d in deltas:
            d.mul_(selected)
        del selected
    squares = [dot(d, d) for d in deltas]
    return _sce_mix(deltas, _sce_weights(squares, deltas[0].numel()), base)


def _sce_weights(squares: Sequence[float], numel: int) -> list[float]:
    """Each model's share of ``mean(d_i ** 2)`` from ``squares[i] = d_i . d_i``."""
    mean_squares = [s / numel if numel else 0.0 for s in squares]
    total = sum(mean_squares)
    if abs(total) < SCE_WEIGHT_SUM_MIN:
        return [1.0 / len(squares)] * len(squares)
    return [m / total for m in mean_squares]


def _sce_mix(deltas: Sequence[torch.Tensor], weights: Sequence[float],
             base: torch.Tensor) -> torch.Tensor:
    """Sign consensus and the weighted mean of the agreeing entries, plus ``b``."""
    elected = torch.zeros_like(base)
    for d in deltas:
        elected.add_(d)
    elected.ge_(0).mul_(2).sub_(1)  # +1 or -1
    mixed = torch.zeros_like(base)
    divisor = torch.zeros_like(base)
    kept = torch.empty_like(base)
    for d, w in zip(deltas, weights, strict=True):
        torch.mul(d, elected, out=kept).gt_(0)  # sign(d) == elected, d != 0
        divisor.add_(kept, alpha=w)
        mixed.add_(d.mul_(kept), alpha=w)
    return mixed.div_(divisor.clamp_(min=SCE_DIVISOR_MIN)).add_(base)


class ScePasses(MultiPass):
    """sce over row-chunks. With ``select_topk < 1`` the variance window is found as in
    TIES (a :class:`RankRange` over the spread, its first pass also counting non-zero
    spreads); then one pass sums each selected ``d_i . d_i``; then each chunk is mixed."""

    def __init__(self, n: int, donors: int, select_topk: float):
        self.n, self.select_topk = n, select_topk
        self.range = RankRange(n) if 0 < select_topk < 1 else None
        self.zero = select_topk <= 0
        self.weights = [1.0 / donors] * donors
        self._nonzero = ChunkSums()
        self._squares = ChunkSums()
        self._stage = ""

    def next_pass(self) -> bool:
        if self._stage == "select" and self.range is not None:
            if self.range.phase == "high":
                keep = _sce_keep(int(self._nonzero.totals()[0]), self.select_topk)
                self.range.select(self.n - keep, self.n)
            self.range.finish()
        elif self._stage == "squares":
            self.weights = _sce_weights(self._squares.totals(), self.n)
            self._stage = "apply"
            return False
        if self.range is not None and self.range.phase != "done":
            self._stage = "select"
        else:
            self._stage = "squares"
        return True

    def _deltas(self, chunk: Chunk) -> list[torch.Tensor]:
        """The chunk's task vectors, masked by the selection once it is known."""
        assert chunk.base is not None
        deltas = [t.sub_(chunk.base) for t in chunk.tensors]
        if self._stage == "select":
            return deltas
        if self.zero:
            selected = torch.zeros_like(deltas[0], dtype=torch.bool)
        elif self.range is not None:
            selected = self.range.apply(_spread(deltas), chunk.index) != 0
        else:
            return deltas
        for d in deltas:
            d.mul_(selected)
        return deltas

    def measure(self, chunk: Chunk) -> object:
        deltas = self._deltas(chunk)
        if self._stage == "squares":
            return [dot_parts(d, d) for d in deltas]
        assert self.range is not None
        spread = _spread(deltas)
        nonzero = torch.count_nonzero(spread).view(1) if self.range.phase == "high" else None
        return self.range.measure(spread), nonzero

    def add(self, index: int, partial: object) -> None:
        if self._stage == "squares":
            self._squares.add(index, partial)  # type: ignore[arg-type]
            return
        counts, nonzero = partial  # type: ignore[misc]
        self.range.add(index, counts)  # type: ignore[union-attr]
        if nonzero is not None:
            self._nonzero.add(index, [nonzero])

    def apply(self, chunk: Chunk) -> torch.Tensor:
        assert chunk.base is not None
        return _sce_mix(self._deltas(chunk), self.weights, chunk.base)


def _sce_passes(global_params: Params, model_params: Sequence[Params],
                n: int) -> ScePasses | None:
    if not model_params:
        return None
    return ScePasses(n, len(model_params), float(global_params["select_topk"]))


# --- nearswap ------------------------------------------------------------------------------


def nearswap(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``lerp(b, t_1, clamp(t / max(|t_1 - b|, 1e-6), 0, 1))``, in place into ``b``."""
    if base is None:
        raise ValueError("nearswap needs a base tensor")
    if not tensors:
        return base
    _one_donor("nearswap", tensors)
    other = tensors[0]
    t = float(global_params["t"])
    weight = torch.sub(other, base).abs_().clamp_(min=NEARSWAP_DIFF_MIN)
    weight.reciprocal_().mul_(t).clamp_(0, 1)  # t / x, computed as torch's ``t / x`` is
    return base.lerp_(other, weight)


# --- ram and ramplus_tl --------------------------------------------------------------------


def _present_deltas(
    tensors: Sequence[torch.Tensor], base: torch.Tensor, epsilon: float
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Task vectors with absent entries (``|d| <= epsilon``) zeroed, their presence masks,
    and how many models have each entry."""
    deltas, masks = [], []
    count = torch.zeros_like(base)
    for t in tensors:
        d = t.sub_(base)
        present = d.abs() > epsilon
        d.mul_(present)
        count.add_(present)
        deltas.append(d)
        masks.append(present)
    return deltas, masks, count


def ram(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``b + sum_i [|d_i| > epsilon] d_i / max(count, 1)``."""
    if base is None:
        raise ValueError("ram needs a base tensor")
    if not tensors:
        return base
    deltas, masks, count = _present_deltas(tensors, base, float(global_params["epsilon"]))
    del masks
    mixed = deltas[0]
    for d in deltas[1:]:
        mixed.add_(d)
    return mixed.div_(count.clamp_(min=1)).add_(base)


def ramplus_tl(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """ram, with each model's unique entries scaled by ``1 + r * clamp(rho_i, 0, alpha)``,
    ``rho_i = shared_i / max(unique_i, epsilon)`` counted over this whole tensor."""
    if base is None:
        raise ValueError("ramplus_tl needs a base tensor")
    if not tensors:
        return base
    epsilon = float(global_params["epsilon"])
    r, alpha = float(global_params["r"]), float(global_params["alpha"])
    deltas, masks, count = _present_deltas(tensors, base, epsilon)
    unique = count == 1
    counts = [(int(torch.count_nonzero(present)),
               int(torch.count_nonzero(present.logical_and_(unique)))) for present in masks]
    del masks
    return _ramplus_mix(deltas, count, unique, _ramplus_factors(counts, r, alpha, epsilon), base)


def _ramplus_factors(counts: Sequence[tuple[int, int]], r: float, alpha: float,
                     epsilon: float) -> list[float]:
    """``1 + r * clamp(rho_i, 0, alpha)`` from each model's (present, unique) counts."""
    factors = []
    for n_present, n_unique in counts:
        rho = (n_present - n_unique) / max(n_unique, epsilon)
        factors.append(1 + r * min(max(rho, 0.0), alpha))
    return factors


def _ramplus_mix(deltas: Sequence[torch.Tensor], count: torch.Tensor, unique: torch.Tensor,
                 factors: Sequence[float], base: torch.Tensor) -> torch.Tensor:
    boosted = torch.zeros_like(base)
    for d, factor in zip(deltas, factors, strict=True):
        boosted.add_(d, alpha=factor)
    shared = deltas[0]
    for d in deltas[1:]:
        shared.add_(d)
    shared.div_(count.clamp_(min=1))
    return torch.where(unique, boosted, shared).add_(base)


class RamplusPasses(SumPasses):
    """ramplus_tl over row-chunks: one pass counts each model's present and unique
    entries (exact integers), then each chunk is mixed with the factors."""

    def __init__(self, r: float, alpha: float, epsilon: float):
        super().__init__()
        self.r, self.alpha, self.epsilon = r, alpha, epsilon
        self.factors: list[float] = []

    def sums(self, stage: int, chunk: Chunk) -> list[torch.Tensor]:
        assert chunk.base is not None
        _, masks, count = _present_deltas(chunk.tensors, chunk.base, self.epsilon)
        unique = count == 1
        parts = []
        for present in masks:
            parts.append(torch.count_nonzero(present).view(1))
            parts.append(torch.count_nonzero(present.logical_and_(unique)).view(1))
        return parts

    def finish(self, stage: int, totals: list[float]) -> None:
        counts = [(int(totals[k]), int(totals[k + 1])) for k in range(0, len(totals), 2)]
        self.factors = _ramplus_factors(counts, self.r, self.alpha, self.epsilon)

    def apply(self, chunk: Chunk) -> torch.Tensor:
        assert chunk.base is not None
        deltas, masks, count = _present_deltas(chunk.tensors, chunk.base, self.epsilon)
        del masks
        return _ramplus_mix(deltas, count, count == 1, self.factors, chunk.base)


def _ramplus_passes(global_params: Params, model_params: Sequence[Params],
                    n: int) -> RamplusPasses | None:
    if not model_params:
        return None
    return RamplusPasses(float(global_params["r"]), float(global_params["alpha"]),
                         float(global_params["epsilon"]))


# --- arcee_fusion --------------------------------------------------------------------------


def sorted_value(flat: torch.Tensor, index: int) -> torch.Tensor:
    """The value at ``index`` (0-based) of ``flat`` sorted ascending."""
    return torch.kthvalue(flat, index + 1).values


def arcee_fusion(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``b + d * [importance >= median + 1.5 IQR]`` with ``importance = |d| * KL(p || q)``
    per vector along the last dim; see the module docstring."""
    if base is None:
        raise ValueError("arcee_fusion needs a base tensor")
    if not tensors:
        return base
    _one_donor("arcee_fusion", tensors)
    delta, importance = _fusion_importance(tensors[0], base)
    flat = importance.view(-1)
    q1, median, q3 = (sorted_value(flat, r) for r in _fusion_ranks(flat.numel()))
    return _fuse(delta, importance, base, _fusion_threshold(q1, median, q3))


def _fusion_importance(other: torch.Tensor, base: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, |d| * KL(p || q))``, KL per vector along the last dim; ``d`` in ``other``."""
    p = torch.softmax(other, dim=-1).add_(FUSION_SOFTMAX_EPS)
    q = torch.softmax(base, dim=-1).add_(FUSION_SOFTMAX_EPS)
    kl = p.div(q).log_().mul_(p).sum(dim=-1, keepdim=True)
    del p, q
    delta = other.sub_(base)
    return delta, delta.abs().mul_(kl)


def _fusion_ranks(n: int) -> tuple[int, int, int]:
    """The ranks of q1, the median and q3 among ``n`` importances."""
    return (n - 1) // 4, (n - 1) // 2, 3 * (n - 1) // 4


def _fusion_threshold(q1: torch.Tensor, median: torch.Tensor, q3: torch.Tensor
                      ) -> torch.Tensor:
    """``median + 1.5 * (q3 - q1)``, in float32 like the quantiles."""
    return median + 1.5 * (q3 - q1)


def _fuse(delta: torch.Tensor, importance: torch.Tensor, base: torch.Tensor,
          threshold: torch.Tensor) -> torch.Tensor:
    """``b + d * [importance >= threshold]``, into ``delta``."""
    return delta.mul_(importance >= threshold.to(importance.device)).add_(base)


class FusionPasses(MultiPass):
    """arcee_fusion over row-chunks (each holds whole vectors along the last dim, so its
    KL terms are its own): two radix-select passes over the importances' keys give q1,
    the median and q3 exactly, then each chunk is fused with the threshold."""

    def __init__(self, n: int):
        self.select = RadixSelect(_fusion_ranks(n))
        self.threshold: torch.Tensor | None = None
        self._started = False

    @staticmethod
    def _importance(chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        assert chunk.base is not None
        return _fusion_importance(chunk.tensors[0], chunk.base)

    def next_pass(self) -> bool:
        if self._started:
            self.select.finish()
        self._started = True
        if self.select.phase != "done":
            return True
        q1, median, q3 = (key_value(f.key) for f in self.select.found)
        self.threshold = _fusion_threshold(q1, median, q3)
        return False

    def measure(self, chunk: Chunk) -> object:
        _, importance = self._importance(chunk)
        return self.select.measure(order_keys(importance.view(-1)))

    def add(self, index: int, partial: object) -> None:
        self.select.add(partial)

    def apply(self, chunk: Chunk) -> torch.Tensor:
        assert self.threshold is not None and chunk.base is not None
        delta, importance = self._importance(chunk)
        return _fuse(delta, importance, chunk.base, self.threshold)


def _fusion_passes(global_params: Params, model_params: Sequence[Params],
                   n: int) -> FusionPasses | None:
    if len(model_params) != 1:
        return None  # the whole-tensor path gives the error
    return FusionPasses(n)


# --- the table -----------------------------------------------------------------------------

SPECS: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="sce",
        needs_base=True,
        global_params=MappingProxyType({"select_topk": 1.0, "int8_mask": False}),
        model_params=MappingProxyType({}),
        merge=sce,
        multipass=_sce_passes,
    ),
    MethodSpec(
        name="nearswap",
        needs_base=True,
        global_params=MappingProxyType({"t": REQUIRED}),
        model_params=MappingProxyType({}),
        merge=nearswap,
        chunkable=always_chunkable,
        min_donors=1,
        max_donors=1,
    ),
    MethodSpec(
        name="ram",
        needs_base=True,
        global_params=MappingProxyType({"epsilon": 1e-5}),
        model_params=MappingProxyType({}),
        merge=ram,
        chunkable=always_chunkable,
    ),
    MethodSpec(
        name="ramplus_tl",
        needs_base=True,
        global_params=MappingProxyType({"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}),
        model_params=MappingProxyType({}),
        merge=ramplus_tl,
        multipass=_ramplus_passes,
    ),
    MethodSpec(
        name="arcee_fusion",
        needs_base=True,
        global_params=MappingProxyType({}),
        model_params=MappingProxyType({}),
        merge=arcee_fusion,
        multipass=_fusion_passes,
        min_donors=1,
        max_donors=1,
    ),
)
"""The selective methods (mergekit's names, parameters and defaults)."""
