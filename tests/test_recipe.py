"""Recipe parsing and validation: valid recipes, parameter resolution, every error path."""

from __future__ import annotations

import textwrap
from types import MappingProxyType

import pytest

from merge_engine import methods
from merge_engine.errors import RecipeError
from merge_engine.methods.registry import REQUIRED, MethodSpec
from merge_engine.recipe import InputModel, Recipe, load_recipe, parse_recipe
from merge_engine.recipe.params import FilterList, FilterRule, Gradient
from merge_engine.recipe.refs import ModelRef

# /work/shared/reference/seed-recipe.yml, verbatim.
SEED = """\
# The recipe the project was started from: orca_mini_v3_13b + 0.3 x (WizardLM - Platypus2).
# merged = base + sum_i weight_i * (model_i - base)
merge_method: task_arithmetic
base_model: garage-bAInd/Platypus2-13B
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      weight: 1.0
  - model: WizardLM/WizardLM-13B-V1.2
    parameters:
      weight: 0.3   # alpha; start between 0.1 and 0.5 and evaluate
"""

Q = "model.layers.0.self_attn.q_proj.weight"
MLP = "model.layers.0.mlp.down_proj.weight"


def parse(text: str) -> Recipe:
    return parse_recipe(textwrap.dedent(text))


def error(text: str) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        parse(text)
    return info.value


def ta(models: str, extra: str = "", method: str = "task_arithmetic") -> str:
    """A recipe with a base and the given (dedented) models block."""
    head = f"merge_method: {method}\nbase_model: org/base\n{extra}"
    return head + "models:\n" + textwrap.indent(textwrap.dedent(models), "  ")


# --- valid recipes ------------------------------------------------------------------


def test_seed_recipe():
    recipe = parse_recipe(SEED)
    assert recipe.merge_method == "task_arithmetic"
    assert recipe.base_model == ModelRef("garage-bAInd/Platypus2-13B")
    assert [str(m.ref) for m in recipe.models] == [
        "psmathur/orca_mini_v3_13b",
        "WizardLM/WizardLM-13B-V1.2",
    ]
    assert [m.loc for m in recipe.models] == ["models[0]", "models[1]"]
    assert dict(recipe.models[1].parameters) == {"weight": 0.3}
    assert dict(recipe.parameters) == {}
    assert recipe.text == SEED
    assert (recipe.dtype, recipe.out_dtype, recipe.tokenizer_source, recipe.name) == (
        None,
        None,
        None,
        None,
    )
    assert recipe.slices is None and recipe.modules is None and recipe.tokenizer is None


def test_seed_recipe_inputs_put_the_base_first():
    recipe = parse_recipe(SEED)
    inputs = recipe.inputs()
    assert [str(m.ref) for m in inputs] == [
        "garage-bAInd/Platypus2-13B",
        "psmathur/orca_mini_v3_13b",
        "WizardLM/WizardLM-13B-V1.2",
    ]
    assert inputs[0].loc == "base_model" and dict(inputs[0].parameters) == {}
    assert recipe.is_base(inputs[0]) and not recipe.is_base(inputs[1])


def test_seed_recipe_parameters():
    recipe = parse_recipe(SEED)
    _, orca, wizard = recipe.inputs()
    assert recipe.model_param(orca, "weight", Q, 0.0) == 1.0
    assert recipe.model_param(wizard, "weight", Q, 0.5) == 0.3
    assert recipe.model_param(wizard, "density", Q, 0.5) == 1.0  # method default
    assert recipe.global_param("lambda", Q, 0.0) == 1.0
    assert recipe.global_param("normalize", Q, 0.0) is False


def test_base_listed_in_models_is_not_repeated():
    recipe = parse(
        ta(
            """\
            - model: org/a
              parameters: {weight: 0.5}
            - model: org/base
            - model: org/b
              parameters: {weight: 0.2}
            """
        )
    )
    inputs = recipe.inputs()
    assert [m.loc for m in inputs] == ["models[1]", "models[0]", "models[2]"]
    assert str(inputs[0].ref) == "org/base"


def test_base_parameters_are_ignored():
    recipe = parse(
        ta(
            """\
            - model: org/base
              parameters: {weight: 7.0}
            - model: org/a
              parameters: {weight: 0.5}
            """,
            extra="parameters: {weight: 0.1}\n",
        )
    )
    base, donor = recipe.inputs()
    assert recipe.model_param(donor, "weight", Q, 0.0) == 0.5
    assert recipe.model_param(base, "weight", Q, 0.0) == 0.1  # own 7.0 ignored


def test_base_without_weight_and_no_fallback_resolves_to_none():
    recipe = parse_recipe(SEED)
    assert recipe.model_param(recipe.inputs()[0], "weight", Q, 0.0) is None


def test_global_weight_is_a_fallback():
    recipe = parse(
        ta(
            """\
            - model: org/a
            - model: org/b
              parameters: {weight: 0.2}
            """,
            extra="parameters:\n  weight: 0.5\n  lambda: 0.8\n",
        )
    )
    _, a, b = recipe.inputs()
    assert recipe.model_param(a, "weight", Q, 0.0) == 0.5
    assert recipe.model_param(b, "weight", Q, 0.0) == 0.2
    assert recipe.global_param("lambda", Q, 0.0) == 0.8
    assert recipe.global_param("weight", Q, 0.0) == 0.5


def test_gradients_and_filters_resolve_per_tensor():
    recipe = parse(
        ta(
            """\
            - model: org/a
              parameters:
                weight: [0.0, 1.0]
                density:
                  - filter: mlp
                    value: 0.5
            - model: org/b
              parameters:
                weight:
                  - filter: self_attn
                    value: [0.2, 0.4]
            """,
            extra="parameters:\n  weight: 0.9\n",
            method="ties",
        )
    )
    _, a, b = recipe.inputs()
    assert recipe.models[0].parameters["weight"] == Gradient((0.0, 1.0))
    assert recipe.models[1].parameters["weight"] == FilterList(
        (FilterRule("self_attn", Gradient((0.2, 0.4))),)
    )
    assert recipe.model_param(a, "weight", Q, 0.25) == pytest.approx(0.25)
    assert recipe.model_param(a, "density", MLP, 0.0) == 0.5
    assert recipe.model_param(a, "density", Q, 0.0) == 1.0  # no match -> default
    assert recipe.model_param(b, "weight", Q, 0.5) == pytest.approx(0.3)
    assert recipe.model_param(b, "weight", MLP, 0.5) == 0.9  # no match -> global


def test_required_parameter_unset_for_a_tensor_is_an_error():
    recipe = parse(
        ta(
            """\
            - model: org/a
              parameters:
                weight:
                  - filter: mlp
                    value: 0.5
            """
        )
    )
    donor = recipe.inputs()[1]
    assert recipe.model_param(donor, "weight", MLP, 0.0) == 0.5
    with pytest.raises(RecipeError) as info:
        recipe.model_param(donor, "weight", Q, 0.0)
    assert info.value.loc == "models[0].parameters.weight"
    assert Q in info.value.msg


def test_unknown_parameter_name_in_lookup_is_a_keyerror():
    recipe = parse_recipe(SEED)
    with pytest.raises(KeyError):
        recipe.model_param(recipe.inputs()[1], "normalize", Q, 0.0)
    with pytest.raises(KeyError):
        recipe.global_param("gamma", Q, 0.0)


def test_linear_without_base():
    recipe = parse(
        """\
        merge_method: linear
        models:
          - model: org/a
            parameters: {weight: 0.7}
          - model: org/b
            parameters: {weight: 0.3}
        parameters:
          normalize: false
        dtype: bf16
        out_dtype: fp16
        name: my-merge
        """
    )
    assert [m.loc for m in recipe.inputs()] == ["models[0]", "models[1]"]
    assert recipe.global_param("normalize", Q, 0.0) is False
    assert (recipe.dtype, recipe.out_dtype, recipe.name) == ("bfloat16", "float16", "my-merge")


def test_linear_base_model_is_an_ordinary_input():
    listed = parse(
        """\
        merge_method: linear
        base_model: org/b
        models:
          - model: org/a
            parameters: {weight: 0.7}
          - model: org/b
            parameters: {weight: 0.3}
        """
    )
    assert [m.loc for m in listed.inputs()] == ["models[0]", "models[1]"]
    unlisted = parse(
        """\
        merge_method: linear
        base_model: org/c
        parameters: {weight: 0.5}
        models:
          - model: org/a
          - model: org/b
        """
    )
    assert [m.loc for m in unlisted.inputs()] == ["models[0]", "models[1]", "base_model"]
    assert unlisted.model_param(unlisted.inputs()[2], "weight", Q, 0.0) == 0.5


def test_linear_unlisted_base_needs_a_weight():
    err = error(
        """\
        merge_method: linear
        base_model: org/c
        models:
          - model: org/a
            parameters: {weight: 0.5}
        """
    )
    assert err.loc == "base_model" and "weight" in err.msg


def test_mapping_form_model_reference():
    recipe = parse(
        ta(
            """\
            - model:
                model: {path: org/a, revision: abc123}
              parameters: {weight: 1}
            """
        )
    )
    assert recipe.models[0].ref == ModelRef("org/a", "abc123")


def test_revisions_distinguish_models():
    recipe = parse(
        ta(
            """\
            - model: org/a@v1
              parameters: {weight: 1}
            - model: org/a@v2
              parameters: {weight: 1}
            """
        )
    )
    assert [m.ref.revision for m in recipe.models] == ["v1", "v2"]


def test_local_models(tmp_path):
    (tmp_path / "base").mkdir()
    recipe = parse_recipe(
        f"merge_method: task_arithmetic\nbase_model: {tmp_path}/base\n"
        f"models:\n  - model: {tmp_path}/base\n  - model: ./donor\n"
        "    parameters: {weight: 0.5}\n"
    )
    assert recipe.base_model.is_local
    assert [m.loc for m in recipe.inputs()] == ["models[0]", "models[1]"]


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("float32", "float32"),
        ("fp32", "float32"),
        ("float", "float32"),
        ("float16", "float16"),
        ("fp16", "float16"),
        ("half", "float16"),
        ("bfloat16", "bfloat16"),
        ("bf16", "bfloat16"),
        ("torch.bfloat16", "bfloat16"),
        ("BF16", "bfloat16"),
    ],
)
def test_dtype_aliases(raw, canonical):
    recipe = parse_recipe(SEED + f"dtype: {raw}\nout_dtype: {raw}\n")
    assert recipe.dtype == canonical and recipe.out_dtype == canonical


def test_tokenizer_source_base_is_accepted():
    assert parse_recipe(SEED + "tokenizer_source: base\n").tokenizer_source == "base"


def test_values_are_read_only_and_input_models_hashable():
    recipe = parse_recipe(SEED)
    assert isinstance(recipe.parameters, MappingProxyType)
    with pytest.raises(TypeError):
        recipe.models[0].parameters["weight"] = 2  # type: ignore[index]
    assert len({*recipe.inputs()}) == 3


def test_load_recipe(tmp_path):
    path = tmp_path / "recipe.yml"
    path.write_text(SEED)
    assert load_recipe(path).text == SEED
    assert load_recipe(str(path)).merge_method == "task_arithmetic"


def test_load_recipe_missing_file(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "nope.yml")
    assert info.value.loc == "" and "not found" in info.value.msg


# --- YAML-level errors ----------------------------------------------------------------


def test_malformed_yaml_reports_line_and_column():
    err = error(
        """\
        merge_method: ties
        models:
          - model: org/a
           parameters: {weight: 1}
        """
    )
    assert err.loc == "" and "invalid YAML" in err.msg and "line 4" in err.msg
    assert err.line == 4


def test_a_yaml_error_at_the_end_points_at_the_last_line():
    err = error("merge_method: linear\nmodels: [demo/base\n")
    assert "but got '<stream end>'" in err.msg and err.line == 2


def test_unclosed_flow_mapping():
    err = error("merge_method: ties\nparameters: {weight: 1\n")
    assert err.loc == "" and "line" in err.msg


def test_multiple_documents():
    err = error("merge_method: ties\n---\nmerge_method: linear\n")
    assert err.loc == "" and "single document" in err.msg


@pytest.mark.parametrize("text", ["", "# just a comment\n", "null\n"])
def test_empty_recipe(text):
    err = error(text)
    assert err.loc == "" and "empty" in err.msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_not_a_mapping(text):
    err = error(text)
    assert err.loc == "" and "mapping" in err.msg


def test_duplicate_yaml_key():
    err = error(SEED + "merge_method: ties\n")
    assert err.loc == "merge_method" and err.msg == "duplicate key 'merge_method'"
    assert err.line == 12


def test_duplicate_parameter_key():
    err = error(ta("- model: org/a\n  parameters:\n    weight: 1\n    weight: 2\n"))
    assert err.loc == "models[0].parameters.weight" and "duplicate" in err.msg


# --- structure errors -----------------------------------------------------------------


def test_unknown_top_level_key_with_hint():
    err = error(SEED + "base_modle: org/x\n")
    assert err.loc == "base_modle"
    assert err.msg == "unknown key 'base_modle'; did you mean 'base_model'?"


def test_unknown_top_level_key_without_hint():
    err = error(SEED + "zzzz: 1\n")
    assert err.loc == "zzzz" and err.msg == "unknown key 'zzzz'"


def test_mergekit_has_no_random_seed_key():
    assert error(SEED + "random_seed: 1\n").loc == "random_seed"


def test_unknown_model_entry_key():
    err = error(ta("- model: org/a\n  parameter: {weight: 1}\n"))
    assert err.loc == "models[0].parameter"
    assert err.msg == "unknown key 'parameter'; did you mean 'parameters'?"


def test_unknown_model_parameter_with_hint():
    err = error(ta("- model: org/a\n  parameters: {wieght: 1}\n"))
    assert err.loc == "models[0].parameters.wieght"
    assert err.msg == "unknown key 'wieght'; did you mean 'weight'?"


def test_unknown_global_parameter():
    err = error(SEED + "parameters:\n  lamda: 0.5\n")
    assert err.loc == "parameters.lamda"
    assert err.msg == "unknown key 'lamda'; did you mean 'lambda'?"


def test_a_parameter_of_another_method_is_ignored_with_a_warning():
    """As published recipes have them: mergekit's names the method does not use."""
    recipe = parse(SEED + "parameters:\n  gamma: 0.1\n  embed_slerp: true\n")
    assert recipe.warnings == (
        "parameters.gamma (line 13): ignored: not a parameter of task_arithmetic",
        "parameters.embed_slerp (line 14): ignored: not a parameter of task_arithmetic")
    assert dict(recipe.parameters) == {}
    stock = parse(ta("""\
        - model: org/a
          parameters: {weight: 0.5}
        - model: org/b
          parameters: {weight: 0.5, density: 7}
        """, "parameters:\n  normalize: true\n  int8_mask: true\n", "model_stock"))
    assert stock.warnings == (
        "parameters.normalize (line 4): ignored: not a parameter of model_stock",
        "parameters.int8_mask (line 5): ignored: not a parameter of model_stock",
        "models[0].parameters.weight (line 8): ignored: not a parameter of model_stock",
        "models[1].parameters.weight (line 10): ignored: not a parameter of model_stock",
        "models[1].parameters.density (line 10): ignored: not a parameter of model_stock")
    assert [dict(m.parameters) for m in stock.models] == [{}, {}]  # density 7: not checked
    sce = parse(ta("- model: org/a\n- model: org/b\n",
                   "parameters: {normalize: false, int8_mask: true, lambda: 2}\n", "sce"))
    assert [w.split(": ")[-1] for w in sce.warnings] == ["not a parameter of sce"] * 2
    assert dict(sce.parameters) == {"int8_mask": True}  # sce's own


def test_ignored_parameters_in_slices_and_modules_are_found_too():
    recipe = parse("""\
        merge_method: slerp
        base_model: org/a
        parameters: {t: 0.5}
        slices:
          - sources:
              - model: org/a
                layer_range: [0, 2]
              - model: org/b
                layer_range: [0, 2]
                parameters: {weight: 0.3}
            parameters: {rescale: true}
        """)
    assert recipe.warnings == (
        "slices[0].parameters.rescale (line 11): ignored: not a parameter of slerp",
        "slices[0].sources[1].parameters.weight (line 10): ignored: not a parameter of slerp")
    assert recipe.slices is not None and dict(recipe.slices[0].parameters) == {}
    modules = parse("""\
        merge_method: linear
        parameters: {lambda: 0.5}
        modules:
          text_decoder:
            models:
              - model: org/a
                parameters: {weight: 1}
          vision_tower:
            parameters: {t: 0.2}
            models:
              - model: org/a
                parameters: {weight: 1}
        """)
    assert modules.warnings == (
        "parameters.lambda (line 2): ignored: not a parameter of linear",
        "modules.vision_tower.parameters.t (line 9): ignored: not a parameter of linear")


def test_unknown_and_misplaced_parameters_stay_errors():
    err = error(SEED + "parameters:\n  gama: 0.1\n")
    assert err.loc == "parameters.gama" and err.msg.startswith("unknown key 'gama'")
    err = error(ta("- model: org/a\n  parameters: {weight: 1, lambda: 2}\n"))
    assert err.loc == "models[0].parameters.lambda"
    assert err.msg == "'lambda' is a global parameter of task_arithmetic; move it to the " \
                      "top-level parameters"


def test_missing_merge_method():
    err = error("models:\n  - model: org/a\n")
    assert err.loc == "merge_method" and "missing" in err.msg


def test_unknown_merge_method_lists_close_matches():
    err = error(SEED.replace("task_arithmetic", "task_arithmatic"))
    assert err.loc == "merge_method"
    assert err.msg == "unknown merge method 'task_arithmatic'; did you mean 'task_arithmetic'?"
    err = error(SEED.replace("task_arithmetic", "tie"))
    assert "'ties'" in err.msg


def test_unknown_merge_method_without_close_match_lists_all():
    err = error(SEED.replace("task_arithmetic", "zzzzzz"))
    assert "known methods:" in err.msg and "linear" in err.msg


def test_merge_method_not_a_string():
    assert error(SEED.replace("task_arithmetic", "[ties]")).loc == "merge_method"


def test_model_counts_follow_the_method():
    slerp = """\
        merge_method: slerp
        base_model: org/a
        models:
          - model: org/a
          - model: org/b
          - model: org/c
        parameters:
          t: 0.5
        """
    err = error(slerp)
    assert err.loc == "models"
    assert err.msg == ("slerp merges exactly 1 model besides the base_model; "
                       "this recipe gives 2")
    assert parse(slerp.replace("          - model: org/c\n", "")).has_base_role
    stock = error("merge_method: model_stock\nbase_model: org/a\nmodels:\n  - model: org/b\n")
    assert stock.msg == ("model_stock merges at least 2 models besides the base_model; "
                         "this recipe gives 1")


def test_an_optional_base_takes_the_base_role_only_when_given():
    with_base = parse(
        "merge_method: multislerp\nbase_model: org/a\nmodels:\n"
        "  - model: org/b\n    parameters: {weight: 1}\n"
        "  - model: org/c\n    parameters: {weight: 1}\n")
    assert with_base.has_base_role
    assert [str(m.ref) for m in with_base.inputs()] == ["org/a", "org/b", "org/c"]
    without = parse(
        "merge_method: multislerp\nmodels:\n"
        "  - model: org/b\n    parameters: {weight: 1}\n"
        "  - model: org/c\n    parameters: {weight: 1}\n")
    assert not without.has_base_role
    assert [str(m.ref) for m in without.inputs()] == ["org/b", "org/c"]


def test_required_global_parameter():
    err = error("merge_method: slerp\nbase_model: org/a\nmodels:\n  - model: org/b\n")
    assert err.loc == "parameters.t" and err.msg == "missing required parameter 't'"


def test_missing_models():
    err = error("merge_method: ties\nbase_model: org/a\n")
    assert err.loc == "models" and "missing" in err.msg


def test_empty_models():
    err = error("merge_method: ties\nbase_model: org/a\nmodels: []\n")
    assert err.loc == "models" and "non-empty" in err.msg


def test_models_not_a_list():
    err = error("merge_method: ties\nbase_model: org/a\nmodels: {model: org/b}\n")
    assert err.loc == "models" and "list" in err.msg


def test_models_and_slices_together():
    err = error(SEED + "slices:\n  - sources: []\n")
    assert err.loc == "slices" and "only one" in err.msg


def test_model_entry_not_a_mapping():
    err = error(ta("- org/a\n"))
    assert err.loc == "models[0]" and "- model: org/a" in err.msg


def test_model_entry_without_model():
    err = error(ta("- parameters: {weight: 1}\n"))
    assert err.loc == "models[0]" and "'model'" in err.msg


def test_bad_model_reference():
    err = error(ta("- model: org/a\n  parameters: {weight: 1}\n- model: not a repo\n"))
    assert err.loc == "models[1].model"
    assert err.msg == "'not a repo' is neither a local directory nor a Hub repo id (org/name)"


def test_bad_base_model_reference():
    err = error(SEED.replace("garage-bAInd/Platypus2-13B", "a/b/c"))
    assert err.loc == "base_model"


def test_parameters_not_a_mapping():
    err = error(ta("- model: org/a\n  parameters: [1, 2]\n"))
    assert err.loc == "models[0].parameters" and "mapping" in err.msg
    assert error(SEED + "parameters: 3\n").loc == "parameters"


def test_duplicate_models():
    err = error(
        ta(
            """\
            - model: org/a
              parameters: {weight: 1}
            - model: org/b
              parameters: {weight: 1}
            - model: org/a
              parameters: {weight: 0.5}
            """
        )
    )
    assert err.loc == "models[2].model" and "models[0]" in err.msg


def test_duplicate_local_models_by_real_path(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    err = error(ta(f"- model: ./m\n  parameters: {{weight: 1}}\n- model: {tmp_path}/m\n"))
    assert err.loc == "models[1].model"


# --- parameter errors -----------------------------------------------------------------


def test_global_parameter_inside_a_model():
    err = error(ta("- model: org/a\n  parameters: {weight: 1, normalize: true}\n", method="ties"))
    assert err.loc == "models[0].parameters.normalize"
    assert err.msg == (
        "'normalize' is a global parameter of ties; move it to the top-level parameters"
    )


def test_missing_required_weight():
    err = error(
        ta(
            """\
            - model: org/a
              parameters: {weight: 1}
            - model: org/b
              parameters: {density: 0.5}
            """,
            method="ties",
        )
    )
    assert err.loc == "models[1].parameters.weight"
    assert err.msg == "missing required parameter 'weight'"
    assert str(err) == ("models[1].parameters.weight (line 7): missing required parameter 'weight'")


def test_missing_weight_without_parameters_block():
    err = error(ta("- model: org/a\n"))
    assert err.loc == "models[0].parameters.weight" and err.line == 4


def test_needs_base():
    err = error("merge_method: ties\nmodels:\n  - model: org/a\n    parameters: {weight: 1}\n")
    assert err.loc == "base_model" and "needs a base_model" in err.msg


@pytest.mark.parametrize(
    ("params", "loc", "expected"),
    [
        ("{weight: abc}", "models[0].parameters.weight", "expected a number, got 'abc'"),
        ("{weight: true}", "models[0].parameters.weight", "expected a number, got true"),
        ("{weight: [0.1, x]}", "models[0].parameters.weight[1]", "expected a number, got 'x'"),
        ("{weight: .inf}", "models[0].parameters.weight", "expected a finite number, got inf"),
        ("{weight: .nan}", "models[0].parameters.weight", "expected a finite number, got nan"),
        ("{weight: 1e40}", "models[0].parameters.weight", "1e+40 is out of float32 range"),
        ("{weight: [0, -4e38]}", "models[0].parameters.weight[1]",
         "-4e+38 is out of float32 range"),
        ("{weight: null}", "models[0].parameters.weight", "null"),
        ("{weight: [[1]]}", "models[0].parameters.weight", "gradient"),
    ],
)
def test_value_type_errors(params, loc, expected):
    err = error(ta(f"- model: org/a\n  parameters: {params}\n"))
    assert err.loc == loc and expected in err.msg


def test_bool_parameter_type_error():
    err = error(SEED + "parameters:\n  normalize: sometimes\n")
    assert err.loc == "parameters.normalize"
    assert err.msg == "expected true or false, got 'sometimes'"


def test_filter_rule_value_type_error():
    err = error(
        ta(
            """\
            - model: org/a
              parameters:
                weight:
                  - filter: mlp
                    value: heavy
            """
        )
    )
    assert err.loc == "models[0].parameters.weight[0].value"
    assert err.line == 8


@pytest.mark.parametrize(
    ("density", "loc"),
    [
        ("1.5", "models[0].parameters.density"),
        ("-0.1", "models[0].parameters.density"),
        ("[0.5, 1.2]", "models[0].parameters.density[1]"),
    ],
)
def test_density_range(density, loc):
    err = error(ta(f"- model: org/a\n  parameters: {{weight: 1, density: {density}}}\n"))
    assert err.loc == loc and "between 0 and 1" in err.msg


def test_global_density_range():
    err = error(SEED + "parameters:\n  density: 2\n")
    assert err.loc == "parameters.density"


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize(
    ("params", "ok"),
    [
        ("{weight: 1, density: 0.5}", True),
        ("{weight: 1, density: 0.5, epsilon: 0.4}", True),
        ("{weight: 1}", True),  # density 1.0: no sampling
        ("{weight: 1, density: 1.0, epsilon: 0.3}", True),
        ("{weight: 1, density: 0.0}", True),
        ("{weight: 1, density: 0.1}", False),  # 0.1 - 0.15 <= 0
        ("{weight: 1, density: 0.9}", False),  # 0.9 + 0.15 >= 1
        ("{weight: 1, density: 0.5, epsilon: 0.5}", False),
        ("{weight: 1, density: [0.3, 0.7]}", True),
        ("{weight: 1, density: [0.5, 1.0]}", False),  # reaches 0.95 between layers
        ("{weight: 1, density: [{filter: mlp, value: 0.05}, {value: 0.5}]}", False),
    ],
)
def test_della_density_epsilon(method, params, ok):
    text = ta(f"- model: org/a\n  parameters: {params}\n", method=method)
    if ok:
        parse(text)
    else:
        err = error(text)
        assert err.loc == "models[0].parameters.density"
        assert "density - epsilon" in err.msg


def test_della_global_epsilon_applies():
    err = error(
        ta(
            "- model: org/a\n  parameters: {weight: 1, density: 0.5}\n",
            "parameters:\n  epsilon: 0.6\n",
            "della",
        )
    )
    assert err.loc == "models[0].parameters.density"


def test_della_global_density_error_points_at_global():
    err = error(
        ta("- model: org/a\n  parameters: {weight: 1}\n", "parameters:\n  density: 0.05\n", "della")
    )
    assert err.loc == "parameters.density"


def test_della_ignores_the_base():
    parse(
        ta(
            "- model: org/base\n  parameters: {density: 0.05}\n"
            "- model: org/a\n  parameters: {weight: 1}\n",
            method="della",
        )
    )


# --- unsupported dtypes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "loc"),
    [
        ("dtype: int8\n", "dtype"),
        ("out_dtype: float64\n", "out_dtype"),
        ("dtype: 16\n", "dtype"),
    ],
)
def test_unsupported_dtypes(extra, loc):
    err = error(SEED + extra)
    assert err.loc == loc
    assert "expected float32, float16 or bfloat16" in err.msg


def test_tokenizer_source_and_chat_template_are_accepted():
    assert parse(SEED + "tokenizer_source: union\n").tokenizer_source == "union"
    assert parse(SEED + "chat_template: chatml\n").chat_template == "chatml"
    err = error(SEED + "tokenizer_source: org/other\n")
    assert err.loc == "tokenizer_source" and "not one of the recipe's models" in err.msg


def test_tokenizer_and_tokenizer_source_together():
    err = error(SEED + "tokenizer_source: base\ntokenizer:\n  source: base\n")
    assert err.loc == "tokenizer" and "not both" in err.msg


def test_bad_tokenizer_source_reference():
    assert error(SEED + "tokenizer_source: a b\n").loc == "tokenizer_source"


def test_slices_are_parsed():
    recipe = parse(
        """\
        merge_method: passthrough
        slices:
          - sources:
              - model: org/a
                layer_range: [0, 16]
          - sources:
              - model: org/b
                layer_range: [8, 24]
        """
    )
    assert [s.sources[0].layer_range for s in recipe.slices] == [(0, 16), (8, 24)]
    assert [str(m.ref) for m in recipe.inputs()] == ["org/a", "org/b"]
    assert recipe.inputs()[1].loc == "slices[1].sources[0]"


def test_lora_refs_parse_as_model_plus_adapter():
    recipe = parse(ta("- model: org/a+org/lora@v2\n  parameters: {weight: 1}\n"))
    ref = next(m.ref for m in recipe.inputs() if m.ref.lora is not None)
    assert (ref.path, ref.lora.path, ref.lora.revision) == ("org/a", "org/lora", "v2")


# --- line numbers ---------------------------------------------------------------------


def test_error_line_numbers():
    err = error(SEED.replace("weight: 0.3", "weight: heavy"))
    assert err.loc == "models[1].parameters.weight" and err.line == 11
    assert str(err).startswith("models[1].parameters.weight (line 11): expected a number")
    err = error(SEED.replace("task_arithmetic", "nope"))
    assert str(err).startswith("merge_method (line 3): unknown merge method 'nope'")


# --- a registry with shapes the real one lacks --------------------------------------------


def test_string_and_required_global_parameters(monkeypatch):
    spec = MethodSpec(
        "fake",
        needs_base=False,
        global_params={"mode": "fast", "t": REQUIRED},
        model_params={"weight": REQUIRED},
        merge=lambda *a: None,
    )
    monkeypatch.setattr(methods, "get_method", lambda name: spec if name == "fake" else {}[name])
    monkeypatch.setattr(methods, "method_names", lambda: ["fake"])
    base = "merge_method: fake\nmodels:\n  - model: org/a\n    parameters: {weight: 1}\n"
    recipe = parse(base + "parameters:\n  mode: slow\n  t: [{filter: mlp, value: 0.5}]\n")
    assert recipe.global_param("mode", Q, 0.0) == "slow"
    assert recipe.global_param("t", MLP, 0.0) == 0.5
    with pytest.raises(RecipeError) as info:
        recipe.global_param("t", Q, 0.0)
    assert info.value.loc == "parameters.t"
    err = error(base + "parameters:\n  mode: 3\n  t: 0.5\n")
    assert err.loc == "parameters.mode" and err.msg == "expected a string, got 3"
    assert "'fake'" in error(base.replace("fake", "fak") + "parameters: {t: 1}\n").msg


def test_recipe_constructed_directly_looks_up_its_method():
    model = InputModel(ModelRef("org/a"), MappingProxyType({"weight": 0.5}), "models[0]")
    recipe = Recipe(
        merge_method="linear",
        models=(model,),
        base_model=None,
        parameters=MappingProxyType({}),
        dtype=None,
        out_dtype=None,
        tokenizer_source=None,
        tokenizer=None,
        chat_template=None,
        slices=None,
        modules=None,
        name=None,
        text="",
    )
    assert recipe.model_param(model, "weight", Q, 0.0) == 0.5
    assert recipe.global_param("normalize", Q, 0.0) is True
