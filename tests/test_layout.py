"""The engine's layout: imports point from later stages to earlier ones, with no circles,
and ``bot/`` and ``spaces_app/`` use only the engine's public names."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import merge_engine

ROOT = Path(__file__).resolve().parent.parent
ENGINE = "merge_engine"

STAGES = {
    "errors": 0, "version": 0, "methods": 1, "recipe": 2, "io": 3, "tokenizer": 4, "plan": 5,
    "execute": 6, "synth": 6, "extract": 6, "check": 7, "evaluate": 8, "trained": 8, "card": 9,
    "api": 10, "cli": 11, "demo": 11, "__main__": 12,
}
"""Each top-level piece of the engine and its place in the data flow: a module may import
only pieces of a lower rank, or its own piece."""

PUBLIC = {ENGINE, f"{ENGINE}.synth"}
"""What code outside the engine may import."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (function bodies too), as absolute
    names: ``from pkg import sub`` counts as ``pkg.sub`` when ``sub`` is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                if is_module(candidate):
                    found.add(candidate)
    return found


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def engine_graph() -> dict[str, set[str]]:
    """Engine module -> engine modules it imports, with the ``__init__`` of every other
    package on the way (importing ``a.b.c`` runs ``a.b``); the root package is left out,
    since every module sits under it."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / ENGINE).rglob("*.py")):
        name = module_name(path)
        edges: set[str] = set()
        for target in imports_of(path):
            if not target.startswith(ENGINE + ".") or not is_module(target):
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                step = ".".join(parts[:i])
                if not (name == step or name.startswith(step + ".")):
                    edges.add(step)
        graph[name] = edges
    return graph


def stage(module: str) -> str:
    return module.split(".")[1] if module != ENGINE else "__init__"


def test_every_engine_module_has_a_stage():
    pieces = {stage(m) for m in engine_graph() if m != ENGINE}
    assert pieces <= set(STAGES), f"modules without a stage: {sorted(pieces - set(STAGES))}"


def test_engine_imports_have_no_circles():
    graph = engine_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_engine_imports_point_to_earlier_stages():
    backwards = []
    for module, targets in engine_graph().items():
        if module == ENGINE:
            continue
        own = stage(module)
        for target in targets:
            there = stage(target)
            if there != own and STAGES[there] >= STAGES[own]:
                backwards.append(f"{module} -> {target}")
    assert not backwards, "imports against the data flow: " + ", ".join(sorted(backwards))


@pytest.mark.parametrize("package", ["bot", "spaces_app"])
def test_outside_code_uses_public_engine_names_only(package):
    internal = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for target in imports_of(path):
            if target.startswith(ENGINE) and target not in PUBLIC:
                internal.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not internal, "; ".join(internal)


def test_public_names_resolve():
    for name in merge_engine.__all__:
        assert getattr(merge_engine, name) is not None, name


def test_the_checks_see_a_circle(tmp_path, monkeypatch):
    """The walker itself: a lazy import inside a function still counts."""
    pkg = tmp_path / ENGINE / "recipe"
    pkg.mkdir(parents=True)
    (tmp_path / ENGINE / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from merge_engine.recipe import b\n")
    (pkg / "b.py").write_text("def f():\n    from merge_engine.recipe.a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = engine_graph()
    assert "merge_engine.recipe.a" in graph["merge_engine.recipe.b"]
    assert "merge_engine.recipe.b" in graph["merge_engine.recipe.a"]
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_engine_imports_have_no_circles()
