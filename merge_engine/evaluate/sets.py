"""Evaluation sets as the user names them: short texts pasted in, or a Hub dataset (repo,
config, split, text column, number of samples, revision), checked against the limits."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

from merge_engine.errors import InputError, shown

MAX_SETS = 8
"""Evaluation sets per request."""
MAX_SAMPLES = 1024
"""Texts per set (pasted, or read from a dataset)."""
MAX_TEXT_CHARS = 20_000
"""Characters per pasted text."""
NAME = re.compile(r"[\w][\w .:/+=-]{0,63}")
"""A set's label: shown in tables, cards and plots (no '|' or line breaks)."""
REPO = re.compile(r"[\w.-]{1,96}/[\w.-]{1,96}")
PART = re.compile(r"[\w.-]{1,128}")
"""A dataset config, split or column name."""
REVISION = re.compile(r"[\w./-]{1,128}")
FIELDS = ("name", "texts", "dataset", "config", "split", "column", "samples", "revision")


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: ``texts`` pasted in, or ``samples`` texts of ``column`` read from
    the Hub dataset ``dataset`` (``config``: None for the default one) at ``revision``
    (a branch, tag or SHA; None: the main branch, resolved to a SHA when read)."""

    name: str
    texts: tuple[str, ...] = ()
    dataset: str | None = None
    config: str | None = None
    split: str = "test"
    column: str = "text"
    samples: int = 64
    revision: str | None = None


def parse_eval_sets(value: object, where: str = "evaluation") -> list[EvalSet]:
    """Evaluation sets from JSON/YAML data (a list of mappings with the fields of
    :class:`EvalSet`; ``EvalSet`` items are checked the same way); raises ``InputError``
    naming the path of the first mistake, e.g. ``evaluation[1].samples``."""
    if not isinstance(value, list | tuple) or not value:
        raise InputError(f"{where} must be a non-empty list of evaluation sets")
    if len(value) > MAX_SETS:
        raise InputError(f"{where} has {len(value)} evaluation sets; the limit is {MAX_SETS}")
    sets = [parse_eval_set(item, f"{where}[{i}]") for i, item in enumerate(value)]
    seen: set[str] = set()
    for i, s in enumerate(sets):
        if s.name in seen:
            raise InputError(f"{where}[{i}].name: the name {s.name!r} is used by an earlier "
                             "set; names must be unique")
        seen.add(s.name)
    return sets


def parse_eval_set(item: object, where: str) -> EvalSet:
    """One set from a mapping (or an ``EvalSet``); ``where`` names it in errors."""
    if isinstance(item, EvalSet):
        item = dataclasses.asdict(item)
    if not isinstance(item, Mapping):
        raise InputError(f"{where} must be a mapping with texts or a dataset")
    unknown = sorted(set(map(str, item)) - set(FIELDS))
    if unknown:
        raise InputError(f"{where}.{unknown[0][:40]} is not a field of an evaluation set "
                         f"(fields: {', '.join(FIELDS)})")
    texts = item.get("texts") or ()
    dataset = item.get("dataset")
    if bool(texts) == (dataset is not None):
        raise InputError(f"{where} must have either texts or a dataset, not "
                         + ("both" if texts else "neither"))
    if dataset is not None:
        _match(dataset, REPO, f"{where}.dataset", "a dataset repo id like org/name")
        for key in ("config", "revision"):
            if item.get(key) is not None:
                _match(item[key], REVISION if key == "revision" else PART, f"{where}.{key}",
                       "a name")
        for key in ("split", "column"):
            if key in item:
                _match(item[key], PART, f"{where}.{key}", "a name")
        samples = item.get("samples", EvalSet.samples)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise InputError(f"{where}.samples must be a positive whole number, not "
                             f"{shown(samples)}")
        if samples > MAX_SAMPLES:
            raise InputError(f"{where}.samples is {samples}; the limit is {MAX_SAMPLES}")
        default = dataset.split("/")[1] + (f":{item['config']}" if item.get("config") else "")
        name = item.get("name") or default
        _match(name, NAME, f"{where}.name", "a label of at most 64 letters, digits or .:/+=-")
        return EvalSet(name=name, dataset=dataset, config=item.get("config"),
                       split=item.get("split", EvalSet.split),
                       column=item.get("column", EvalSet.column), samples=samples,
                       revision=item.get("revision"))
    if not isinstance(texts, list | tuple):
        raise InputError(f"{where}.texts must be a list of strings")
    if len(texts) > MAX_SAMPLES:
        raise InputError(f"{where}.texts has {len(texts)} texts; the limit is {MAX_SAMPLES}")
    for j, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}.texts[{j}] must be a non-empty string")
        if len(text) > MAX_TEXT_CHARS:
            raise InputError(f"{where}.texts[{j}] has {len(text)} characters; the limit is "
                             f"{MAX_TEXT_CHARS}")
    for key in ("config", "revision"):
        if item.get(key) is not None:
            raise InputError(f"{where}.{key} applies to a dataset, and this set has texts")
    name = item.get("name")
    if name is None:
        raise InputError(f"{where}.name is missing (a set of texts needs a name)")
    _match(name, NAME, f"{where}.name", "a label of at most 64 letters, digits or .:/+=-")
    return EvalSet(name=name, texts=tuple(texts), samples=len(texts))


def _match(value: object, pattern: re.Pattern, where: str, what: str) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InputError(f"{where} must be {what}, not {shown(value)}")
