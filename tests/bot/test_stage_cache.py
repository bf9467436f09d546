"""The stage cache: whole entries or none, least recently used dropped beyond the size
limit, and fetched files that outlive their entry."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bot.stage_cache import StageDirCache


def output(root: Path, name: str, size: int) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(bytes([len(name)]) * size)
    (directory / "config.json").write_text("{}")
    return directory


def test_least_recently_used_entries_go_first(tmp_path):
    cache = StageDirCache(tmp_path / "cache", max_bytes=2_500)
    for key in ("a", "b"):
        cache.store(key, output(tmp_path / "src", key, 1_000))
        time.sleep(0.02)  # distinct mtimes
    assert cache.fetch("a", tmp_path / "got-a")  # a is now the most recently used
    time.sleep(0.02)
    cache.store("c", output(tmp_path / "src", "c", 1_000))
    assert cache.keys() == ["a", "c"]
    assert not cache.fetch("b", tmp_path / "got-b") and not (tmp_path / "got-b").exists()


def test_fetched_files_are_links_that_outlive_the_entry(tmp_path):
    cache = StageDirCache(tmp_path / "cache", max_bytes=10_000)
    cache.store("k", output(tmp_path / "src", "k", 500))
    dest = tmp_path / "job" / "mid"
    assert cache.fetch("k", dest)
    entry = tmp_path / "cache" / "k" / "model.safetensors"
    assert os.stat(dest / "model.safetensors").st_ino == os.stat(entry).st_ino
    cache.store("big", output(tmp_path / "src", "big", 9_900))  # evicts k
    assert cache.keys() == ["big"]
    assert (dest / "model.safetensors").read_bytes() == bytes([1]) * 500


def test_an_output_over_the_limit_is_not_kept(tmp_path):
    cache = StageDirCache(tmp_path / "cache", max_bytes=100)
    cache.store("k", output(tmp_path / "src", "k", 1_000))
    assert cache.keys() == [] and not list((tmp_path / "cache").glob(".tmp-*"))
