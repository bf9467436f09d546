"""Property: any recipe text parses, or is refused with RecipeError on one line; any recipe
over local models validates (``merge-engine validate``) or is refused with an InputError
(exit 2). Never another exception, never a slow refusal."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings

from merge_engine import InputError, RecipeError, parse_recipe, validate
from tests.hostile import recipe_texts

FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(recipe_texts(["org/a", "org/b"], base="org/base"))
def test_any_recipe_text_parses_or_is_one_line_recipe_error(text):
    started = time.perf_counter()
    try:
        parse_recipe(text)
    except RecipeError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))
    assert time.perf_counter() - started < 2.0


@settings(FUZZ, max_examples=30)
@given(data=recipe_texts(["{d1}", "{d2}"], base="{base}"))
def test_any_recipe_over_local_models_validates_or_exits_2(family, data):
    base, d1, d2 = family
    text = data.replace("{base}", str(base)).replace("{d1}", str(d1)).replace("{d2}", str(d2))
    try:
        validate(text if "\n" in text else text + "\n")
    except InputError as e:
        assert e.exit_code == 2 and str(e) and "\n" not in str(e), repr(str(e))
