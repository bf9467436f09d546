"""Parameter values: parsing from YAML shapes, evaluation per tensor, and layer_t."""

from __future__ import annotations

import math

import pytest

from merge_engine.errors import RecipeError
from merge_engine.recipe.params import (
    FilterList,
    FilterRule,
    Gradient,
    covers_all,
    evaluate,
    iter_leaves,
    layer_t,
    parse_value,
    unknown_key,
)

Q = "model.layers.3.self_attn.q_proj.weight"
MLP = "model.layers.3.mlp.up_proj.weight"


def _err(raw, loc="parameters.weight") -> RecipeError:
    with pytest.raises(RecipeError) as info:
        parse_value(raw, loc)
    return info.value


# --- parse_value --------------------------------------------------------------------


@pytest.mark.parametrize("raw", [0.5, 1, 0, -2, True, False, "abc"])
def test_scalars_parse_as_themselves(raw):
    value = parse_value(raw, "x")
    assert value == raw and type(value) is type(raw)


def test_number_list_is_a_gradient():
    assert parse_value([0, 0.5, 1], "x") == Gradient((0, 0.5, 1))


def test_string_and_bool_lists_are_gradients():
    assert parse_value(["a", "b"], "x") == Gradient(("a", "b"))
    assert parse_value([True, False], "x") == Gradient((True, False))


def test_filter_list():
    value = parse_value([{"filter": "mlp", "value": 0.5}, {"value": [0, 1]}], "x")
    assert value == FilterList((FilterRule("mlp", 0.5), FilterRule(None, Gradient((0, 1)))))


def test_single_rule_mapping_is_a_one_rule_filter_list():
    assert parse_value({"filter": "mlp", "value": 1}, "x") == FilterList((FilterRule("mlp", 1),))


def test_nonfinite_numbers_are_errors():
    err = _err(float("inf"))
    assert err.loc == "parameters.weight" and "finite" in err.msg
    err = _err([0.0, float("nan")])
    assert err.loc == "parameters.weight[1]"


def test_null_is_an_error():
    err = _err(None)
    assert err.loc == "parameters.weight" and "null" in err.msg


def test_empty_list_is_an_error():
    assert "non-empty" in _err([]).msg


def test_mixed_list_is_an_error():
    err = _err([0.5, {"value": 1}])
    assert err.loc == "parameters.weight"
    assert "gradient" in err.msg and "filter" in err.msg


def test_nested_list_is_an_error():
    err = _err([[0, 1], [1, 0]])
    assert err.loc == "parameters.weight"


def test_rule_without_value():
    err = _err([{"filter": "mlp"}])
    assert err.loc == "parameters.weight[0]" and "value" in err.msg


def test_rule_unknown_key_has_hint():
    err = _err([{"filter": "mlp", "valeu": 1}])
    assert err.loc == "parameters.weight[0].valeu"
    assert err.msg == "unknown key 'valeu'; did you mean 'value'?"


def test_rule_filter_must_be_string():
    err = _err([{"filter": 3, "value": 1}])
    assert err.loc == "parameters.weight[0].filter" and "string" in err.msg


def test_rule_value_cannot_be_a_filter_list():
    err = _err([{"filter": "mlp", "value": [{"value": 1}]}])
    assert err.loc == "parameters.weight[0].value"
    err = _err([{"filter": "mlp", "value": {"value": 1}}])
    assert err.loc == "parameters.weight[0].value"


def test_rule_gradient_element_error_loc():
    err = _err([{"filter": "mlp", "value": [0, float("inf")]}])
    assert err.loc == "parameters.weight[0].value[1]"


def test_unknown_key_without_close_match_has_no_hint():
    assert unknown_key("a", "zzz", ["weight"]).msg == "unknown key 'zzz'"
    assert str(unknown_key("a.wieght", "wieght", ["weight"])) == (
        "a.wieght: unknown key 'wieght'; did you mean 'weight'?"
    )


# --- evaluate -----------------------------------------------------------------------


def test_scalar_ignores_t_and_name():
    assert evaluate(0.3, Q, 0.7) == 0.3
    assert evaluate(True, Q, 0.0) is True


@pytest.mark.parametrize(
    ("t", "expected"),
    [(0.0, 0.0), (1.0, 1.0), (0.5, 0.5), (0.25, 0.25), (1 / 3, 1 / 3)],
)
def test_two_point_gradient(t, expected):
    assert evaluate(Gradient((0.0, 1.0)), Q, t) == pytest.approx(expected)


def test_multi_point_gradient_matches_mergekit_formula():
    values = (0.0, 0.3, 0.7, 1.0)
    for t in [i / 10 for i in range(11)]:
        scaled = t * 3
        i0 = math.floor(scaled)
        i1 = min(3, i0 + 1)
        frac = scaled - i0
        want = (1 - frac) * values[i0] + frac * values[i1]
        assert evaluate(Gradient(values), Q, t) == pytest.approx(want)
    assert evaluate(Gradient(values), Q, 0.5) == pytest.approx(0.5)
    assert evaluate(Gradient(values), Q, 1 / 3) == pytest.approx(0.3)


def test_single_value_gradient_is_constant():
    assert evaluate(Gradient((0.4,)), Q, 0.0) == pytest.approx(0.4)
    assert evaluate(Gradient((0.4,)), Q, 1.0) == pytest.approx(0.4)


def test_int_gradient_gives_float():
    value = evaluate(Gradient((0, 2)), Q, 0.5)
    assert value == 1.0 and isinstance(value, float)


def test_string_gradient_picks():
    g = Gradient(("a", "b", "c"))
    assert evaluate(g, Q, 0.0) == "a"
    assert evaluate(g, Q, 0.49) == "a"
    assert evaluate(g, Q, 0.5) == "b"
    assert evaluate(g, Q, 0.99) == "b"
    assert evaluate(g, Q, 1.0) == "c"


def test_bool_gradient_has_mergekit_truthiness():
    # mergekit interpolates bools as numbers: non-zero anywhere between a false and a true.
    g = Gradient((False, True))
    assert evaluate(g, Q, 0.0) is False
    assert evaluate(g, Q, 0.1) is True
    assert evaluate(g, Q, 1.0) is True
    assert evaluate(Gradient((True, False)), Q, 1.0) is False


def test_filter_list_first_match_wins():
    value = FilterList(
        (FilterRule("self_attn", 0.1), FilterRule("mlp", 0.2), FilterRule(None, 0.3))
    )
    assert evaluate(value, Q, 0.0) == 0.1
    assert evaluate(value, MLP, 0.0) == 0.2
    assert evaluate(value, "model.norm.weight", 0.0) == 0.3


def test_filter_order_matters():
    value = FilterList((FilterRule(None, 1.0), FilterRule("mlp", 0.2)))
    assert evaluate(value, MLP, 0.0) == 1.0


def test_star_filter_matches_all():
    value = FilterList((FilterRule("mlp", 0.2), FilterRule("*", 0.9)))
    assert evaluate(value, Q, 0.0) == 0.9


def test_filter_rule_value_can_be_a_gradient():
    value = FilterList((FilterRule("mlp", Gradient((0.0, 1.0))), FilterRule(None, 5)))
    assert evaluate(value, MLP, 0.25) == pytest.approx(0.25)
    assert evaluate(value, Q, 0.25) == 5


def test_filter_list_without_match_is_none():
    value = FilterList((FilterRule("mlp", 0.2),))
    assert evaluate(value, Q, 0.0) is None
    assert not covers_all(value)
    assert covers_all(FilterList((FilterRule("mlp", 0.2), FilterRule("*", 1))))
    assert covers_all(0.5) and covers_all(Gradient((0, 1)))


def test_evaluate_rejects_t_outside_unit_interval():
    with pytest.raises(ValueError):
        evaluate(Gradient((0, 1)), Q, 1.5)


def test_iter_leaves_paths():
    value = parse_value([{"filter": "mlp", "value": [0.1, 0.2]}, {"value": 0.3}], "p.w")
    assert list(iter_leaves(value, "p.w")) == [
        (0.1, "p.w[0].value[0]"),
        (0.2, "p.w[0].value[1]"),
        (0.3, "p.w[1].value"),
    ]
    assert list(iter_leaves(Gradient((1, 2)), "g")) == [(1, "g[0]"), (2, "g[1]")]


# --- layer_t ------------------------------------------------------------------------


def test_layer_t_in_stack():
    assert layer_t(0, 5) == 0.0
    assert layer_t(4, 5) == 1.0
    assert layer_t(2, 5) == 0.5
    assert layer_t(1, 4, "layer") == pytest.approx(1 / 3)


def test_layer_t_single_layer_is_one_like_mergekit():
    assert layer_t(0, 1) == 1.0


def test_layer_t_outside_stack_is_zero_like_mergekit():
    # mergekit >= 0.1 plans pre- and post-stack weights (embeddings, final norm, lm_head)
    # with t = 0, so they take a gradient's first value.
    assert layer_t(None, 32) == 0.0
    assert layer_t(None, 32, "pre") == 0.0
    assert layer_t(None, 32, "post") == 0.0
    assert layer_t(None, 1, "post") == 0.0


def test_layer_t_rejects_bad_input():
    with pytest.raises(ValueError):
        layer_t(5, 5)
    with pytest.raises(ValueError):
        layer_t(0, 5, "middle")  # type: ignore[arg-type]


def test_gradient_over_layers_end_to_end():
    g = parse_value([0.0, 1.0], "x")
    values = [evaluate(g, f"model.layers.{i}.mlp.up_proj.weight", layer_t(i, 5)) for i in range(5)]
    assert values == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert evaluate(g, "lm_head.weight", layer_t(None, 5, "post")) == 0.0


def test_exponent_floats_without_a_dot_are_numbers():
    """PyYAML reads `1e-3` as a string; a recipe author means the number."""
    assert parse_value("1e-3", "parameters.weight") == 0.001
    assert parse_value("-2E+2", "parameters.weight") == -200.0
    assert parse_value("ties", "parameters.x") == "ties"
