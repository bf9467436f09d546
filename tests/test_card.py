"""The model card: every use of every model (slices included), licenses with LoRA
adapters, and front matter that huggingface_hub reads as model-card metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from merge_engine import run_merge, validate
from merge_engine.card import render_card
from merge_engine.plan.summary import model_rows, plan_json

from .conftest import recipe_text
from .test_lora import write_adapter


def slices_text(method: str, slices: list[list[tuple]], head: str = "") -> str:
    """``slices``: a list of slices, each a list of (model, [start, end], parameters)."""
    lines = [f"merge_method: {method}", *head.splitlines(), "slices:"]
    for sources in slices:
        lines.append("  - sources:")
        for model, (start, end), params in sources:
            lines += [f"      - model: {model}", f"        layer_range: [{start}, {end}]"]
            if params:
                lines.append("        parameters:")
                lines += [f"          {k}: {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def parse(card: str) -> ModelCard:
    """The card as the Hub's client reads it; its metadata must equal the YAML written."""
    parsed = ModelCard(card)
    assert parsed.data.to_dict() == yaml.safe_load(card.split("---\n")[1])
    return parsed


def table_rows(card: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with ``header``."""
    lines = card.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_frankenmerge_records_every_use_of_a_model(family, tmp_path):
    _, d1, d2 = family
    text = slices_text("passthrough", [[(d1, (0, 2), {"scale": 0.5})], [(d2, (1, 3), {})],
                                       [(d1, (1, 3), {"scale": 1.5})]])
    run_merge(text, tmp_path / "out", device="cpu", random_seed=3)
    card = (tmp_path / "out" / "README.md").read_text()
    data = parse(card).data
    assert {"merge", "mergekit", "passthrough"} <= set(data.tags)
    assert data.library_name == "transformers"
    assert data.base_model is None  # local directories are not Hub repo ids
    merge = data.to_dict()["merge"]
    assert merge["models"] == [{"model": str(d1), "revision": None, "slices": [0, 2]},
                               {"model": str(d2), "revision": None, "slices": [1]}]
    assert merge["slices"] == [
        {"output_layers": [0, 2], "sources": [
            {"model": str(d1), "revision": None, "layer_range": [0, 2],
             "parameters": {"scale": 0.5}}]},
        {"output_layers": [2, 4], "sources": [
            {"model": str(d2), "revision": None, "layer_range": [1, 3], "parameters": {}}]},
        {"output_layers": [4, 6], "sources": [
            {"model": str(d1), "revision": None, "layer_range": [1, 3],
             "parameters": {"scale": 1.5}}]},
    ]
    assert merge["random_seed"] == 3
    rows = table_rows(card, "| slice |")
    assert [(r[0], r[1], r[3], r[4], r[6]) for r in rows] == [
        ("0", "[0, 2]", str(d1), "[0, 2]", "scale: 0.5"),
        ("1", "[2, 4]", str(d2), "[1, 3]", "-"),
        ("2", "[4, 6]", str(d1), "[1, 3]", "scale: 1.5"),
    ]
    models = table_rows(card, "| role |")
    assert [(r[1], r[4]) for r in models] == [(str(d1), "scale: 0.5 / 1.5"), (str(d2), "-")]


def test_slice_weights_and_recipe_wide_parameters(family):
    base, d1, d2 = family
    text = slices_text(
        "task_arithmetic",
        [[(base, (0, 2), {}), (d1, (0, 2), {"weight": 0.3, "density": 0.5})],
         [(base, (1, 3), {}), (d1, (1, 3), {"weight": 0.7}), (d2, (1, 3), {})]],
        head=f"base_model: {base}\nparameters:\n  lambda: 0.9\n  weight: 0.2",
    )
    plan = validate(text)
    card = render_card(plan, seed=1)
    merge = parse(card).data.to_dict()["merge"]
    assert merge["base_model"] == {"model": str(base), "revision": None, "slices": [0, 1]}
    assert merge["parameters"] == {"lambda": 0.9, "weight": 0.2}
    uses = [(n, s["model"], s.get("parameters")) for n, sl in enumerate(merge["slices"])
            for s in sl["sources"]]
    assert uses == [(0, str(base), None), (0, str(d1), {"weight": 0.3, "density": 0.5}),
                    (1, str(base), None), (1, str(d1), {"weight": 0.7}),
                    (1, str(d2), {"weight": 0.2})]
    assert all(sl["base_model"] == str(base) for sl in merge["slices"])
    assert ("slice 0: merged = base + 0.9 * (0.3 * (donor-1 - base))\n"
            "slice 1: merged = base + 0.9 * (0.7 * (donor-1 - base) + 0.2 * (donor-2 - base))"
            ) in card
    assert "Recipe-wide parameters: lambda: 0.9, weight: 0.2." in card
    rows = model_rows(plan)
    assert [(r.role, r.weight, r.others, r.slices) for r in rows] == [
        ("base", "", {}, (0, 1)),
        ("donor", "0.3 / 0.7", {"density": "0.5 / 1.0"}, (0, 1)),
        ("donor", "0.2", {}, (1,)),
    ]
    assert rows[1].values == {} and rows[2].values == {"weight": 0.2}


def test_one_slice_recipe_keeps_a_single_formula(family):
    base, d1, _ = family
    text = slices_text("task_arithmetic", [[(base, (0, 3), {}), (d1, (0, 3), {"weight": 0.4})]],
                       head=f"base_model: {base}")
    card = render_card(validate(text))
    assert "merged = base + 0.4 * (donor-1 - base)\n```" in card
    assert "slice 0:" not in card


def test_models_recipe_card_parses_as_hub_metadata(family):
    base, d1, d2 = family
    text = recipe_text("ties", base, [(d1, {"weight": 0.6, "density": 0.5}),
                                      (d2, {"weight": 0.4})], "parameters:\n  lambda: 0.8\n")
    card = render_card(validate(text), seed=2)
    data = parse(card).data
    merge = data.to_dict()["merge"]
    assert merge["base_model"] == {"model": str(base), "revision": None}
    assert merge["models"][0]["parameters"] == {"weight": 0.6, "density": 0.5}
    assert merge["parameters"] == {"lambda": 0.8}
    assert "slices" not in merge
    assert "## Slices" not in card


@pytest.mark.parametrize("adapter_license, expected", [("mit", "other"), (None, None)])
def test_a_lora_adapters_license_is_checked(family, tmp_path, adapter_license, expected):
    base, d1, _ = family
    adapter = write_adapter(tmp_path / "adapter")
    if adapter_license:
        (adapter / "README.md").write_text(f"---\nlicense: {adapter_license}\n---\n# LoRA\n")
    text = recipe_text("task_arithmetic", base, [(Path(f"{d1}+{adapter}"), {"weight": 0.5})])
    plan = validate(text)
    card = render_card(plan)
    data = parse(card).data
    assert data.license == expected
    note = f"{d1}: unknown, {adapter}: mit"
    assert (note in card) == (adapter_license is not None)
    # the check (bot /api/validate, the Space) warns the same way
    warned = [w for w in plan_json(plan)["warnings"] if "different licenses" in w]
    assert (len(warned) == 1 and note in warned[0]) == (adapter_license is not None)
    lora = data.to_dict()["merge"]["models"][0]["lora"]
    assert lora == {"model": str(adapter), "revision": None}


def test_an_unparseable_adapter_readme_leaves_its_license_unknown(family, tmp_path):
    base, d1, _ = family
    adapter = write_adapter(tmp_path / "adapter")
    (adapter / "README.md").write_text("---\nlicense: [mit\n---\n")
    text = recipe_text("task_arithmetic", base, [(Path(f"{d1}+{adapter}"), {"weight": 0.5})])
    assert parse(render_card(validate(text))).data.license is None


def test_usage_snippet_loads_a_tokenizer_only_when_the_output_has_one(family):
    base, d1, _ = family
    plan = validate(recipe_text("task_arithmetic", base, [(d1, {"weight": 0.4})]))
    with_tokenizer = render_card(plan, repo_id="me/m")
    assert 'tokenizer = AutoTokenizer.from_pretrained(model_id)' in with_tokenizer
    without = render_card(plan, repo_id="me/m", tokenizer=False)
    assert "AutoTokenizer" not in without
    assert 'model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto")' in without


def test_a_merge_without_tokenizer_files_has_a_card_without_a_tokenizer(family, tmp_path):
    base, d1, _ = family  # the generated models have no tokenizer files
    run_merge(recipe_text("task_arithmetic", base, [(d1, {"weight": 0.4})]), tmp_path / "out")
    assert not list((tmp_path / "out").glob("tokenizer*"))
    assert "AutoTokenizer" not in (tmp_path / "out" / "README.md").read_text()
