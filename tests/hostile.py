"""Hypothesis strategies for hostile inputs: recipe texts, JSON bodies, repo file paths.

Recipe texts come in three kinds: any text at all; YAML dumps of random nested values
built from recipe words (so they reach the schema checks); and a valid recipe with a
hostile splice (aliases, deep brackets, control characters, long numbers, NULs).
"""

from __future__ import annotations

import yaml
from hypothesis import strategies as st

RECIPE_KEYS = ["merge_method", "base_model", "models", "model", "parameters", "weight",
               "density", "dtype", "slices", "sources", "layer_range", "tokenizer_source",
               "tokenizer", "modules", "name", "filter", "value", "lora", "chat_template", "t"]
METHODS = ["linear", "task_arithmetic", "ties", "slerp", "passthrough", "dare_ties",
           "model_stock", "nuslerp", "karcher", "bogus"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(METHODS),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(RECIPE_KEYS), inner, max_size=5)),
    max_leaves=30,
)


def valid_recipe(models: list[str], base: str | None = None) -> str:
    lines = ["merge_method: task_arithmetic" if base else "merge_method: linear"]
    if base:
        lines.append(f"base_model: {base}")
    lines.append("models:")
    for m in models:
        lines += [f"  - model: {m}", "    parameters:", "      weight: 0.5"]
    return "\n".join(lines) + "\n"


SPLICES = [
    "&a [1, *a]", "*nope", "&x [&y [*x]]", "[" * 500, "{" * 500, "9" * 5000, "\x00", "\x1b",
    "\ud800", "!!python/object:os.system [ls]", "!!binary ZZZ", "2024-13-45", "? [1]\n: 2",
    "<<: *a", "- - - - -", "'unterminated", "%YAML 9.9\n---", "--- \n--- ", "\t\t",
    "0x" + "f" * 100, "1e99999", ".nan", "~", "!!set {a, b}", "!!omap [a: 1]",
]


@st.composite
def recipe_texts(draw, models: list[str], base: str | None = None) -> str:
    """A recipe text a hostile or careless user might send."""
    kind = draw(st.sampled_from(["text", "dump", "splice", "laughs"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "dump":
        doc = draw(st.dictionaries(st.sampled_from(RECIPE_KEYS), values, max_size=6))
        if draw(st.booleans()):
            doc["merge_method"] = draw(st.sampled_from(METHODS))
            doc["models"] = [{"model": m, "parameters": draw(values)} for m in models]
        return yaml.safe_dump(doc, allow_unicode=True)
    if kind == "laughs":
        width, depth = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        lines = ["l0: &l0 " + "[" + ",".join(["lol"] * width) + "]"]
        for i in range(1, depth):
            lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]")
        return "\n".join(lines) + "\n" + valid_recipe(models, base)
    text = valid_recipe(models, base)
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(st.sampled_from(SPLICES)) + text[at:]


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=30)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20,
)

repo_paths = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["a", "..", ".", "", ".git", ".cache", "b.txt", "\\", "\x00",
                              "ü", "x" * 300, "c d"]), min_size=1, max_size=5).map("/".join),
)


def alias_bomb(levels: int = 8) -> str:
    """YAML of a few hundred bytes whose aliases expand to 9 ** levels strings."""
    lines = ["a0: &a0 [" + ", ".join(["xxxxxxxx"] * 9) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nbomb: *a{levels - 1}\n"
