"""Shard streaming: source shards are fetched ahead in a window and deleted once read."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from merge_engine import AdapterOptions
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


def test_an_adapter_only_publication_keeps_disk_to_a_few_shards(hub, tmp_path):
    """publish adapter: output shards are deleted once factorized, and the extraction's own
    copies of the base's shards once every tensor of them was compared."""
    local = write_family(tmp_path / "family", SHAPE, donors=2, shard_bytes=SHARD)
    repos = ["alice/base", "alice/donor-1", "alice/donor-2"]
    for folder, repo in zip(local, repos, strict=True):
        publish_folder(hub, folder, repo)
    largest = max(f.stat().st_size for p in local for f in p.glob("*.safetensors"))
    inputs = sum(f.stat().st_size for p in local for f in p.glob("*.safetensors"))
    peak = []

    def sample(stage, fraction):
        peak.append(weight_bytes(tmp_path / "work"))

    result = publish(Family(hub, local, repos), tmp_path, progress=sample,
                     out_shard_size=SHARD, publish="adapter",
                     adapter=AdapterOptions(max_rank=2))
    assert result.adapter_summary.startswith("adapter: ")
    assert (tmp_path / "work" / "sources" / ".adapter-base").is_dir()  # its own copies
    assert max(peak) <= (len(repos) + 2) * 2 * largest < inputs
    left = {p.relative_to(tmp_path / "work") for p in (tmp_path / "work").rglob("*.safetensors")}
    assert left == {Path("adapter/adapter_model.safetensors")}
