"""sce, nearswap, ram, ramplus_tl and arcee_fusion against float64 references written
here from merge-methods.md and mergekit's documented behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from merge_engine.errors import InputError
from merge_engine.methods import get_method
from tests.test_methods_geometric import close, f32, merge_in_chunks, normal, params, run

SHAPES = [(257,), (16, 24), (6, 10, 7)]


# --- float64 references ---------------------------------------------------------------------


def ref_sce(base, donors, select_topk=1.0):
    tv = np.stack([d - base for d in donors])
    if select_topk < 1:
        var = tv.var(axis=0)
        keep = int(np.count_nonzero(var) * select_topk) if select_topk > 0 else 0
        mask = np.zeros(var.size)
        mask[np.argsort(-var.ravel(), kind="stable")[:keep]] = 1
        tv = tv * mask.reshape(var.shape)
    elected = np.where(tv.sum(axis=0) >= 0, 1.0, -1.0)
    kept = np.sign(tv) == elected
    mean_squares = (tv**2).reshape(len(donors), -1).mean(axis=1)
    if abs(mean_squares.sum()) < 1e-6:
        weights = np.full(len(donors), 1 / len(donors))
    else:
        weights = mean_squares / mean_squares.sum()
    w = weights.reshape((-1,) + (1,) * base.ndim) * kept
    return base + (tv * w).sum(axis=0) / np.maximum(w.sum(axis=0), 1e-6)


def ref_nearswap(base, other, t):
    weight = np.clip(t / np.maximum(np.abs(base - other), 1e-6), 0, 1)
    return weight * other + (1 - weight) * base


def ref_ram(base, donors, epsilon=1e-5, plus=None):
    tv = np.stack([d - base for d in donors]).reshape(len(donors), -1)
    present = np.abs(tv) > epsilon
    count = present.sum(axis=0, keepdims=True)
    overlap, unique = count > 1, count == 1
    factor = np.ones((len(donors), 1))
    if plus is not None:
        r, alpha = plus
        shared = (present & overlap).sum(axis=1)
        alone = (present & unique).sum(axis=1)
        rho = shared / np.maximum(alone, epsilon)
        factor = (1 + r * np.clip(rho, 0, alpha))[:, None]
    tv = tv * present
    merged = (tv * unique * factor + tv * overlap / np.maximum(count, 1)).sum(axis=0)
    return base + merged.reshape(base.shape)


def ref_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_arcee_fusion(base, other):
    p = ref_softmax(other) + 1e-8
    q = ref_softmax(base) + 1e-8
    kl = np.sum(p * np.log(p / q), axis=-1, keepdims=True)
    importance = np.abs(other - base) * kl
    ranked = np.sort(importance.ravel())
    n = ranked.size

    def quantile(q):
        return ranked[int(q * (n - 1))]

    threshold = quantile(0.5) + 1.5 * (quantile(0.75) - quantile(0.25))
    return base + (other - base) * (importance >= threshold)


def sparse_deltas(shape, n_models, seed, keep=0.5, epsilon=1e-3):
    """Donors whose task vectors are absent (|d| <= epsilon/2) at random entries, and
    clearly present (|d| >= 2 epsilon) elsewhere."""
    rng = np.random.default_rng(seed)
    base = f32(rng.standard_normal(shape))
    donors = []
    for _ in range(n_models):
        big = rng.choice([-1, 1], size=shape) * rng.uniform(2 * epsilon, 0.5, size=shape)
        small = rng.uniform(-epsilon / 2, epsilon / 2, size=shape)
        donors.append(f32(base + np.where(rng.random(shape) < keep, big, small)))
    return base, donors


# --- sce ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_models", [1, 2, 4])
@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.1, 0.0])
def test_sce(shape, n_models, select_topk):
    base, donors = normal(shape, n_models, seed=n_models, spread=0.3)
    out = run("sce", base, donors, glob={"select_topk": select_topk})
    close(out, ref_sce(base, donors, select_topk))


def test_sce_small_task_vectors_weigh_equally():
    # mean squares sum below 1e-6: every model weighs 1/n
    base, donors = normal((20, 30), 3, seed=5, spread=2e-4)
    out = run("sce", base, donors, glob={"select_topk": 0.4})
    close(out, ref_sce(base, donors, 0.4))
    tv = np.stack([d - base for d in donors])
    assert (tv**2).reshape(3, -1).mean(axis=1).sum() < 1e-6


def test_sce_weights_by_mean_square():
    # One entry, opposite signs elect + (3 > -1): only model 0 kept; other entry both +.
    base = np.zeros(2)
    donors = [np.array([3.0, 1.0]), np.array([-1.0, 2.0])]
    ms = np.array([(9 + 1) / 2, (1 + 4) / 2])
    w = ms / ms.sum()
    expected = [3.0, (w[0] * 1 + w[1] * 2) / (w[0] + w[1])]
    close(run("sce", base, donors), expected)


def test_sce_identical_models_and_no_donors():
    base, (m,) = normal((8, 9), 1, seed=6)
    close(run("sce", base, [m, m.copy()]), m, atol=1e-6)
    # identical task vectors have zero variance everywhere: top-k selects nothing
    np.testing.assert_array_equal(run("sce", base, [m, m.copy()], glob={"select_topk": 0.5}),
                                  base)  # fmt: skip
    np.testing.assert_array_equal(run("sce", base, []), base)


# --- nearswap -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 1e-4, 0.05, 0.3, 10.0, -0.1])
def test_nearswap(shape, t):
    base, (other,) = normal(shape, 1, seed=11, spread=0.2)
    close(run("nearswap", base, [other], glob={"t": t}), ref_nearswap(base, other, t))


def test_nearswap_values():
    base = np.array([0.0, 0.0, 0.0, 1.0])
    other = np.array([0.1, 1.0, -4.0, 1.0])
    # weights: 0.2/0.1 -> 1, 0.2/1 = 0.2, 0.2/4 = 0.05, equal -> 0.2/1e-6 -> 1
    close(run("nearswap", base, [other], glob={"t": 0.2}), [0.1, 0.2, -0.2, 1.0])


def test_nearswap_counts():
    base, donors = normal((4, 4), 2, seed=12)
    with pytest.raises(InputError, match="exactly two models"):
        run("nearswap", base, donors, glob={"t": 0.1})


# --- ram, ramplus_tl ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_models", [1, 2, 4])
@pytest.mark.parametrize("keep", [0.2, 0.6])
def test_ram(shape, n_models, keep):
    base, donors = sparse_deltas(shape, n_models, seed=21, keep=keep)
    out = run("ram", base, donors, glob={"epsilon": 1e-3})
    close(out, ref_ram(base, donors, 1e-3))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_models", [1, 2, 4])
@pytest.mark.parametrize("keep", [0.1, 0.6])
@pytest.mark.parametrize("r, alpha", [(0.1, 0.2), (0.5, 5.0), (1.0, 0.01)])
def test_ramplus_tl(shape, n_models, keep, r, alpha):
    base, donors = sparse_deltas(shape, n_models, seed=22, keep=keep)
    glob = {"epsilon": 1e-3, "r": r, "alpha": alpha}
    out = run("ramplus_tl", base, donors, glob=glob)
    close(out, ref_ram(base, donors, 1e-3, plus=(r, alpha)))


def test_ram_values():
    base = np.zeros(4)
    donors = [np.array([1.0, 2.0, 0.0, 1e-6]), np.array([3.0, 0.0, 0.0, 1e-6])]
    # shared entry averaged, unique taken as is, absent ones (<= epsilon) dropped
    close(run("ram", base, donors), [2.0, 2.0, 0.0, 0.0])
    # model 0: 1 shared, 1 unique: rho 1, boost 1 + 0.5 * min(1, 0.4) = 1.2
    out = run("ramplus_tl", base, donors, glob={"r": 0.5, "alpha": 0.4})
    close(out, [2.0, 2.4, 0.0, 0.0])


def test_ram_default_epsilon_and_identical_models():
    base, (m,) = normal((6, 7), 1, seed=23)
    close(run("ram", base, [m, m.copy(), m.copy()]), m, atol=1e-6)
    close(run("ramplus_tl", base, [m, m.copy()]), m, atol=1e-6)


# --- arcee_fusion ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spread", [0.05, 1.0])
def test_arcee_fusion(shape, spread):
    base, (other,) = normal(shape, 1, seed=31, spread=spread)
    out = run("arcee_fusion", base, [other])
    expected = ref_arcee_fusion(base, other)
    close(out, expected)
    assert 0 < np.count_nonzero(out != base) < out.size  # some entries fused, not all


def test_arcee_fusion_edge_cases():
    base, (other,) = normal((5, 8), 1, seed=32)
    np.testing.assert_array_equal(run("arcee_fusion", base, [base.copy()]), base)
    np.testing.assert_array_equal(run("arcee_fusion", base, []), base)
    one = np.array([0.5])
    close(run("arcee_fusion", one, [np.array([2.0])]), [2.0])  # one entry: its own threshold
    with pytest.raises(InputError, match="exactly two models"):
        run("arcee_fusion", base, [other, other])


# --- chunkable ------------------------------------------------------------------------------

CHUNK_CASES = [
    # name, global overrides, expected chunkable
    ("sce", {}, False),
    ("sce", {"select_topk": 0.3}, False),
    ("nearswap", {"t": 0.1}, True),
    ("ram", {"epsilon": 1e-3}, True),
    ("ramplus_tl", {"epsilon": 1e-3, "alpha": 5.0}, False),
    ("arcee_fusion", {}, False),
]


@pytest.mark.parametrize("name, glob, expected", CHUNK_CASES)
def test_chunkable_flags(name, glob, expected):
    model_params, global_params = params(name, 2, None, glob)
    assert get_method(name).chunkable(global_params, model_params) is expected


@pytest.mark.parametrize("shape", [(24, 16), (12, 5, 6)])
@pytest.mark.parametrize("name, glob, expected", CHUNK_CASES)
def test_chunkable_is_truthful(shape, name, glob, expected):
    base, donors = sparse_deltas(shape, 3, seed=41, keep=0.3)
    # make one model's task vectors much larger in the first rows (sce's weights)
    donors[0][:4] = f32(base[:4] + 10 * (donors[0][:4] - base[:4]))
    donors = donors[: get_method(name).max_donors or 3]
    whole, chunked = merge_in_chunks(name, base, donors, None, glob)
    if expected:
        np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    else:
        assert not np.allclose(chunked, whole, rtol=1e-4, atol=1e-5)


# --- device ---------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name, glob, expected", CHUNK_CASES)
def test_runs_on_cuda(name, glob, expected):
    base, donors = sparse_deltas((64, 48), 3, seed=42, keep=0.4)
    donors = donors[: get_method(name).max_donors or 3]
    gpu = run(name, base, donors, None, glob, device="cuda")
    close(gpu, run(name, base, donors, None, glob), atol=1e-5)
