"""Sources' perplexities kept between merges: a source's perplexity depends only on its
files and the fixed check text, so a remerge measures only the sources that changed.

Entries are :mod:`merge_engine.io.entries` (JSON files named by the key's SHA-256, the key
stored inside and checked on reading). The key holds what the figure depends on:

- a Hub source: ``repo@commit SHA`` (a commit never changes);
- a local directory: its resolved path, the SHA-256 of ``config.json`` and
  ``tokenizer.json``, and for each weight file (and the index) its size, modification and
  change times (``st_mtime_ns``, ``st_ctime_ns``, the latter set by the kernel on any
  write), inode and the SHA-256 of its safetensors header; a weight file written in place
  therefore gets a new key and its old entry is never used;
- the check text, the token limit, the device type and the transformers version.

An entry that is not a small JSON object with that key and a finite perplexity >= 1 is
ignored (measured again and overwritten). LoRA sources are not measured, so not cached.
"""

from __future__ import annotations

import hashlib
import math
from importlib import metadata
from pathlib import Path

from merge_engine.check import behaviour
from merge_engine.errors import SourceError
from merge_engine.io.checkpoint import INDEX_NAME, header_size
from merge_engine.io.entries import read_entry, write_entry
from merge_engine.io.sources import Source


def key(source: Source, device: str) -> str | None:
    """The text an entry for ``source`` measured on ``device`` is stored under (None: not
    cacheable: a LoRA source, or a local one whose files cannot be read)."""
    if source.adapter is not None:
        return None
    if source.revision is not None:
        where = f"hub {source.pinned}"
    elif source.local_dir is not None:
        try:
            where = _local_fingerprint(source)
        except (OSError, SourceError):
            return None
    else:
        return None
    try:
        version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        version = "none"
    return "\n".join([where, f"device {device.split(':')[0]}", f"transformers {version}",
                      f"max tokens {behaviour.MAX_TOKENS}", f"text {behaviour.TEXT}"])


def _local_fingerprint(source: Source) -> str:
    directory = source.local_dir.resolve()
    lines = [f"local {directory}"]
    for name in ("config.json", "tokenizer.json"):
        digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        lines.append(f"{name} sha256 {digest}")
    weights = sorted({m.file for m in source.tensors.values()})
    if INDEX_NAME in source.files:
        weights.append(INDEX_NAME)
    for name in weights:
        path = directory / name
        st = path.stat()
        line = (f"{name} size {st.st_size} mtime {st.st_mtime_ns} ctime {st.st_ctime_ns} "
                f"inode {st.st_ino}")
        if name.endswith(".safetensors"):
            line += f" header sha256 {_header_digest(path)}"
        lines.append(line)
    return "\n".join(lines)


def _header_digest(path: Path) -> str:
    n = header_size(path)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(8 + n)).hexdigest()


def read(cache_dir: Path, entry_key: str) -> float | None:
    """The cached perplexity under ``entry_key``; None when there is no valid entry."""
    entry = read_entry(cache_dir, entry_key)
    value = entry.get("perplexity") if entry is not None else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 1.0:
        return None
    return float(value)


def write(cache_dir: Path, entry_key: str, name: str, perplexity: float) -> None:
    """Store an entry (see :func:`merge_engine.io.entries.write_entry`)."""
    write_entry(cache_dir, entry_key, {"source": name, "perplexity": perplexity})
