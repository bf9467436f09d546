"""End-to-end merges of generated models, checked against float64 references."""

from __future__ import annotations

import json
import math

import pytest
import torch

from merge_engine import MergeError, PlanError, run_merge, validate
from merge_engine.synth import LlamaShape, write_family, write_model

from .conftest import TINY, load_model, recipe_text


def task_arithmetic_reference(base, donors, weights, lam=1.0):
    """merged = base + lam * sum_i w_i (t_i - base), in float64, per tensor."""
    out = {}
    for name, b in base.items():
        b64 = b.double()
        acc = sum(w * (d[name].double() - b64) for d, w in zip(donors, weights, strict=True))
        out[name] = b64 + lam * acc
    return out


def mismatch_fraction(merged, reference, dtype):
    """Fraction of elements that differ from the correctly rounded reference."""
    wrong = total = 0
    for name, ref in reference.items():
        wrong += (merged[name] != ref.to(dtype)).sum().item()
        total += ref.numel()
    return wrong / total


def test_seed_recipe_method_matches_float64(family, tmp_path):
    base, d1, d2 = family
    text = recipe_text("task_arithmetic", base, [(d1, {"weight": 1.0}), (d2, {"weight": 0.3})])
    result = run_merge(text, tmp_path / "out", device="cpu")
    merged = load_model(tmp_path / "out")
    reference = task_arithmetic_reference(
        load_model(base), [load_model(d1), load_model(d2)], [1.0, 0.3])
    assert merged.keys() == reference.keys()
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    assert mismatch_fraction(merged, reference, torch.bfloat16) <= 0.0005
    for name, ref in reference.items():  # never more than one rounding step away
        assert torch.allclose(merged[name].double(), ref, rtol=2 ** -7, atol=1e-9), name
    assert result.formula == ("merged = base + 1.0 * (donor-1 - base) + 0.3 * (donor-2 - base)")
    assert [(m.role, m.weight) for m in result.models] == [
        ("base", ""), ("donor", "1.0"), ("donor", "0.3")]


def test_output_layout_config_recipe_and_card(family, tmp_path):
    base, d1, d2 = family
    text = recipe_text("task_arithmetic", base, [(d1, {"weight": 0.5}), (d2, {"weight": 0.5})],
                       "out_dtype: float16\n")
    run_merge(text, tmp_path / "out", device="cpu", random_seed=7)
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "config.json", "generation_config.json",
                     "mergekit_config.yml", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "float16"
    assert config["num_hidden_layers"] == TINY.layers
    assert (out / "mergekit_config.yml").read_text() == text
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert f"model: {base}" in front and f"model: {d1}" in front  # the merge block
    assert "base_model_relation" not in front  # the Hub's base_model takes repo ids only
    assert "- task_arithmetic" in front and "- mergekit" in front
    assert "library_name: transformers" in front
    assert "merged = base + 0.5 * (donor-1 - base) + 0.5 * (donor-2 - base)" in card
    assert "| donor |" in card and "| 0.5 |" in card
    assert all(t.dtype == torch.float16 for t in load_model(out).values())


def test_sharded_inputs_and_outputs_give_the_same_model(family, tmp_path):
    base, d1, d2 = family
    sharded = write_family(tmp_path / "sharded", TINY, donors=2, delta_scale=0.01,
                           shard_bytes=20_000)
    assert len(list((tmp_path / "sharded" / "base").glob("*.safetensors"))) > 2

    def merge(models, out, **kw):
        b, x, y = models
        text = recipe_text("task_arithmetic", b, [(x, {"weight": 0.7}), (y, {"weight": 0.2})])
        run_merge(text, out, device="cpu", **kw)
        return load_model(out)

    plain = merge(family, tmp_path / "plain")
    both = merge(sharded, tmp_path / "both", out_shard_size=30_000)
    assert (tmp_path / "both" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "both").glob("model-*-of-*.safetensors"))) > 2
    assert plain.keys() == both.keys()
    assert all(torch.equal(plain[n], both[n]) for n in plain)


def test_chunked_and_whole_tensor_math_agree(family, tmp_path, monkeypatch):
    import merge_engine.execute.executor as executor

    base, d1, d2 = family
    text = recipe_text("task_arithmetic", base, [(d1, {"weight": 0.7}), (d2, {"weight": -0.2})])
    run_merge(text, tmp_path / "a", device="cpu")
    monkeypatch.setattr(executor, "DEFAULT_CHUNK_ELEMS", 100)  # many tiny chunks
    run_merge(text, tmp_path / "b", device="cpu")
    a, b = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_tied_embeddings(tmp_path):
    tied = LlamaShape(**{**TINY.__dict__, "tie_embeddings": True})
    base = write_model(tmp_path / "base", tied)
    donor = write_model(tmp_path / "donor", TINY, donor=1, delta_scale=0.01)  # has lm_head
    text = recipe_text("task_arithmetic", base, [(donor, {"weight": 0.5})])
    run_merge(text, tmp_path / "out", device="cpu")
    merged = load_model(tmp_path / "out")
    assert "lm_head.weight" not in merged  # the output follows the base: tied
    # and the other way round: an untied base takes a tied donor's embeddings as its head
    base2 = write_model(tmp_path / "base2", TINY)
    donor2 = write_model(tmp_path / "donor2", tied, donor=1, delta_scale=0.01)
    text = recipe_text("task_arithmetic", base2, [(donor2, {"weight": 0.5})])
    run_merge(text, tmp_path / "out2", device="cpu")
    merged = load_model(tmp_path / "out2")
    b, d = load_model(base2), load_model(donor2)
    expected = b["lm_head.weight"].double() + 0.5 * (
        d["model.embed_tokens.weight"].double() - b["lm_head.weight"].double())
    assert torch.allclose(merged["lm_head.weight"].double(), expected, rtol=2 ** -7)


def test_donor_with_a_larger_vocabulary_is_cut_with_a_warning(tmp_path):
    base = write_model(tmp_path / "base", TINY)
    bigger = LlamaShape(**{**TINY.__dict__, "vocab": TINY.vocab + 8})
    donor = write_model(tmp_path / "donor", bigger, donor=1, delta_scale=0.01)
    text = recipe_text("task_arithmetic", base, [(donor, {"weight": 1.0})])
    result = run_merge(text, tmp_path / "out", device="cpu")
    merged = load_model(tmp_path / "out")
    assert merged["model.embed_tokens.weight"].shape == (TINY.vocab, TINY.hidden)
    assert torch.equal(merged["lm_head.weight"],
                       load_model(donor)["lm_head.weight"][: TINY.vocab])
    assert any("cut to the 96" in w and "lm_head.weight" in w for w in result.warnings)


def test_shape_mismatch_names_tensor_and_models(tmp_path):
    base = write_model(tmp_path / "base", TINY)
    wider = LlamaShape(**{**TINY.__dict__, "intermediate": TINY.intermediate + 4})
    donor = write_model(tmp_path / "wide", wider, donor=1)
    text = recipe_text("task_arithmetic", base, [(donor, {"weight": 1.0})])
    with pytest.raises(PlanError, match=r"tensor model\.layers\.0\.mlp\.gate_proj\.weight has "
                                        r"shape \[68, 32\] in .*wide but \[64, 32\] in .*base"):
        validate(text)
    assert not (tmp_path / "out").exists()


def test_missing_tensor_names_the_model(tmp_path):
    base = write_model(tmp_path / "base", TINY)
    shallow = LlamaShape(**{**TINY.__dict__, "layers": TINY.layers - 1})
    donor = write_model(tmp_path / "shallow", shallow, donor=1)
    text = recipe_text("task_arithmetic", base, [(donor, {"weight": 1.0})])
    with pytest.raises(PlanError, match=r"tensor model\.layers\.2\.\S+ is missing from .*shallow"):
        validate(text)


def test_nan_from_the_math_fails_and_leaves_nothing(family, tmp_path):
    base, _, _ = family
    huge = write_model(tmp_path.parent / f"{tmp_path.name}-huge", TINY, donor=1,
                       delta_scale=1e37)  # deltas near bf16's limit: x 1000 overflows
    text = recipe_text("task_arithmetic", base, [(huge, {"weight": 1000})])
    with pytest.raises(MergeError, match="produced NaN or infinite values"):
        run_merge(text, tmp_path / "out", device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_non_empty_output_directory(family, tmp_path):
    base, d1, _ = family
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    text = recipe_text("task_arithmetic", base, [(d1, {"weight": 1.0})])
    with pytest.raises(Exception, match="already exists and is not empty"):
        run_merge(text, tmp_path / "out", device="cpu")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_gradient_and_filter_parameters(family, tmp_path):
    base, d1, d2 = family
    extra = ""
    text = recipe_text("task_arithmetic", base, [
        (d1, {"weight": "[0.0, 1.0]"}),
        (d2, {"weight": "[{filter: mlp, value: 0.5}, {value: 0.1}]"}),
    ], extra)
    run_merge(text, tmp_path / "out", device="cpu")
    merged = load_model(tmp_path / "out")
    b, x, y = (load_model(p) for p in family)
    n = TINY.layers
    for name in merged:
        layer = int(name.split(".")[2]) if ".layers." in name else None
        w1 = layer / (n - 1) if layer is not None else 0.0
        w2 = 0.5 if "mlp" in name else 0.1
        ref = b[name].double() + w1 * (x[name].double() - b[name].double()) + w2 * (
            y[name].double() - b[name].double())
        assert torch.allclose(merged[name].double(), ref, rtol=2 ** -7, atol=1e-9), name


def test_random_methods_are_reproducible_with_a_seed(family, tmp_path):
    base, d1, d2 = family
    text = recipe_text("dare_ties", base, [(d1, {"weight": 0.6, "density": 0.5}),
                                           (d2, {"weight": 0.4, "density": 0.5})])
    run_merge(text, tmp_path / "a", device="cpu", random_seed=3)
    run_merge(text, tmp_path / "b", device="cpu", random_seed=3)
    run_merge(text, tmp_path / "c", device="cpu", random_seed=4)
    a, b, c = (load_model(tmp_path / p) for p in "abc")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


@pytest.mark.parametrize("method", ["linear", "ties", "dare_linear", "breadcrumbs",
                                    "breadcrumbs_ties", "della", "della_linear"])
def test_every_method_runs_end_to_end(family, tmp_path, method):
    base, d1, d2 = family
    params = {"weight": 0.5, "density": 0.6}
    if method == "linear":
        params = {"weight": 0.5}
    models = [(d1, params), (d2, params)]
    if method == "linear":  # no base role: every input is listed with its weight
        models.insert(0, (base, params))
    text = recipe_text(method, None if method == "linear" else base, models)
    result = run_merge(text, tmp_path / "out", device="cpu", random_seed=1)
    merged = load_model(tmp_path / "out")
    assert merged.keys() == load_model(base).keys()
    assert all(torch.isfinite(t.float()).all() for t in merged.values())
    assert result.method == method


def test_output_loads_in_transformers_and_runs(family, tmp_path):
    transformers = pytest.importorskip("transformers")
    base, d1, d2 = family
    text = recipe_text("task_arithmetic", base, [(d1, {"weight": 1.0}), (d2, {"weight": 0.3})])
    run_merge(text, tmp_path / "out", device="cpu", out_shard_size=40_000)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    merged = load_model(tmp_path / "out")
    state = model.state_dict()
    assert torch.equal(state["model.layers.1.mlp.up_proj.weight"],
                       merged["model.layers.1.mlp.up_proj.weight"])
    logits = model(torch.tensor([[1, 5, 9, 2]])).logits
    assert logits.shape == (1, 4, TINY.vocab)
    assert math.isfinite(logits.float().abs().sum().item())


def test_a_donor_of_another_architecture_is_a_warning(tmp_path):
    base = write_model(tmp_path / "base", TINY)
    donor = write_model(tmp_path / "donor", TINY, donor=1)
    config = json.loads((donor / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (donor / "config.json").write_text(json.dumps(config))
    plan = validate(recipe_text("task_arithmetic", base, [(donor, {"weight": 1.0})]))
    assert any("is a MistralForCausalLM but" in w and "LlamaForCausalLM" in w
               for w in plan.warnings)


def test_disk_full_is_a_clear_error_and_leaves_nothing(family, tmp_path, monkeypatch):
    import errno
    import os

    import merge_engine.io.checkpoint as checkpoint
    from merge_engine import MergeEngineError

    real_write = os.write
    written = [0]

    def filling_write(fd, data):
        written[0] += len(data)
        if written[0] > 20_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(checkpoint.os, "write", filling_write)
    base, d1, _ = family
    text = recipe_text("task_arithmetic", base, [(d1, {"weight": 1.0})])
    with pytest.raises(MergeEngineError, match="disk full while writing the merge under"):
        run_merge(text, tmp_path / "out", device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_card_merge_block_is_plain_data(family, tmp_path):
    import yaml

    base, d1, d2 = family
    text = recipe_text("ties", base, [(d1, {"weight": "[0.2, 0.8]", "density": 0.5}),
                                      (d2, {"weight": 0.3})])
    run_merge(text, tmp_path / "out", device="cpu", random_seed=5)
    meta = yaml.safe_load((tmp_path / "out" / "README.md").read_text().split("---")[1])
    assert meta["merge"]["models"] == [
        {"model": str(d1), "revision": None, "parameters": {"weight": [0.2, 0.8], "density": 0.5}},
        {"model": str(d2), "revision": None, "parameters": {"weight": 0.3}},
    ]
    assert meta["merge"]["random_seed"] == 5


NEW_METHODS = {  # method: (uses the base, donors, per-model params, global params)
    "slerp": (True, 1, {}, {"t": 0.3}),
    "nuslerp": (False, 2, {"weight": 0.5}, {}),
    "multislerp": (True, 2, {"weight": 0.5}, {}),
    "karcher": (False, 3, {}, {}),
    "model_stock": (True, 2, {}, {}),
    "passthrough": (False, 1, {"scale": 0.5}, {}),
    "sce": (True, 2, {"weight": 0.5}, {"select_topk": 0.5}),
    "nearswap": (True, 1, {}, {"t": 0.001}),
    "ram": (True, 2, {}, {}),
    "ramplus_tl": (True, 2, {}, {}),
    "arcee_fusion": (True, 1, {}, {}),
}


@pytest.mark.parametrize("method", NEW_METHODS)
def test_geometric_and_selective_methods_run_through_the_executor(family, tmp_path, method):
    from merge_engine.methods import get_method

    uses_base, count, params, globals_ = NEW_METHODS[method]
    base, d1, d2 = family
    donors = [d1, d2, base][:count] if not uses_base else [d1, d2][:count]
    spec = get_method(method)
    params = {k: v for k, v in params.items() if k in spec.model_params}
    extra = "".join(f"  {k}: {v}\n" for k, v in globals_.items())
    text = recipe_text(method, base if uses_base else None, [(d, params) for d in donors],
                       f"parameters:\n{extra}" if extra else "")
    run_merge(text, tmp_path / "out", device="cpu", random_seed=2)
    merged = load_model(tmp_path / "out")
    inputs = [load_model(p) for p in ([base] if uses_base else []) + donors]
    name = "model.layers.1.mlp.up_proj.weight"
    tensors = [m[name].float() for m in inputs]
    b, ts = (tensors[0], tensors[1:]) if uses_base else (None, tensors)
    model_params = [{**{k: v for k, v in spec.model_params.items()}, **params} for _ in ts]
    global_params = {**spec.global_params, **globals_}
    expected = spec.merge(ts, b, model_params, global_params, None)
    assert torch.equal(merged[name], expected.to(torch.bfloat16)), method
