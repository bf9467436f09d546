"""Multi-stage recipes (mergekit-multi's format): YAML documents separated by ``---``, each
an ordinary recipe with a ``name:``; a later stage names an earlier one's ``name`` wherever
a model goes (``models``, ``base_model``, slices' sources, ``tokenizer_source``...).

    staged = parse_stages(text)
    staged.stages[1].uses          # ('mid',): the earlier stages it reads
    staged.stages[1].bind({"mid": "/work/mid"})   # its Recipe, reading mid from there

Rules: stages run in document order and a stage may name only stages above it (so there
is no cycle); names are unique, plain (letters, digits, ``_.-``) and required when there
are several documents; a bare name without an owner that is no earlier stage is an error
(a Hub repo is ``owner/name``). The budgets of :class:`RecipeLimits` hold for the whole
text. Errors name the stage and its document before the YAML path: ``stage 'mid'
(document 2), models[0].model (line 9): ...``; lines count in the whole text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from merge_engine.errors import RecipeError
from merge_engine.recipe.inputs import kind_of
from merge_engine.recipe.locations import (
    Document,
    RecipeLimits,
    line_of,
    load_yaml_documents,
    located,
)
from merge_engine.recipe.parse import build_recipe
from merge_engine.recipe.refs import StageScope, stage_scope
from merge_engine.recipe.schema import InputModel, Recipe, ref_key

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")
PLACEHOLDER = "<stage {}>"
"""The directory a stage reference stands for until the stage's output has a place."""


@dataclass(frozen=True)
class Stage:
    """One document of a multi-stage recipe."""

    name: str | None
    document: int
    """1-based position of its document in the text."""
    recipe: Recipe
    """Parsed with each earlier stage it names standing for :data:`PLACEHOLDER`."""
    uses: tuple[str, ...]
    """The earlier stages it reads, in order of first mention."""
    source: Document = field(repr=False, compare=False)
    names: Mapping[str, int] = field(repr=False, compare=False)
    """Every stage's name -> its document number, in order."""

    @property
    def label(self) -> str:
        """``stage 'mid' (document 2)``; ``document 2`` for an unnamed one."""
        where = f"document {self.source.number}"
        return f"stage {self.name!r} ({where})" if self.name else where

    def own_inputs(self) -> tuple[InputModel, ...]:
        """The inputs of its recipe (as parsed) that no stage makes."""
        made = {PLACEHOLDER.format(n) for n in self.uses}
        return tuple(m for m in self.recipe.inputs()
                     if not (m.ref.is_local and m.ref.path in made))

    def bind(self, dirs: Mapping[str, str], text: str | None = None) -> Recipe:
        """The stage's recipe with each earlier stage it names read from ``dirs[name]``;
        ``text`` replaces the recipe's text (default: the document's own)."""
        return _build_stage(self.source, self.names, dirs, text)[0]


@dataclass(frozen=True)
class StagedRecipe:
    """The stages of a recipe, in order (one for an ordinary recipe)."""

    stages: tuple[Stage, ...]
    text: str

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def name(self) -> str | None:
        """The final stage's name (a default name for the output)."""
        return self.final.name

    def inputs(self) -> tuple[InputModel, ...]:
        """Every model the stages read that no stage makes, each once, its loc prefixed by
        its stage's label (``stage 'mid' (document 2), models[0]``)."""
        seen: dict[tuple, InputModel] = {}
        for stage in self.stages:
            for model in stage.own_inputs():
                if ref_key(model.ref) not in seen:
                    seen[ref_key(model.ref)] = InputModel(
                        model.ref, model.parameters, f"{stage.label}, {model.loc}")
        return tuple(seen.values())

    def where(self, loc: str) -> str:
        """``loc`` (prefixed by a stage's label) with its line in the text, when known."""
        for stage in self.stages:
            prefix = f"{stage.label}, "
            if loc.startswith(prefix):
                inner = loc.removeprefix(prefix)
                line = line_of(inner, stage.source.lines)
                return f"{loc} (line {line})" if line is not None else loc
        return loc


def parse_stages(text: str, limits: RecipeLimits | None = None) -> StagedRecipe:
    """Parse a recipe of one or several YAML documents; RecipeError (prefixed by the stage
    and document, see the module docstring) at the first mistake."""
    limits = limits or RecipeLimits()
    documents = load_yaml_documents(text, limits)
    if not documents:
        raise RecipeError("", "the recipe is empty; expected a mapping with merge_method and "
                              "models")
    if len(documents) > limits.max_stages:
        raise RecipeError("", f"the recipe has {len(documents)} stages (YAML documents); the "
                              f"limit is {limits.max_stages}")
    if len(documents) == 1:
        only = documents[0]
        recipe = build_recipe(only.data, text, only.lines)
        stage = Stage(recipe.name, only.number, recipe, (), only, MappingProxyType({}))
        return StagedRecipe((stage,), text)
    names = _names(documents)
    placeholders = {n: PLACEHOLDER.format(n) for n in names}
    stages = []
    for document, name in zip(documents, names, strict=True):
        recipe, uses = _build_stage(document, names, placeholders)
        stages.append(Stage(name, document.number, recipe, uses, document, names))
    return StagedRecipe(tuple(stages), text)


def _label(document: Document, name: str | None = None) -> str:
    where = f"document {document.number}"
    return f"stage {name!r} ({where})" if name else where


def _names(documents: list[Document]) -> Mapping[str, int]:
    """Each document's ``name``: present, plain and unique."""
    names: dict[str, int] = {}
    for document in documents:
        data = document.data
        if not isinstance(data, dict):
            raise located(_label(document), "expected a mapping of recipe keys, got "
                          f"{kind_of(data)}", _first_line(document))
        name = data.get("name")
        line = document.lines.get("name")
        if name is None:
            raise located(_label(document), "a recipe of several stages needs a 'name:' in "
                          "every stage (later stages use it as a model)",
                          _first_line(document))
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise located(f"{_label(document)}, name", f"{name!r} is not a stage name; use "
                          "letters, digits, '_', '.' and '-' (no '/')", line)
        if name in names:
            raise located(f"{_label(document)}, name", f"the stage name {name!r} is already "
                          f"used by document {names[name]}", line)
        names[name] = document.number
    return MappingProxyType(names)


def _first_line(document: Document) -> int | None:
    return min(document.lines.values(), default=None)


def _build_stage(document: Document, names: Mapping[str, int], dirs: Mapping[str, str],
                 text: str | None = None) -> tuple[Recipe, tuple[str, ...]]:
    """(the recipe of one stage, the earlier stages it names), errors prefixed."""
    name = document.data.get("name") if isinstance(document.data, dict) else None
    earlier = {n: dirs[n] for n, number in names.items()
               if number < document.number and n in dirs}
    later = {n: f"stage {n!r} (document {number})" for n, number in names.items()
             if number >= document.number}
    scope = StageScope(MappingProxyType(earlier), MappingProxyType(later), name)
    try:
        with stage_scope(scope):
            recipe = build_recipe(document.data, text or document.text, document.lines)
    except RecipeError as e:
        raise prefixed(e, _label(document, name)) from None
    return recipe, tuple(scope.used)


def prefixed(err: RecipeError, label: str) -> RecipeError:
    """``err`` with its location under a stage's ``label``, its line kept."""
    loc = f"{label}, {err.loc}" if err.loc else label
    return located(loc, err.msg, getattr(err, "line", None))
