"""Shard streaming: source shards are fetched ahead in a window and deleted once read."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from merge_engine.synth import write_family

from .conftest import SHAPE, Family, publish_folder
from .test_publish import publish

SHARD = 40_000


def weight_bytes(root: Path) -> int:
    """Bytes of weight files under ``root``: shards, and downloads still in progress."""
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith((".safetensors", ".incomplete")):
                with contextlib.suppress(FileNotFoundError):  # deleted while we looked
                    total += os.path.getsize(os.path.join(d, f))
    return total


def test_peak_work_dir_disk_is_a_few_shards_per_model(hub, tmp_path):
    local = write_family(tmp_path / "family", SHAPE, donors=2, shard_bytes=SHARD)
    repos = ["alice/base", "alice/donor-1", "alice/donor-2"]
    for folder, repo in zip(local, repos, strict=True):
        publish_folder(hub, folder, repo)
    shards = len(list(local[0].glob("*.safetensors")))
    largest = max(f.stat().st_size for p in local for f in p.glob("*.safetensors"))
    family = Family(hub, local, repos)
    peak = []

    def sample(stage, fraction):
        peak.append(weight_bytes(tmp_path / "work"))

    publish(family, tmp_path, progress=sample, out_shard_size=SHARD)
    inputs = sum(f.stat().st_size for p in local for f in p.glob("*.safetensors"))
    models = len(repos)
    assert shards >= 5  # enough shards that keeping them all would break the bound
    assert max(peak) <= (models + 1) * 2 * largest < inputs
    assert not any((tmp_path / "work" / "sources").rglob("*.safetensors"))
