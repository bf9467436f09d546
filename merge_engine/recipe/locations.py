"""YAML with budgets and line numbers: every YAML path of a recipe mapped to its line, and
errors that carry it (``models[1].parameters.weight (line 9): ...``).

Untrusted text is checked before any work: its size, its characters (no NUL or other
control characters), then, while the node graph is composed and before any Python object
is built, its nesting depth and its number of nodes, an alias counting as the whole node
it names (so a "billion laughs" recipe is refused after a few hundred nodes), and the
length of every number (Python refuses to convert ints of more than 4300 digits).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import yaml

from merge_engine.errors import RecipeError

_NOT_ALLOWED = re.compile(  # what YAML 1.1 lets a stream contain, as PyYAML's reader checks
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


@dataclass(frozen=True)
class RecipeLimits:
    """Budgets for one recipe text; mergekit recipes stay far below them."""

    max_bytes: int = 1024 * 1024
    """UTF-8 size of the text."""
    max_depth: int = 32
    """Nesting of mappings and sequences, aliases followed."""
    max_nodes: int = 5_000
    """Scalars, mappings and sequences after alias expansion (PyYAML composes ~10k a second
    on a busy 2-core machine; an 80-slice frankenmerge has ~1,400)."""
    max_number_chars: int = 64
    """Characters of one int or float."""
    max_stages: int = 16
    """Documents (stages) of a multi-stage recipe."""
    what: str = "the recipe"
    """What the text is, for the messages (the same budgets guard other YAML: a card)."""

    def check_size(self, text: str) -> None:
        """RecipeError when ``text`` is larger than ``max_bytes`` in UTF-8."""
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.max_bytes:
            raise RecipeError("", size_message(size, self.max_bytes, self.what))


CARD_LIMITS = RecipeLimits(max_bytes=4 * 1024 * 1024, max_depth=64, max_nodes=50_000,
                           max_number_chars=256, what="the card's YAML")
"""Budgets for a model or dataset card's front matter: anyone's text (alias bombs, depth),
read by the dataset reader and by localhub."""


def size_message(size: int, limit: int, what: str = "the recipe") -> str:
    """The one sentence for a recipe over the size limit (engine, CLI and bot alike)."""
    return f"{what} is {size:,} bytes; the limit is {limit:,} bytes"


def _at(mark: yaml.Mark | None, msg: str) -> RecipeError:
    """A RecipeError for the recipe as a whole, at a line and column of the text."""
    if mark is None:
        return RecipeError("", msg)
    err = RecipeError("", f"{msg} at line {mark.line + 1}, column {mark.column + 1}")
    err.line = mark.line + 1
    return err


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


class _BudgetLoader(yaml.SafeLoader):
    """SafeLoader that enforces :class:`RecipeLimits` while it composes the node graph."""

    def __init__(self, text: str, limits: RecipeLimits):
        super().__init__(text)
        self.limits = limits
        self.depth = 0
        self.nodes = 0
        self.sizes: dict[int, tuple[int, int]] = {}
        """id(node) -> (nodes after alias expansion, height) of every composed node."""

    def fetch_flow_collection_start(self, token_class):
        """Refuse deep ``[[[[...`` while scanning: PyYAML's scanner slows down quadratically
        with the flow level, long before the composer would see the depth."""
        if self.flow_level >= self.limits.max_depth:
            raise _at(self.get_mark(), f"{self.limits.what} nests deeper than "
                                       f"{self.limits.max_depth} levels")
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            target = self.anchors.get(self.peek_event().anchor)
            if target is not None:
                if id(target) not in self.sizes:
                    raise _at(mark, "an alias refers to a node that contains it")
                self._spend(*self.sizes[id(target)], mark)
            return super().compose_node(parent, index)
        self._spend(1, 1, mark)
        self.depth += 1
        node = super().compose_node(parent, index)
        self.depth -= 1
        children = _children(node)
        size = 1 + sum(self.sizes[id(c)][0] for c in children)
        height = 1 + max((self.sizes[id(c)][1] for c in children), default=0)
        self.sizes[id(node)] = (size, height)
        if node.tag in _NUMBER_TAGS and len(node.value) > self.limits.max_number_chars:
            raise _at(mark, f"a number of {len(node.value):,} characters is too long (the "
                            f"limit is {self.limits.max_number_chars})")
        return node

    def _spend(self, nodes: int, height: int, mark: yaml.Mark) -> None:
        """Count ``nodes`` more nodes, placed ``height`` levels deep below the current one."""
        self.nodes += nodes
        if self.nodes > self.limits.max_nodes:
            raise _at(mark, f"{self.limits.what} has more than {self.limits.max_nodes:,} YAML "
                            "nodes (aliases counted as the nodes they repeat)")
        if self.depth + height > self.limits.max_depth:
            raise _at(mark, f"{self.limits.what} nests deeper than {self.limits.max_depth} "
                            "levels")

    def construct_object(self, node, deep=False):
        """Values PyYAML cannot convert (a date like 2024-13-45) become errors at the node."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as e:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {_short(node)}: {e}", node.start_mark
            ) from None


def _short(node: yaml.Node) -> str:
    text = node.value if isinstance(node.value, str) else node.tag
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _index(node: yaml.Node, path: str, lines: dict[str, int], stack: set[int]) -> None:
    """Record the line of every YAML path; reject duplicate keys (PyYAML keeps the last)."""
    if id(node) in stack:
        return
    stack.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _at(key_node.start_mark, "a mapping key must be a plain value, "
                                               "not a list or a mapping")
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


def _check_characters(text: str, what: str) -> None:
    found = _NOT_ALLOWED.search(text)
    if found:
        line = text.count("\n", 0, found.start())
        column = found.start() - (text.rfind("\n", 0, found.start()) + 1)
        raise _at(yaml.Mark("", found.start(), line, column, None, None),
                  f"{what} contains the control character U+{ord(found.group()):04X}")


def load_yaml(text: str, limits: RecipeLimits | None = None) -> tuple[object, dict[str, int]]:
    """The document and the line of every YAML path, within ``limits`` (default
    :class:`RecipeLimits`); RecipeError at a line for anything else."""
    loader = _loader(text, limits)
    with _yaml_errors(text, loader):
        node = loader.get_single_node()
        return _document(loader, node)


@dataclass(frozen=True)
class Document:
    """One YAML document of a multi-document text (``---`` between documents)."""

    number: int
    """1-based, counting every document of the text, empty ones too."""
    data: object
    lines: dict[str, int]
    """The line of each YAML path, counted in the whole text."""
    text: str
    """The document's own text (from its first node to its last)."""


def load_yaml_documents(text: str, limits: RecipeLimits | None = None) -> list[Document]:
    """Every non-empty document of ``text``; the budgets of ``limits`` hold for the whole
    text (its size, and the YAML nodes of all documents together), and it may have at most
    twice ``max_stages`` documents, empty ones included."""
    limits = limits or RecipeLimits()
    loader = _loader(text, limits)
    found = []
    with _yaml_errors(text, loader):
        number = 0
        while loader.check_node():
            number += 1
            if number > 2 * limits.max_stages:
                raise _at(loader.peek_event().start_mark, "the recipe has more than "
                          f"{2 * limits.max_stages} YAML documents")
            node = loader.get_node()
            if node is None or (node.tag == "tag:yaml.org,2002:null" and not node.value):
                continue
            data, lines = _document(loader, node)
            own = text[node.start_mark.index:node.end_mark.index].rstrip() + "\n"
            found.append(Document(number, data, lines, own))
    return found


def _loader(text: str, limits: RecipeLimits | None) -> _BudgetLoader:
    if not isinstance(text, str):
        raise RecipeError("", f"expected recipe text, got {type(text).__name__}")
    limits = limits or RecipeLimits()
    limits.check_size(text)
    _check_characters(text, limits.what)
    return _BudgetLoader(text, limits)


def _document(loader: _BudgetLoader, node: yaml.Node | None) -> tuple[object, dict[str, int]]:
    lines: dict[str, int] = {}
    if node is None:
        return None, lines
    _index(node, "", lines, set())
    return loader.construct_document(node), lines


@contextmanager
def _yaml_errors(text: str, loader: _BudgetLoader) -> Iterator[None]:
    """PyYAML's errors as one RecipeError at a line; the loader disposed of at the end."""
    try:
        yield
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        context, problem = getattr(e, "context", None), getattr(e, "problem", None)
        problem = "; ".join(p for p in (context, problem) if p) or str(e)
        err = _at(mark, f"invalid YAML: {' '.join(problem.split())}")
        if err.line is not None:  # the line shown around it: the text's end when that is it
            err.line = min(err.line, max(len(text.splitlines()), 1))
        raise err from None
    finally:
        loader.dispose()
