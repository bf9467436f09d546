"""Scoring the source models of a merge, for reference, with their scores cached.

A Hub source pinned to a commit SHA has the same score on the same texts every time: its
score on a set is kept in ``cache_dir`` under a key of (repo@SHA, the set's identity: the
dataset at its SHA or the texts' digest, the token limit), so a remerge or every variant
of a sweep scores each source once. Local sources are scored each time (their files may
change in place); LoRA sources are not scored.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

from merge_engine.errors import MergeEngineError
from merge_engine.evaluate.score import MAX_LENGTH, EvalScore, SetTexts, score_model
from merge_engine.evaluate.table import EvalRow
from merge_engine.io.checkpoint import INDEX_NAME
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
    paths = {s.set.name: _cache_path(source, s, cache_dir, max_length) for s in sets}
    for name, path in paths.items():
        if path is not None and path.is_file():
            row.scores[name] = EvalScore(**json.loads(path.read_text()))
    missing = [s for s in sets if s.set.name not in row.scores]
    if not missing:
        return row
    try:
        for score in _score_source(source, missing, device, max_length):
            row.scores[score.set] = score
            _store(paths[score.set], score)
    except MergeEngineError as e:  # e.g. remote code, or too large for this device
        row.note = f"not scored ({e})"
    row.scores = {s.set.name: row.scores[s.set.name] for s in sets if s.set.name in row.scores}
    return row


def _cache_path(source: Source, texts: SetTexts, cache_dir: Path | None,
                max_length: int) -> Path | None:
    if cache_dir is None or source.revision is None:
        return None
    key = f"{source.pinned}\n{texts.identity}\n{max_length}"
    return cache_dir / f"eval-{hashlib.sha256(key.encode()).hexdigest()}.json"


def _store(path: Path | None, score: EvalScore) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    partial.write_text(json.dumps(score.to_json()))
    partial.replace(path)  # atomic: concurrent workers write the same value


def _score_source(source: Source, sets: list[SetTexts], device: str,
                  max_length: int) -> list[EvalScore]:
    """Fetch the files the model needs (weights are removed again when the source
    streams its files) and score it."""
    weights = sorted({m.file for m in source.tensors.values()})
    names = ["config.json", "tokenizer.json", *weights]
    if INDEX_NAME in source.files:
        names.append(INDEX_NAME)
    fetched = [source.fetch(n) for n in names]
    try:
        return score_model(fetched[0].parent, sets, device=device, max_length=max_length)
    finally:
        if source.streams_files:
            for path in fetched[2:]:
                path.unlink(missing_ok=True)
