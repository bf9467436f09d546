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

The functions work in place on the donor tensors (the executor hands them over). The
plain path stays ``b + sum_i c_i (t_i - b)``: for bf16/fp16 inputs ``t_i - b`` is exact in
float32, so the rounding error scales with the small task vectors; regrouped as
``(1 - sum c_i) b + sum c_i t_i`` it scales with ``|b|`` and 8x more elements round wrong.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from types import MappingProxyType

import torch

from ..errors import InputError
from .reductions import l1_norm
from .registry import REQUIRED, MethodSpec, Params, always_chunkable

RESCALE_EPS = 1e-7
"""Below this L1 norm (before or after sparsifying) rescaling is skipped."""
NORMALIZE_EPS = 1e-8
"""Without sign consensus, a weight sum smaller than this in magnitude divides by 1."""

Sparsifier = Callable[[torch.Tensor, Params, torch.Generator | None], torch.Tensor]
"""Sparsify one task vector in place given its model's parameters (density < 1 only)."""


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


def magnitude_prune(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density * n)`` entries of largest ``|delta|``, zero the rest."""
    n = delta.numel()
    return keep_rank_range(delta, n - int(density * n), n)


def breadcrumbs_prune(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Drop the largest ``gamma`` fraction and the smallest entries of ``|delta|``.

    ``n_top = int(gamma * n)``, ``n_bottom = n - int(density * n) - n_top``; when
    ``n_bottom < 0`` the top cut shrinks by that much and ``n_bottom = 0``.
    """
    n = delta.numel()
    n_top = int(gamma * n)
    n_bottom = n - int(density * n) - n_top
    if n_bottom < 0:
        n_top += n_bottom
        n_bottom = 0
    return keep_rank_range(delta, n_bottom, n - n_top)


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
    weights = [float(p["weight"]) for p in model_params]
    lam = float(global_params["lambda"])
    normalize = bool(global_params["normalize"])
    rescale = bool(global_params["rescale"])
    deltas = (
        task_vector(t, base, p, sparsify, rescale, generator)
        for t, p in zip(tensors, model_params, strict=True)
    )
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
    )


_GAMMA = {"gamma": 0.01}
_EPSILON = {"epsilon": 0.15}

SPECS: tuple[MethodSpec, ...] = (
    _spec("task_arithmetic", consensus=False, sparsify=None, normalize=False,
          rescale=False, chunkable=always_chunkable),
    _spec("ties", consensus=True, sparsify=_magnitude, normalize=True, rescale=False,
          chunkable=_when_dense),
    _spec("dare_linear", consensus=False, sparsify=_random, normalize=False, rescale=True,
          chunkable=_when_dense_or_no_rescale),
    _spec("dare_ties", consensus=True, sparsify=_random, normalize=False, rescale=True,
          chunkable=_when_dense_or_no_rescale),
    _spec("breadcrumbs", consensus=False, sparsify=_breadcrumbs, normalize=False,
          rescale=False, extra_model_params=_GAMMA, chunkable=_when_dense),
    _spec("breadcrumbs_ties", consensus=True, sparsify=_breadcrumbs, normalize=False,
          rescale=False, extra_model_params=_GAMMA, chunkable=_when_dense),
    _spec("della", consensus=True, sparsify=_della, normalize=True, rescale=True,
          extra_model_params=_EPSILON, chunkable=_when_dense_or_no_rescale),
    _spec("della_linear", consensus=False, sparsify=_della, normalize=False, rescale=True,
          extra_model_params=_EPSILON, chunkable=_when_dense_or_no_rescale),
)  # fmt: skip
"""The generalized task arithmetic family (mergekit's names, parameters and defaults)."""
