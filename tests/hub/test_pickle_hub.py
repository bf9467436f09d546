"""Pickle (.bin) sources on the Hub: header-only preflight from exact range requests,
streamed shards deleted after use, and merges bit-identical to the safetensors family."""

from __future__ import annotations

import json
import zipfile

import pytest

from merge_engine import HubAccess, SourceError, validate
from merge_engine.synth import save_as_bin
from tests.hubtools import USERS
from tests.pickles import malicious

from .conftest import Family, publish_folder
from .test_publish import download, publish

BIN_REPOS = ["alice/bin-base", "alice/bin-donor-1", "alice/bin-donor-2"]


@pytest.fixture
def bin_family(family: Family, tmp_path) -> Family:
    """The family's models again, as sharded pytorch_model-*.bin (and nothing else)."""
    local = [save_as_bin(p, tmp_path / "bins" / p.name) for p in family.local]
    for folder, repo in zip(local, BIN_REPOS, strict=True):
        publish_folder(family.hub, folder, repo)
    return Family(family.hub, local, BIN_REPOS)


def weight_bytes(path) -> int:
    """Bytes of tensor data in a torch zip checkpoint (its storage entries)."""
    with zipfile.ZipFile(path) as z:
        return sum(i.file_size for i in z.infolist() if "/data/" in i.filename)


def test_preflight_reads_no_weight_bytes(bin_family, tmp_path):
    bin_family.hub.reset_stats()
    access = HubAccess(endpoint=bin_family.hub.url, token=USERS["alice"],
                       cache_dir=tmp_path / "cache")
    plan = validate(bin_family.recipe(), access=access)
    sent = bin_family.hub.stats()["download"]["files"]
    files = sorted(bin_family.local[0].glob("*.bin"))
    assert len(files) >= 2 and len(plan.tasks) > 0
    for model, repo in zip(bin_family.local, BIN_REPOS, strict=True):
        for f in model.glob("*.bin"):
            read = sent[f"{repo}/{f.name}"]
            assert 0 < read <= f.stat().st_size - weight_bytes(f), (repo, f.name)


def test_bin_repos_merge_and_stream_like_safetensors(bin_family, family, tmp_path):
    publish(bin_family, tmp_path / "a", repo="alice/merged-bin")
    assert not any((tmp_path / "a" / "work" / "sources").rglob("*.bin"))
    publish(family, tmp_path / "b", repo="alice/merged-safe")
    got = download(family, tmp_path / "a", repo="alice/merged-bin")
    want = download(family, tmp_path / "b", repo="alice/merged-safe")
    names = sorted(p.name for p in want.glob("*.safetensors"))
    assert names and names == sorted(p.name for p in got.glob("*.safetensors"))
    for name in names:
        assert (got / name).read_bytes() == (want / name).read_bytes()


def test_hostile_hub_sources_fail_in_preflight(family, tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "pwned"
    (evil / "pytorch_model.bin").write_bytes(malicious(marker))
    publish_folder(family.hub, evil, "alice/evil")
    bad = tmp_path / "bad-index"
    bad.mkdir()
    for f in family.local[1].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../donor-2/model-00001-of-00002.safetensors"
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    publish_folder(family.hub, bad, "alice/bad-index")
    access = HubAccess(endpoint=family.hub.url, token=USERS["alice"],
                       cache_dir=tmp_path / "cache")
    with pytest.raises(SourceError, match=r"pytorch_model.bin in alice/evil@\w+ names the "
                                          r"global posix.system"):
        validate(family.recipe(refs=["alice/base", "alice/donor-1", "alice/evil"]),
                 access=access)
    assert not marker.exists()
    with pytest.raises(SourceError, match=r"alice/bad-index: model.safetensors.index.json "
                                          r"names weight file \.\./donor-2/"):
        validate(family.recipe(refs=["alice/base", "alice/donor-1", "alice/bad-index"]),
                 access=access)
