"""YAML with line numbers: every YAML path of a recipe mapped to its line, and errors
that carry it (``models[1].parameters.weight (line 9): ...``).
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from merge_engine.errors import RecipeError


def located(loc: str, msg: str, line: int | None) -> RecipeError:
    err = RecipeError(loc, msg)
    err.line = line
    if line is not None:
        err.args = (f"{loc} (line {line}): {msg}" if loc else f"line {line}: {msg}",)
    return err


def line_of(loc: str, lines: Mapping[str, int]) -> int | None:
    """The line of ``loc``, else of its nearest enclosing path that is in the text."""
    path = loc
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def with_line(err: RecipeError, lines: dict[str, int]) -> RecipeError:
    if getattr(err, "line", None) is not None or not err.loc:
        return err
    line = line_of(err.loc, lines)
    return located(err.loc, err.msg, line) if line is not None else err


def _index(node: yaml.Node, path: str, lines: dict[str, int], stack: set[int]) -> None:
    """Record the line of every YAML path; reject duplicate keys (PyYAML keeps the last)."""
    if id(node) in stack:
        return
    stack.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key == "<<":
                continue
            child = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in seen:
                raise located(child, f"duplicate key {key!r}", line)
            seen.add(key)
            lines.setdefault(child, line)
            _index(value_node, child, lines, stack)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = f"{path}[{i}]"
            lines.setdefault(child, item.start_mark.line + 1)
            _index(item, child, lines, stack)
    stack.discard(id(node))


def load_yaml(text: str) -> tuple[object, dict[str, int]]:
    if not isinstance(text, str):
        raise RecipeError("", f"expected recipe text, got {type(text).__name__}")
    lines: dict[str, int] = {}
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        _index(node, "", lines, set())
        return loader.construct_document(node), lines
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context, problem = getattr(e, "context", None), getattr(e, "problem", None)
        problem = "; ".join(p for p in (context, problem) if p) or str(e)
        err = RecipeError("", f"invalid YAML{where}: {problem}")
        # the line shown around it: the end of the text when the problem is its end
        err.line = min(mark.line + 1, max(len(text.splitlines()), 1)) if mark else None
        raise err from None
    finally:
        loader.dispose()
