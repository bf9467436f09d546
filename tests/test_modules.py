"""Multi-part ``modules`` (a vision-language model: text_decoder, vision_tower,
multi_modal_projector), on tiny Llava models written by transformers itself."""

from __future__ import annotations

import json

import pytest
import torch

from merge_engine import run_merge, validate
from merge_engine.errors import PlanError, RecipeError
from merge_engine.plan.architecture import module_of
from merge_engine.recipe import parse_recipe

from .conftest import load_model

TEXT, VISION, PROJ = "text_decoder", "vision_tower", "multi_modal_projector"


def write_llava(path, seed: int):
    transformers = pytest.importorskip("transformers")
    text = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2,
                                    vocab_size=96)
    vision = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=2, num_attention_heads=2,
                                           image_size=8, patch_size=4)
    config = transformers.LlavaConfig(text_config=text, vision_config=vision,
                                      image_token_index=95, vision_feature_layer=-1)
    torch.manual_seed(seed)
    transformers.LlavaForConditionalGeneration(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    return write_llava(root / "a", 0), write_llava(root / "b", 1)


def three_parts(a, b) -> str:
    return f"""merge_method: linear
dtype: float32
modules:
  text_decoder:
    models:
      - model: {a}
        parameters: {{weight: 0.7}}
      - model: {b}
        parameters: {{weight: 0.3}}
  vision_tower:
    models:
      - model: {a}
        parameters: {{weight: 1.0}}
  multi_modal_projector:
    parameters: {{weight: 0.5}}
    models:
      - model: {b}
      - model: {a}
"""


def test_module_of_names_every_part(llava):
    names = load_model(llava[0])
    parts = {module_of(n) for n in names}
    assert parts == {TEXT, VISION, PROJ}
    assert module_of("language_model.lm_head.weight") == TEXT
    assert module_of("model.vision_tower.encoder.layers.0.mlp.fc1.weight") == VISION
    assert module_of("visual.merger.mlp.0.weight") == PROJ
    assert module_of("visual.blocks.3.attn.qkv.weight") == VISION


def test_each_part_merges_with_its_own_models_and_parameters(llava, tmp_path):
    a, b = llava
    out = tmp_path / "out"
    run_merge(three_parts(a, b), out, device="cpu", random_seed=0)
    sa, sb, merged = load_model(a), load_model(b), load_model(out)
    assert merged.keys() == sa.keys()
    want = {TEXT: (0.7, 0.3), VISION: (1.0, 0.0), PROJ: (0.5, 0.5)}
    for name, got in merged.items():
        wa, wb = want[module_of(name)]
        ref = wa * sa[name].double() + wb * sb[name].double()
        torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-7, msg=name)
    assert torch.equal(merged["vision_tower.encoder.layers.1.mlp.fc1.weight"],
                       sa["vision_tower.encoder.layers.1.mlp.fc1.weight"])

    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(out)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 5, 9]])).logits
    assert logits.shape == (1, 3, 96) and torch.isfinite(logits).all()


def test_gradients_follow_each_parts_own_layers(llava, tmp_path):
    a, b = llava
    text = f"""merge_method: task_arithmetic
base_model: {a}
dtype: float32
modules:
  text_decoder:
    models:
      - model: {b}
        parameters: {{weight: 0.5}}
  vision_tower:
    models:
      - model: {b}
        parameters: {{weight: [0.0, 1.0]}}
  multi_modal_projector:
    models:
      - model: {b}
        parameters: {{weight: 0.0}}
"""
    out = tmp_path / "out"
    run_merge(text, out, device="cpu", random_seed=0)
    sa, sb, merged = load_model(a), load_model(b), load_model(out)
    layer = "vision_tower.encoder.layers.{}.self_attn.q_proj.weight"
    torch.testing.assert_close(merged[layer.format(0)], sa[layer.format(0)])
    torch.testing.assert_close(merged[layer.format(1)], sb[layer.format(1)])
    name = "language_model.model.layers.1.mlp.up_proj.weight"
    torch.testing.assert_close(merged[name].double(),
                               0.5 * sa[name].double() + 0.5 * sb[name].double(),
                               rtol=1e-6, atol=1e-7)
    proj = "multi_modal_projector.linear_1.weight"
    assert torch.equal(merged[proj], sa[proj])


def test_text_decoder_slices_with_other_parts_merged(llava, tmp_path):
    a, b = llava
    text = f"""merge_method: passthrough
dtype: float32
modules:
  text_decoder:
    slices:
      - sources:
          - model: {a}
            layer_range: [0, 2]
      - sources:
          - model: {b}
            layer_range: [1, 2]
  vision_tower:
    models:
      - model: {a}
  multi_modal_projector:
    models:
      - model: {a}
"""
    out = tmp_path / "out"
    run_merge(text, out, device="cpu", random_seed=0)
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 3
    assert config["vision_config"]["num_hidden_layers"] == 2
    sa, sb, merged = load_model(a), load_model(b), load_model(out)
    name = "language_model.model.layers.{}.self_attn.o_proj.weight"
    assert torch.equal(merged[name.format(2)], sb[name.format(1)])
    assert torch.equal(merged[name.format(1)], sa[name.format(1)])

    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(out)
    assert len(model.model.language_model.layers) == 3


def test_parts_recipe_reads_every_model_once(llava):
    a, b = llava
    recipe = parse_recipe(three_parts(a, b))
    assert [p.part for p in recipe.parts] == [TEXT, VISION, PROJ]
    assert [str(m.ref) for m in recipe.inputs()] == [str(a), str(b)]
    proj = recipe.parts[2]
    assert proj.models_loc == "modules.multi_modal_projector.models"
    assert [m.loc for m in proj.models] == ["modules.multi_modal_projector.models[0]",
                                            "modules.multi_modal_projector.models[1]"]
    plan = validate(three_parts(a, b))
    assert len(plan.tasks) == len(load_model(a))


def test_missing_and_unknown_parts(llava):
    a, b = llava
    two = three_parts(a, b).split("  multi_modal_projector:")[0]
    with pytest.raises(PlanError) as err:
        validate(two)
    assert "modules (line 3)" in str(err.value) and "also has multi_modal_projector" in str(
        err.value)
    extra = three_parts(a, b) + f"  audio_tower:\n    models:\n      - model: {a}\n" \
        "        parameters: {weight: 1}\n"
    with pytest.raises(PlanError) as err:
        validate(extra)
    assert "modules.audio_tower (line" in str(err.value) and "has no part 'audio_tower'" in str(
        err.value)


@pytest.mark.parametrize(("text", "loc", "words"), [
    ("modules:\n  default:\n    models: [{model: org/a}]\n  text_decoder:\n"
     "    models: [{model: org/a}]\n", "modules.default", "name each part"),
    ("modules:\n  text_decoder: [org/a]\n", "modules.text_decoder", "expected a mapping"),
    ("modules:\n  text_decoder:\n    modles: [{model: org/a}]\n",
     "modules.text_decoder.modles", "did you mean 'models'"),
    ("modules:\n  text_decoder:\n    models: [{model: org/a, parameters: {weight: x}}]\n",
     "modules.text_decoder.models[0].parameters.weight", "expected a number"),
])
def test_part_errors_name_their_yaml_path(text, loc, words):
    with pytest.raises(RecipeError) as err:
        parse_recipe("merge_method: linear\n" + text)
    assert err.value.loc == loc and words in err.value.msg
