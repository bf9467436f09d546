"""Small JSON entries kept between runs under a key (the checks' source perplexities, the
evaluation's source scores).

An entry is one JSON file named by the SHA-256 of its key; the key is stored in the entry
and must match on reading, so a file renamed, damaged, oversized or written by something
else is never taken for a figure. Writes are atomic (concurrent workers write the same
value), and a directory that cannot be written is left as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from pathlib import Path

MAX_ENTRY_BYTES = 64 * 1024


def entry_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def read_entry(cache_dir: Path, key: str) -> dict | None:
    """The fields stored under ``key`` (without the key); None when there is no valid
    entry."""
    file = entry_path(cache_dir, key)
    try:
        if not file.is_file() or file.stat().st_size > MAX_ENTRY_BYTES:
            return None
        entry = json.loads(file.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    return {k: v for k, v in entry.items() if k != "key"}


def write_entry(cache_dir: Path, key: str, fields: dict) -> None:
    """Store ``fields`` under ``key``, atomically."""
    file = entry_path(cache_dir, key)
    partial = file.with_suffix(f".{uuid.uuid4().hex}.partial")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({**fields, "key": key}))
        partial.replace(file)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
