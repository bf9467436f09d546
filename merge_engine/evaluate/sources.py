"""Scoring the source models of a merge, for reference, with their scores cached.

A Hub source pinned to a commit SHA has the same score on the same texts every time: its
score on a set is kept in ``cache_dir`` (:mod:`merge_engine.io.entries`) under a key of
(repo@SHA, the set's identity: the dataset at its SHA or the texts' digest, the token
limit), so a remerge or every variant
of a sweep scores each source once. Local sources are scored each time (their files may
change in place); LoRA sources are not scored.
"""

from __future__ import annotations

import math
from pathlib import Path

from merge_engine.errors import MergeEngineError
from merge_engine.evaluate.score import MAX_LENGTH, EvalScore, SetTexts, score_model
from merge_engine.evaluate.table import EvalRow
from merge_engine.io.entries import read_entry, write_entry
from merge_engine.io.sources import Source


def evaluate_sources(sources: list[Source], sets: list[SetTexts], *, device: str = "auto",
                     cache_dir: Path | None = None,
                     max_length: int = MAX_LENGTH) -> list[EvalRow]:
    """A ``source`` row per source (base first, as given), scored on ``sets``."""
    return [_source_row(s, sets, device, cache_dir, max_length) for s in sources]


def _source_row(source: Source, sets: list[SetTexts], device: str, cache_dir: Path | None,
                max_length: int) -> EvalRow:
    row = EvalRow(label=source.name, kind="source", revision=source.revision)
    if source.adapter is not None:
        row.note = "not scored (LoRA source)"
        return row
    if "tokenizer.json" not in source.files:
        row.note = "not scored (no tokenizer.json)"
        return row
    keys = {s.set.name: _cache_key(source, s, max_length) for s in sets}
    for name, key in keys.items():
        if (score := _cached(cache_dir, key, name)) is not None:
            row.scores[name] = score
    missing = [s for s in sets if s.set.name not in row.scores]
    if not missing:
        return row
    try:
        for score in _score_source(source, missing, device, max_length):
            row.scores[score.set] = score
            if cache_dir is not None and keys[score.set] is not None:
                write_entry(cache_dir, keys[score.set], score.to_json())
    except MergeEngineError as e:  # e.g. remote code, or too large for this device
        row.note = f"not scored ({e})"
    row.scores = {s.set.name: row.scores[s.set.name] for s in sets if s.set.name in row.scores}
    return row


def _cache_key(source: Source, texts: SetTexts, max_length: int) -> str | None:
    """What a source's score on a set depends on (None: a local source, not cached)."""
    if source.revision is None:
        return None
    return f"evaluation\n{source.pinned}\n{texts.identity}\n{max_length}"


def _cached(cache_dir: Path | None, key: str | None, name: str) -> EvalScore | None:
    """The stored score under ``key``; None when there is no valid one (a damaged or
    foreign entry is scored again and overwritten)."""
    if cache_dir is None or key is None:
        return None
    fields = read_entry(cache_dir, key)
    try:
        score = EvalScore(**fields) if fields is not None else None
    except TypeError:
        return None
    numbers = (score.nll, score.perplexity) if score is not None else ()
    if score is None or score.set != name or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            for x in numbers) or not isinstance(score.tokens, int) or score.tokens < 1:
        return None
    return score


def _score_source(source: Source, sets: list[SetTexts], device: str,
                  max_length: int) -> list[EvalScore]:
    with source.model_files() as directory:
        return score_model(directory, sets, device=device, max_length=max_length)
