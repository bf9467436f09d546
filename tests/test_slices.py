"""``slices:`` (frankenmerges and per-slice merges) against float64 references."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from merge_engine import PlanError, run_merge, validate
from merge_engine.errors import RecipeError, SourceError
from merge_engine.recipe import parse_recipe
from merge_engine.synth import write_model

from .conftest import LLAMA_LAYER_SUFFIXES, TINY, load_model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two unrelated 3-layer models (different seeds), A and B."""
    root = tmp_path_factory.mktemp("pair")
    return write_model(root / "a", TINY, seed=0), write_model(root / "b", TINY, seed=1)


def slices_recipe(
    method: str,
    slices: list[list[tuple]],
    *,
    base=None,
    extra: str = "",
    slice_extra: list[str] | None = None,
) -> str:
    """``slices`` is a list of slices, each a list of (model, [start, end], params)."""
    lines = [f"merge_method: {method}"]
    if base is not None:
        lines.append(f"base_model: {base}")
    lines.append("slices:")
    for i, sources in enumerate(slices):
        lines.append("  - sources:")
        for model, (start, end), params in sources:
            lines.append(f"      - model: {model}")
            lines.append(f"        layer_range: [{start}, {end}]")
            if params:
                lines.append("        parameters:")
                lines += [f"          {k}: {v}" for k, v in params.items()]
        if slice_extra and slice_extra[i]:
            lines.append(textwrap.indent(textwrap.dedent(slice_extra[i]).strip("\n"), "    "))
    return "\n".join(lines) + "\n" + extra


def layer(name_layer: int, suffix: str) -> str:
    return f"model.layers.{name_layer}.{suffix}"


# --- frankenmerges --------------------------------------------------------------------------


def test_passthrough_frankenmerge_loads_in_transformers(pair, tmp_path):
    transformers = pytest.importorskip("transformers")
    a, b = pair
    text = slices_recipe("passthrough", [[(a, (0, 2), {})], [(b, (1, 3), {})]])
    result = run_merge(text, tmp_path / "out", device="cpu", out_shard_size=30_000)
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 4
    assert json.loads((a / "config.json").read_text())["num_hidden_layers"] == 3  # untouched
    merged, ma, mb = load_model(out), load_model(a), load_model(b)
    # output layer k <- (model, layer): 0 <- A0, 1 <- A1, 2 <- B1, 3 <- B2
    for k, (src, i) in enumerate([(ma, 0), (ma, 1), (mb, 1), (mb, 2)]):
        for suffix in LLAMA_LAYER_SUFFIXES:
            assert torch.equal(merged[layer(k, suffix)], src[layer(i, suffix)]), (k, suffix)
    # mergekit: tensors before the stack from the first slice, after it from the last
    assert torch.equal(merged["model.embed_tokens.weight"], ma["model.embed_tokens.weight"])
    assert torch.equal(merged["model.norm.weight"], mb["model.norm.weight"])
    assert torch.equal(merged["lm_head.weight"], mb["lm_head.weight"])
    assert len(merged) == 3 + 4 * len(LLAMA_LAYER_SUFFIXES)
    assert result.formula == "merged = passthrough(a, b)"

    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4
    state = model.state_dict()
    assert torch.equal(
        state["model.layers.3.mlp.up_proj.weight"], mb["model.layers.2.mlp.up_proj.weight"]
    )
    logits = model(torch.tensor([[1, 5, 9, 2]])).logits
    assert logits.shape == (1, 4, TINY.vocab)
    assert math.isfinite(logits.float().abs().sum().item())


def test_one_model_stacked_on_itself_is_read_once(pair, tmp_path):
    a, _ = pair
    text = slices_recipe("passthrough", [[(a, (0, 2), {})], [(a, (1, 3), {"scale": 0.5})]])
    plan = validate(text)
    assert len(plan.sources) == 1 and all(i.model == 0 for t in plan.tasks for i in t.inputs)
    run_merge(text, tmp_path / "out", device="cpu")
    merged, ma = load_model(tmp_path / "out"), load_model(a)
    assert torch.equal(merged[layer(1, "mlp.up_proj.weight")], ma[layer(1, "mlp.up_proj.weight")])
    assert torch.equal(
        merged[layer(2, "mlp.up_proj.weight")], ma[layer(1, "mlp.up_proj.weight")] * 0.5
    )
    # the last slice's scale applies to the tensors after the stack too (mergekit)
    assert torch.equal(merged["model.norm.weight"], ma["model.norm.weight"] * 0.5)
    assert torch.equal(merged["model.embed_tokens.weight"], ma["model.embed_tokens.weight"])


def test_output_tensor_order_follows_the_output_layers(pair):
    a, b = pair
    plan = validate(slices_recipe("passthrough", [[(b, (2, 3), {})], [(a, (0, 1), {})]]))
    names = [t.out.name for t in plan.tasks]
    assert names[0] == "model.embed_tokens.weight"
    assert names[1:10] == [layer(0, s) for s in LLAMA_LAYER_SUFFIXES]
    assert names[10:19] == [layer(1, s) for s in LLAMA_LAYER_SUFFIXES]
    assert names[19:] == ["model.norm.weight", "lm_head.weight"]
    first = plan.tasks[1].inputs[0]
    assert (first.name, plan.sources[first.model].name) == (
        layer(2, LLAMA_LAYER_SUFFIXES[0]), str(b))
    # the config follows the first slice's model, with the new layer count
    assert plan.out_config["num_hidden_layers"] == 2


def test_per_layer_config_lists_follow_the_slices(tmp_path):
    a = write_model(tmp_path / "a", TINY, seed=0)
    b = write_model(tmp_path / "b", TINY, seed=1)
    for path, types in ((a, ["a0", "a1", "a2"]), (b, ["b0", "b1", "b2"])):
        config = json.loads((path / "config.json").read_text())
        config["layer_types"] = types
        config["mlp_only_layers"] = [1]
        (path / "config.json").write_text(json.dumps(config))
    plan = validate(slices_recipe("passthrough", [[(a, (1, 3), {})], [(b, (0, 2), {})]]))
    assert plan.out_config["layer_types"] == ["a1", "a2", "b0", "b1"]
    assert plan.out_config["mlp_only_layers"] == [0, 3]
    assert plan.out_config["num_hidden_layers"] == 4


# --- a merge method over slices, against float64 -----------------------------------------------


def test_task_arithmetic_slices_with_per_slice_gradients(family, tmp_path):
    base, d1, d2 = family
    text = slices_recipe(
        "task_arithmetic",
        [
            [(base, (0, 3), {}), (d1, (0, 3), {"weight": "[0.0, 1.0]"}), (d2, (0, 3), {})],
            [
                (base, (1, 2), {}),
                (d1, (2, 3), {"weight": 0.3}),
                (d2, (0, 1), {"weight": "[0.2, 0.8]"}),
            ],
        ],
        base=base,
        slice_extra=["parameters:\n  weight: 0.5\n", "parameters:\n  lambda: 0.5\n"],
    )
    run_merge(text, tmp_path / "out", device="cpu")
    merged = load_model(tmp_path / "out")
    b, x, y = (load_model(p) for p in family)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 4

    def ref(name_b, name_x, name_y, w1, w2, lam=1.0):
        b64 = b[name_b].double()
        return b64 + lam * (w1 * (x[name_x].double() - b64) + w2 * (y[name_y].double() - b64))

    expected = {}
    for suffix in LLAMA_LAYER_SUFFIXES:
        for k in range(3):  # slice 0: t = k / 2; d1's gradient [0, 1], d2 the slice's 0.5
            expected[layer(k, suffix)] = ref(
                layer(k, suffix), layer(k, suffix), layer(k, suffix), k / 2, 0.5
            )
        # slice 1, one layer: t = 1 (mergekit), so d2's gradient gives 0.8; lambda 0.5
        expected[layer(3, suffix)] = ref(
            layer(1, suffix), layer(2, suffix), layer(0, suffix), 0.3, 0.8, lam=0.5
        )
    embed, norm, head = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"
    expected[embed] = ref(embed, embed, embed, 0.0, 0.5)  # first slice's settings, t = 0
    for name in (norm, head):  # last slice's settings, t = 0
        expected[name] = ref(name, name, name, 0.3, 0.2, lam=0.5)
    assert merged.keys() == expected.keys()
    wrong = total = 0
    for name, value in expected.items():  # never more than one rounding step away
        assert torch.allclose(merged[name].double(), value, rtol=2**-7, atol=1e-9), name
        wrong += (merged[name] != value.to(torch.bfloat16)).sum().item()
        total += value.numel()
    assert wrong / total <= 0.001  # and almost always the correctly rounded value


def test_slice_base_model_and_parameter_precedence(family):
    base, d1, d2 = family
    text = slices_recipe(
        "task_arithmetic",
        [
            [(d1, (0, 2), {}), (base, (0, 2), {"weight": 0.7})],
            [(d2, (1, 3), {"weight": 0.9}), (d1, (1, 3), {})],
        ],
        extra="parameters:\n  weight: 0.1\n",
        slice_extra=[f"base_model: {d1}\nparameters:\n  weight: 0.4\n", f"base_model: {d1}\n"],
    )
    recipe = parse_recipe(text)
    assert recipe.has_base_role
    first, second = recipe.slices
    assert [str(s.model.ref) for s in recipe.slice_inputs(first)] == [str(d1), str(base)]
    assert [str(m.ref) for m in recipe.inputs()] == [str(d1), str(base), str(d2)]
    name = layer(0, "mlp.up_proj.weight")
    source = recipe.slice_inputs(first)[1].model
    assert recipe.model_param(source, "weight", name, 0.0, first) == 0.7  # the source's own
    plain = recipe.slice_inputs(second)[1].model
    assert recipe.model_param(plain, "weight", name, 0.0, second) == 0.9
    plan = validate(text)
    assert plan.tasks[1].model_params[0]["weight"] == 0.7
    assert plan.sources[plan.tasks[1].inputs[0].model].name == str(d1)  # the slice's base first


def test_slice_parameters_fill_in_required_ones(family):
    base, d1, _ = family
    text = slices_recipe(
        "task_arithmetic",
        [[(base, (0, 3), {}), (d1, (0, 3), {})]],
        base=base,
        slice_extra=["parameters:\n  weight: 0.25\n"],
    )
    plan = validate(text)
    assert {t.model_params[0]["weight"] for t in plan.tasks} == {0.25}


# --- mistakes --------------------------------------------------------------------------------


def recipe_error(text: str) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text)
    return info.value


def test_sources_of_a_slice_must_cover_as_many_layers(pair):
    a, b = pair
    text = slices_recipe(
        "slerp",
        [[(a, (0, 2), {}), (b, (0, 2), {})], [(a, (2, 3), {}), (b, (1, 3), {})]],
        base=a,
        extra="parameters:\n  t: 0.5\n",
    )
    err = recipe_error(text)
    assert err.loc == "slices[1].sources[1].layer_range"
    assert err.line == text.splitlines().index("        layer_range: [1, 3]") + 1
    assert "covers 2 layers but slices[1].sources[0] covers 1" in err.msg
    assert str(err).startswith(f"slices[1].sources[1].layer_range (line {err.line}): ")


def test_layer_range_outside_the_model_names_the_place(pair):
    a, b = pair
    text = slices_recipe("passthrough", [[(a, (0, 2), {})], [(b, (1, 5), {})]])
    with pytest.raises(PlanError) as info:
        validate(text)
    line = text.splitlines().index("        layer_range: [1, 5]") + 1
    assert str(info.value).startswith(
        f"slices[1].sources[0].layer_range (line {line}): layers "
        f"[1, 5] are outside {b}, which has 3 layers"
    )


@pytest.mark.parametrize(
    ("layer_range", "message"),
    [
        ("[3, 1]", "is empty or negative"),
        ("[2, 2]", "is empty or negative"),
        ("[-1, 2]", "is empty or negative"),
        ("[0]", "expected [start, end]"),
        ("[0, 1.5]", "expected [start, end]"),
        ("'0-4'", "expected [start, end]"),
        ("[true, 2]", "expected [start, end]"),
    ],
)
def test_bad_layer_range(layer_range, message):
    err = recipe_error(
        "merge_method: passthrough\nslices:\n  - sources:\n"
        f"      - model: org/a\n        layer_range: {layer_range}\n"
    )
    assert err.loc == "slices[0].sources[0].layer_range" and message in err.msg
    assert err.line == 5


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        (
            "  - sources:\n      - model: org/a\n",
            "slices[0].sources[0].layer_range",
            "missing required key 'layer_range'",
        ),
        ("  - sources: []\n", "slices[0].sources", "non-empty list of sources"),
        ("  - source:\n      - model: org/a\n", "slices[0].source", "did you mean 'sources'"),
        ("  - sources:\n      - org/a\n", "slices[0].sources[0]", "write '- model: org/a'"),
        (
            "  - sources:\n      - model: org/a\n        layer_range: [0, 1]\n"
            "        layers: [0, 1]\n",
            "slices[0].sources[0].layers",
            "unknown key 'layers'",
        ),
        ("  - org/a\n", "slices[0]", "expected a mapping with 'sources'"),
        (
            "  - sources:\n      - model: org/a\n        layer_range: [0, 1]\n"
            "      - model: org/b\n        layer_range: [0, 1]\n",
            "slices[0].sources",
            "passthrough merges exactly 1 source per slice; this slice gives 2",
        ),
        (
            "  - sources:\n      - model: org/a\n        layer_range: [0, 1]\n"
            "      - model: org/a\n        layer_range: [1, 2]\n",
            "slices[0].sources[1].model",
            "listed twice in this slice",
        ),
    ],
)
def test_bad_slices(body, loc, message):
    err = recipe_error("merge_method: passthrough\nslices:\n" + body)
    assert err.loc == loc and message in err.msg, (err.loc, err.msg)


def test_method_rules_per_slice():
    head = "merge_method: task_arithmetic\n"
    two = (
        "  - sources:\n      - model: org/a\n        layer_range: [0, 2]\n"
        "        parameters: {weight: 1}\n"
        "      - model: org/b\n        layer_range: [0, 2]\n"
        "        parameters: {weight: 1}\n"
    )
    err = recipe_error(head + "slices:\n" + two)
    assert err.loc == "slices[0].base_model" and "needs a base_model" in err.msg
    err = recipe_error(head + "base_model: org/c\nslices:\n" + two)
    assert err.loc == "slices[0].sources" and "org/c is not among this slice's sources" in err.msg
    recipe = parse_recipe(
        head
        + "base_model: org/c\nslices:\n"
        + two.replace("base_model", "")
        + "    base_model: org/a\n"
    )
    assert [str(s.model.ref) for s in recipe.slice_inputs(recipe.slices[0])] == ["org/a", "org/b"]
    err = recipe_error(
        head
        + "base_model: org/a\nslices:\n"
        + two.replace("        parameters: {weight: 1}\n", "", 2).replace(
            "layer_range: [0, 2]\n", "layer_range: [0, 2]\n", 1
        )
    )
    assert err.loc == "slices[0].sources[1].parameters.weight"
    err = recipe_error(
        head + "base_model: org/a\nslices:\n" + two.replace("{weight: 1}", "{weight: 1, lambda: 2}")
    )
    assert err.loc == "slices[0].sources[0].parameters.lambda"
    assert "move it to the slice's or the top-level parameters" in err.msg
    err = recipe_error(
        head + "base_model: org/a\nslices:\n" + two + "    parameters:\n      wieght: 1\n"
    )
    assert err.loc == "slices[0].parameters.wieght" and "did you mean 'weight'" in err.msg
    err = recipe_error(
        head.replace("task_arithmetic", "della")
        + "base_model: org/a\nslices:\n"
        + two
        + "    parameters:\n      density: 0.1\n      epsilon: 0.2\n"
    )
    assert err.loc == "slices[0].parameters.density"


def test_slices_with_models_is_an_error():
    err = recipe_error(
        "merge_method: passthrough\nmodels:\n  - model: org/a\nslices:\n"
        "  - sources:\n      - model: org/a\n        layer_range: [0, 1]\n"
    )
    assert err.loc == "slices" and "only one of models, slices or modules" in err.msg


def test_missing_model_directory(tmp_path, pair):
    a, _ = pair
    text = slices_recipe("passthrough", [[(a, (0, 2), {})], [(tmp_path / "nope", (0, 1), {})]])
    with pytest.raises(SourceError, match="nope does not exist"):
        validate(text)


def test_model_whose_layers_cannot_be_found(tmp_path, pair):
    a, _ = pair
    odd = write_model(tmp_path / "odd", TINY, seed=2)
    config = json.loads((odd / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (odd / "config.json").write_text(json.dumps(config))
    text = slices_recipe("passthrough", [[(a, (0, 2), {})], [(odd, (0, 1), {})]])
    with pytest.raises(
        PlanError,
        match=r"odd: config\.json \(model_type 'gpt2'\) says a gpt2 "
        r"model, whose layers are named transformer\.h\.N\.\*, "
        r"but no tensor is named that way",
    ):
        validate(text)
    # a whole-model merge does not need the layout: it merges by name, with a warning
    plan = validate(
        f"merge_method: linear\nmodels:\n  - model: {odd}\n    parameters: {{weight: 1}}\n"
    )
    assert any("read by name alone" in w for w in plan.warnings)


def test_shape_mismatch_inside_a_slice_names_both_tensors(tmp_path, pair):
    a, _ = pair
    from merge_engine.synth import LlamaShape

    wide = write_model(tmp_path / "wide", LlamaShape(**{**TINY.__dict__, "intermediate": 68}))
    text = slices_recipe("linear", [[(a, (0, 1), {"weight": 1}), (wide, (2, 3), {"weight": 1})]])
    with pytest.raises(
        PlanError,
        match=r"tensor model\.layers\.2\.mlp\.gate_proj\.weight has "
        r"shape \[68, 32\] in .*wide but model\.layers\.0\.mlp\."
        r"gate_proj\.weight has \[64, 32\] in .*a \(slices\[0\]",
    ):
        validate(text)


def test_single_part_module_is_read_like_top_level_slices(pair, tmp_path):
    a, b = pair
    text = (
        "merge_method: linear\nparameters:\n  weight: 0.1\nmodules:\n  default:\n"
        "    parameters:\n      weight: 0.25\n      normalize: false\n    slices:\n"
        f"      - sources:\n          - model: {a}\n            layer_range: [0, 2]\n"
        f"          - model: {b}\n            layer_range: [1, 3]\n"
        "            parameters: {weight: 0.75}\n"
    )
    recipe = parse_recipe(text)
    assert recipe.slices[0].sources[1].model.loc == "modules.default.slices[0].sources[1]"
    run_merge(text, tmp_path / "out", device="cpu")
    merged, ma, mb = (load_model(p) for p in (tmp_path / "out", a, b))
    name = "mlp.up_proj.weight"
    expected = 0.25 * ma[layer(1, name)].double() + 0.75 * mb[layer(2, name)].double()
    assert torch.allclose(merged[layer(1, name)].double(), expected, rtol=2**-7, atol=1e-9)


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        (
            "  default:\n    models:\n      - model: org/a\n        parameters: {weight: 1}\n"
            "    slices:\n      - sources: []\n",
            "modules.default.slices",
            "exactly one",
        ),
        ("  default: org/a\n", "modules.default", "expected a mapping"),
        (
            "  default:\n    model:\n      - model: org/a\n",
            "modules.default.model",
            "did you mean 'models'",
        ),
        (
            "  default:\n    models:\n      - model: org/a\n",
            "modules.default.models[0].parameters.weight",
            "missing required parameter 'weight'",
        ),
        (
            "  default:\n    parameters: {wieght: 1}\n    models:\n      - model: org/a\n",
            "modules.default.parameters.wieght",
            "did you mean",
        ),
    ],
)
def test_bad_single_part_module(body, loc, message):
    err = recipe_error("merge_method: linear\nmodules:\n" + body)
    assert err.loc == loc and message in err.msg, (err.loc, err.msg)


def test_module_models_with_module_parameters(family):
    base, d1, _ = family
    recipe = parse_recipe(
        f"merge_method: task_arithmetic\nbase_model: {base}\nmodules:\n  default:\n"
        f"    parameters: {{weight: 0.4}}\n    models:\n      - model: {d1}\n"
    )
    plan = validate(recipe)
    assert {t.model_params[0]["weight"] for t in plan.tasks} == {0.4}
    assert recipe.models[0].loc == "modules.default.models[0]"


def test_tied_and_untied_sources_in_slices(tmp_path):
    from merge_engine.synth import LlamaShape

    untied = write_model(tmp_path / "untied", TINY, seed=0)
    tied = write_model(
        tmp_path / "tied", LlamaShape(**{**TINY.__dict__, "tie_embeddings": True}), seed=1
    )
    # untied first: the output has lm_head, taken from the tied model's embedding (last slice)
    text = slices_recipe("passthrough", [[(untied, (0, 1), {})], [(tied, (0, 1), {})]])
    run_merge(text, tmp_path / "out", device="cpu")
    merged, t = load_model(tmp_path / "out"), load_model(tied)
    assert torch.equal(merged["lm_head.weight"], t["model.embed_tokens.weight"])
    # tied first: the output follows it and has no lm_head
    text = slices_recipe("passthrough", [[(tied, (0, 1), {})], [(untied, (0, 1), {})]])
    plan = validate(text)
    assert "lm_head.weight" not in {task.out.name for task in plan.tasks}
    assert plan.out_config["tie_word_embeddings"] is True


def test_card_and_summary_show_slice_weights(family, tmp_path):
    base, d1, d2 = family
    text = slices_recipe(
        "task_arithmetic",
        [[(base, (0, 3), {}), (d1, (0, 3), {}), (d2, (0, 3), {"weight": 0.2})]],
        base=base,
        slice_extra=["parameters:\n  weight: 0.5\n"],
    )
    result = run_merge(text, tmp_path / "out", device="cpu")
    assert result.formula == "merged = base + 0.5 * (donor-1 - base) + 0.2 * (donor-2 - base)"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "layer_range: [0, 3]" in card  # the recipe, verbatim
