"""Merges from Hub references use the shared localhub fixtures and a published family."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from merge_engine.synth import LlamaShape, write_family
from tests.hubtools import Hub, hf_env, hub  # noqa: F401

SHAPE = LlamaShape(hidden=64, intermediate=128, layers=2, vocab=256, heads=4, kv_heads=2)
"""Big enough that each file is larger than a safetensors header read."""


@dataclass
class Family:
    hub: Hub
    local: list[Path]
    repos: list[str]

    def recipe(self, weights=(1.0, 0.3), method="task_arithmetic", refs=None) -> str:
        base, *donors = refs or self.repos
        lines = [f"merge_method: {method}", f"base_model: {base}", "models:"]
        for repo, w in zip(donors, weights, strict=True):
            lines += [f"  - model: {repo}", "    parameters:", f"      weight: {w}"]
        return "\n".join(lines) + "\n"


def publish_folder(server: Hub, folder: Path, repo_id: str, license: str = "apache-2.0") -> str:
    api = server.api(repo_id.split("/")[0])
    api.create_repo(repo_id)
    (folder / "README.md").write_text(f"---\nlicense: {license}\n---\n# {repo_id}\n")
    return api.upload_folder(folder_path=folder, repo_id=repo_id).oid


@pytest.fixture
def family(hub: Hub, tmp_path: Path) -> Family:  # noqa: F811 - the fixture from hubtools
    """alice/base, alice/donor-1, alice/donor-2 on localhub, sharded (2+ files each)."""
    local = write_family(tmp_path / "family", SHAPE, donors=2, delta_scale=0.01,
                         shard_bytes=150_000)
    repos = ["alice/base", "alice/donor-1", "alice/donor-2"]
    for folder, repo in zip(local, repos, strict=True):
        publish_folder(hub, folder, repo)
    return Family(hub, local, repos)
