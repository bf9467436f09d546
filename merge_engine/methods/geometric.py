"""Geometric merges: spherical interpolation (slerp, nuslerp, multislerp), the Karcher
mean, and Model Stock's angle-derived ratio.

Every norm, dot product and cosine of a whole tensor is summed accurately (see
``reductions``) and the scalar trigonometry is done in float64; the tensors stay float32.
A large tensor of slerp, nuslerp, multislerp, karcher or model_stock (one ratio) is merged
in passes over row-chunks (``multipass``): a pass sums its dot products (for karcher the
Gram matrix, on which its iterations run; for nuslerp with one angle per column,
``nuslerp_row_wise``, one sum per column), then the apply pass mixes each chunk.
Notation: ``b`` the base tensor, ``t_i`` the donors, ``w_i`` their weights, ``|x|`` the L2
norm of a tensor taken as one flat vector, ``x . y`` the dot product.

- slerp: ``v0 = b`` (the t=0 end), ``v1`` the one donor, ``t`` global. With
  ``c = (v0 / n0) . (v1 / n1)``, where ``n = |v|`` if ``|v| > 1e-8`` else 1: if
  ``|c| > 0.9995`` the result is ``lerp(v0, v1, t)``; else, with ``theta = acos(c)``,
  ``(sin((1 - t) theta) v0 + sin(t theta) v1) / sin(theta)``.
- nuslerp: two donors, ``t = w2 / (w1 + w2)`` (0.5 when ``|w1 + w2| < 1e-6``); with a
  base, ``v_i = t_i - b`` and the result is ``b + nuslerp(v1, v2)``, else ``v_i = t_i``.
  ``nuslerp_flatten`` (default): one angle for the whole tensor; otherwise one per vector
  along the last dim (``nuslerp_row_wise``: along dim 0). Unit vectors are ``v / max(|v|,
  1e-7)``, ``theta = acos(clamp(c, -1, 1))``; where ``|sin(theta)| < 1e-8`` the vectors
  are colinear and it is ``lerp``; else the slerp formula above (no 0.9995 cut-off).
- multislerp: ``n`` donors, optional base (task vectors ``x_i = t_i - b``, else
  ``x_i = t_i``); weights divided by their sum with ``normalize_weights`` (a sum with
  ``|sum| < 1e-8`` divides by 1, as in linear). ``u_i = x_i / (|x_i| + eps)``,
  ``m = sum w_i u_i``; the result is ``m / |m| * sum w_i |x_i|`` (plus ``b``). When
  ``|m| < eps``: two donors give ``w_1 x_1 + w_2 x_2`` (plus ``b``), more are an error.
  One donor is returned as is. (mergekit also projects the points onto the tangent space
  at ``m / |m|`` and maps their weighted mean back; that weighted mean is exactly zero,
  so the step is the identity and is left out here.)
- karcher: the Riemannian mean of the unit vectors ``u_i = t_i / |t_i|`` with equal
  weights (vectors with ``|t_i| <= tol`` left out), by at most ``max_iter`` steps of
  ``u <- exp_u(sum a_i log_u(u_i))`` from the normalized Euclidean mean, stopping when the
  step is shorter than ``tol``; terms with an angle below ``tol`` are skipped. The result
  is ``u * mean_i |t_i|`` (zero vectors count in the mean). Angles are taken as
  ``atan2(|u_i - c u|, c)``, accurate also for nearly equal vectors. Every iterate is a
  combination of the ``u_i``, so the iteration runs in float64 on the coefficients and
  the Gram matrix ``t_i . t_j``; the result is one combination ``sum c_i t_i``.
- model_stock: ``d_i = t_i - b`` (``N >= 2`` donors); ``c`` the mean over pairs ``i < j``
  of ``clamp((d_i . d_j) / max(|d_i| |d_j|, 1e-6), -1, 1)``; ``r = N c / (1 + (N - 1) c)``;
  result ``b + r * mean_i d_i`` (= ``r * mean_i t_i + (1 - r) b``). With ``filter_wise``
  one ``r`` per vector along the last dim (a 1-D tensor is one vector). A ratio that is
  infinite (``c = -1 / (N - 1)``) gives inf/NaN, which the executor reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import MappingProxyType

import torch

from merge_engine.errors import InputError
from merge_engine.methods.multipass import Chunk, MultiPass, SumPasses
from merge_engine.methods.reductions import dot, dot_parts, norm, row_dot, row_norm
from merge_engine.methods.registry import REQUIRED, MethodSpec, Params

SLERP_LERP_ABOVE = 0.9995
"""slerp: above this |cosine| the two tensors count as colinear and are lerped."""
SLERP_EPS = 1e-8
"""slerp: a tensor with a norm at most this is used un-normalized for the angle."""
NUSLERP_NORM_MIN = 1e-7
"""nuslerp: norms are clamped to at least this when normalizing."""
NUSLERP_SIN_MIN = 1e-8
"""nuslerp: below this |sin(theta)| the vectors count as colinear and are lerped."""
NUSLERP_WEIGHT_SUM_MIN = 1e-6
"""nuslerp: a weight sum smaller than this in magnitude gives t = 0.5."""
WEIGHT_SUM_EPS = 1e-8
"""multislerp: a weight sum smaller than this in magnitude divides by 1."""
MODEL_STOCK_NORM_PRODUCT_MIN = 1e-6
"""model_stock: the product of two norms is clamped to at least this in a cosine."""


def _count_error(method: str, what: str, got: int) -> InputError:
    return InputError(f"{method} merges {what}, but this tensor has {got}")


# --- slerp ---------------------------------------------------------------------------------


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``v0`` (t=0) to ``v1`` (t=1), in place into ``v0``.

    The angle is that of the flattened, normalized tensors (a tensor with norm <= 1e-8
    is used as is); nearly colinear tensors (|cos| > 0.9995) are lerped.
    """
    return _slerp_apply(t, v0, v1, _slerp_factors(t, dot(v0, v0), dot(v1, v1), dot(v0, v1)))


def _slerp_factors(t: float, d00: float, d11: float, d01: float) -> tuple[float, float] | None:
    """``(s0, s1)`` of ``s0 v0 + s1 v1`` from the dot products ``v0.v0``, ``v1.v1`` and
    ``v0.v1``; None where the tensors are nearly colinear (lerp)."""
    n0, n1 = math.sqrt(d00), math.sqrt(d11)
    cos = d01 / ((n0 if n0 > SLERP_EPS else 1.0) * (n1 if n1 > SLERP_EPS else 1.0))
    if abs(cos) > SLERP_LERP_ABOVE:
        return None
    theta = math.acos(cos)
    sin_theta = math.sin(theta)
    return math.sin((1 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def _slerp_apply(t: float, v0: torch.Tensor, v1: torch.Tensor,
                 factors: tuple[float, float] | None) -> torch.Tensor:
    if factors is None:
        return v0.lerp_(v1, t)
    return v0.mul_(factors[0]).add_(v1, alpha=factors[1])


def slerp(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``slerp(b, t_1, t)``: from the base (t=0) to the one other model (t=1)."""
    if base is None:
        raise ValueError("slerp needs a base tensor")
    if not tensors:
        return base
    if len(tensors) != 1:
        raise _count_error("slerp", "exactly two models, base_model and one other",
                           len(tensors) + 1)  # fmt: skip
    return slerp_tensors(float(global_params["t"]), base, tensors[0])


class SlerpPasses(SumPasses):
    """slerp over row-chunks: one pass sums the three dot products, then each chunk is
    interpolated with the whole tensor's factors."""

    def __init__(self, t: float):
        super().__init__()
        self.t = t
        self.factors: tuple[float, float] | None = None

    def sums(self, stage: int, chunk: Chunk) -> list[torch.Tensor]:
        v0, v1 = chunk.base, chunk.tensors[0]
        assert v0 is not None
        return [dot_parts(v0, v0), dot_parts(v1, v1), dot_parts(v0, v1)]

    def finish(self, stage: int, totals: list[float]) -> None:
        self.factors = _slerp_factors(self.t, *totals)

    def apply(self, chunk: Chunk) -> torch.Tensor:
        assert chunk.base is not None
        return _slerp_apply(self.t, chunk.base, chunk.tensors[0], self.factors)


def _slerp_passes(global_params: Params, model_params: Sequence[Params],
                  n: int) -> SlerpPasses | None:
    return SlerpPasses(float(global_params["t"])) if len(model_params) == 1 else None


# --- nuslerp -------------------------------------------------------------------------------


def _nuslerp_coefficients(t: float, d00: torch.Tensor, d11: torch.Tensor, d01: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 factors (c0, c1) of ``c0 v0 + c1 v1`` from the float64 dot products
    ``v0.v0``, ``v1.v1``, ``v0.v1`` (any shape: one angle per element)."""
    norms = d00.sqrt().clamp(min=NUSLERP_NORM_MIN) * d11.sqrt().clamp(min=NUSLERP_NORM_MIN)
    theta = torch.acos((d01 / norms).clamp(-1, 1))
    sin_theta = torch.sin(theta)
    colinear = sin_theta.abs() < NUSLERP_SIN_MIN
    safe_sin = torch.where(colinear, torch.ones_like(sin_theta), sin_theta)
    c0 = torch.where(colinear, 1 - t, torch.sin((1 - t) * theta) / safe_sin)
    c1 = torch.where(colinear, t, torch.sin(t * theta) / safe_sin)
    return c0, c1


def _flat_nuslerp_factors(t: float, d00: float, d11: float, d01: float) -> tuple[float, float]:
    """``(c0, c1)`` of flattened nuslerp from the dot products ``v0.v0``, ``v1.v1``, ``v0.v1``."""
    c0, c1 = _nuslerp_coefficients(t, *(torch.tensor(d, dtype=torch.float64)
                                        for d in (d00, d11, d01)))
    return float(c0), float(c1)


def nuslerp_tensors(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, flatten: bool, row_wise: bool
) -> torch.Tensor:
    """nuslerp of ``v0`` (t=0) and ``v1`` (t=1), in place into ``v0`` (``v1`` is used up).

    ``flatten``: one angle for the whole tensor; else one per vector along the last dim,
    or along dim 0 with ``row_wise``.
    """
    if flatten:
        c0, c1 = _flat_nuslerp_factors(t, dot(v0, v0), dot(v1, v1), dot(v0, v1))
        return v0.mul_(c0).add_(v1, alpha=c1)
    x0, x1 = (v0.transpose(0, -1), v1.transpose(0, -1)) if row_wise else (v0, v1)
    c0, c1 = _nuslerp_coefficients(t, row_dot(x0, x0), row_dot(x1, x1), row_dot(x0, x1))
    x0.mul_(c0.to(x0.dtype)).add_(x1.mul_(c1.to(x1.dtype)))
    return v0


def nuslerp(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """nuslerp of two models (``t = w2 / (w1 + w2)``), of their task vectors with a base."""
    if len(tensors) + (base is not None) == 1:
        return tensors[0] if tensors else base  # type: ignore[return-value]
    if len(tensors) != 2:
        raise _count_error("nuslerp", "exactly two models besides an optional base_model",
                           len(tensors))  # fmt: skip
    v0, v1 = tensors
    if base is not None:
        v0, v1 = v0.sub_(base), v1.sub_(base)
    out = nuslerp_tensors(
        _nuslerp_t(model_params), v0, v1,
        flatten=bool(global_params["nuslerp_flatten"]),
        row_wise=bool(global_params["nuslerp_row_wise"]),
    )  # fmt: skip
    return out if base is None else out.add_(base)


def _nuslerp_t(model_params: Sequence[Params]) -> float:
    """``w2 / (w1 + w2)``, or 0.5 when the weights cancel out."""
    w1, w2 = (float(p["weight"]) for p in model_params)
    total = w1 + w2
    return 0.5 if abs(total) < NUSLERP_WEIGHT_SUM_MIN else w2 / total


class NuslerpPasses(SumPasses):
    """Flattened nuslerp over row-chunks: one pass sums the dot products of the two
    vectors (task vectors with a base), then each chunk is mixed with the factors."""

    def __init__(self, t: float):
        super().__init__()
        self.t = t
        self.factors = (1.0, 0.0)

    @staticmethod
    def _vectors(chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        v0, v1 = chunk.tensors
        if chunk.base is not None:
            v0, v1 = v0.sub_(chunk.base), v1.sub_(chunk.base)
        return v0, v1

    def sums(self, stage: int, chunk: Chunk) -> list[torch.Tensor]:
        v0, v1 = self._vectors(chunk)
        return [dot_parts(v0, v0), dot_parts(v1, v1), dot_parts(v0, v1)]

    def finish(self, stage: int, totals: list[float]) -> None:
        self.factors = _flat_nuslerp_factors(self.t, *totals)

    def apply(self, chunk: Chunk) -> torch.Tensor:
        v0, v1 = self._vectors(chunk)
        out = v0.mul_(self.factors[0]).add_(v1, alpha=self.factors[1])
        return out if chunk.base is None else out.add_(chunk.base)


class NuslerpColumnPasses(MultiPass):
    """nuslerp with one angle per vector along dim 0 (``nuslerp_row_wise``) over
    row-chunks: one pass sums, per position of the other dims, ``v0.v0``, ``v1.v1`` and
    ``v0.v1`` over the chunk's rows (float64 sums of the float32 products, as the whole
    tensor's), added in chunk order; then each chunk is mixed with its columns' factors.
    Only the running sums and the partials that arrive ahead of their turn are kept."""

    def __init__(self, t: float):
        self.t = t
        self.totals: list[torch.Tensor] | None = None
        self.factors: tuple[torch.Tensor, torch.Tensor] | None = None
        self._next = 0
        self._early: dict[int, list[torch.Tensor]] = {}
        self._started = False

    def next_pass(self) -> bool:
        if self._started:
            assert self.totals is not None and not self._early
            self.factors = _nuslerp_coefficients(self.t, *self.totals)
        self._started = True
        return self.factors is None

    def measure(self, chunk: Chunk) -> object:
        v0, v1 = NuslerpPasses._vectors(chunk)
        return [(a * b).sum(dim=0, keepdim=True, dtype=torch.float64)
                for a, b in ((v0, v0), (v1, v1), (v0, v1))]

    def add(self, index: int, partial: object) -> None:
        self._early[index] = partial  # type: ignore[assignment]
        while self._next in self._early:
            parts = self._early.pop(self._next)
            self.totals = parts if self.totals is None else [
                total.add_(part) for total, part in zip(self.totals, parts, strict=True)]
            self._next += 1

    def apply(self, chunk: Chunk) -> torch.Tensor:
        assert self.factors is not None
        v0, v1 = NuslerpPasses._vectors(chunk)
        c0, c1 = (c.to(v0.device, torch.float32) for c in self.factors)
        out = v0.mul_(c0).add_(v1.mul_(c1))
        return out if chunk.base is None else out.add_(chunk.base)


def _nuslerp_passes(global_params: Params, model_params: Sequence[Params],
                    n: int) -> MultiPass | None:
    """nuslerp of two models with one angle (flattened) or one per vector along dim 0;
    one angle per vector along the last dim is chunkable as it is."""
    if len(model_params) != 2:
        return None
    if global_params["nuslerp_flatten"]:
        return NuslerpPasses(_nuslerp_t(model_params))
    if global_params["nuslerp_row_wise"]:
        return NuslerpColumnPasses(_nuslerp_t(model_params))
    return None


def _nuslerp_chunkable(global_params: Params, model_params: Sequence[Params]) -> bool:
    """One angle per vector along the last dim: row-chunks (dim 0) are exact."""
    return not global_params["nuslerp_flatten"] and not global_params["nuslerp_row_wise"]


# --- multislerp ----------------------------------------------------------------------------


def multislerp(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``m / |m| * sum w_i |x_i|`` with ``m = sum w_i x_i / (|x_i| + eps)`` (+ base)."""
    if not tensors:
        if base is None:
            raise ValueError("multislerp needs at least one tensor")
        return base
    if len(tensors) == 1:
        return tensors[0]
    weights = _multislerp_weights(model_params, global_params)
    eps = float(global_params["eps"])
    xs = [t if base is None else t.sub_(base) for t in tensors]
    norms = [norm(x) for x in xs]
    mean = _weighted_directions(xs, weights, norms, eps)
    scale = _multislerp_scale(weights, norms, norm(mean), eps)
    out = _multislerp_out(xs, weights, mean, scale)
    return out if base is None else out.add_(base)


def _multislerp_weights(model_params: Sequence[Params], global_params: Params) -> list[float]:
    weights = [float(p["weight"]) for p in model_params]
    if bool(global_params["normalize_weights"]):
        total = sum(weights)
        if abs(total) >= WEIGHT_SUM_EPS:
            weights = [w / total for w in weights]
    return weights


def _weighted_directions(xs: Sequence[torch.Tensor], weights: Sequence[float],
                         norms: Sequence[float], eps: float) -> torch.Tensor:
    """``m = sum w_i x_i / (|x_i| + eps)`` (a new tensor)."""
    mean = torch.mul(xs[0], weights[0] / (norms[0] + eps))
    term = torch.empty_like(mean)
    for x, w, n in zip(xs[1:], weights[1:], norms[1:], strict=True):
        # rounded product, then a plain add (no fused multiply-add): opposite models
        # with equal weights cancel exactly and take the lerp fallback, as in mergekit
        mean.add_(torch.mul(x, w / (n + eps), out=term))
    return mean


def _multislerp_scale(weights: Sequence[float], norms: Sequence[float], mean_norm: float,
                      eps: float) -> float | None:
    """``sum w_i |x_i| / |m|``; None for the two-model fallback when ``|m| < eps``."""
    if mean_norm >= eps:
        return sum(w * n for w, n in zip(weights, norms, strict=True)) / mean_norm
    if len(weights) != 2:
        raise InputError(
            "multislerp: the weighted mean of the models' directions is zero (opposite "
            "models whose weights cancel out); change the weights"
        )
    return None


def _multislerp_out(xs: Sequence[torch.Tensor], weights: Sequence[float],
                    mean: torch.Tensor | None, scale: float | None) -> torch.Tensor:
    if scale is None:
        return xs[0].mul_(weights[0]).add_(xs[1], alpha=weights[1])
    assert mean is not None
    return mean.mul_(scale)


class MultislerpPasses(SumPasses):
    """multislerp over row-chunks: a pass sums ``|x_i|^2``, a second ``|m|^2`` of the
    weighted mean direction ``m`` (recomputed per chunk), then each chunk is scaled."""

    passes = 2

    def __init__(self, weights: list[float], eps: float):
        super().__init__()
        self.weights, self.eps = weights, eps
        self.norms: list[float] = []
        self.scale: float | None = None

    @staticmethod
    def _vectors(chunk: Chunk) -> list[torch.Tensor]:
        base = chunk.base
        return [t if base is None else t.sub_(base) for t in chunk.tensors]

    def sums(self, stage: int, chunk: Chunk) -> list[torch.Tensor]:
        xs = self._vectors(chunk)
        if stage == 0:
            return [dot_parts(x, x) for x in xs]
        mean = _weighted_directions(xs, self.weights, self.norms, self.eps)
        return [dot_parts(mean, mean)]

    def finish(self, stage: int, totals: list[float]) -> None:
        if stage == 0:
            self.norms = [math.sqrt(s) for s in totals]
        else:
            self.scale = _multislerp_scale(self.weights, self.norms, math.sqrt(totals[0]),
                                           self.eps)

    def apply(self, chunk: Chunk) -> torch.Tensor:
        xs = self._vectors(chunk)
        mean = (None if self.scale is None
                else _weighted_directions(xs, self.weights, self.norms, self.eps))
        out = _multislerp_out(xs, self.weights, mean, self.scale)
        return out if chunk.base is None else out.add_(chunk.base)


def _multislerp_passes(global_params: Params, model_params: Sequence[Params],
                       n: int) -> MultislerpPasses | None:
    if len(model_params) < 2:
        return None
    return MultislerpPasses(_multislerp_weights(model_params, global_params),
                            float(global_params["eps"]))


# --- karcher -------------------------------------------------------------------------------


def _karcher_coefficients(gram: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
    """Float64 ``c`` with ``karcher(t) = sum_i c_i t_i``, from the Gram matrix
    ``gram[i, j] = t_i . t_j`` alone.

    Every iterate ``u`` is a combination of the unit vectors, so the iteration runs on its
    coefficients: ``x . y = a_x^T U a_y`` with ``U`` the units' Gram matrix. The sums over
    the tensors are then only the Gram matrix, which one pass over row-chunks gives."""
    norms = gram.diagonal().clamp(min=0).sqrt()
    keep = [i for i in range(len(norms)) if norms[i] > tol]
    coefficients = torch.zeros_like(norms)
    if not keep:
        return coefficients
    scale = float(norms.mean())
    n = norms[keep]
    units = gram[keep][:, keep] / torch.outer(n, n)

    def length(v: torch.Tensor) -> float:
        return math.sqrt(max(float(v @ units @ v), 0.0))

    alpha = 1.0 / len(keep)
    a = torch.full((len(keep),), alpha, dtype=torch.float64)
    u_norm = length(a)
    a = torch.eye(len(keep), dtype=torch.float64)[0] if u_norm < tol else a / u_norm
    eye = torch.eye(len(keep), dtype=torch.float64)
    for _ in range(max_iter):
        step = torch.zeros_like(a)
        for j in range(len(keep)):
            cos = max(-1.0, min(1.0, float(units[j] @ a)))
            v = eye[j] - cos * a  # u_j - cos u: length sin(theta)
            sin = length(v)
            theta = math.atan2(sin, cos)
            if theta < tol:
                continue
            step += (alpha * theta / sin) * v  # log_u(u_j)
        size = length(step)
        if size < tol:
            break
        a = math.cos(size) * a + (math.sin(size) / size) * step  # exp_u(step)
        u_norm = length(a)
        if u_norm > tol:
            a = a / u_norm
    coefficients[keep] = scale * a / n
    return coefficients


def _combine(tensors: Sequence[torch.Tensor], coefficients: torch.Tensor) -> torch.Tensor:
    """``sum_i c_i t_i`` in float32, into the first tensor."""
    out = tensors[0].mul_(float(coefficients[0]))
    for x, c in zip(tensors[1:], coefficients[1:].tolist(), strict=True):
        out.add_(x, alpha=c)
    return out


def _gram(n: int, dots) -> torch.Tensor:
    """The float64 ``n x n`` Gram matrix from ``dots(i, j)``, called for ``i <= j``."""
    gram = torch.zeros((n, n), dtype=torch.float64)
    for i in range(n):
        for j in range(i, n):
            gram[i, j] = gram[j, i] = dots(i, j)
    return gram


def karcher(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The Karcher mean of the unit tensors, scaled by the mean norm (equal weights)."""
    if not tensors:
        raise ValueError("karcher needs at least one tensor")
    if len(tensors) == 1:
        return tensors[0]
    gram = _gram(len(tensors), lambda i, j: dot(tensors[i], tensors[j]))
    coefficients = _karcher_coefficients(gram, int(global_params["max_iter"]),
                                         float(global_params["tol"]))
    return _combine(tensors, coefficients)


class KarcherPasses(SumPasses):
    """karcher over row-chunks: one pass sums the Gram matrix, then each chunk is the
    combination of the inputs with the whole tensor's coefficients."""

    def __init__(self, n: int, max_iter: int, tol: float):
        super().__init__()
        self.n, self.max_iter, self.tol = n, max_iter, tol
        self.coefficients: torch.Tensor | None = None

    def sums(self, stage: int, chunk: Chunk) -> list[torch.Tensor]:
        xs = chunk.tensors
        return [dot_parts(xs[i], xs[j]) for i in range(self.n) for j in range(i, self.n)]

    def finish(self, stage: int, totals: list[float]) -> None:
        pairs = iter(totals)
        gram = _gram(self.n, lambda i, j: next(pairs))
        self.coefficients = _karcher_coefficients(gram, self.max_iter, self.tol)

    def apply(self, chunk: Chunk) -> torch.Tensor:
        assert self.coefficients is not None
        return _combine(chunk.tensors, self.coefficients)


def _karcher_passes(global_params: Params, model_params: Sequence[Params],
                    n: int) -> KarcherPasses | None:
    if len(model_params) < 2:
        return None  # one model is returned as it is
    return KarcherPasses(len(model_params), int(global_params["max_iter"]),
                         float(global_params["tol"]))


# --- model_stock ---------------------------------------------------------------------------


def model_stock(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``b + r * mean_i (t_i - b)`` with ``r = N c / (1 + (N - 1) c)``, ``c`` the mean
    pairwise cosine of the task vectors (per vector along the last dim with filter_wise)."""
    if base is None:
        raise ValueError("model_stock needs a base tensor")
    if not tensors:
        return base
    n = len(tensors)
    if n < 2:
        raise _count_error("model_stock", "base_model and at least two other models", n + 1)
    deltas = [t.sub_(base) for t in tensors]
    pairs = n * (n - 1) // 2
    if bool(global_params["filter_wise"]):
        rows = [d if d.dim() >= 2 else d.unsqueeze(0) for d in deltas]
        norms = [row_norm(r) for r in rows]
        cos = torch.zeros_like(norms[0])
        for i in range(n):
            for j in range(i + 1, n):
                product = (norms[i] * norms[j]).clamp_(min=MODEL_STOCK_NORM_PRODUCT_MIN)
                cos.add_((row_dot(rows[i], rows[j]) / product).clamp_(-1, 1))
        cos.div_(pairs)
        ratio: torch.Tensor | float = (n * cos / (1 + (n - 1) * cos)).to(base.dtype)
        if base.dim() < 2:
            ratio = ratio.squeeze(0)  # type: ignore[union-attr]
    else:
        gram = {(i, j): dot(deltas[i], deltas[j]) for i in range(n) for j in range(i, n)}
        ratio = _model_stock_ratio(n, gram)
    return _model_stock_out(deltas, ratio, base)


def _model_stock_ratio(n: int, gram: dict[tuple[int, int], float]) -> float:
    """``r`` from the dot products ``gram[i, j] = d_i . d_j`` (``i <= j``)."""
    norms = [math.sqrt(gram[i, i]) for i in range(n)]
    total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            product = max(norms[i] * norms[j], MODEL_STOCK_NORM_PRODUCT_MIN)
            total += max(-1.0, min(1.0, gram[i, j] / product))
    cos = total / (n * (n - 1) // 2)
    denominator = 1 + (n - 1) * cos
    return n * cos / denominator if denominator != 0 else math.copysign(math.inf, cos)


def _model_stock_out(deltas: Sequence[torch.Tensor], ratio: torch.Tensor | float,
                     base: torch.Tensor) -> torch.Tensor:
    """``b + r * mean_i d_i``, in place into the first task vector."""
    mean = deltas[0]
    for d in deltas[1:]:
        mean.add_(d)
    return mean.mul_(ratio).div_(len(deltas)).add_(base)


class ModelStockPasses(SumPasses):
    """model_stock (one ratio per tensor) over row-chunks: one pass sums the task
    vectors' dot products, then each chunk is mixed with the ratio."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.pairs = [(i, j) for i in range(n) for j in range(i, n)]
        self.ratio = 1.0

    def sums(self, stage: int, chunk: Chunk) -> list[torch.Tensor]:
        assert chunk.base is not None
        deltas = [t.sub_(chunk.base) for t in chunk.tensors]
        return [dot_parts(deltas[i], deltas[j]) for i, j in self.pairs]

    def finish(self, stage: int, totals: list[float]) -> None:
        self.ratio = _model_stock_ratio(self.n, dict(zip(self.pairs, totals, strict=True)))

    def apply(self, chunk: Chunk) -> torch.Tensor:
        assert chunk.base is not None
        deltas = [t.sub_(chunk.base) for t in chunk.tensors]
        return _model_stock_out(deltas, self.ratio, chunk.base)


def _model_stock_passes(global_params: Params, model_params: Sequence[Params],
                        n: int) -> ModelStockPasses | None:
    return ModelStockPasses(len(model_params)) if len(model_params) >= 2 else None


def _filter_wise(global_params: Params, model_params: Sequence[Params]) -> bool:
    """One ratio per vector along the last dim: row-chunks (dim 0) are exact."""
    return bool(global_params["filter_wise"])


# --- the table -----------------------------------------------------------------------------

SPECS: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="slerp",
        needs_base=True,
        global_params=MappingProxyType({"t": REQUIRED}),
        model_params=MappingProxyType({}),
        merge=slerp,
        multipass=_slerp_passes,
        min_donors=1,
        max_donors=1,
    ),
    MethodSpec(
        name="nuslerp",
        needs_base=False,
        base_optional=True,
        global_params=MappingProxyType({"nuslerp_flatten": True, "nuslerp_row_wise": False}),
        model_params=MappingProxyType({"weight": REQUIRED}),
        merge=nuslerp,
        chunkable=_nuslerp_chunkable,
        multipass=_nuslerp_passes,
        min_donors=2,
        max_donors=2,
    ),
    MethodSpec(
        name="multislerp",
        needs_base=False,
        base_optional=True,
        global_params=MappingProxyType({"normalize_weights": True, "eps": 1e-8}),
        model_params=MappingProxyType({"weight": REQUIRED}),
        merge=multislerp,
        multipass=_multislerp_passes,
    ),
    MethodSpec(
        name="karcher",
        needs_base=False,
        global_params=MappingProxyType({"max_iter": 10, "tol": 1e-5}),
        model_params=MappingProxyType({}),
        merge=karcher,
        multipass=_karcher_passes,
    ),
    MethodSpec(
        name="model_stock",
        needs_base=True,
        global_params=MappingProxyType({"filter_wise": False}),
        model_params=MappingProxyType({}),
        merge=model_stock,
        chunkable=_filter_wise,
        multipass=_model_stock_passes,
        min_donors=2,
    ),
)
"""The geometric methods (mergekit's names, parameters and defaults)."""
