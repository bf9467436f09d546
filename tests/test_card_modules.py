"""The card, the check's JSON and ``merge-engine validate`` of a multi-part ``modules:``
recipe: every module with its own models, weights, parameters and slices."""

from __future__ import annotations

import pytest

from merge_engine import run_merge, validate
from merge_engine.card import render_card
from merge_engine.cli import main
from merge_engine.plan.summary import model_rows, plan_json

from .test_card import parse, table_rows
from .test_modules import write_llava

MODULES = ["text_decoder", "vision_tower", "multi_modal_projector"]


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava-card")
    return write_llava(root / "a", 0), write_llava(root / "b", 1)


def weighted(a, b) -> str:
    """Three modules, each with other weights (the projector's from its own parameters)."""
    return f"""merge_method: linear
dtype: float32
parameters: {{normalize: false}}
modules:
  text_decoder:
    models:
      - model: {a}
        parameters: {{weight: 0.7}}
      - model: {b}
        parameters: {{weight: 0.3}}
  vision_tower:
    models:
      - model: {b}
        parameters: {{weight: 0.9}}
  multi_modal_projector:
    parameters: {{weight: 0.25}}
    models:
      - model: {b}
      - model: {a}
        parameters: {{weight: 0.75}}
"""


def local(path) -> dict:
    return {"model": str(path), "revision": None}


def test_card_records_every_module(llava, tmp_path):
    a, b = llava
    run_merge(weighted(a, b), tmp_path / "out", device="cpu", random_seed=5)
    card = (tmp_path / "out" / "README.md").read_text()
    merge = parse(card).data.to_dict()["merge"]
    assert merge["models"] == [{**local(a), "modules": ["text_decoder",
                                                          "multi_modal_projector"]},
                               {**local(b), "modules": MODULES}]
    assert merge["parameters"] == {"normalize": False}
    assert merge["random_seed"] == 5
    assert merge["modules"] == {
        "text_decoder": {"models": [{**local(a), "parameters": {"weight": 0.7}},
                                    {**local(b), "parameters": {"weight": 0.3}}],
                         "parameters": {}},
        "vision_tower": {"models": [{**local(b), "parameters": {"weight": 0.9}}],
                         "parameters": {}},
        "multi_modal_projector": {"models": [{**local(b), "parameters": {"weight": 0.25}},
                                             {**local(a), "parameters": {"weight": 0.75}}],
                                  "parameters": {"weight": 0.25}},
    }
    for name, line in [("text_decoder", "merged = 0.7 * a + 0.3 * b"),
                       ("vision_tower", "merged = 0.9 * b"),
                       ("multi_modal_projector", "merged = 0.25 * b + 0.75 * a")]:
        assert f"## Module `{name}`\n\n```text\n{line}\n```\n" in card
    assert "Module parameters: weight: 0.25." in card
    overview = table_rows(card, "| role | model | revision | modules |")
    assert overview == [["donor", str(a), "local files", "text_decoder, multi_modal_projector"],
                        ["donor", str(b), "local files", ", ".join(MODULES)]]
    vision = card.split("## Module `vision_tower`")[1]
    assert table_rows(vision, "| role |") == [["donor", str(b), "local files", "0.9", "-"]]
    # a vision-language model: its pipeline and how to load it, which works
    assert parse(card).data.pipeline_tag == "image-text-to-text"
    assert "AutoModelForImageTextToText.from_pretrained(model_id" in card
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    assert type(model).__name__ == "LlavaForConditionalGeneration"


def test_plan_json_and_model_rows_show_each_module(llava):
    a, b = llava
    plan = validate(weighted(a, b))
    answer = plan_json(plan)
    assert answer["formula"] == ("text_decoder: merged = 0.7 * a + 0.3 * b\n"
                                 "vision_tower: merged = 0.9 * b\n"
                                 "multi_modal_projector: merged = 0.25 * b + 0.75 * a")
    assert [(m["name"], m["weight"]) for m in answer["models"]] == [(str(a), "0.7 / 0.75"),
                                                                    (str(b), "0.3 / 0.9 / 0.25")]
    modules = answer["modules"]
    assert [m["name"] for m in modules] == MODULES
    assert [[(r["name"], r["revision"], r["weight"]) for r in m["models"]] for m in modules] == [
        [(str(a), None, "0.7"), (str(b), None, "0.3")],
        [(str(b), None, "0.9")],
        [(str(b), None, "0.25"), (str(a), None, "0.75")],
    ]
    assert modules[1]["formula"] == "merged = 0.9 * b"
    assert [m["parameters"] for m in modules] == [{}, {}, {"weight": "0.25"}]
    assert sum(m["parameter_count"] for m in modules) == answer["parameter_count"]
    assert [r.modules for r in model_rows(plan)] == [("text_decoder", "multi_modal_projector"),
                                                     tuple(MODULES)]


def test_sliced_module_with_a_base(llava):
    a, b = llava
    text = f"""merge_method: task_arithmetic
base_model: {a}
modules:
  text_decoder:
    slices:
      - sources:
          - model: {a}
            layer_range: [0, 2]
          - model: {b}
            layer_range: [0, 2]
            parameters: {{weight: 0.4}}
      - sources:
          - model: {a}
            layer_range: [1, 2]
          - model: {b}
            layer_range: [1, 2]
            parameters: {{weight: 0.6}}
  vision_tower:
    models:
      - model: {b}
        parameters: {{weight: 0.5}}
  multi_modal_projector:
    models:
      - model: {b}
        parameters: {{weight: 0.1}}
"""
    card = render_card(validate(text))
    merge = parse(card).data.to_dict()["merge"]
    assert merge["base_model"] == {**local(a), "modules": MODULES}
    decoder = merge["modules"]["text_decoder"]
    assert decoder["base_model"] == {**local(a), "slices": [0, 1]}
    assert decoder["models"] == [{**local(b), "slices": [0, 1]}]
    assert [(s["output_layers"], s["sources"][1]["parameters"]) for s in decoder["slices"]] == [
        ([0, 2], {"weight": 0.4}), ([2, 3], {"weight": 0.6})]
    assert merge["modules"]["vision_tower"] == {
        "base_model": local(a), "models": [{**local(b), "parameters": {"weight": 0.5}}],
        "parameters": {}}
    assert "slices" not in merge and "slices" not in merge["modules"]["vision_tower"]
    assert ("```text\nslice 0: merged = base + 0.4 * (b - base)\n"
            "slice 1: merged = base + 0.6 * (b - base)\n```") in card
    assert "### Slices of `text_decoder`" in card and "\n## Slices" not in card
    assert "merged = base + 0.1 * (b - base)" in card


def test_validate_prints_each_module(llava, tmp_path, capsys):
    a, b = llava
    recipe = tmp_path / "r.yml"
    recipe.write_text(weighted(a, b))
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("text_decoder: merged = 0.7 * a + 0.3 * b\n"
                          "vision_tower: merged = 0.9 * b\n")
    assert f"  donor  {a}  @ local  modules text_decoder, multi_modal_projector  (" in out
    assert (f"  module vision_tower:\n    donor  {b}  weight 0.9\n"
            f"  module multi_modal_projector (parameters: weight 0.25):\n"
            f"    donor  {b}  weight 0.25\n    donor  {a}  weight 0.75\n") in out
