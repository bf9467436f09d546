"""Layer stacks, layer counts and tied embeddings per family, from tensor names alone."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from merge_engine import PlanError, run_merge, validate
from merge_engine.plan.architecture import (
    EMBEDDING_SUFFIXES,
    TIED_ALIASES,
    config_get,
    config_set,
    detect_layout,
    family_for,
    find_stacks,
)

from .conftest import LLAMA_LAYER_SUFFIXES, load_model

N = 3


def stack(prefix: str, suffixes: list[str], layers: int = N) -> list[str]:
    return [f"{prefix}{i}.{s}" for i in range(layers) for s in suffixes]


LLAMA = [
    "model.embed_tokens.weight",
    *stack("model.layers.", LLAMA_LAYER_SUFFIXES),
    "model.norm.weight",
    "lm_head.weight",
]
GEMMA_LAYER = [
    *LLAMA_LAYER_SUFFIXES,
    "pre_feedforward_layernorm.weight",
    "post_feedforward_layernorm.weight",
    "self_attn.q_norm.weight",
]
VISION = stack("vision_tower.vision_model.encoder.layers.", ["self_attn.q_proj.weight"], 5) + [
    "vision_tower.vision_model.embeddings.patch_embedding.weight",
    "vision_tower.vision_model.post_layernorm.weight",
    "multi_modal_projector.mm_input_projection_weight",
]

# family: (config, tensor names, layer prefix, count key, embedding, head, final norm)
CASES = {
    "llama": (
        {"model_type": "llama", "num_hidden_layers": N},
        LLAMA,
        "model.layers.",
        "num_hidden_layers",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    ),
    "mistral": (
        {"model_type": "mistral", "num_hidden_layers": N},
        LLAMA,
        "model.layers.",
        "num_hidden_layers",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    ),
    "qwen2": (
        {"model_type": "qwen2", "num_hidden_layers": N},
        LLAMA + stack("model.layers.", ["self_attn.q_proj.bias"]),
        "model.layers.",
        "num_hidden_layers",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    ),
    "qwen3": (
        {"architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": N},
        LLAMA + stack("model.layers.", ["self_attn.q_norm.weight"]),
        "model.layers.",
        "num_hidden_layers",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    ),
    "gemma": (
        {"model_type": "gemma", "num_hidden_layers": N},
        ["model.embed_tokens.weight", *stack("model.layers.", LLAMA_LAYER_SUFFIXES),
         "model.norm.weight"],
        "model.layers.",
        "num_hidden_layers",
        "model.embed_tokens.weight",
        None,
        "model.norm.weight",
    ),
    "gemma2": (
        {"model_type": "gemma2", "num_hidden_layers": N},
        ["model.embed_tokens.weight", *stack("model.layers.", GEMMA_LAYER), "model.norm.weight"],
        "model.layers.",
        "num_hidden_layers",
        "model.embed_tokens.weight",
        None,
        "model.norm.weight",
    ),
    "gemma3_text": (
        {"model_type": "gemma3_text", "num_hidden_layers": N},
        ["model.embed_tokens.weight", *stack("model.layers.", GEMMA_LAYER), "model.norm.weight"],
        "model.layers.",
        "num_hidden_layers",
        "model.embed_tokens.weight",
        None,
        "model.norm.weight",
    ),
    "gemma3": (
        {
            "model_type": "gemma3",
            "text_config": {"num_hidden_layers": N},
            "vision_config": {"num_hidden_layers": 5},
        },
        [
            "language_model.model.embed_tokens.weight",
            *stack("language_model.model.layers.", GEMMA_LAYER),
            "language_model.model.norm.weight",
            *VISION,
        ],
        "language_model.model.layers.",
        "text_config.num_hidden_layers",
        "language_model.model.embed_tokens.weight",
        None,
        "language_model.model.norm.weight",
    ),
    "gemma3-new-names": (
        {
            "architectures": ["Gemma3ForConditionalGeneration"],
            "text_config": {"num_hidden_layers": N},
        },
        [
            "model.language_model.embed_tokens.weight",
            *stack("model.language_model.layers.", GEMMA_LAYER),
            "model.language_model.norm.weight",
            *VISION,
        ],
        "model.language_model.layers.",
        "text_config.num_hidden_layers",
        "model.language_model.embed_tokens.weight",
        None,
        "model.language_model.norm.weight",
    ),
    "phi3": (
        {"model_type": "phi3", "num_hidden_layers": N},
        [
            "model.embed_tokens.weight",
            *stack(
                "model.layers.",
                [
                    "input_layernorm.weight",
                    "self_attn.qkv_proj.weight",
                    "self_attn.o_proj.weight",
                    "mlp.gate_up_proj.weight",
                    "mlp.down_proj.weight",
                ],
            ),
            "model.norm.weight",
            "lm_head.weight",
        ],
        "model.layers.",
        "num_hidden_layers",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    ),
    "gpt2": (
        {"model_type": "gpt2", "n_layer": N},
        [
            "transformer.wte.weight",
            "transformer.wpe.weight",
            *stack(
                "transformer.h.",
                [
                    "ln_1.weight",
                    "ln_1.bias",
                    "attn.c_attn.weight",
                    "attn.c_proj.weight",
                    "mlp.c_fc.weight",
                ],
            ),
            "transformer.ln_f.weight",
            "transformer.ln_f.bias",
        ],
        "transformer.h.",
        "n_layer",
        "transformer.wte.weight",
        None,
        "transformer.ln_f.weight",
    ),
    "gpt_neox": (
        {"model_type": "gpt_neox", "num_hidden_layers": N},
        [
            "gpt_neox.embed_in.weight",
            *stack(
                "gpt_neox.layers.", ["attention.query_key_value.weight", "mlp.dense_h_to_4h.weight"]
            ),
            "gpt_neox.final_layer_norm.weight",
            "embed_out.weight",
        ],
        "gpt_neox.layers.",
        "num_hidden_layers",
        "gpt_neox.embed_in.weight",
        "embed_out.weight",
        "gpt_neox.final_layer_norm.weight",
    ),
    "falcon": (
        {"model_type": "falcon", "num_hidden_layers": N},
        [
            "transformer.word_embeddings.weight",
            *stack(
                "transformer.h.",
                [
                    "self_attention.query_key_value.weight",
                    "mlp.dense_h_to_4h.weight",
                    "input_layernorm.weight",
                ],
            ),
            "transformer.ln_f.weight",
            "lm_head.weight",
        ],
        "transformer.h.",
        "num_hidden_layers",
        "transformer.word_embeddings.weight",
        "lm_head.weight",
        "transformer.ln_f.weight",
    ),
    "falcon-old-config": (
        {"model_type": "RefinedWebModel", "n_layer": N},
        [
            "transformer.word_embeddings.weight",
            *stack("transformer.h.", ["self_attention.dense.weight"]),
            "transformer.ln_f.weight",
        ],
        "transformer.h.",
        "n_layer",
        "transformer.word_embeddings.weight",
        None,
        "transformer.ln_f.weight",
    ),
    "mixtral": (
        {"model_type": "mixtral", "num_hidden_layers": N},
        [
            "model.embed_tokens.weight",
            *stack(
                "model.layers.",
                [
                    "self_attn.q_proj.weight",
                    "block_sparse_moe.gate.weight",
                    *(
                        f"block_sparse_moe.experts.{e}.w{w}.weight"
                        for e in range(4)
                        for w in (1, 2, 3)
                    ),
                ],
            ),
            "model.norm.weight",
            "lm_head.weight",
        ],
        "model.layers.",
        "num_hidden_layers",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    ),
    "unknown family": (
        {"model_type": "starcoder2", "num_hidden_layers": N},
        LLAMA,
        "model.layers.",
        "num_hidden_layers",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    ),
    "no config": (
        {},
        LLAMA,
        "model.layers.",
        "num_hidden_layers",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_layout_of_each_family(case):
    config, names, prefix, count_key, embed, head, norm = CASES[case]
    layout = detect_layout(config, names, "m", strict=True)
    assert (layout.prefix, layout.num_layers, layout.count_key) == (prefix, N, count_key)
    assert layout.note is None
    assert layout.position(embed) == ("pre", None, 0)
    assert embed.endswith(EMBEDDING_SUFFIXES)
    assert layout.position(norm) == ("post", None, 0)
    if head is not None:
        assert layout.position(head) == ("post", None, 0)
        assert head.endswith(EMBEDDING_SUFFIXES)
    in_stack = [n for n in names if n.startswith(prefix)]
    assert len(in_stack) % N == 0 and in_stack
    for name in in_stack:
        index, suffix = layout.layer_of(name)
        assert layout.layer_name(index, suffix) == name
        assert layout.position(name) == ("layer", index, N)
    for name in set(names) - set(in_stack):
        assert layout.layer_of(name) is None


def test_a_family_without_a_head_ties_it_to_its_embedding():
    for head, embed in [
        ("lm_head.weight", "model.embed_tokens.weight"),
        ("lm_head.weight", "transformer.wte.weight"),
        ("lm_head.weight", "transformer.word_embeddings.weight"),
        ("embed_out.weight", "gpt_neox.embed_in.weight"),
        ("language_model.lm_head.weight", "language_model.model.embed_tokens.weight"),
        ("lm_head.weight", "model.language_model.embed_tokens.weight"),
    ]:
        assert embed in TIED_ALIASES[head]


def test_mixtral_experts_are_inside_their_layer():
    layout = detect_layout(*CASES["mixtral"][:2], "m")
    assert layout.layer_of("model.layers.2.block_sparse_moe.experts.3.w1.weight") == (
        2,
        "block_sparse_moe.experts.3.w1.weight",
    )
    assert list(find_stacks(CASES["mixtral"][1])) == ["model.layers."]


def test_a_vision_tower_is_another_stack_with_its_own_count():
    config, names = CASES["gemma3"][:2]
    layout = detect_layout(config, names, "m", strict=True)
    assert layout.stacks["vision_tower.vision_model.encoder.layers."] == 5
    assert layout.position(
        "vision_tower.vision_model.encoder.layers.4.self_attn.q_proj.weight"
    ) == ("stack", 4, 5)
    assert layout.position("vision_tower.vision_model.post_layernorm.weight")[0] == "pre"
    assert layout.position("multi_modal_projector.mm_input_projection_weight")[0] == "pre"


def test_family_lookup():
    assert family_for({"model_type": "qwen2"}).name == "llama"
    assert family_for({"architectures": ["GPTNeoXForCausalLM"]}).name == "gpt_neox"
    assert family_for({"model_type": "RefinedWeb"}).name == "falcon"
    assert family_for({"model_type": "mamba"}) is None


def test_names_that_do_not_match_the_config_family():
    names = LLAMA
    with pytest.raises(
        PlanError,
        match=r"^m: config\.json \(model_type 'gpt2'\) says a gpt2 "
        r"model, whose layers are named transformer\.h\.N\.\*, but no "
        r"tensor is named that way \(layer stacks found: "
        r"model\.layers\.N\.\); this layout is not understood",
    ):
        detect_layout({"model_type": "gpt2", "n_layer": N}, names, "m", strict=True)
    layout = detect_layout({"model_type": "gpt2", "n_layer": N}, names, "m")
    assert layout.prefix == "model.layers." and layout.family == "generic"
    assert "read by name alone" in layout.note


def test_no_layer_stack():
    names = ["encoder.weight", "decoder.weight"]
    with pytest.raises(
        PlanError,
        match=r"m: no layer stack found in its tensor names "
        r"\(config\.json \(model_type 'mamba2'\)\)",
    ):
        detect_layout({"model_type": "mamba2"}, names, "m", strict=True)
    layout = detect_layout({"model_type": "mamba2", "num_hidden_layers": 4}, names, "m")
    assert layout.prefix is None and layout.num_layers == 4


def test_config_count_must_match_the_names_when_strict():
    with pytest.raises(
        PlanError,
        match=r"config\.json says 5 layers \(num_hidden_layers\) but "
        r"its tensors model\.layers\.N\.\* have layers 0 to 2",
    ):
        detect_layout({"model_type": "llama", "num_hidden_layers": 5}, LLAMA, "m", strict=True)
    gap = [n for n in LLAMA if not n.startswith("model.layers.1.")]
    with pytest.raises(PlanError, match=r"layers \[1\] of model\.layers\.N\.\* have no tensors"):
        detect_layout({"model_type": "llama", "num_hidden_layers": 3}, gap, "m", strict=True)
    assert detect_layout({"num_hidden_layers": 5}, LLAMA, "m").num_layers == 5


def test_several_stacks_without_a_family():
    names = stack("encoder.layers.", ["w"], 2) + stack("decoder.layers.", ["w"], 4)
    assert detect_layout({"num_layers": 4}, names, "m", strict=True).prefix == "decoder.layers."
    with pytest.raises(PlanError, match=r"several layer stacks in its tensor names"):
        detect_layout({}, names, "m", strict=True)


def test_dotted_config_keys():
    config = {"text_config": {"num_hidden_layers": 3}}
    assert config_get(config, "text_config.num_hidden_layers") == 3
    assert config_get(config, "text_config.missing") is None
    copied = dict(config)
    config_set(copied, "text_config.num_hidden_layers", 5)
    assert copied["text_config"]["num_hidden_layers"] == 5
    assert config["text_config"]["num_hidden_layers"] == 3  # the source's config is untouched


# --- real transformers models of other families, generated (no downloads) ----------------------


def _save(model, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config(
        n_layer=3,
        n_embd=32,
        n_head=2,
        vocab_size=64,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out.append(_save(transformers.GPT2LMHeadModel(config), root / f"m{seed}"))
    return out


def test_gpt2_frankenmerge(gpt2_pair, tmp_path):
    transformers = pytest.importorskip("transformers")
    a, b = gpt2_pair
    text = (
        f"merge_method: passthrough\nslices:\n"
        f"  - sources:\n      - model: {a}\n        layer_range: [0, 3]\n"
        f"  - sources:\n      - model: {b}\n        layer_range: [2, 3]\n"
    )
    run_merge(text, tmp_path / "out", device="cpu")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["n_layer"] == 4 and "num_hidden_layers" not in config
    merged, ma, mb = (load_model(p) for p in (tmp_path / "out", a, b))
    assert "lm_head.weight" not in merged  # tied to wte, as in the sources
    assert torch.equal(
        merged["transformer.h.3.attn.c_attn.weight"], mb["transformer.h.2.attn.c_attn.weight"]
    )
    assert torch.equal(
        merged["transformer.h.1.mlp.c_fc.weight"], ma["transformer.h.1.mlp.c_fc.weight"]
    )
    assert torch.equal(merged["transformer.wte.weight"], ma["transformer.wte.weight"])
    assert torch.equal(merged["transformer.wpe.weight"], ma["transformer.wpe.weight"])
    assert torch.equal(merged["transformer.ln_f.weight"], mb["transformer.ln_f.weight"])
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert len(model.transformer.h) == 4
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_gpt_neox_slices_with_linear(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPTNeoXConfig(
        num_hidden_layers=3,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=64,
        max_position_embeddings=64,
    )
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(_save(transformers.GPTNeoXForCausalLM(config), tmp_path / f"m{seed}"))
    a, b = paths
    text = (
        f"merge_method: linear\nslices:\n  - sources:\n"
        f"      - model: {a}\n        layer_range: [1, 3]\n"
        f"        parameters: {{weight: 0.25}}\n"
        f"      - model: {b}\n        layer_range: [0, 2]\n"
        f"        parameters: {{weight: 0.75}}\n"
    )
    plan = validate(text)
    assert plan.out_config["num_hidden_layers"] == 2
    run_merge(text, tmp_path / "out", device="cpu")
    merged, ma, mb = (load_model(p) for p in (tmp_path / "out", a, b))
    name = "attention.query_key_value.weight"
    expected = (
        0.25 * ma[f"gpt_neox.layers.2.{name}"].double()
        + 0.75 * mb[f"gpt_neox.layers.1.{name}"].double()
    )
    assert torch.allclose(merged[f"gpt_neox.layers.1.{name}"].double(), expected, atol=1e-6)
    expected = 0.25 * ma["embed_out.weight"].double() + 0.75 * mb["embed_out.weight"].double()
    assert torch.allclose(merged["embed_out.weight"].double(), expected, atol=1e-6)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert len(model.gpt_neox.layers) == 2


def test_gradients_in_a_whole_model_merge_of_a_vision_model_use_each_stack():
    from merge_engine.plan.build import _gradient_t

    config, names = CASES["gemma3"][:2]
    layout = detect_layout(config, names, "m")
    assert _gradient_t(layout, "language_model.model.layers.1.mlp.up_proj.weight") == 0.5
    assert (
        _gradient_t(layout, "vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.weight")
        == 0.25
    )
    assert _gradient_t(layout, "language_model.model.norm.weight") == 0.0
