"""Mixture-of-experts recipes (mergekit-moe's YAML): tiny llama-family models saved by
transformers become a Mixtral (or Qwen2-MoE / Qwen3-MoE) that transformers loads with no
missing or unexpected keys and runs; the experts' MLPs are their sources' bit for bit, and
the routers are the prompts' normalized hidden states (or embeddings) computed here
independently with transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from merge_engine import PlanError, RecipeError, plan_json, run_merge, validate
from tests.tfmodels import tensors
from tests.tokutil import write_tokenizer

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
WORDS = [f"w{i}" for i in range(40)]
CLEAN = {"missing_keys": [], "mismatched_keys": [], "unexpected_keys": []}


def write_dense(path: Path, seed: int, family: str = "llama", **changes) -> Path:
    """A tiny random dense model saved by transformers, with a word-level tokenizer."""
    config_class = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config"}
    kwargs = {**SMALL, **({"head_dim": 8} if family == "qwen3" else {}), **changes}
    torch.manual_seed(seed)
    config = getattr(transformers, config_class[family])(**kwargs)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    write_tokenizer(path, WORDS, [])
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    return {"base": write_dense(root / "base", 0), "a": write_dense(root / "a", 1),
            "b": write_dense(root / "b", 2),
            "wide": write_dense(root / "wide", 3, hidden_size=48)}


def recipe(base: Path, experts: list[tuple[Path, list[str], list[str]]], gate_mode: str,
           extra: str = "") -> str:
    lines = [f"base_model: {base}", f"gate_mode: {gate_mode}", "dtype: float32",
             "experts_per_token: 2", "experts:"]
    for path, positive, negative in experts:
        lines += [f"  - source_model: {path}", f"    positive_prompts: {json.dumps(positive)}"]
        if negative:
            lines.append(f"    negative_prompts: {json.dumps(negative)}")
    return "\n".join(lines) + "\n" + extra


PROMPTS = [(["w1 w2 w3", "w4"], ["w9 w10"]), (["w20 w21"], []), (["w30", "w31 w5"], ["w1"])]


def expert_list(models: dict[str, Path]) -> list[tuple[Path, list[str], list[str]]]:
    """Three experts: the base itself, a and b (one source used twice would work too)."""
    return [(models[k], *PROMPTS[i]) for i, k in enumerate(("base", "a", "b"))]


def load(out: Path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, output_loading_info=True, dtype=torch.float32)
    return model.eval(), {k: sorted(v) for k, v in info.items() if k != "error_msgs"}


def forward_ok(model) -> None:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([[3, 4, 5, 6]])).logits
    assert logits.shape == (1, 4, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def fast_tokenizer(path: Path):
    """transformers' tokenizer of ``path/tokenizer.json`` (AutoTokenizer would pick the
    family's own class, e.g. Qwen2Tokenizer, by the config's model_type)."""
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def hidden_rows(base: Path, experts, layers: int) -> list[torch.Tensor]:
    """Per layer, the expected router: each expert's normalized (mean positive - mean
    negative) last-token hidden state entering that layer, from transformers directly."""
    tok = fast_tokenizer(base)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()

    def state(prompt: str, layer: int) -> torch.Tensor:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            return model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0, -1]

    def mean(prompts, layer):
        return torch.stack([state(p, layer) for p in prompts]).mean(0)

    return [torch.stack([unit(mean(pos, n) - (mean(neg, n) if neg else 0))
                         for _, pos, neg in experts]) for n in range(layers)]


def test_hidden_gates_give_a_mixtral_that_loads_and_runs(models, tmp_path) -> None:
    experts = expert_list(models)
    out = tmp_path / "out"
    result = run_merge(recipe(models["base"], experts, "hidden"), out, device="cpu",
                       random_seed=0)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"]
    assert (config["num_local_experts"], config["num_experts_per_tok"]) == (3, 2)
    model, info = load(out)
    assert type(model).__name__ == "MixtralForCausalLM"
    assert info == CLEAN
    forward_ok(model)
    merged = tensors(out)
    expected = hidden_rows(models["base"], experts, 2)
    for n in range(2):
        torch.testing.assert_close(merged[f"model.layers.{n}.block_sparse_moe.gate.weight"],
                                   expected[n], rtol=1e-5, atol=1e-6)
    base = tensors(models["base"])
    for e, key in enumerate(("base", "a", "b")):
        source = tensors(models[key])
        for n in range(2):
            for proj, w in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
                assert torch.equal(
                    merged[f"model.layers.{n}.block_sparse_moe.experts.{e}.{w}.weight"],
                    source[f"model.layers.{n}.mlp.{proj}.weight"])
    kept = [n for n in base if ".mlp." not in n]
    assert kept and all(torch.equal(merged[n], base[n]) for n in kept)
    assert not any(".mlp." in n for n in merged)
    # the router is [experts, hidden] per layer on top of the base without its MLPs
    moe_params = sum(v.numel() for v in merged.values())
    assert result.parameter_count == moe_params
    assert (out / "tokenizer.json").read_bytes() == (models["base"] / "tokenizer.json").read_bytes()


def test_cheap_embed_rows_are_the_prompts_mean_embeddings(models, tmp_path) -> None:
    experts = expert_list(models)
    out = tmp_path / "out"
    run_merge(recipe(models["base"], experts, "cheap_embed"), out, device="cpu", random_seed=0)
    table = tensors(models["base"])["model.embed_tokens.weight"]
    tok = fast_tokenizer(models["base"])

    def mean(prompts):
        return torch.stack([table[tok(p).input_ids].mean(0) for p in prompts]).mean(0)

    want = torch.stack([unit(mean(pos) - (mean(neg) if neg else 0)) for _, pos, neg in experts])
    merged = tensors(out)
    for n in range(2):
        torch.testing.assert_close(merged[f"model.layers.{n}.block_sparse_moe.gate.weight"],
                                   want, rtol=1e-6, atol=1e-7)
    model, info = load(out)
    assert info == CLEAN
    forward_ok(model)


def test_random_gates_follow_the_seed(models, tmp_path) -> None:
    experts = expert_list(models)
    gates = {}
    for mode, seed in (("random", 1), ("random", 2), ("uniform_random", 1)):
        out = tmp_path / f"{mode}{seed}"
        run_merge(recipe(models["base"], experts, mode), out, device="cpu", random_seed=seed)
        gates[mode, seed] = tensors(out)["model.layers.1.block_sparse_moe.gate.weight"]
    again = tmp_path / "again"
    run_merge(recipe(models["base"], experts, "random"), again, device="cpu", random_seed=1)
    assert torch.equal(tensors(again)["model.layers.1.block_sparse_moe.gate.weight"],
                       gates["random", 1])
    assert not torch.equal(gates["random", 1], gates["random", 2])
    assert gates["random", 1].std() > 0.5  # standard normal
    bound = 1 / 32 ** 0.5
    uniform = gates["uniform_random", 1]
    assert uniform.abs().max() <= bound and uniform.abs().max() > bound / 2


def test_the_card_lists_every_expert(models, tmp_path) -> None:
    experts = expert_list(models)
    out = tmp_path / "out"
    run_merge(recipe(models["base"], experts, "cheap_embed"), out, device="cpu", random_seed=0)
    card = (out / "README.md").read_text()
    assert "## Experts" in card
    assert "`gate_mode: cheap_embed`" in card and "`experts_per_token: 2`" in card
    rows = [line for line in card.splitlines() if line.startswith(("| 0 ", "| 1 ", "| 2 "))]
    assert len(rows) == 3
    for row, (path, positive, negative) in zip(rows, experts, strict=True):
        assert str(path) in row and "local files" in row
        assert all(f"`{p}`" in row for p in positive + negative)
    meta = card.split("---")[1]
    assert "gate_mode: cheap_embed" in meta and "experts_per_token: 2" in meta


def test_validate_shows_the_moe_size_and_experts(models) -> None:
    experts = expert_list(models)
    plan = validate(recipe(models["base"], experts, "hidden"))
    summary = plan_json(plan)
    assert summary["method"] == "moe"
    assert [e["model"] for e in summary["moe"]["experts"]] == [str(p) for p, _, _ in experts]
    assert summary["moe"]["experts"][0]["negative_prompts"] == ["w9 w10"]
    base = tensors(models["base"])
    mlp = sum(v.numel() for n, v in base.items() if ".mlp." in n)
    dense = sum(v.numel() for v in base.values())
    router = 2 * 3 * 32
    assert summary["parameter_count"] == dense - mlp + 3 * mlp + router
    assert summary["output_bytes"] == 4 * summary["parameter_count"]
    assert "mixtral(" in summary["formula"]


def test_qwen2_moe_with_a_shared_expert_loads_and_runs(models, tmp_path) -> None:
    experts = expert_list(models)[1:]
    shared = (f"shared_experts:\n  - source_model: {models['base']}\n"
              "    residual_scale: 0.5\n")
    out = tmp_path / "out"
    run_merge(recipe(models["base"], experts, "cheap_embed", shared), out, device="cpu",
              random_seed=0)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2MoeForCausalLM"]
    assert (config["num_experts"], config["shared_expert_intermediate_size"]) == (2, 48)
    assert config["qkv_bias"] is False
    model, info = load(out)
    assert type(model).__name__ == "Qwen2MoeForCausalLM"
    assert info == CLEAN
    forward_ok(model)
    merged, base, a = tensors(out), tensors(models["base"]), tensors(models["a"])
    assert torch.equal(merged["model.layers.1.mlp.experts.0.up_proj.weight"],
                       a["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(merged["model.layers.0.mlp.shared_expert.down_proj.weight"],
                       base["model.layers.0.mlp.down_proj.weight"] * 0.5)
    assert not merged["model.layers.0.mlp.shared_expert_gate.weight"].any()


def test_qwen3_base_gives_a_qwen3_moe(tmp_path) -> None:
    base = write_dense(tmp_path / "base", 0, "qwen3")
    other = write_dense(tmp_path / "other", 1, "qwen3")
    out = tmp_path / "out"
    run_merge(recipe(base, [(base, ["w1"], []), (other, ["w2"], [])], "hidden"), out,
              device="cpu", random_seed=0)
    model, info = load(out)
    assert type(model).__name__ == "Qwen3MoeForCausalLM"
    assert info == CLEAN
    forward_ok(model)
    assert torch.equal(tensors(out)["model.layers.0.mlp.experts.1.gate_proj.weight"],
                       tensors(other)["model.layers.0.mlp.gate_proj.weight"])


def one_line(error: Exception) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_an_expert_of_another_hidden_size_is_named(models) -> None:
    experts = [(models["a"], ["w1"], []), (models["wide"], ["w2"], [])]
    with pytest.raises(PlanError) as e:
        validate(recipe(models["base"], experts, "random"))
    text = one_line(e.value)
    assert text.startswith("experts[1].source_model (line 8): ")
    assert "hidden size 48" in text and str(models["wide"]) in text


@pytest.mark.parametrize(("edit", "where", "words"), [
    (("gate_mode: hidden", "gate_mode: hiden"), "gate_mode (line 2)", "unknown gate_mode"),
    (('    positive_prompts: ["w20 w21"]\n', ""), "experts[1].positive_prompts",
     "at least one positive prompt"),
    (("experts_per_token: 2", "experts_per_token: 4"), "experts_per_token (line 4)",
     "from 1 to the 3 experts"),
    (("    positive_prompts: [\"w20", "    positve_prompts: [\"w20"),
     "experts[1].positve_prompts (line 10)", "did you mean 'positive_prompts'"),
    (("dtype: float32", "architecture: mixtral\nshared_experts: [{source_model: ./x}]"),
     "shared_experts (line 4)", "has no shared expert"),
    (("dtype: float32", "architecture: mixtral2"), "architecture (line 3)",
     "unknown architecture"),
])
def test_recipe_mistakes_are_one_line_at_their_yaml_path(models, edit, where, words) -> None:
    text = recipe(models["base"], expert_list(models), "hidden").replace(*edit)
    with pytest.raises((RecipeError, PlanError)) as e:
        validate(text)
    message = one_line(e.value)
    assert message.startswith(where), message
    assert words in message


def test_a_recipe_without_experts_stays_a_merge_recipe(models) -> None:
    with pytest.raises(RecipeError) as e:
        validate(f"base_model: {models['base']}\ngate_mode: hidden\n")
    assert one_line(e.value).startswith("gate_mode (line 2): unknown key")


def test_noise_scale_adds_seeded_gaussian_noise_to_that_expert(models, tmp_path) -> None:
    text = recipe(models["base"], expert_list(models), "random").replace(
        '    positive_prompts: ["w20 w21"]\n', '    positive_prompts: ["w20 w21"]\n'
        "    noise_scale: 0.01\n")
    outs = []
    for name, seed in (("one", 3), ("again", 3), ("other", 4)):
        run_merge(text, tmp_path / name, device="cpu", random_seed=seed)
        outs.append(tensors(tmp_path / name))
    w = "model.layers.0.block_sparse_moe.experts.{}.w1.weight"
    source = tensors(models["a"])["model.layers.0.mlp.gate_proj.weight"]
    noise = outs[0][w.format(1)] - source
    assert 0.008 < noise.std() < 0.012 and abs(noise.mean()) < 0.002
    assert torch.equal(outs[0][w.format(1)], outs[1][w.format(1)])
    assert not torch.equal(outs[0][w.format(1)], outs[2][w.format(1)])
    assert torch.equal(outs[0][w.format(2)], tensors(models["b"])[
        "model.layers.0.mlp.gate_proj.weight"])


def test_a_pickled_expert_is_read_like_safetensors(models, tmp_path) -> None:
    from merge_engine.synth import save_as_bin

    pickled = save_as_bin(models["a"], tmp_path / "a-bin")
    experts = [(models["base"], ["w1"], []), (pickled, ["w2"], [])]
    run_merge(recipe(models["base"], experts, "cheap_embed"), tmp_path / "out", device="cpu",
              random_seed=0)
    merged = tensors(tmp_path / "out")
    assert torch.equal(merged["model.layers.1.block_sparse_moe.experts.1.w2.weight"],
                       tensors(models["a"])["model.layers.1.mlp.down_proj.weight"])


@pytest.mark.parametrize(("text", "where"), [
    ("base_model: ./b\nexperts: 3\n", "experts (line 2)"),
    ("base_model: ./b\nexperts: []\n", "experts (line 2)"),
    ("base_model: ./b\nexperts: [./a]\n", "experts[0] (line 2)"),
    ("experts: [{source_model: ./a, positive_prompts: [x]}]\n", "base_model"),
    ("base_model: ./b\nexperts: [{positive_prompts: [x]}]\n", "experts[0] (line 2)"),
    ("base_model: ./b\nexperts: [{source_model: ./a, positive_prompts: [[x]]}]\n",
     "experts[0].positive_prompts[0]"),
    ("base_model: ./b\nexperts: [{source_model: ./a, positive_prompts: {a: 1}}]\n",
     "experts[0].positive_prompts"),
    (f"base_model: ./b\nexperts: [{{source_model: ./a, positive_prompts: [{'x' * 5000}]}}]\n",
     "experts[0].positive_prompts[0]"),
    ("base_model: ./b\nexperts: [{source_model: ./a, positive_prompts: [x], noise_scale: -1}]"
     "\n", "experts[0].noise_scale"),
    ("base_model: ./b\nexperts: [{source_model: ./a, positive_prompts: [x], noise_scale: .nan}]"
     "\n", "experts[0].noise_scale"),
    ("base_model: ./b\nexperts_per_token: true\nexperts: [{source_model: ./a, "
     "positive_prompts: [x]}]\n", "experts_per_token (line 2)"),
    ("base_model: ./b\nexperts: [{source_model: ./a, positive_prompts: [x]}]\n"
     "shared_experts: [{source_model: ./a}, {source_model: ./a}]\n", "shared_experts[1]"),
    ("base_model: ./b\nexperts: [{source_model: ./a+./l, positive_prompts: [x]}]\n",
     "experts[0].source_model"),
    ("base_model: ./b\ntokenizer_source: union\nexperts: [{source_model: ./a, "
     "positive_prompts: [x]}]\n", "tokenizer_source (line 2)"),
    ("base_model: ./b\nexperts: [{source_model: ./a, positive_prompts: [x]}]\n"
     "models: [{model: ./a}]\n", "models (line 3)"),
    ("base_model: ./b\nexperts:\n" + "  - {source_model: ./a, positive_prompts: [x]}\n" * 300,
     "experts"),
])
def test_hostile_moe_recipes_are_one_line_recipe_errors(text, where) -> None:
    from merge_engine import parse_recipe

    with pytest.raises(RecipeError) as e:
        parse_recipe(text)
    assert one_line(e.value).startswith(where), str(e.value)


def test_a_qwen2_base_keeps_its_attention_biases_in_qwen2_moe(tmp_path) -> None:
    base = write_dense(tmp_path / "base", 0, "qwen2")
    other = write_dense(tmp_path / "other", 1, "qwen2")
    experts = [(base, ["w1"], []), (other, ["w2"], [])]
    with pytest.raises(PlanError) as e:
        validate(recipe(base, experts, "random"))
    assert one_line(e.value).startswith("shared_experts: the qwen2_moe architecture")
    with pytest.raises(PlanError) as e:
        validate(recipe(base, experts, "random", "architecture: mixtral\n"))
    assert one_line(e.value).startswith("base_model (line 1): ")
    assert "attention biases" in str(e.value)
    out = tmp_path / "out"
    shared = f"shared_experts:\n  - source_model: {other}\n    positive_prompts: [w7]\n"
    run_merge(recipe(base, experts, "hidden", shared), out, device="cpu", random_seed=0)
    model, info = load(out)
    assert type(model).__name__ == "Qwen2MoeForCausalLM" and model.config.qkv_bias is True
    assert info == CLEAN
    forward_ok(model)
    merged = tensors(out)
    assert torch.equal(merged["model.layers.0.self_attn.q_proj.bias"],
                       tensors(base)["model.layers.0.self_attn.q_proj.bias"])
    want = hidden_rows(base, [(other, ["w7"], [])], 2)[1]
    torch.testing.assert_close(merged["model.layers.1.mlp.shared_expert_gate.weight"], want,
                               rtol=1e-5, atol=1e-6)
