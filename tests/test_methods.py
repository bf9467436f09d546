"""Merge methods against float64 references written here from merge-methods.md."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pytest
import torch

from merge_engine.errors import InputError
from merge_engine.methods import METHODS, REQUIRED, get_method, method_names
from merge_engine.methods.task_arithmetic import della_prune, random_prune

GTA = {
    # name: (sign consensus, sparsification, normalize default, rescale default)
    "task_arithmetic": (False, None, False, False),
    "ties": (True, "magnitude", True, False),
    "dare_linear": (False, "random", False, True),
    "dare_ties": (True, "random", False, True),
    "breadcrumbs": (False, "breadcrumbs", False, False),
    "breadcrumbs_ties": (True, "breadcrumbs", False, False),
    "della": (True, "della", True, True),
    "della_linear": (False, "della", False, True),
}
PENDING = [
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "model_stock",
    "passthrough",
    "sce",
    "nearswap",
    "ram",
    "ramplus_tl",
    "arcee_fusion",
]
SHAPES = [(257,), (16, 24), (6, 10, 7)]
WEIGHT_SETS = [(1.0, 0.3), (1.0, -0.3, 0.7), (0.6, -0.25, 0.9, 0.45)]


# --- inputs and parameters ----------------------------------------------------------------


def grid_inputs(shape, n_models, seed):
    """Base and donors whose deltas are exact in float32 with distinct magnitudes, so
    rank-based sparsifiers pick the same entries in float32 and float64."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    base = rng.integers(-4 << 12, 4 << 12, size=n) / 4096.0
    donors = []
    for _ in range(n_models):
        magnitudes = rng.permutation(n) + 1
        signs = rng.choice([-1.0, 1.0], size=n)
        donors.append(base + signs * magnitudes / 4096.0)
    return base.reshape(shape), [d.reshape(shape) for d in donors]


def normal_inputs(shape, n_models, seed):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape)
    return base, [base + 0.1 * rng.standard_normal(shape) for _ in range(n_models)]


def t32(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float32).copy())


def resolve(name, weights, model=None, glob=None):
    """Parameters as the planner hands them over: per model and global, defaults filled."""
    spec = get_method(name)
    model_params = []
    for w in weights:
        p = {**spec.model_params, "weight": w, **(model or {})}
        assert REQUIRED not in p.values()
        model_params.append(p)
    global_params = {**spec.global_params, **(glob or {})}
    assert REQUIRED not in global_params.values()
    return model_params, global_params


def run(name, base, donors, weights, model=None, glob=None, seed=0, device="cpu"):
    model_params, global_params = resolve(name, weights, model, glob)
    base_t = None if base is None else t32(base).to(device)  # methods may overwrite inputs
    gen = torch.Generator(device=device).manual_seed(seed)
    out = get_method(name).merge(
        [t32(d).to(device) for d in donors], base_t, model_params, global_params, gen
    )
    assert out.dtype == torch.float32 and out.shape == donors[0].shape
    return out.cpu().double().numpy()


# --- the float64 reference (merge-methods.md, written independently) ----------------------


def ref_magnitude_mask(d, density):
    flat = np.abs(d).ravel()
    keep = int(density * flat.size)
    mask = np.zeros(flat.size)
    mask[np.argsort(-flat, kind="stable")[:keep]] = 1
    return mask.reshape(d.shape)


def ref_breadcrumbs_mask(d, density, gamma):
    n = d.size
    n_top = int(gamma * n)
    n_bottom = n - int(density * n) - n_top
    if n_bottom < 0:
        n_top += n_bottom
        n_bottom = 0
    ascending = np.argsort(np.abs(d).ravel(), kind="stable")
    mask = np.zeros(n)
    mask[ascending[n_bottom : n - n_top]] = 1
    return mask.reshape(d.shape)


def ref_gta(base, donors, weights, *, consensus, normalize, lam, masks=None, rescale=False):
    deltas = [t - base for t in donors]
    if masks is not None:
        sparse = []
        for d, m in zip(deltas, masks, strict=True):
            s = d * m
            before, after = np.abs(d).sum(), np.abs(s).sum()
            if rescale and before >= 1e-7 and after >= 1e-7:
                s = s * (before / after)
            sparse.append(s)
        deltas = sparse
    w = np.array(weights).reshape((-1,) + (1,) * base.ndim)
    m = w * np.stack(deltas)
    if consensus:
        elected = np.where(m.sum(axis=0) >= 0, 1.0, -1.0)
        kept = np.sign(m) == elected
        mixed = (m * kept).sum(axis=0)
        divisor = (w * kept).sum(axis=0)
        divisor[divisor == 0] = 1
    else:
        mixed = m.sum(axis=0)
        divisor = w.sum()
        if abs(divisor) < 1e-8:
            divisor = 1.0
    if normalize:
        mixed = mixed / divisor
    return base + lam * mixed


def ref_linear(donors, weights, normalize):
    out = sum(w * t for w, t in zip(weights, donors, strict=True))
    total = sum(weights)
    return out / total if normalize and abs(total) >= 1e-8 else out


def close(actual, expected, scale=1.0):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-6 * scale)


def random_masks(name, base, donors, density, epsilon, seed):
    """The keep masks the method draws: its public sparsifier, donor by donor, same seed."""
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for t in donors:
        d = t32(t) - t32(base)
        if GTA[name][1] == "random":
            kept = random_prune(d, density, gen)
        else:
            kept = della_prune(d, density, epsilon, gen)
        masks.append((kept != 0).double().numpy())
    return masks


# --- generalized task arithmetic ------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weights", WEIGHT_SETS)
@pytest.mark.parametrize("lam", [1.0, 0.7])
@pytest.mark.parametrize("normalize", [False, True])
def test_task_arithmetic(shape, weights, lam, normalize):
    base, donors = normal_inputs(shape, len(weights), seed=len(weights))
    out = run(
        "task_arithmetic", base, donors, weights, glob={"lambda": lam, "normalize": normalize}
    )
    expected = ref_gta(base, donors, weights, consensus=False, normalize=normalize, lam=lam)
    close(out, expected)


def test_seed_recipe():
    base, (orca, wizard) = normal_inputs((32, 8), 2, seed=7)
    out = run("task_arithmetic", base, [orca, wizard], [1.0, 0.3])
    close(out, base + 1.0 * (orca - base) + 0.3 * (wizard - base))


@pytest.mark.parametrize("name", ["ties", "breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weights", WEIGHT_SETS)
@pytest.mark.parametrize("normalize", [False, True])
def test_rank_sparsified(name, shape, weights, normalize):
    consensus, sparsifier, _, _ = GTA[name]
    base, donors = grid_inputs(shape, len(weights), seed=len(weights) + len(shape))
    densities = [0.5, 0.2, 0.8, 0.35][: len(weights)]
    gamma = 0.05
    masks = []
    for t, k in zip(donors, densities, strict=True):
        d = t - base
        if sparsifier == "magnitude":
            masks.append(ref_magnitude_mask(d, k))
        else:
            masks.append(ref_breadcrumbs_mask(d, k, gamma))
    model_params, global_params = resolve(
        name, weights, model={"gamma": gamma} if "gamma" in METHODS[name].model_params else {}
    )
    for p, k in zip(model_params, densities, strict=True):
        p["density"] = k
    for rescale in (False, True):
        global_params.update(normalize=normalize, rescale=rescale, **{"lambda": 0.8})
        gen = torch.Generator().manual_seed(0)
        out = METHODS[name].merge(
            [t32(d) for d in donors], t32(base), model_params, global_params, gen
        )
        expected = ref_gta(
            base, donors, weights, consensus=consensus, normalize=normalize, lam=0.8,
            masks=masks, rescale=rescale,
        )  # fmt: skip
        close(out.double().numpy(), expected, scale=10)


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties", "della", "della_linear"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weights", WEIGHT_SETS)
@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_random_sparsified(name, shape, weights, rescale, normalize):
    consensus = GTA[name][0]
    base, donors = grid_inputs(shape, len(weights), seed=11)
    density, epsilon, seed = 0.45, 0.2, 1234
    masks = random_masks(name, base, donors, density, epsilon, seed)
    for mask in masks:
        assert 0 < mask.mean() < 1
    glob = {"normalize": normalize, "rescale": rescale, "lambda": 1.3}
    model = {"density": density, "epsilon": epsilon} if "della" in name else {"density": density}
    out = run(name, base, donors, weights, model=model, glob=glob, seed=seed)
    expected = ref_gta(
        base, donors, weights, consensus=consensus, normalize=normalize, lam=1.3,
        masks=masks, rescale=rescale,
    )  # fmt: skip
    close(out, expected, scale=10)


def test_defaults_table():
    for name, (_, _, normalize, rescale) in GTA.items():
        spec = get_method(name)
        assert spec.needs_base
        assert spec.merge is not None
        assert dict(spec.global_params) == {
            "normalize": normalize,
            "rescale": rescale,
            "lambda": 1.0,
            "int8_mask": False,
        }
        expected = {"weight": REQUIRED, "density": 1.0}
        if name.startswith("breadcrumbs"):
            expected["gamma"] = 0.01
        if name.startswith("della"):
            expected["epsilon"] = 0.15
        assert dict(spec.model_params) == expected


@pytest.mark.parametrize("name", [n for n in GTA if n != "task_arithmetic"])
def test_density_one_is_no_sparsification(name):
    base, donors = normal_inputs((12, 9), 3, seed=5)
    weights = [0.9, -0.4, 0.6]
    spec = get_method(name)
    for rescale in (False, True):
        glob = {"rescale": rescale}
        out = run(name, base, donors, weights, model={"density": 1.0}, glob=glob, seed=1)
        out_other_seed = run(name, base, donors, weights, model={"density": 1.0}, glob=glob)
        expected = ref_gta(
            base, donors, weights, consensus=GTA[name][0],
            normalize=spec.global_params["normalize"], lam=1.0,
        )  # fmt: skip
        close(out, expected)
        np.testing.assert_array_equal(out, out_other_seed)


def test_breadcrumbs_counts():
    n = 1000
    d = (np.random.default_rng(3).permutation(n) + 1.0) * np.where(np.arange(n) % 2, 1, -1)
    base = np.zeros(n)
    ranks = np.argsort(np.argsort(np.abs(d)))  # 0 = smallest |d|
    cases = [
        # density, gamma, kept ranks [lo, hi)
        (0.3, 0.05, 650, 950),  # drop 50 largest and 650 smallest
        (0.98, 0.05, 0, 980),  # n_bottom = -30: only 20 dropped from the top
        (0.5, 0.0, 500, 1000),  # no outliers dropped
        (1.0, 0.05, 0, 1000),  # density 1: keep everything
    ]
    for density, gamma, lo, hi in cases:
        out = run("breadcrumbs", base, [base + d], [1.0], {"density": density, "gamma": gamma})
        kept = out != 0
        assert kept.sum() == hi - lo
        np.testing.assert_array_equal(kept, (ranks >= lo) & (ranks < hi))
        np.testing.assert_array_equal(out[kept], d[kept])


def test_magnitude_counts():
    base, (t,) = grid_inputs((40, 25), 1, seed=9)
    for density, count in [(0.1, 100), (0.333, 333), (0.999, 999), (0.0005, 0)]:
        out = run("ties", base, [t], [1.0], {"density": density}) - base
        assert np.count_nonzero(out) == count
        np.testing.assert_array_equal(out != 0, ref_magnitude_mask(t - base, density) != 0)


@pytest.mark.parametrize("name", ["ties", "breadcrumbs"])
def test_rank_ties_keep_exact_counts(name):
    # Only five distinct magnitudes: still exactly int(k * n) entries stay, and the kept
    # magnitudes are the right window of the sorted magnitudes.
    rng = np.random.default_rng(17)
    n = 600
    d = rng.integers(1, 6, size=n) * rng.choice([-1.0, 1.0], size=n)
    for density, gamma in [(0.5, 0.1), (0.37, 0.02), (0.9, 0.2)]:
        model = {"density": density}
        n_top = 0
        if name == "breadcrumbs":
            model["gamma"] = gamma
            n_top = min(int(gamma * n), n - int(density * n))
        out = run(name, np.zeros(n), [d], [1.0], model=model)
        kept = out != 0
        keep = int(density * n)
        assert kept.sum() == keep
        window = np.sort(np.abs(d))[n - n_top - keep : n - n_top]
        np.testing.assert_array_equal(np.sort(np.abs(out[kept])), window)
        np.testing.assert_array_equal(out[kept], d[kept])


def test_zero_density_drops_everything():
    base, donors = normal_inputs((8, 8), 2, seed=2)
    for name in GTA:
        if name == "task_arithmetic":  # takes a density but never sparsifies
            continue
        model = {"density": 0.0, "epsilon": 0.1} if "della" in name else {"density": 0.0}
        out = run(name, base, donors, [1.0, 0.5], model=model)
        np.testing.assert_array_equal(out, t32(base).double().numpy())


# --- normalize and sign consensus edge cases --------------------------------------------


def test_normalize_zero_weight_sum_divides_by_one():
    base, donors = normal_inputs((10, 4), 2, seed=4)
    weights = [0.5, -0.5]
    out = run("task_arithmetic", base, donors, weights, glob={"normalize": True})
    close(out, base + 0.5 * (donors[0] - base) - 0.5 * (donors[1] - base))
    out = run("linear", None, donors, weights)
    close(out, 0.5 * donors[0] - 0.5 * donors[1])


def test_ties_kept_weights_summing_to_zero():
    # m1 = 1 * (+2) and m2 = -1 * (-3) are both positive: both kept, weight sum 0 -> 1.
    base = np.zeros(3)
    donors = [np.array([2.0, 2.0, 0.0]), np.array([-3.0, 3.0, 5.0])]
    out = run("ties", base, donors, [1.0, -1.0])
    # element 1: m = (2, -3), elected -, only m2 kept: -3 / -1 = 3.
    # element 2: m = (0, -5), elected -, m1 = 0 is never kept: -5 / -1 = 5.
    np.testing.assert_allclose(out, [5.0, 3.0, 5.0])


def test_consensus_zero_sum_elects_plus():
    base = np.zeros(2)
    donors = [np.array([1.0, -1.0]), np.array([-1.0, 1.0])]
    out = run("ties", base, donors, [1.0, 1.0], glob={"normalize": False})
    np.testing.assert_allclose(out, [1.0, 1.0])


def test_della_epsilon_bounds():
    base, donors = normal_inputs((4, 4), 1, seed=0)
    with pytest.raises(InputError, match="density \\+ epsilon"):
        run("della", base, donors, [1.0], {"density": 0.9, "epsilon": 0.15})
    with pytest.raises(InputError):
        run("della_linear", base, donors, [1.0], {"density": 0.1, "epsilon": 0.15})
    run("della", base, donors, [1.0], {"density": 1.0, "epsilon": 0.15})  # no-op: fine


# --- the sparsifiers' randomness ------------------------------------------------------------


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_random_methods_are_seeded(name):
    base, donors = normal_inputs((20, 30), 3, seed=8)
    model = {"density": 0.5}
    a = run(name, base, donors, [1.0, 0.5, -0.2], model=model, seed=42)
    b = run(name, base, donors, [1.0, 0.5, -0.2], model=model, seed=42)
    c = run(name, base, donors, [1.0, 0.5, -0.2], model=model, seed=43)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_keep_rate():
    d = torch.ones(200_000)
    kept = random_prune(d, 0.3, torch.Generator().manual_seed(0))
    assert abs(kept.mean().item() - 0.3) < 0.005
    assert set(kept.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("m, density, epsilon", [(3, 0.5, 0.4), (8, 0.4, 0.3)])
def test_della_keep_probability_by_rank(m, density, epsilon):
    rows = 30_000
    rng = np.random.default_rng(m)
    magnitudes = np.stack([rng.permutation(m) + 1.0 for _ in range(rows)])
    kept = della_prune(t32(-magnitudes), density, epsilon, torch.Generator().manual_seed(1))
    kept = (kept != 0).numpy()
    for rank in range(m):
        expected = density - epsilon + rank / (m - 1) * 2 * epsilon
        rate = kept[magnitudes == rank + 1].mean()
        assert abs(rate - expected) < 0.015, (rank, rate, expected)


def test_della_ranks_along_dim_one():
    # 3-D: ranks along dim 1 for each (i, k); a 1-D tensor is one row.
    x = torch.arange(1.0, 5.0).view(1, 4, 1).repeat(20_000, 1, 3)
    kept = della_prune(x.clone(), 0.5, 0.3, torch.Generator().manual_seed(2)) != 0
    rates = kept.double().mean(dim=(0, 2))
    np.testing.assert_allclose(rates.numpy(), [0.2, 0.4, 0.6, 0.8], atol=0.015)
    line = torch.arange(1.0, 5.0).repeat(20_000)
    kept_1d = della_prune(line, 0.5, 0.3, torch.Generator().manual_seed(3)) != 0
    assert 0.49 < kept_1d.double().mean().item() < 0.51


def test_della_one_column_keeps_with_density():
    kept = della_prune(torch.ones(50_000, 1), 0.3, 0.1, torch.Generator().manual_seed(0))
    assert abs(kept.mean().item() - 0.3) < 0.01


def test_rescale_keeps_l1_norm():
    base, (t,) = grid_inputs((64, 32), 1, seed=6)  # exact in float32
    l1 = np.abs(t - base).sum()
    for name in GTA:
        if name == "task_arithmetic":
            continue
        model = {"density": 0.4, "epsilon": 0.2} if "della" in name else {"density": 0.4}
        out = run(name, base, [t], [1.0], model=model, glob={"rescale": True, "normalize": False})
        assert np.count_nonzero(out - base) < 0.6 * base.size
        np.testing.assert_allclose(np.abs(out - base).sum(), l1, rtol=1e-4)


# --- linear -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weights", WEIGHT_SETS)
@pytest.mark.parametrize("normalize", [False, True])
def test_linear(shape, weights, normalize):
    _, donors = normal_inputs(shape, len(weights), seed=12)
    out = run("linear", None, donors, weights, glob={"normalize": normalize})
    close(out, ref_linear(donors, weights, normalize))


def test_linear_spec():
    spec = get_method("linear")
    assert not spec.needs_base
    assert dict(spec.global_params) == {"normalize": True}
    assert dict(spec.model_params) == {"weight": REQUIRED}


# --- chunkable ----------------------------------------------------------------------------

CHUNK_CASES = [
    # name, per-model overrides, global overrides, expected chunkable
    ("task_arithmetic", {}, {}, True),
    ("task_arithmetic", {"density": 0.5}, {"normalize": True}, True),
    ("linear", {}, {}, True),
    ("ties", {}, {}, True),
    ("ties", {"density": 0.5}, {}, False),
    ("dare_ties", {}, {}, True),
    ("dare_ties", {"density": 0.5}, {}, False),
    ("dare_ties", {"density": 0.5}, {"rescale": False}, True),
    ("dare_linear", {"density": 0.5}, {"rescale": False}, True),
    ("dare_linear", {"density": 0.5}, {}, False),
    ("breadcrumbs", {}, {"rescale": True}, True),
    ("breadcrumbs", {"density": 0.9}, {}, False),
    ("breadcrumbs_ties", {}, {}, True),
    ("breadcrumbs_ties", {"density": 0.9}, {}, False),
    ("della", {"density": 0.5}, {}, False),
    ("della", {"density": 0.5}, {"rescale": False}, True),
    ("della_linear", {"density": 0.5}, {"rescale": False}, True),
    ("della_linear", {}, {}, True),
]


def merge_in_chunks(name, base, donors, weights, model, glob, chunks):
    model_params, global_params = resolve(name, weights, model, glob)
    spec = get_method(name)
    base_t = None if base is None else t32(base)
    whole = spec.merge(
        [t32(d) for d in donors], base_t, model_params, global_params,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    parts = []
    for rows in np.array_split(np.arange(donors[0].shape[0]), chunks):
        part = slice(rows[0], rows[-1] + 1)
        parts.append(
            spec.merge(
                [t32(d[part]) for d in donors],
                None if base is None else t32(base[part]),
                model_params,
                global_params,
                torch.Generator().manual_seed(0),
            )  # fmt: skip
        )
    return whole, torch.cat(parts)


@pytest.mark.parametrize("name, model, glob, expected", CHUNK_CASES)
def test_chunkable_flags(name, model, glob, expected):
    model_params, global_params = resolve(name, [1.0, 0.5], model, glob)
    assert get_method(name).chunkable(global_params, model_params) is expected


DETERMINISTIC_CHUNKABLE = [
    c
    for c in CHUNK_CASES
    if c[3] and not (c[1].get("density", 1) < 1 and c[0] != "task_arithmetic")
]


@pytest.mark.parametrize("name, model, glob, expected", DETERMINISTIC_CHUNKABLE)
def test_chunkable_is_truthful(name, model, glob, expected):
    base, donors = grid_inputs((24, 16), 3, seed=21)
    weights = [0.8, -0.35, 0.6]
    if name == "linear":
        base = None
    whole, chunked = merge_in_chunks(name, base, donors, weights, model, glob, chunks=5)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "name, model",
    [("ties", {"density": 0.5}), ("breadcrumbs", {"density": 0.5, "gamma": 0.1})],
)
def test_rank_sparsifiers_are_not_chunkable(name, model):
    base, donors = grid_inputs((24, 16), 2, seed=22)
    whole, chunked = merge_in_chunks(name, base, donors, [1.0, 0.5], model, {}, chunks=4)
    assert not torch.allclose(whole, chunked)


RANDOM_CHUNKABLE = [c for c in CHUNK_CASES if c not in DETERMINISTIC_CHUNKABLE and c[3]]


@pytest.mark.parametrize("name, model, glob, expected", RANDOM_CHUNKABLE)
def test_random_chunkable_is_truthful(name, model, glob, expected):
    """Chunks draw from fresh generators, so compare with the whole-tensor reference
    under the draws the chunks made: equal for element-/row-wise pruning."""
    base, donors = grid_inputs((24, 16), 3, seed=23)
    weights = [0.8, -0.35, 0.6]
    model = {**model, "epsilon": 0.2} if "della" in name else model
    density = model["density"]
    for rescale in (False, True):
        glob = {**glob, "rescale": rescale}
        _, chunked = merge_in_chunks(name, base, donors, weights, model, glob, chunks=3)
        masks = [[] for _ in donors]
        for rows in np.array_split(np.arange(24), 3):
            part = slice(rows[0], rows[-1] + 1)
            chunk_masks = random_masks(name, base[part], [d[part] for d in donors], density,
                                       0.2, seed=0)  # fmt: skip
            for all_masks, mask in zip(masks, chunk_masks, strict=True):
                all_masks.append(mask)
        _, global_params = resolve(name, weights, model, glob)
        expected = ref_gta(
            base, donors, weights, consensus=GTA[name][0],
            normalize=global_params["normalize"], lam=1.0,
            masks=[np.concatenate(m) for m in masks], rescale=rescale,
        )  # fmt: skip
        if rescale:  # whole-tensor L1 norms: chunks cannot see them
            assert not np.allclose(chunked.double().numpy(), expected, rtol=1e-4)
        else:
            close(chunked.double().numpy(), expected, scale=10)


# --- registry -----------------------------------------------------------------------------


def test_method_names():
    names = method_names()
    assert names == sorted(names)
    assert set(names) == set(GTA) | {"linear"} | set(PENDING)


def test_unknown_method():
    with pytest.raises(KeyError, match="known methods"):
        get_method("frankenmerge")


def test_table_is_read_only():
    assert isinstance(METHODS, MappingProxyType)
    with pytest.raises(TypeError):
        METHODS["x"] = METHODS["ties"]  # type: ignore[index]
    with pytest.raises(TypeError):
        METHODS["ties"].global_params["lambda"] = 2.0  # type: ignore[index]


# --- device -------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(GTA) + ["linear"])
def test_runs_on_cuda(name):
    base, donors = grid_inputs((32, 16), 3, seed=30)
    weights = [1.0, -0.4, 0.6]
    model = {"density": 0.5, "epsilon": 0.2} if "della" in name else {"density": 0.5}
    if name == "linear":
        base, model = None, {}
    gpu = run(name, base, donors, weights, model=model, device="cuda")
    if GTA.get(name, (None, None))[1] in (None, "magnitude", "breadcrumbs"):
        close(gpu, run(name, base, donors, weights, model=model), scale=10)
