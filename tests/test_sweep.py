"""expand_sweep: a recipe's variants over one or two axes, each an ordinary recipe."""

import pytest
import yaml

from merge_engine import RecipeError, SweepLimits, expand_sweep, parse_recipe

RECIPE = """\
merge_method: task_arithmetic
base_model: org/base
models:
  - model: org/a
    parameters: {weight: 1.0}
  - model: org/b
    parameters:
      weight: 0.5  # donor 2
parameters:
  normalize: false
dtype: float32
"""
WEIGHT = "models[1].parameters.weight"


def test_one_axis_gives_one_ordinary_recipe_per_value():
    variants = expand_sweep(RECIPE, {WEIGHT: [0.1, 0.3, 0.5]})
    assert [v.label for v in variants] == ["weight=0.1", "weight=0.3", "weight=0.5"]
    for variant, alpha in zip(variants, (0.1, 0.3, 0.5), strict=True):
        assert variant.values == {WEIGHT: alpha}
        recipe = parse_recipe(variant.text)
        assert recipe.models[1].parameters["weight"] == alpha
        assert recipe.models[0].parameters["weight"] == 1.0
        doc = yaml.safe_load(variant.text)
        assert set(doc) == set(yaml.safe_load(RECIPE))  # no new keys


def test_two_axes_give_the_product_first_axis_slowest():
    variants = expand_sweep(RECIPE, {WEIGHT: [0.2, 0.4], "models[0].parameters.weight": [1, 2]})
    assert [v.values for v in variants] == [
        {WEIGHT: 0.2, "models[0].parameters.weight": 1},
        {WEIGHT: 0.2, "models[0].parameters.weight": 2},
        {WEIGHT: 0.4, "models[0].parameters.weight": 1},
        {WEIGHT: 0.4, "models[0].parameters.weight": 2},
    ]
    # both axes end in "weight": labels use the whole paths to stay unique
    assert variants[1].label == f"{WEIGHT}=0.2, models[0].parameters.weight=2"
    assert len({v.label for v in variants}) == 4


def test_a_new_key_of_an_existing_mapping_can_be_swept():
    variants = expand_sweep(RECIPE, {"parameters.normalize": [True, False]})
    assert [parse_recipe(v.text).parameters["normalize"] for v in variants] == [True, False]
    assert variants[0].label == "normalize=true"


@pytest.mark.parametrize("axes, loc, words", [
    ({"models[5].parameters.weight": [1]}, "models[5].parameters.weight", "no models[5]"),
    ({"model.weight": [1]}, "model.weight", "no model"),
    ({"models[1].parameters": [1]}, "models[1].parameters", "a mapping"),
    ({"models[1].model": [{"a": 1}]}, "models[1].model", "not a single"),
    ({WEIGHT: ["abc"]}, WEIGHT, "expected a number"),
    ({WEIGHT: []}, WEIGHT, "non-empty list"),
    ({WEIGHT: [0.1, 0.1]}, WEIGHT, "repeats"),
    ({WEIGHT: [float("nan")]}, WEIGHT, "finite"),
    ({"models..weight": [1]}, "models..weight", "not a YAML path"),
    ({WEIGHT: list(range(17))}, WEIGHT, "17 variants; the limit is 16"),
    ({WEIGHT: [1, 2], "models[0].parameters.weight": [1, 2], "dtype": ["float16"]}, "dtype",
     "at most 2 axes"),
])
def test_mistakes_are_one_sentence_at_the_axis_path(axes, loc, words):
    with pytest.raises(RecipeError) as info:
        expand_sweep(RECIPE, axes)
    assert info.value.loc == loc
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_the_limit_is_settable_and_the_recipe_own_errors_come_first():
    with pytest.raises(RecipeError, match="4 variants; the limit is 3"):
        expand_sweep(RECIPE, {WEIGHT: [1, 2, 3, 4]}, limits=SweepLimits(max_variants=3))
    with pytest.raises(RecipeError) as info:
        expand_sweep(RECIPE.replace("task_arithmetic", "nope"), {WEIGHT: [1]})
    assert info.value.loc == "merge_method"


def test_a_method_name_axis_checks_each_value():
    with pytest.raises(RecipeError, match="merge_method: the sweep value 'bogus' does not fit"):
        expand_sweep(RECIPE, {"merge_method": ["task_arithmetic", "bogus"]})
    with pytest.raises(RecipeError, match="the sweep value 'linear' does not fit: missing"):
        expand_sweep(RECIPE, {"merge_method": ["linear"]})  # linear needs the base's weight


@pytest.mark.parametrize("axes, words", [
    ({"models." * 20_000 + "x": [1]}, "a sweep axis of 140,001 characters is too long"),
    ({WEIGHT: ["x" * 1_000_000]}, "the sweep value 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... is"),
    ({WEIGHT: [[[[0.1]]]]}, "the sweep value a list of 1 items is not"),
])
def test_a_hostile_axis_is_named_not_echoed(axes, words):
    with pytest.raises(RecipeError) as info:
        expand_sweep(RECIPE, axes)
    assert words in str(info.value) and len(str(info.value)) < 200
