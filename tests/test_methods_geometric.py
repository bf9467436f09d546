"""slerp, nuslerp, multislerp, karcher, model_stock and passthrough against float64
references written here from merge-methods.md and mergekit's documented behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from merge_engine.errors import InputError
from merge_engine.methods import REQUIRED, get_method
from merge_engine.methods.reductions import dot, l1_norm, norm

SHAPES = [(257,), (16, 24), (6, 10, 7)]


# --- helpers (shared with test_methods_selective.py) -------------------------------------


def t32(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float32).copy())


def f32(a):
    """``a`` rounded to float32, back in float64: what the method actually sees."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def normal(shape, n_models, seed, spread=0.1):
    """A base and ``n_models`` donors near it, all already rounded to float32."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape)
    donors = [base + spread * rng.standard_normal(shape) for _ in range(n_models)]
    return f32(base), [f32(d) for d in donors]


def params(name, n_models, model=None, glob=None):
    spec = get_method(name)
    models = model if isinstance(model, list) else [model or {}] * n_models
    model_params = [{**spec.model_params, **m} for m in models]
    global_params = {**spec.global_params, **(glob or {})}
    assert REQUIRED not in global_params.values()
    for p in model_params:
        assert REQUIRED not in p.values()
    return model_params, global_params


def run(name, base, donors, model=None, glob=None, device="cpu"):
    """Merge float32 copies of ``donors`` (and ``base``, None for no base role)."""
    model_params, global_params = params(name, len(donors), model, glob)
    out = get_method(name).merge(
        [t32(d).to(device) for d in donors],
        None if base is None else t32(base).to(device),
        model_params,
        global_params,
        torch.Generator(device=device).manual_seed(0),
    )
    assert out.dtype == torch.float32
    assert out.shape == np.shape(donors[0] if donors else base)
    return out.cpu().double().numpy()


def close(actual, expected, rtol=1e-5, atol=2e-6):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def merge_in_chunks(name, base, donors, model=None, glob=None, chunks=4):
    """(whole-tensor result, results of row-chunks of dim 0 concatenated)."""
    whole = run(name, base, donors, model, glob)
    parts = []
    for rows in np.array_split(np.arange(np.shape(donors[0])[0]), chunks):
        part = slice(rows[0], rows[-1] + 1)
        parts.append(run(name, None if base is None else base[part],
                         [d[part] for d in donors], model, glob))  # fmt: skip
    return whole, np.concatenate(parts)


# --- float64 references ---------------------------------------------------------------------


def ref_lerp(t, a, b):
    return (1 - t) * a + t * b


def ref_slerp(t, v0, v1):
    a, b = v0.ravel(), v1.ravel()
    ua = a / np.linalg.norm(a) if np.linalg.norm(a) > 1e-8 else a
    ub = b / np.linalg.norm(b) if np.linalg.norm(b) > 1e-8 else b
    cos = float(ua @ ub)
    if abs(cos) > 0.9995:
        return ref_lerp(t, v0, v1)
    theta = math.acos(cos)
    return (math.sin((1 - t) * theta) * v0 + math.sin(t * theta) * v1) / math.sin(theta)


def ref_nuslerp(t, v0, v1, flatten, row_wise):
    shape = v0.shape
    if flatten:
        x0, x1 = v0.reshape(1, -1), v1.reshape(1, -1)
    elif row_wise:
        x0, x1 = np.swapaxes(v0, 0, -1), np.swapaxes(v1, 0, -1)
    else:
        x0, x1 = v0, v1
    n0 = np.maximum(np.linalg.norm(x0, axis=-1, keepdims=True), 1e-7)
    n1 = np.maximum(np.linalg.norm(x1, axis=-1, keepdims=True), 1e-7)
    cos = np.sum(x0 / n0 * (x1 / n1), axis=-1, keepdims=True)
    theta = np.arccos(np.clip(cos, -1, 1))
    sin = np.sin(theta)
    colinear = np.abs(sin) < 1e-8
    with np.errstate(divide="ignore", invalid="ignore"):
        slerped = (np.sin((1 - t) * theta) * x0 + np.sin(t * theta) * x1) / sin
    out = np.where(colinear, ref_lerp(t, x0, x1), slerped)
    if row_wise and not flatten:
        out = np.swapaxes(out, 0, -1)
    return out.reshape(shape)


def ref_nuslerp_merge(base, donors, weights, flatten=True, row_wise=False):
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    if base is None:
        return ref_nuslerp(t, donors[0], donors[1], flatten, row_wise)
    d0, d1 = donors[0] - base, donors[1] - base
    return base + ref_nuslerp(t, d0, d1, flatten, row_wise)


def ref_multislerp(base, donors, weights, normalize_weights=True, eps=1e-8):
    """mergekit's algorithm step by step, tangent-space projection included."""
    if len(donors) == 1:
        return donors[0]
    x = np.stack([d if base is None else d - base for d in donors]).reshape(len(donors), -1)
    w = np.array(weights, dtype=np.float64)
    if normalize_weights:
        w = w / w.sum()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    units = x / (norms + eps)
    mean = (units * w[:, None]).sum(0)
    mean_norm = np.linalg.norm(mean)
    assert mean_norm >= eps
    mean = mean / mean_norm
    tangents = units - (units @ mean)[:, None] * mean
    tangent = (tangents * w[:, None]).sum(0)
    tangent_norm = np.linalg.norm(tangent) + eps
    result = mean * np.cos(tangent_norm) + tangent * (np.sin(tangent_norm) / tangent_norm)
    result = (result * (norms[:, 0] * w).sum()).reshape(donors[0].shape)
    return result if base is None else result + base


def ref_karcher(tensors, max_iter=10, tol=1e-5):
    """mergekit's iteration (arccos angles) in float64."""
    if len(tensors) == 1:
        return tensors[0]
    norms = [np.linalg.norm(t) for t in tensors]
    units = [t / n for t, n in zip(tensors, norms, strict=True) if n > tol]
    if not units:
        return np.zeros_like(tensors[0])
    a = 1.0 / len(units)
    u = sum(a * ui for ui in units)
    u = units[0].copy() if np.linalg.norm(u) < tol else u / np.linalg.norm(u)
    for _ in range(max_iter):
        step = np.zeros_like(u)
        for ui in units:
            cos = np.clip(np.sum(u * ui), -1, 1)
            theta = np.arccos(cos)
            if theta < tol:
                continue
            step += a * theta / np.sin(theta) * (ui - cos * u)
        length = np.linalg.norm(step)
        if length < tol:
            break
        u = np.cos(length) * u + np.sin(length) * step / length
        if np.linalg.norm(u) > tol:
            u = u / np.linalg.norm(u)
    return np.mean(norms) * u


def ref_model_stock(base, donors, filter_wise=False):
    shape = base.shape
    if filter_wise:
        b = base.reshape(1, -1) if base.ndim == 1 else base
        ws = [d.reshape(b.shape) for d in donors]
    else:
        b = base.reshape(-1)
        ws = [d.reshape(-1) for d in donors]
    offsets = [w - b for w in ws]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            product = np.linalg.norm(offsets[i], axis=-1) * np.linalg.norm(offsets[j], axis=-1)
            cos = np.sum(offsets[i] * offsets[j], axis=-1) / np.maximum(product, 1e-6)
            cosines.append(np.clip(cos, -1, 1))
    cos = np.mean(cosines, axis=0)[..., None]
    n = len(ws)
    t = n * cos / (1 + (n - 1) * cos)
    return (t * (sum(ws) / n) + (1 - t) * b).reshape(shape)


# --- reductions -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 1000, (1 << 16) * 3 + 17])
def test_dot_and_norm_are_accurate(n):
    rng = np.random.default_rng(n)
    a, b = f32(rng.standard_normal(n) + 0.3), f32(rng.standard_normal(n) + 0.3)
    # float32 products are exact in float64: only the float64 sums round
    assert dot(t32(a), t32(b)) == pytest.approx(float(a @ b), rel=1e-13, abs=1e-13)
    assert norm(t32(a)) == pytest.approx(float(np.linalg.norm(a)), rel=1e-13)
    assert l1_norm(t32(a)) == pytest.approx(float(np.abs(a).sum()), rel=1e-12, abs=1e-12)


# --- slerp ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 0.85, 1.0, -0.2, 1.3])
def test_slerp(shape, t):
    base, (other,) = normal(shape, 1, seed=len(shape), spread=0.5)
    out = run("slerp", base, [other], glob={"t": t})
    close(out, ref_slerp(t, base, other))


def test_slerp_follows_the_arc():
    # Orthogonal unit vectors: the midpoint is on the unit circle, not the chord.
    v0, v1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    out = run("slerp", v0, [v1], glob={"t": 0.5})
    close(out, [math.sqrt(0.5), math.sqrt(0.5)])
    out = run("slerp", v0, [3 * v1], glob={"t": 1 / 3})  # norms interpolate too
    close(out, [math.cos(math.pi / 6), 3 * math.sin(math.pi / 6)])


def test_slerp_endpoints_are_exact():
    base, (other,) = normal((16, 24), 1, seed=3, spread=0.5)
    np.testing.assert_array_equal(run("slerp", base, [other], glob={"t": 0.0}), base)
    np.testing.assert_array_equal(run("slerp", base, [other], glob={"t": 1.0}), other)


@pytest.mark.parametrize("factor", [2.5, -0.7, 1.0])
def test_slerp_colinear_is_lerp(factor):
    base, _ = normal((16, 24), 0, seed=4)
    other = f32(factor * base)
    for t in (0.25, 0.6):
        close(run("slerp", base, [other], glob={"t": t}), ref_lerp(t, base, other))


def test_slerp_near_threshold():
    # cos just above 0.9995 lerps, just below slerps: both match the reference.
    rng = np.random.default_rng(5)
    a = rng.standard_normal(4000)
    perp = rng.standard_normal(4000)
    perp -= (perp @ a) / (a @ a) * a
    perp *= np.linalg.norm(a) / np.linalg.norm(perp)
    for cos in (0.9996, 0.9990):
        b = f32(cos * a + math.sqrt(1 - cos**2) * perp)
        out = run("slerp", f32(a), [b], glob={"t": 0.4})
        close(out, ref_slerp(0.4, f32(a), b))


def test_slerp_zero_tensors():
    base, (other,) = normal((8, 8), 1, seed=6)
    zero = np.zeros_like(base)
    # A zero end has no direction: the angle is taken as 90 degrees, as in mergekit.
    close(run("slerp", zero, [other], glob={"t": 0.3}), math.sin(0.3 * math.pi / 2) * other)
    close(run("slerp", base, [zero], glob={"t": 0.3}), math.sin(0.7 * math.pi / 2) * base)
    np.testing.assert_array_equal(run("slerp", zero, [zero], glob={"t": 0.5}), zero)


def test_slerp_identical_models():
    base, _ = normal((10, 12), 0, seed=7)
    close(run("slerp", base, [base.copy()], glob={"t": 0.37}), base, rtol=1e-6, atol=1e-7)


def test_slerp_counts():
    base, donors = normal((4, 4), 2, seed=8)
    with pytest.raises(InputError, match="exactly two models"):
        run("slerp", base, donors, glob={"t": 0.5})
    np.testing.assert_array_equal(run("slerp", base, [], glob={"t": 0.5}), base)


# --- nuslerp --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.3, 0.7), (2.0, -0.5), (0.5, -0.5)])
@pytest.mark.parametrize("flatten, row_wise", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("with_base", [False, True])
def test_nuslerp(shape, weights, flatten, row_wise, with_base):
    base, donors = normal(shape, 2, seed=11, spread=0.6)
    glob = {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise}
    model = [{"weight": w} for w in weights]
    out = run("nuslerp", base if with_base else None, donors, model, glob)
    expected = ref_nuslerp_merge(base if with_base else None, donors, weights, flatten, row_wise)
    close(out, expected, atol=1e-5)


def test_nuslerp_t_from_weights():
    v0, v1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    out = run("nuslerp", None, [v0, v1], [{"weight": 1.0}, {"weight": 2.0}])
    angle = 2 / 3 * math.pi / 2
    close(out, [math.cos(angle), math.sin(angle)])


def test_nuslerp_colinear_rows_lerp():
    # Row 0 colinear (lerp), row 1 orthogonal (slerp), row 2 zero in one model.
    v0 = np.array([[1.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    v1 = np.array([[2.0, 4.0], [0.0, 2.0], [3.0, 1.0]])
    glob = {"nuslerp_flatten": False}
    out = run("nuslerp", None, [v0, v1], [{"weight": 0.5}, {"weight": 0.5}], glob=glob)
    s = math.sin(math.pi / 4) / math.sin(math.pi / 2)
    expected = np.array([[1.5, 3.0], [s, 2 * s], [3 * s, s]])
    close(out, expected)
    close(out, ref_nuslerp(0.5, v0, v1, flatten=False, row_wise=False))


def test_nuslerp_identical_and_base_only():
    base, (m,) = normal((6, 9), 1, seed=12)
    same = run("nuslerp", base, [m, m.copy()], [{"weight": 0.4}, {"weight": 0.6}])
    close(same, m, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(run("nuslerp", None, [m], [{"weight": 1.0}]), m)
    np.testing.assert_array_equal(run("nuslerp", base, [], []), base)


def test_nuslerp_counts():
    base, donors = normal((4, 4), 3, seed=13)
    with pytest.raises(InputError, match="exactly two models"):
        run("nuslerp", None, donors, {"weight": 1.0})
    with pytest.raises(InputError, match="exactly two models"):
        run("nuslerp", base, donors[:1], {"weight": 1.0})


# --- multislerp -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.2, 0.5, 0.3), (2.0, 1.0, -0.4, 0.7)])
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("normalize_weights", [True, False])
def test_multislerp(shape, weights, with_base, normalize_weights):
    base, donors = normal(shape, len(weights), seed=21, spread=0.5)
    model = [{"weight": w} for w in weights]
    glob = {"normalize_weights": normalize_weights}
    out = run("multislerp", base if with_base else None, donors, model, glob)
    expected = ref_multislerp(base if with_base else None, donors, weights, normalize_weights)
    close(out, expected)


def test_multislerp_two_models_is_slerp_midpoint():
    v0, v1 = np.array([2.0, 0.0]), np.array([0.0, 2.0])
    out = run("multislerp", None, [v0, v1], {"weight": 1.0})
    close(out, [math.sqrt(2), math.sqrt(2)])


def test_multislerp_edge_cases():
    base, donors = normal((5, 7), 3, seed=22)
    # one model: returned as is
    np.testing.assert_array_equal(run("multislerp", base, donors[:1], {"weight": 0.3}), donors[0])
    # identical models: that model
    same = run("multislerp", base, [donors[0]] * 3, {"weight": 0.5})
    close(same, donors[0], rtol=1e-6, atol=1e-6)
    # exactly opposite pair with equal weights: the lerp fallback (here the base)
    d = donors[0] - base
    zero = np.zeros_like(d)
    np.testing.assert_array_equal(run("multislerp", zero, [d, -d], {"weight": 1.0}), zero)
    out = run("multislerp", zero, [d, -d], [{"weight": 1.0}, {"weight": 1.0 + 1e-9}])
    close(out, zero, atol=1e-6)
    # three models cancelling out: an error, not NaN
    with pytest.raises(InputError, match="weighted mean"):
        run("multislerp", None, [d, -d, np.zeros_like(d)], {"weight": 1.0})


def test_multislerp_zero_weight_sum_divides_by_one():
    _, donors = normal((4, 6), 2, seed=23)
    model = [{"weight": 1.0}, {"weight": -1.0}]
    out = run("multislerp", None, donors, model)
    close(out, ref_multislerp(None, donors, [1.0, -1.0], normalize_weights=False))


# --- karcher --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_models", [2, 3, 5])
@pytest.mark.parametrize("spread", [0.1, 2.0])
def test_karcher(shape, n_models, spread):
    base, donors = normal(shape, n_models - 1, seed=31, spread=spread)
    tensors = [base, *donors]
    close(run("karcher", None, tensors), ref_karcher(tensors), atol=1e-5)


def test_karcher_options():
    base, donors = normal((12, 10), 3, seed=32, spread=3.0)
    tensors = [base, *donors]
    for max_iter, tol in [(1, 1e-5), (3, 1e-5), (50, 1e-9), (10, 1e-2)]:
        glob = {"max_iter": max_iter, "tol": tol}
        close(run("karcher", None, tensors, glob=glob), ref_karcher(tensors, max_iter, tol),
              atol=1e-5)  # fmt: skip


def test_karcher_is_the_spherical_midpoint_of_two():
    v0, v1 = np.array([3.0, 0.0]), np.array([0.0, 1.0])
    out = run("karcher", None, [v0, v1], glob={"max_iter": 100})
    close(out, 2.0 * np.array([math.sqrt(0.5), math.sqrt(0.5)]))


def test_karcher_edge_cases():
    base, donors = normal((6, 6), 2, seed=33)
    np.testing.assert_array_equal(run("karcher", None, [base]), base)
    close(run("karcher", None, [base, base.copy(), base.copy()]), base, atol=1e-6)
    zero = np.zeros_like(base)
    # a zero model has no direction but counts in the mean norm
    expected = ref_karcher([zero, *donors])
    close(run("karcher", None, [zero, *donors]), expected, atol=1e-5)
    close(expected, 2 / 3 * ref_karcher(donors), atol=1e-5)
    np.testing.assert_array_equal(run("karcher", None, [zero, zero]), zero)


# --- model_stock ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_models", [2, 3, 5])
@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock(shape, n_models, filter_wise):
    rng = np.random.default_rng(41)
    base = f32(rng.standard_normal(shape))
    shared = 0.1 * rng.standard_normal(shape)  # correlated task vectors: 0 < cos < 1
    donors = [f32(base + shared + 0.1 * rng.standard_normal(shape)) for _ in range(n_models)]
    out = run("model_stock", base, donors, glob={"filter_wise": filter_wise})
    close(out, ref_model_stock(base, donors, filter_wise))


def test_model_stock_ratio():
    # Two task vectors at 60 degrees: cos 0.5, t = 2 * 0.5 / 1.5 = 2/3.
    base = np.array([1.0, 1.0])
    donors = [base + [2.0, 0.0], base + [1.0, math.sqrt(3)]]
    out = run("model_stock", base, donors)
    close(out, base + 2 / 3 * np.array([1.5, math.sqrt(3) / 2]))


def test_model_stock_edge_cases():
    base, donors = normal((6, 8), 3, seed=42)
    # identical donors: cos 1, t 1: the donor
    close(run("model_stock", base, [donors[0]] * 3), donors[0], atol=1e-6)
    # orthogonal task vectors: cos 0, t 0: the base
    b = np.zeros(4)
    np.testing.assert_array_equal(
        run("model_stock", b, [np.array([1.0, 0, 0, 0]), np.array([0, 1.0, 0, 0])]), b
    )
    # zero task vectors: the base
    np.testing.assert_array_equal(run("model_stock", base, [base, base]), base)
    np.testing.assert_array_equal(run("model_stock", base, []), base)
    with pytest.raises(InputError, match="at least two"):
        run("model_stock", base, donors[:1])


# --- passthrough ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 0.5, -2.0, 0.0])
def test_passthrough(shape, scale):
    _, (m,) = normal(shape, 1, seed=51)
    out = run("passthrough", None, [m], {"scale": scale})
    np.testing.assert_array_equal(out, f32(scale * m))


def test_passthrough_takes_one_model():
    base, donors = normal((3, 3), 2, seed=52)
    with pytest.raises(InputError, match="exactly one model"):
        run("passthrough", None, donors, {"scale": 1.0})
    model_params, global_params = params("passthrough", 1)
    with pytest.raises(InputError, match="exactly one model"):
        get_method("passthrough").merge([t32(base)], t32(base), model_params, global_params,
                                        None)  # fmt: skip


# --- chunkable ------------------------------------------------------------------------------

CHUNK_CASES = [
    # name, per-model overrides, global overrides, expected chunkable
    ("slerp", {}, {"t": 0.4}, False),
    ("nuslerp", {"weight": 1.0}, {}, False),
    ("nuslerp", {"weight": 1.0}, {"nuslerp_flatten": False}, True),
    ("nuslerp", {"weight": 1.0}, {"nuslerp_flatten": False, "nuslerp_row_wise": True}, False),
    ("nuslerp", {"weight": 1.0}, {"nuslerp_row_wise": True}, False),
    ("multislerp", {"weight": 1.0}, {}, False),
    ("karcher", {}, {}, False),
    ("model_stock", {}, {}, False),
    ("model_stock", {}, {"filter_wise": True}, True),
    ("passthrough", {}, {}, True),
    ("passthrough", {"scale": 0.5}, {}, True),
]


@pytest.mark.parametrize("name, model, glob, expected", CHUNK_CASES)
def test_chunkable_flags(name, model, glob, expected):
    model_params, global_params = params(name, 2, model, glob)
    assert get_method(name).chunkable(global_params, model_params) is expected


def _chunk_inputs(name, shape):
    base, donors = normal(shape, 3, seed=61, spread=0.5)
    spec = get_method(name)
    count = spec.max_donors or 3
    if spec.needs_base:
        return base, donors[:count]
    return None, [base, *donors][:count]


@pytest.mark.parametrize("shape", [(24, 16), (12, 5, 6)])
@pytest.mark.parametrize("name, model, glob, expected", CHUNK_CASES)
def test_chunkable_is_truthful(shape, name, model, glob, expected):
    base, donors = _chunk_inputs(name, shape)
    whole, chunked = merge_in_chunks(name, base, donors, model, glob)
    if expected:
        np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    else:  # whole-tensor (or dim-0) statistics: chunks see other ones
        assert not np.allclose(chunked, whole, rtol=1e-4, atol=1e-5)


# --- the table ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, needs_base, base_optional, global_params, model_params, donors",
    [
        ("slerp", True, False, {"t": REQUIRED}, {}, (1, 1)),
        ("nuslerp", False, True, {"nuslerp_flatten": True, "nuslerp_row_wise": False},
         {"weight": REQUIRED}, (2, 2)),
        ("multislerp", False, True, {"normalize_weights": True, "eps": 1e-8},
         {"weight": REQUIRED}, (1, None)),
        ("karcher", False, False, {"max_iter": 10, "tol": 1e-5}, {}, (1, None)),
        ("model_stock", True, False, {"filter_wise": False}, {}, (2, None)),
        ("passthrough", False, False, {}, {"scale": 1.0}, (1, 1)),
        ("sce", True, False, {"select_topk": 1.0, "int8_mask": False}, {}, (1, None)),
        ("nearswap", True, False, {"t": REQUIRED}, {}, (1, 1)),
        ("ram", True, False, {"epsilon": 1e-5}, {}, (1, None)),
        ("ramplus_tl", True, False, {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}, {}, (1, None)),
        ("arcee_fusion", True, False, {}, {}, (1, 1)),
    ],
)  # fmt: skip
def test_spec_table(name, needs_base, base_optional, global_params, model_params, donors):
    spec = get_method(name)
    assert spec.merge is not None
    assert spec.needs_base is needs_base
    assert spec.base_optional is base_optional
    assert dict(spec.global_params) == global_params
    assert dict(spec.model_params) == model_params
    assert (spec.min_donors, spec.max_donors) == donors
    assert spec.uses_base(True) is (needs_base or base_optional)
    assert spec.uses_base(False) is needs_base


def test_existing_methods_keep_their_base_role():
    for name in ("linear", "task_arithmetic", "ties"):
        spec = get_method(name)
        assert not spec.base_optional
        assert spec.uses_base(True) is spec.needs_base


# --- device ---------------------------------------------------------------------------------

DEVICE_CASES = [
    ("slerp", {}, {"t": 0.3}),
    ("nuslerp", {"weight": 0.7}, {}),
    ("nuslerp", {"weight": 0.7}, {"nuslerp_flatten": False}),
    ("multislerp", {"weight": 0.5}, {}),
    ("karcher", {}, {}),
    ("model_stock", {}, {}),
    ("model_stock", {}, {"filter_wise": True}),
    ("passthrough", {"scale": 0.5}, {}),
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name, model, glob", DEVICE_CASES)
def test_runs_on_cuda(name, model, glob):
    base, donors = _chunk_inputs(name, (64, 48))
    gpu = run(name, base, donors, model, glob, device="cuda")
    close(gpu, run(name, base, donors, model, glob), atol=1e-5)
