"""The intermediates of multi-stage recipes, kept between jobs in the bot's home.

    cache = StageDirCache(settings.stage_cache_dir, settings.stage_cache_bytes)

An entry is one stage's output directory under its key (merge_engine's ``stage_key``:
sha256 of the stage's text, its sources' pinned SHAs and the keys of the stages it
reads), so an entry is never stale: when a source moves, the stages that read it get new
keys. Contracts:
- ``store`` links (or, across file systems, copies) the files into ``.tmp-*`` and renames
  that to the key, so a reader never sees half an entry; then the least recently used
  entries are removed until the cache is within ``max_bytes``. An output larger than
  ``max_bytes`` is not kept.
- ``fetch`` links the entry's files into the job's own directory and marks the entry
  used, so removing the entry later (by eviction in another worker) cannot take the files
  from under a running merge.
- Failures to keep or read an entry are logged, never raised: the stage is merged again.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def _link_tree(src: Path, dest: Path) -> None:
    """``dest`` (new) with a hard link to every file of ``src`` (a copy across devices)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dest, copy_function=link)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclass(frozen=True)
class StageDirCache:
    """See the module docstring."""

    root: Path
    max_bytes: int

    def fetch(self, key: str, dest: Path) -> bool:
        entry = self.root / key
        try:
            if not entry.is_dir():
                return False
            os.utime(entry)
            _link_tree(entry, dest)
            return True
        except OSError as exc:  # evicted meanwhile, or a disk problem: merge it again
            log.warning("stage cache: could not read %s: %s", key, exc)
            shutil.rmtree(dest, ignore_errors=True)
            return False

    def store(self, key: str, src: Path) -> None:
        try:
            size = _size(src)
            if size > self.max_bytes or (self.root / key).is_dir():
                return
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".tmp-{uuid.uuid4().hex}"
            _link_tree(src, tmp)
            try:
                tmp.rename(self.root / key)
                os.utime(self.root / key)  # used now (copytree copied the source's times)
            except OSError:  # another worker kept the same key first
                shutil.rmtree(tmp, ignore_errors=True)
            self._evict()
        except OSError as exc:
            log.warning("stage cache: could not keep %s: %s", key, exc)

    def keys(self) -> list[str]:
        """The entries, least recently used first."""
        if not self.root.is_dir():
            return []
        entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return [p.name for p in sorted(entries, key=lambda p: p.stat().st_mtime)]

    def _evict(self) -> None:
        sizes = {key: _size(self.root / key) for key in self.keys()}
        total = sum(sizes.values())
        for key, size in sizes.items():
            if total <= self.max_bytes:
                break
            shutil.rmtree(self.root / key, ignore_errors=True)
            total -= size
        for tmp in self.root.glob(".tmp-*"):  # a crashed store's, an hour old
            if time.time() - tmp.stat().st_mtime > 3600:
                shutil.rmtree(tmp, ignore_errors=True)
