"""Recipe budgets: size, characters, depth, nodes after alias expansion, number length.

Each hostile text is refused before any Python object is built, quickly, with a small
memory footprint, as a RecipeError at a line (CLI: exit 2, one line on stderr).
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from merge_engine import RecipeError, RecipeLimits, load_recipe, parse_recipe
from merge_engine.cli import main

GOOD = "merge_method: linear\nmodels:\n  - model: org/a\n    parameters: {weight: 1}\n"


def billion_laughs() -> str:
    """The classic: nine lists of nine aliases, nine levels (10^9 strings), in 414 bytes."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("merge_method: linear")
    lines.append("models: [{model: org/a, parameters: {weight: *i}}]")
    return "\n".join(lines) + "\n"


HOSTILE = {
    "aliases": (billion_laughs(), "more than 5,000 YAML nodes", 4),
    "flow depth": ("[" * 20_000 + "]" * 20_000, "nests deeper than 32 levels", 1),
    "block depth": ("".join(f"{' ' * i}k{i}:\n" for i in range(40)) + " " * 40 + "x",
                    "nests deeper than 32 levels", 32),
    "alias depth": ("".join(f"k{i}: &a{i} [{f'*a{i - 1}' if i else 1}]\n" for i in range(40)),
                    "nests deeper than 32 levels", 31),
    "recursive alias": ("a: &a [1, *a]\n", "alias refers to a node that contains it", 1),
    "NUL": (GOOD.replace("linear", "lin\0ear"), "control character U+0000", 1),
    "escape": ("name: \x1b[31m\n" + GOOD, "control character U+001B", 1),
    "huge int": (GOOD.replace("weight: 1", "weight: " + "9" * 5000), "5,000 characters", 4),
    "huge float": (GOOD.replace("weight: 1", "weight: 0." + "1" * 200), "202 characters", 4),
    "bad date": ("merge_method: 2024-13-45\n", "month must be in 1..12", 1),
    "list key": ("? [a, b]\n: 1\n", "a mapping key must be a plain value", 1),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_recipes_are_refused_at_a_line_quickly_and_small(name):
    text, message, line = HOSTILE[name]
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        parse_recipe(text)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    err = info.value
    assert message in err.msg and err.line == line and "\n" not in str(err)
    assert seconds < 0.5, f"{name}: {seconds:.2f} s"
    assert peak < 20 * 2**20, f"{name}: {peak / 2**20:.1f} MiB"


def test_the_billion_laughs_is_small_and_ordinary_aliases_still_work():
    assert len(billion_laughs().encode()) < 442
    shared = ("merge_method: linear\nmodels:\n  - model: org/a\n    parameters: &p {weight: 1}\n"
              "  - model: org/b\n    parameters: *p\n")
    recipe = parse_recipe(shared)
    assert recipe.models[0].parameters == recipe.models[1].parameters == {"weight": 1}


def test_limits_are_settable_and_size_has_one_message(tmp_path):
    limits = RecipeLimits(max_bytes=50, max_nodes=5, max_depth=2, max_number_chars=3)
    with pytest.raises(RecipeError, match=r"^the recipe is 74 bytes; the limit is 50 bytes$"):
        parse_recipe(GOOD, limits)
    path = tmp_path / "big.yml"
    path.write_text(GOOD)
    with pytest.raises(RecipeError, match=r"^the recipe is 74 bytes; the limit is 50 bytes$"):
        load_recipe(path, limits)
    with pytest.raises(RecipeError, match="more than 5 YAML nodes"):
        parse_recipe("[1, 2, 3, 4, 5, 6]", RecipeLimits(max_nodes=5))
    with pytest.raises(RecipeError, match="deeper than 2 levels"):
        parse_recipe("a: [[1]]", RecipeLimits(max_depth=2))
    with pytest.raises(RecipeError, match="too long"):
        parse_recipe("a: 1234", RecipeLimits(max_number_chars=3))


@pytest.mark.parametrize("name", ["aliases", "NUL", "huge int", "flow depth"])
def test_cli_validate_exits_2_with_one_line(name, tmp_path, capsys):
    path = tmp_path / "r.yml"
    path.write_text(HOSTILE[name][0])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and HOSTILE[name][1] in err


def test_unreadable_recipe_paths_are_exit_2(tmp_path, capsys):
    assert main(["validate", "bad\0name.yml"]) == 2
    (tmp_path / "latin1.yml").write_bytes(b"name: caf\xe9\n")
    assert main(["validate", str(tmp_path / "latin1.yml")]) == 2
    assert capsys.readouterr().err.count("error: cannot read recipe file") == 2
