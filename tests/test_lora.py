"""LoRA sources (``model+adapter``): applied while streaming, equal to applying by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from merge_engine import PlanError, SourceError, run_merge, validate
from merge_engine.card import pinned_recipe
from merge_engine.synth import write_model

from .conftest import TINY, load_model, recipe_text

TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")


def write_adapter(
    path: Path,
    *,
    r: int = 4,
    alpha: float = 8,
    seed: int = 0,
    targets=TARGETS,
    style: str = "plain",
    embed: bool = False,
    dtype: torch.dtype = torch.float32,
    **config,
) -> Path:
    """A PEFT-format LoRA adapter for TINY: every layer's ``targets`` (and the embedding
    when ``embed``); B is random (a trained adapter's is not zero)."""
    path.mkdir(parents=True, exist_ok=True)
    shapes = dict(TINY.tensors())
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    suffix = {"plain": ".weight", "default": ".default.weight"}[style]
    for layer in range(TINY.layers):
        for target in targets:
            module = f"model.layers.{layer}.{target}"
            out, inp = shapes.get(f"{module}.weight", (TINY.hidden, TINY.hidden))
            rank = config.get("rank_pattern", {}).get(target.split(".")[-1], r)
            key = f"base_model.model.{module}"
            tensors[f"{key}.lora_A{suffix}"] = torch.randn(rank, inp, generator=gen) * 0.1
            tensors[f"{key}.lora_B{suffix}"] = torch.randn(out, rank, generator=gen) * 0.1
    if embed:
        vocab, hidden = shapes["model.embed_tokens.weight"]
        key = "base_model.model.model.embed_tokens"
        tensors[f"{key}.lora_embedding_A"] = torch.randn(r, vocab, generator=gen) * 0.1
        tensors[f"{key}.lora_embedding_B"] = torch.randn(hidden, r, generator=gen) * 0.1
    save_file(
        {k: v.to(dtype).contiguous() for k, v in tensors.items()},
        path / "adapter_model.safetensors",
    )
    modules = sorted({t.split(".")[-1] for t in targets} | ({"embed_tokens"} if embed else set()))
    cfg = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": modules,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,
        **config,
    }
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


def apply_by_hand(model: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """float64 ``W + scale * B @ A`` (``(B @ A).T`` for embeddings) for every target."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    lora = load_file(adapter / "adapter_model.safetensors")
    out = {n: t.double() for n, t in load_model(model).items()}
    for key, a in lora.items():
        if ".lora_A" not in key and "lora_embedding_A" not in key:
            continue
        b = lora[key.replace("lora_A", "lora_B").replace("lora_embedding_A", "lora_embedding_B")]
        module = key.removeprefix("base_model.model.").split(".lora_")[0]
        r = cfg.get("rank_pattern", {}).get(module.split(".")[-1], cfg["r"])
        alpha = cfg.get("alpha_pattern", {}).get(module.split(".")[-1], cfg["lora_alpha"])
        scale = alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
        delta = b.double() @ a.double()
        out[f"{module}.weight"] += scale * (delta.T if "embedding" in key else delta)
    return out


def ta_reference(base, donors, weights):
    return {
        n: b + sum(w * (d[n] - b) for d, w in zip(donors, weights, strict=True))
        for n, b in base.items()
    }


def assert_close(merged, reference, rtol=2**-22, atol=1e-7):
    assert merged.keys() == reference.keys()
    for name, ref in reference.items():
        assert torch.allclose(merged[name].double(), ref, rtol=rtol, atol=atol), name


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """float32 TINY base and two donors, and an adapter."""
    root = tmp_path_factory.mktemp("lora")
    base = write_model(root / "base", TINY, dtype=torch.float32)
    d1 = write_model(root / "d1", TINY, donor=1, delta_scale=0.01, dtype=torch.float32)
    d2 = write_model(root / "d2", TINY, donor=2, delta_scale=0.01, dtype=torch.float32)
    return base, d1, d2, write_adapter(root / "adapter")


def test_lora_base_equals_applying_by_hand_chunked_or_not(models, tmp_path, monkeypatch):
    import merge_engine.execute.executor as executor

    base, d1, d2, adapter = models
    text = recipe_text(
        "task_arithmetic", Path(f"{base}+{adapter}"), [(d1, {"weight": 0.7}), (d2, {"weight": 0.3})]
    )
    result = run_merge(text, tmp_path / "a", device="cpu")
    merged = load_model(tmp_path / "a")
    reference = ta_reference(
        apply_by_hand(base, adapter),
        [{n: t.double() for n, t in load_model(d).items()} for d in (d1, d2)],
        [0.7, 0.3],
    )
    assert_close(merged, reference)
    # the adapter changed what it targets, and only that
    plain = load_model(base)
    changed = {
        n for n in plain if not torch.equal(plain[n], apply_by_hand(base, adapter)[n].float())
    }
    assert changed == {f"model.layers.{i}.{t}.weight" for i in range(TINY.layers) for t in TARGETS}
    monkeypatch.setattr(executor, "DEFAULT_CHUNK_ELEMS", 100)  # one row per chunk
    run_merge(text, tmp_path / "b", device="cpu")
    chunked = load_model(tmp_path / "b")
    assert all(torch.equal(merged[n], chunked[n]) for n in merged)
    row = result.models[0]
    assert (row.name, row.model, row.adapter, row.adapter_revision) == (
        f"{base}+{adapter}",
        str(base),
        str(adapter),
        None,
    )
    assert result.formula.startswith("merged = base + 0.7 * (d1 - base)")
    card = (tmp_path / "a" / "README.md").read_text()
    assert f"| base | {base} + LoRA {adapter} | local files + local files |" in card
    assert "lora:" in card


def test_lora_donor_linear_and_default_key_style(models, tmp_path):
    base, d1, _, _ = models
    adapter = write_adapter(
        tmp_path / "ad",
        r=2,
        alpha=3,
        seed=5,
        style="default",
        targets=("self_attn.k_proj", "mlp.gate_proj"),
    )
    text = recipe_text(
        "linear", None, [(base, {"weight": 0.25}), (Path(f"{d1}+{adapter}"), {"weight": 0.75})]
    )
    run_merge(text, tmp_path / "out", device="cpu")
    b = {n: t.double() for n, t in load_model(base).items()}
    d = apply_by_hand(d1, adapter)
    assert_close(load_model(tmp_path / "out"), {n: 0.25 * b[n] + 0.75 * d[n] for n in b})


def test_rslora_patterns_embedding_and_bf16_base(tmp_path):
    base = write_model(tmp_path / "base", TINY, dtype=torch.bfloat16)
    donor = write_model(tmp_path / "donor", TINY, donor=1, delta_scale=0.01, dtype=torch.bfloat16)
    adapter = write_adapter(
        tmp_path / "ad",
        r=4,
        alpha=16,
        embed=True,
        use_rslora=True,
        rank_pattern={"down_proj": 2},
        alpha_pattern={"q_proj": 4},
        dtype=torch.bfloat16,
    )
    text = recipe_text(
        "task_arithmetic",
        base,
        [(Path(f"{donor}+{adapter}"), {"weight": 0.5})],
        "out_dtype: float32\n",
    )
    run_merge(text, tmp_path / "out", device="cpu")
    b = {n: t.double() for n, t in load_model(base).items()}
    reference = ta_reference(b, [apply_by_hand(donor, adapter)], [0.5])
    merged = load_model(tmp_path / "out")
    assert_close(merged, reference, rtol=1e-6, atol=1e-7)
    embed = "model.embed_tokens.weight"
    assert not torch.allclose(
        merged[embed].double(),
        ta_reference(b, [{n: t.double() for n, t in load_model(donor).items()}], [0.5])[embed],
    )


def test_modules_to_save_replaces_tensor(models, tmp_path):
    base, d1, _, _ = models
    adapter = write_adapter(tmp_path / "ad", targets=("self_attn.q_proj",))
    from safetensors.torch import load_file

    tensors = load_file(adapter / "adapter_model.safetensors")
    head = torch.randn(TINY.vocab, TINY.hidden) * 0.02
    tensors["base_model.model.lm_head.weight"] = head
    save_file(tensors, adapter / "adapter_model.safetensors")
    text = recipe_text("task_arithmetic", Path(f"{base}+{adapter}"), [(d1, {"weight": 0.5})])
    run_merge(text, tmp_path / "out", device="cpu")
    merged = load_model(tmp_path / "out")
    d = load_model(d1)["lm_head.weight"].double()
    assert torch.allclose(
        merged["lm_head.weight"].double(), head.double() + 0.5 * (d - head), atol=1e-7
    )


def test_output_loads_in_transformers(models, tmp_path):
    transformers = pytest.importorskip("transformers")
    base, d1, _, adapter = models
    text = recipe_text("task_arithmetic", base, [(Path(f"{d1}+{adapter}"), {"weight": 1.0})])
    run_merge(text, tmp_path / "out", device="cpu")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    expected = apply_by_hand(d1, adapter)["model.layers.1.mlp.down_proj.weight"]
    got = model.state_dict()["model.layers.1.mlp.down_proj.weight"].double()
    assert torch.allclose(got, expected, atol=1e-6)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, TINY.vocab)


def one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def test_bad_adapters(models, tmp_path):
    base, d1, _, adapter = models

    def check(ad: Path) -> str:
        text = recipe_text("task_arithmetic", base, [(Path(f"{d1}+{ad}"), {"weight": 1.0})])
        with pytest.raises((SourceError, PlanError)) as info:
            validate(text)
        return one_line(info.value)

    no_config = write_adapter(tmp_path / "noconf")
    (no_config / "adapter_config.json").unlink()
    msg = check(no_config)
    assert str(no_config) in msg and "adapter_config.json" in msg

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8}')
    (pickled / "adapter_model.bin").write_bytes(b"not opened")
    msg = check(pickled)
    assert "pickle" in msg and "adapter_model.bin" in msg and str(pickled) in msg

    wrong = write_adapter(tmp_path / "wrong")
    from safetensors.torch import load_file

    tensors = load_file(wrong / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"
    tensors[key] = torch.zeros(4, TINY.hidden)  # down_proj's input is intermediate
    save_file(tensors, wrong / "adapter_model.safetensors")
    msg = check(wrong)
    assert str(wrong) in msg and key in msg and "model.layers.0.mlp.down_proj.weight" in msg

    missing = write_adapter(tmp_path / "missing", targets=("self_attn.nope_proj",))
    msg = check(missing)
    assert "model.layers.0.self_attn.nope_proj.weight" in msg and str(missing) in msg

    dora = write_adapter(tmp_path / "dora", use_dora=True)  # no magnitudes
    assert "has no lora_magnitude_vector" in check(dora) and "use_dora" in check(dora)
    stray = write_dora(tmp_path / "stray", seed=1)
    cfg = json.loads((stray / "adapter_config.json").read_text())
    (stray / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": False}))
    assert "DoRA magnitude but adapter_config.json does not set use_dora" in check(stray)
    embed = write_dora(tmp_path / "embed", embed=True)
    assert "DoRA on model.embed_tokens" in check(embed)

    rank = write_adapter(tmp_path / "rank", r=4)
    cfg = json.loads((rank / "adapter_config.json").read_text())
    (rank / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    assert "rank 4" in check(rank) and "r=8" in check(rank)

    assert validate(
        recipe_text("task_arithmetic", base, [(Path(f"{d1}+{adapter}"), {"weight": 1.0})])
    )


def test_hub_refs_pinned_in_card():
    """A Hub ``model+adapter`` shows both parts pinned in the reproducible recipe."""
    from types import SimpleNamespace

    from merge_engine.io.lora import Adapter
    from merge_engine.io.sources import Source
    from merge_engine.recipe.refs import parse_ref

    ref = parse_ref("org/model@main+org/adapter")
    source = Source(ref, "a" * 40, {}, {}, [])
    source.adapter = Adapter(ref.lora, "b" * 40, {}, {})
    assert source.name == "org/model+org/adapter" and source.short_name == "model+adapter"
    assert source.pinned == f"org/model@{'a' * 40}+org/adapter@{'b' * 40}"
    assert source.adapter_revision == "b" * 40
    plan = SimpleNamespace(
        recipe=SimpleNamespace(text="base_model: org/model@main+org/adapter\n"), sources=[source]
    )
    assert pinned_recipe(plan) == f"base_model: {source.pinned}\n"


def test_matches_peft_merge_and_unload(models, tmp_path):
    """Cross-check: peft's own merge of the same adapter gives the same weights."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base, _, _, _ = models
    adapter = write_adapter(
        tmp_path / "ad",
        r=4,
        alpha=6,
        embed=True,
        use_rslora=True,
        rank_pattern={"down_proj": 2},
        alpha_pattern={"v_proj": 3},
    )
    text = recipe_text("linear", None, [(Path(f"{base}+{adapter}"), {"weight": 1.0})])
    run_merge(text, tmp_path / "out", device="cpu")
    ours = load_model(tmp_path / "out")
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    theirs = merged.state_dict()
    for name, tensor in ours.items():
        assert torch.allclose(tensor, theirs[name], rtol=1e-5, atol=1e-6), name
    assert not torch.equal(
        ours["model.layers.0.mlp.down_proj.weight"],
        load_model(base)["model.layers.0.mlp.down_proj.weight"],
    )


def write_dora(path: Path, *, seed: int = 0, **options) -> Path:
    """A DoRA adapter: :func:`write_adapter` plus a ``lora_magnitude_vector`` per module,
    each output row's magnitude near the base row's norm, as training leaves it."""
    from safetensors.torch import load_file

    write_adapter(path, seed=seed, use_dora=True, **options)
    tensors = load_file(path / "adapter_model.safetensors")
    gen = torch.Generator().manual_seed(seed + 100)
    for key in [k for k in tensors if ".lora_B" in k or ".lora_embedding_B" in k]:
        module = key.split(".lora_")[0]
        rows = tensors[key].shape[0]
        tensors[f"{module}.lora_magnitude_vector"] = 0.2 + 0.1 * torch.rand(rows, generator=gen)
    save_file(tensors, path / "adapter_model.safetensors")
    return path


@pytest.mark.parametrize("chunk", [None, 40])
def test_dora_matches_peft_merge_and_unload(models, tmp_path, monkeypatch, chunk):
    """DoRA: each row of W + scale * B @ A rescaled to its trained magnitude, as PEFT
    merges it, also when the rows come in chunks (the norm is a whole row's)."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    import merge_engine.execute.executor as executor

    if chunk:
        monkeypatch.setattr(executor, "DEFAULT_CHUNK_ELEMS", chunk)
    base, _, _, _ = models
    adapter = write_dora(tmp_path / "dora", alpha=6)
    text = recipe_text("linear", None, [(Path(f"{base}+{adapter}"), {"weight": 1.0})])
    run_merge(text, tmp_path / "out", device="cpu")
    ours = load_model(tmp_path / "out")
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    theirs = merged.state_dict()
    plain = load_model(base)
    for name, tensor in ours.items():
        assert torch.allclose(tensor, theirs[name], rtol=1e-5, atol=1e-6), name
    q = "model.layers.1.self_attn.q_proj.weight"
    norms = ours[q].double().norm(dim=1)
    from safetensors.torch import load_file

    magnitude = load_file(adapter / "adapter_model.safetensors")[
        "base_model.model.model.layers.1.self_attn.q_proj.lora_magnitude_vector"]
    torch.testing.assert_close(norms, magnitude.double(), rtol=1e-6, atol=1e-7)
    assert not torch.equal(ours[q], plain[q])


def test_lora_source_in_slices(models, tmp_path):
    """A frankenmerge taking layers from a ``model+adapter``: renamed layers keep the update."""
    base, d1, _, adapter = models
    text = (
        "merge_method: passthrough\nslices:\n"
        f"  - sources:\n      - model: {base}+{adapter}\n        layer_range: [1, 3]\n"
        f"  - sources:\n      - model: {d1}\n        layer_range: [0, 1]\n"
    )
    run_merge(text, tmp_path / "out", device="cpu")
    merged = load_model(tmp_path / "out")
    by_hand, donor = apply_by_hand(base, adapter), load_model(d1)
    for k, (src, layer) in enumerate([(by_hand, 1), (by_hand, 2), (donor, 0)]):
        for target in ("self_attn.q_proj", "mlp.down_proj", "mlp.up_proj"):
            got = merged[f"model.layers.{k}.{target}.weight"].double()
            want = src[f"model.layers.{layer}.{target}.weight"].double()
            assert torch.allclose(got, want, rtol=2**-22, atol=1e-7), (k, target)
    assert torch.equal(merged["lm_head.weight"], donor["lm_head.weight"])
