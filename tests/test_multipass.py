"""Methods in passes over row-chunks (``MethodSpec.multipass``) against the same methods
on whole tensors, and the executor driving the passes."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import merge_engine.execute.executor as executor
from merge_engine import MergeError, run_merge
from merge_engine.errors import InputError
from merge_engine.methods import get_method
from merge_engine.methods.multipass import Chunk
from merge_engine.methods.radix import RadixSelect, key_value, order_keys
from merge_engine.methods.reductions import CPU_BLOCK
from merge_engine.methods.task_arithmetic import (
    RankRange,
    della_prune,
    keep_rank_range,
    random_prune,
)
from merge_engine.synth import write_model

from .conftest import TINY, load_model, recipe_text
from .test_lora import write_adapter
from .test_methods import GTA, ref_gta, resolve
from .test_methods_geometric import params

# --- driving a runner as the executor does ------------------------------------------------


def spans(rows, step):
    return [(r, min(step, rows - r)) for r in range(0, rows, step)]


def in_passes(name, base, donors, model_params, global_params, step, *, order=0, seed=0,
              device="cpu"):
    """The method over chunks of ``step`` rows, each pass's chunks in a shuffled order
    (``order`` seeds it), chunk ``i``'s generator seeded ``seed + i`` in every pass.
    Returns (result, statistics passes run)."""
    runner = get_method(name).multipass(global_params, model_params, donors[0].numel())
    assert runner is not None
    chunks = spans(donors[0].shape[0], step)
    shuffle = random.Random(order)

    def chunk(i):
        r0, rows = chunks[i]
        return Chunk(
            i, [d[r0:r0 + rows].to(device, copy=True) for d in donors],
            None if base is None else base[r0:r0 + rows].to(device, copy=True),
            torch.Generator(device=device).manual_seed(seed + i))

    passes = 0
    while runner.next_pass():
        passes += 1
        for i in shuffle.sample(range(len(chunks)), len(chunks)):
            runner.add(i, runner.measure(chunk(i)))
    out = {i: runner.apply(chunk(i)) for i in shuffle.sample(range(len(chunks)), len(chunks))}
    return torch.cat([out[i] for i in range(len(chunks))]), passes


def whole(name, base, donors, model_params, global_params, device="cpu"):
    return get_method(name).merge([d.to(device, copy=True) for d in donors],
                                  None if base is None else base.to(device, copy=True),
                                  model_params, global_params,
                                  torch.Generator(device=device).manual_seed(0))


def bf16_family(shape, n_models, seed, scale=0.02):
    """bf16 values in float32, as models are read: task vectors with many equal magnitudes
    (ties at every cut) and exact zeros."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen).bfloat16().float()
    donors = [(base + scale * torch.randn(shape, generator=gen)).bfloat16().float()
              for _ in range(n_models)]
    return base, donors


def assert_same(actual, expected):
    """Bit for bit, signs of zeros included."""
    assert torch.equal(actual, expected)
    assert torch.equal(actual.signbit(), expected.signbit())


# --- exact rank cuts ----------------------------------------------------------------------


def rank_range_in_chunks(x, lo, hi, step, order):
    rr = RankRange(x.numel(), lo, hi)
    chunks = list(x.split(step))
    shuffle = random.Random(order)
    passes = 0
    while rr.phase != "done":
        for i in shuffle.sample(range(len(chunks)), len(chunks)):
            rr.add(i, rr.measure(chunks[i].clone()))
        rr.finish()
        passes += 1
    return torch.cat([rr.apply(c.clone(), i) for i, c in enumerate(chunks)]), passes


@pytest.mark.parametrize("kind", ["normal", "few magnitudes", "bf16 with zeros"])
def test_rank_range_is_keep_rank_range(kind):
    """Radix select and the per-chunk tie counts keep exactly the entries the
    whole-tensor function keeps, for any window and chunking."""
    rng = random.Random(kind)
    gen = torch.Generator().manual_seed(len(kind))
    for _ in range(120):
        rows, cols = rng.randint(1, 50), rng.randint(1, 30)
        if kind == "normal":
            x = torch.randn(rows, cols, generator=gen)
        elif kind == "few magnitudes":
            x = torch.randint(-3, 4, (rows, cols), generator=gen).float()
        else:
            x = torch.randn(rows, cols, generator=gen).bfloat16().float()
            x *= torch.rand(rows, cols, generator=gen) > 0.3
            x[0, 0] = -0.0
        n = x.numel()
        lo, hi = rng.randint(-2, n + 1), rng.randint(-2, n + 2)
        expected = keep_rank_range(x.clone().view(-1), lo, hi).view(rows, cols)
        got, _ = rank_range_in_chunks(x, lo, hi, rng.randint(1, rows), rng.random())
        assert_same(got, expected)


def test_order_keys_sort_like_the_values():
    x = torch.tensor([-float("inf"), -3.5, -1e-30, -0.0, 0.0, 1e-45, 2.0, float("inf")])
    keys = order_keys(x)
    assert (keys[1:] > keys[:-1]).all()
    assert all(torch.equal(key_value(int(k)), v) and key_value(int(k)).signbit() == v.signbit()
               for k, v in zip(keys, x, strict=True))


@pytest.mark.parametrize("kind", ["normal", "signed few values", "tiny negatives"])
def test_radix_select_is_kthvalue(kind):
    """Any ranks of values of any sign, in chunks in any order: torch.kthvalue's values,
    with how many lie below and equal them."""
    rng = random.Random(kind)
    gen = torch.Generator().manual_seed(len(kind))
    for _ in range(60):
        n = rng.randint(1, 700)
        if kind == "normal":
            x = torch.randn(n, generator=gen) * 10.0 ** torch.randint(-30, 30, (n,), generator=gen)
        elif kind == "signed few values":
            x = torch.randint(-3, 4, (n,), generator=gen).float()
            x[x == 0] = -0.0
        else:  # importances a hair below 0, as rounding leaves them, among positives
            x = torch.randn(n, generator=gen).abs() * (torch.rand(n, generator=gen) - 0.2)
            x[x < 0] *= 1e-9
        ranks = [rng.randrange(n) for _ in range(3)]
        select = RadixSelect(ranks)
        chunks = list(x.split(rng.randint(1, n)))
        passes = 0
        while select.phase != "done":
            for i in random.Random(passes).sample(range(len(chunks)), len(chunks)):
                select.add(select.measure(order_keys(chunks[i])))
            select.finish()
            passes += 1
        assert passes == 2
        for f in select.found:
            value = key_value(f.key)
            assert value == torch.kthvalue(x, f.rank + 1).values
            assert f.below == int((x < value).sum()) and f.equal == int((x == value).sum())


def test_rank_range_passes():
    x = torch.randn(100, 10, generator=torch.Generator().manual_seed(1))
    assert rank_range_in_chunks(x, 0, 1000, 7, 0)[1] == 0  # keeps all: no pass
    assert rank_range_in_chunks(x, 500, 1000, 7, 0)[1] == 2  # distinct: no tie pass
    ties = torch.randint(1, 4, (100, 10), generator=torch.Generator().manual_seed(2)).float()
    assert rank_range_in_chunks(ties, 500, 900, 7, 0)[1] == 3


RANK_CASES = [
    ("ties", {"density": 0.5}, {}),
    ("ties", {"density": 0.13}, {"normalize": False, "lambda": 0.7}),
    ("ties", {"density": 0.5}, {"rescale": True}),
    ("breadcrumbs", {"density": 0.6, "gamma": 0.05}, {}),
    ("breadcrumbs", {"density": 0.97, "gamma": 0.1}, {}),  # top cut shrinks: n_bottom < 0
    ("breadcrumbs_ties", {"density": 0.4, "gamma": 0.01}, {"normalize": True}),
]


@pytest.mark.parametrize("name, model, glob", RANK_CASES)
@pytest.mark.parametrize("n_models", [1, 3])
def test_rank_methods_are_bit_identical(name, model, glob, n_models):
    """Rank cuts are exact and the mixing element-wise: the same bits as whole tensors
    (rescale's L1 sums too, here, as the tensor is smaller than one reduction block)."""
    base, donors = bf16_family((61, 37), n_models, seed=n_models)
    weights = [1.0, -0.4, 0.7][:n_models]
    model_params, global_params = resolve(name, weights, model, glob)
    expected = whole(name, base, donors, model_params, global_params)
    for step, order in [(5, 0), (13, 1), (61, 2)]:
        got, passes = in_passes(name, base, donors, model_params, global_params, step,
                                order=order)
        assert passes >= 2
        assert_same(got, expected)


def test_density_one_or_zero_models_alongside_pruned_ones():
    base, donors = bf16_family((40, 30), 3, seed=5)
    model_params, global_params = resolve("ties", [0.5, 0.3, 0.9])
    for p, density in zip(model_params, [1.0, 0.0, 0.25], strict=True):
        p["density"] = density
    expected = whole("ties", base, donors, model_params, global_params)
    assert_same(in_passes("ties", base, donors, model_params, global_params, 7)[0], expected)


# --- sums: exact on block boundaries, within rounding elsewhere ----------------------------

SUM_CASES = [
    ("slerp", 1, {}, {"t": 0.3}),
    ("nuslerp", 2, {"weight": [0.3, 0.6]}, {}),
    ("multislerp", 3, {"weight": [0.2, 0.5, 0.3]}, {}),
    ("model_stock", 3, {}, {}),
    ("karcher", 3, {}, {}),
    ("arcee_fusion", 1, {}, {}),
    ("sce", 3, {}, {}),
    ("sce", 3, {}, {"select_topk": 0.3}),
    ("ramplus_tl", 3, {}, {"epsilon": 0.004}),
    ("ties", 2, {"density": 0.4, "weight": [1.0, 0.5]}, {"rescale": True}),
    ("breadcrumbs", 2, {"density": 0.5, "gamma": 0.02, "weight": [1.0, 0.5]},
     {"rescale": True}),
]


def sum_case(name, n_models, model, glob, shape, seed):
    base, donors = bf16_family(shape, n_models, seed)
    models = [{k: (v[i] if isinstance(v, list) else v) for k, v in model.items()}
              for i in range(n_models)]
    model_params, global_params = params(name, n_models, models, glob)
    return base, donors, model_params, global_params


@pytest.mark.parametrize("name, n_models, model, glob", SUM_CASES)
def test_sum_methods_are_bit_identical_on_block_boundaries(name, n_models, model, glob):
    """Chunks of whole reduction blocks: the same block sums, added in the same order."""
    cols = 512
    shape = (3 * CPU_BLOCK // cols + 50, cols)  # 3 blocks and a partial one
    base, donors, model_params, global_params = sum_case(name, n_models, model, glob,
                                                         shape, seed=11)
    expected = whole(name, base, donors, model_params, global_params)
    got, passes = in_passes(name, base, donors, model_params, global_params,
                            CPU_BLOCK // cols, order=3)
    assert passes >= 1
    assert_same(got, expected)


@pytest.mark.parametrize("name, n_models, model, glob", SUM_CASES)
def test_sum_methods_are_within_rounding_elsewhere(name, n_models, model, glob):
    """Chunks that cut reduction blocks change how the float64 block sums round (each
    accurate to about 1e-16 relative), so the statistics move by about that much and the
    factors made of them likewise; a float32 result then differs by
    at most one rounding of each term it adds up: 2 ulps of the largest term, bounded
    here by 2 ulps of max(|result|, |inputs|) per element."""
    shape = (2 * CPU_BLOCK // 300 + 7, 300)
    base, donors, model_params, global_params = sum_case(name, n_models, model, glob,
                                                         shape, seed=12)
    expected = whole(name, base, donors, model_params, global_params)
    got, _ = in_passes(name, base, donors, model_params, global_params, 97, order=4)
    scale = torch.stack([expected.abs(), base.abs(), *(d.abs() for d in donors)]).amax(0)
    assert ((got - expected).abs() <= 2 * 2.0**-23 * scale).all()


def test_arcee_fusion_in_passes_with_negative_importances():
    """Rows where the donor is the base but for rounding-sized changes have a KL a hair
    below 0 (negative importances): the quantiles are still exact, the result the same."""
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(300, 40, generator=gen)
    donor = base.clone()
    donor[::2] += 0.05 * torch.randn(150, 40, generator=gen)
    donor[1::2] += 1e-6 * torch.randn(150, 40, generator=gen)
    kl_terms = torch.softmax(donor, -1) + 1e-8
    kl = (kl_terms * (kl_terms / (torch.softmax(base, -1) + 1e-8)).log()).sum(-1)
    assert (kl < 0).sum() > 20
    model_params, global_params = params("arcee_fusion", 1, [{}])
    expected = whole("arcee_fusion", base, [donor], model_params, global_params)
    for step in (1, 7, 300):
        got, passes = in_passes("arcee_fusion", base, [donor], model_params, global_params,
                                step, order=step)
        assert passes == 2
        assert_same(got, expected)


def test_multislerp_cancelling_weights_fail_in_passes_too():
    """Opposite task vectors with equal weights (and a zero one): no mean direction, an
    input error from the statistics as from the whole tensors."""
    base, (d1, _) = bf16_family((40, 20), 2, seed=6)
    donors = [d1, 2 * base - d1, base.clone()]
    model_params, global_params = params("multislerp", 3, [{"weight": 1.0}, {"weight": 1.0},
                                                           {"weight": 0.0}])
    with pytest.raises(InputError, match="weighted mean of the models' directions is zero"):
        whole("multislerp", base, donors, model_params, global_params)
    with pytest.raises(InputError, match="weighted mean of the models' directions is zero"):
        in_passes("multislerp", base, donors, model_params, global_params, 7)


def test_nuslerp_per_last_dim_vector_needs_no_passes():
    """One angle per vector along the last dim: row-chunks hold whole vectors."""
    model_params, global_params = params("nuslerp", 2, {"weight": 0.5},
                                         {"nuslerp_flatten": False})
    assert get_method("nuslerp").multipass(global_params, model_params, 100) is None
    assert get_method("nuslerp").chunkable(global_params, model_params)


@pytest.mark.parametrize("shape", [(300, 40), (31, 6, 5)])
@pytest.mark.parametrize("n_models", [2, 3])  # 3: two donors and a base
def test_row_wise_nuslerp_in_passes(shape, n_models):
    """One angle per vector along dim 0: per-column sums over the chunks, added in chunk
    order whatever order they come in; float64 sums cut elsewhere, so the factors agree
    to about 1e-16 and the result within the 2-ulp bound of the other sums."""
    base, donors = bf16_family(shape, 2, seed=sum(shape))
    if n_models == 2:
        base = None
    model_params, global_params = params("nuslerp", 2, [{"weight": 0.3}, {"weight": 0.6}],
                                         {"nuslerp_flatten": False, "nuslerp_row_wise": True})
    expected = whole("nuslerp", base, donors, model_params, global_params)
    inputs = [expected.abs(), *(d.abs() for d in donors)] + ([] if base is None
                                                              else [base.abs()])
    scale = torch.stack(inputs).amax(0)
    for step in (1, 7, shape[0]):
        got, passes = in_passes("nuslerp", base, donors, model_params, global_params, step,
                                order=step)
        assert passes == 1
        assert ((got - expected).abs() <= 2 * 2.0**-23 * scale).all()
    plain = whole("nuslerp", base, donors, model_params, {**global_params,
                                                          "nuslerp_row_wise": False})
    assert not torch.equal(plain, expected)  # the angles really are per column


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name, n_models, model, glob",
                         [("ties", 2, {"density": 0.3, "weight": [1.0, 0.5]}, {}), *SUM_CASES])
def test_passes_on_cuda(name, n_models, model, glob):
    """The same code on device tensors (the executor's CUDA path): rank cuts exact. The
    whole tensor is one device reduction block here, summed by a float32 tree (error up
    to about log2(n) * 2^-24 relative, 1e-6) against the chunks' smaller blocks: the
    factors may move by that much, so the bound is 2^-16 of the largest term."""
    shape = (2 * CPU_BLOCK // 300 + 7, 300)
    base, donors, model_params, global_params = sum_case(name, n_models, model, glob,
                                                         shape, seed=13)
    expected = whole(name, base, donors, model_params, global_params, "cuda").cpu()
    got, _ = in_passes(name, base, donors, model_params, global_params, 97, device="cuda")
    got = got.cpu()
    if name == "ties":
        assert_same(got, expected)
    scale = torch.stack([expected.abs(), base.abs(), *(d.abs() for d in donors)]).amax(0)
    assert ((got - expected).abs() <= 2.0**-16 * scale).all()


# --- random draws: per chunk, the same in every pass ---------------------------------------


def _random(delta, p, gen):
    return random_prune(delta, float(p["density"]), gen)


def _della(delta, p, gen):
    return della_prune(delta, float(p["density"]), float(p["epsilon"]), gen)


SPARSIFY = {"dare_linear": _random, "dare_ties": _random, "della": _della,
            "della_linear": _della}
"""The methods' own random sparsifiers, to redraw the masks a run drew."""


@pytest.mark.parametrize("name", SPARSIFY)
def test_random_rescale_uses_whole_tensor_l1_norms(name):
    """The masks are the chunks' own draws (each chunk's generator, donors in order), the
    same in the rescale pass and the apply pass; the factors are the whole task
    vectors' L1 ratios. Checked against the float64 reference under those masks."""
    base, donors = bf16_family((50, 24), 3, seed=8)
    weights = [0.8, -0.35, 0.6]
    model = {"density": 0.4, "epsilon": 0.2} if "della" in name else {"density": 0.4}
    model_params, global_params = resolve(name, weights, model)
    assert global_params["rescale"]
    got, passes = in_passes(name, base, donors, model_params, global_params, 9, seed=40)
    assert passes == 1
    again, _ = in_passes(name, base, donors, model_params, global_params, 9, order=5, seed=40)
    assert_same(again, got)
    masks = [[] for _ in donors]
    for i, (r0, rows) in enumerate(spans(50, 9)):
        gen = torch.Generator().manual_seed(40 + i)
        for all_masks, d, p in zip(masks, donors, model_params, strict=True):
            delta = (d[r0:r0 + rows] - base[r0:r0 + rows]).contiguous()
            all_masks.append(SPARSIFY[name](delta, p, gen) != 0)
    expected = ref_gta(base.double().numpy(), [d.double().numpy() for d in donors], weights,
                       consensus=GTA[name][0], normalize=global_params["normalize"], lam=1.0,
                       masks=[torch.cat(m).double().numpy() for m in masks], rescale=True)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-6)


# --- the executor --------------------------------------------------------------------------


@pytest.fixture
def spy(monkeypatch):
    """The runners the executor makes, by output tensor name."""
    made = {}
    real = executor.Executor._multipass

    def record(self, task):
        runner = real(self, task)
        if runner is not None:
            made[task.out.name] = runner
        return runner

    monkeypatch.setattr(executor.Executor, "_multipass", record)
    return made


def tiny_chunks(monkeypatch, chunk=100, min_chunks=2):
    monkeypatch.setattr(executor, "DEFAULT_CHUNK_ELEMS", chunk)
    monkeypatch.setattr(executor, "MULTIPASS_MIN_CHUNKS", min_chunks)


def merge(text, out, **kw):
    run_merge(text, out, device="cpu", **kw)
    return load_model(out)


def assert_models_equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


EXECUTOR_CASES = {
    "ties": ({"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.3}, ""),
    "breadcrumbs_ties": ({"weight": 0.6, "density": 0.5, "gamma": 0.05},
                         {"weight": 0.4, "density": 0.9}, ""),
    "slerp": ({}, None, "parameters:\n  t: 0.3\n"),
    "model_stock": ({}, {}, ""),
    "karcher": ({}, {}, ""),
    "nuslerp": ({"weight": 0.3}, {"weight": 0.6},
                "parameters:\n  nuslerp_flatten: false\n  nuslerp_row_wise: true\n"),
    "arcee_fusion": ({}, None, ""),
    "sce": ({}, {}, "parameters:\n  select_topk: 0.5\n"),
}


@pytest.mark.parametrize("method", EXECUTOR_CASES)
def test_executor_in_passes_matches_whole_tensors(family, tmp_path, monkeypatch, spy, method):
    base, d1, d2 = family
    p1, p2, extra = EXECUTOR_CASES[method]
    models = [(d1, p1)] + ([(d2, p2)] if p2 is not None else [])
    text = recipe_text(method, base, models, extra)
    expected = merge(text, tmp_path / "whole")
    assert not spy
    tiny_chunks(monkeypatch)
    got = merge(text, tmp_path / "passes")
    assert "model.embed_tokens.weight" in spy and "model.layers.0.mlp.up_proj.weight" in spy
    assert not any(name.endswith("norm.weight") for name in spy)  # 1-D: whole
    if method in ("ties", "breadcrumbs_ties", "arcee_fusion"):  # exact cuts, row-wise KL
        assert_models_equal(got, expected)
    else:  # chunks of 100 elements cut the whole tensors' one reduction block
        for name in expected:
            torch.testing.assert_close(got[name].float(), expected[name].float(),
                                       rtol=2**-7, atol=1e-6)


def test_small_tensors_stay_whole(family, tmp_path, monkeypatch, spy):
    base, d1, _ = family
    tiny_chunks(monkeypatch, min_chunks=10_000)
    merge(recipe_text("ties", base, [(d1, {"weight": 1.0, "density": 0.5})]), tmp_path / "o")
    assert not spy


def test_random_passes_do_not_depend_on_scheduling(family, tmp_path, monkeypatch, spy):
    """dare_ties rescales by whole-tensor L1 norms of per-chunk draws: the same result
    with one worker or four, and again with the same seed."""
    base, d1, d2 = family
    text = recipe_text("dare_ties", base, [(d1, {"weight": 0.6, "density": 0.5}),
                                           (d2, {"weight": 0.4, "density": 0.3})])
    tiny_chunks(monkeypatch)
    results = []
    for workers in (1, 4, 4):
        monkeypatch.setattr(executor, "cpu_layout", lambda w=workers: (w, 1))
        results.append(merge(text, tmp_path / f"w{len(results)}", random_seed=3))
    assert spy
    assert_models_equal(results[0], results[1])
    assert_models_equal(results[1], results[2])
    other = merge(text, tmp_path / "seed4", random_seed=4)
    assert not all(torch.equal(other[n], results[0][n]) for n in other)


def test_lora_and_read_dtype_in_passes(tmp_path, monkeypatch, spy):
    """A LoRA base (added per chunk, in every pass) and ``dtype: float16`` reads."""
    base = write_model(tmp_path / "base", TINY, dtype=torch.float32)
    d1 = write_model(tmp_path / "d1", TINY, donor=1, delta_scale=0.01, dtype=torch.float32)
    adapter = write_adapter(tmp_path / "adapter")
    text = recipe_text("ties", f"{base}+{adapter}", [(d1, {"weight": 0.8, "density": 0.4})],
                       "dtype: float16\n")
    expected = merge(text, tmp_path / "whole")
    tiny_chunks(monkeypatch)
    got = merge(text, tmp_path / "passes")
    assert "model.layers.0.self_attn.q_proj.weight" in spy  # a LoRA target
    assert_models_equal(got, expected)


def test_nan_in_passes_fails_and_leaves_nothing(family, tmp_path, monkeypatch, spy):
    base, _, _ = family
    tiny_chunks(monkeypatch)
    huge = write_model(tmp_path / "huge", TINY, donor=1, delta_scale=1e37)
    text = recipe_text("breadcrumbs", base, [(huge, {"weight": 1000, "density": 0.5})])
    with pytest.raises(MergeError, match="produced NaN or infinite values"):
        run_merge(text, tmp_path / "out", device="cpu")
    assert spy
    assert not (tmp_path / "out").exists()
