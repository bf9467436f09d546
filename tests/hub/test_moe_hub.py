"""An MoE recipe over Hub repos (localhub): every source pinned, the base fetched to run
the prompts (``gate_mode: hidden``), the same output as from the local directories."""

from __future__ import annotations

import torch

from merge_engine import HubAccess, run_merge
from tests.hub.conftest import publish_folder
from tests.hubtools import USERS
from tests.test_moe import recipe, write_dense
from tests.tfmodels import tensors


def test_hub_sources_give_the_local_merge_pinned(hub, tmp_path):
    local = [write_dense(tmp_path / name, seed) for seed, name in enumerate(("base", "x", "y"))]
    repos = ["alice/base", "alice/x", "alice/y"]
    shas = [publish_folder(hub, folder, repo) for folder, repo in zip(local, repos, strict=True)]
    prompts = [(["w1 w2"], ["w3"]), (["w4"], [])]

    def moe(refs) -> str:
        return recipe(refs[0], [(refs[1], *prompts[0]), (refs[2], *prompts[1])], "hidden")

    access = HubAccess(endpoint=hub.url, token=USERS["alice"], cache_dir=tmp_path / "cache",
                       stream_dir=tmp_path / "stream")
    result = run_merge(moe(repos), tmp_path / "hub-out", device="cpu", random_seed=0,
                       access=access)
    run_merge(moe(local), tmp_path / "local-out", device="cpu", random_seed=0)
    got, want = tensors(tmp_path / "hub-out"), tensors(tmp_path / "local-out")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[n], want[n]) for n in got)
    assert [m.revision for m in result.models] == shas
    card = (tmp_path / "hub-out" / "README.md").read_text()
    for repo, sha in zip(repos[1:], shas[1:], strict=True):
        assert f"{repo}/commit/{sha}" in card
        assert f"source_model: {repo}@{sha}" in card
