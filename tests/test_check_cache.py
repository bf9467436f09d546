"""The sources' perplexity cache: a remerge measures only the sources whose files changed;
a changed weight file, tokenizer or config gets a new key, so its old figure is never
used; a hostile or damaged entry is ignored and measured again."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from merge_engine import CheckOptions, open_source, run_checks, run_merge
from merge_engine.check import cache
from merge_engine.cli import main
from merge_engine.io import entries as stored
from merge_engine.recipe.refs import ModelRef

from .checkutil import tokenized_family
from .test_check import merge_recipe, sources_of


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """(family, a good merge of it, checked without a cache)."""
    root = tmp_path_factory.mktemp("cache")
    paths = tokenized_family(root / "family")
    run_merge(merge_recipe(paths), root / "out", checks=CheckOptions(behaviour=False))
    return paths, root / "out"


@pytest.fixture
def copied(family, tmp_path):
    """A private copy of the family (so files may change) and its merge."""
    paths = [Path(shutil.copytree(p, tmp_path / p.name)) for p in family[0]]
    out = tmp_path / "out"
    run_merge(merge_recipe(paths), out, checks=CheckOptions(behaviour=False))
    return paths, out


def source(path: Path):
    return open_source(ModelRef(str(path)))


def entries(cache_dir: Path) -> dict[str, dict]:
    """The cache's entries by source name."""
    return {(e := json.loads(p.read_text()))["source"]: e | {"path": p}
            for p in cache_dir.glob("*.json") if p.is_file()}


def poison(entry: dict, value: float = 42.0) -> None:
    """Replace an entry's figure, keeping its key: a later run that shows ``value`` used
    the entry."""
    entry["path"].write_text(json.dumps({"key": entry["key"], "source": entry["source"],
                                         "perplexity": value}))


def test_a_rerun_uses_every_cached_figure(copied, tmp_path):
    paths, out = copied
    options = CheckOptions(cache_dir=tmp_path / "cache")
    first = run_checks(out, sources_of(out), options=options)
    found = entries(tmp_path / "cache")
    assert set(found) == {str(p) for p in paths}
    for figure in first.sources:
        assert found[figure.name]["perplexity"] == figure.perplexity
    for entry in found.values():
        poison(entry)
    again = run_checks(out, sources_of(out), options=options)
    assert [s.perplexity for s in again.sources] == [42.0, 42.0, 42.0]
    assert again.perplexity == first.perplexity  # the merge itself is always measured


@pytest.mark.parametrize("change", ["rewritten weights", "same bytes copied in",
                                    "tokenizer", "config"])
def test_a_changed_source_gets_a_new_key_and_its_old_figure_is_never_used(copied, tmp_path,
                                                                         change):
    paths, out = copied
    donor = paths[1]
    options = CheckOptions(cache_dir=tmp_path / "cache")
    first = run_checks(out, sources_of(out), options=options)
    before = cache.key(source(donor), "cpu")
    for entry in entries(tmp_path / "cache").values():
        poison(entry)
    weights = donor / "model.safetensors"
    if change == "rewritten weights":
        tensors = load_file(weights)
        tensors["model.layers.0.mlp.up_proj.weight"] *= 3
        stat = weights.stat()
        save_file(tensors, weights)
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime kept
    elif change == "same bytes copied in":
        shutil.copyfile(weights, donor / "copy")
        os.replace(donor / "copy", weights)
    elif change == "tokenizer":
        data = json.loads((donor / "tokenizer.json").read_text())
        data["model"]["vocab"] = {w: (i + 1) % len(data["model"]["vocab"])
                                  for w, i in data["model"]["vocab"].items()}
        (donor / "tokenizer.json").write_text(json.dumps(data))
    else:
        config = json.loads((donor / "config.json").read_text())
        config["rms_norm_eps"] = 0.5
        (donor / "config.json").write_text(json.dumps(config))
    assert cache.key(source(donor), "cpu") != before
    again = run_checks(out, sources_of(out), options=options)
    figures = {s.name: s.perplexity for s in again.sources}
    assert figures[str(paths[0])] == figures[str(paths[2])] == 42.0
    assert figures[str(donor)] != 42.0
    if change == "same bytes copied in":
        assert figures[str(donor)] == first.sources[1].perplexity
    assert cache.read(tmp_path / "cache", cache.key(source(donor), "cpu")) == figures[str(donor)]
    assert cache.read(tmp_path / "cache", before) == 42.0  # still there, never used


def test_the_key_follows_what_the_figure_depends_on(family):
    paths = family[0]
    key = cache.key(source(paths[0]), "cpu")
    assert key == cache.key(source(paths[0]), "cpu")
    assert key != cache.key(source(paths[1]), "cpu")
    assert key != cache.key(source(paths[0]), "cuda:0")
    assert cache.key(source(paths[0]), "cuda:0") == cache.key(source(paths[0]), "cuda:1")


HOSTILE = {
    "not JSON": b"{\"key\": ",
    "a list": b"[1, 2]",
    "another key": None,
    "no figure": None,
    "a string figure": None,
    "true": None,
    "NaN": b"NaN",
    "infinite": None,
    "below one": None,
    "huge": None,
    "binary": b"\xff\xfe\x00garbage",
}


def hostile_bytes(kind: str, key: str) -> bytes:
    entry = {"key": key, "source": "x", "perplexity": 50.0}
    if kind == "another key":
        entry["key"] = key + " "
    elif kind == "no figure":
        del entry["perplexity"]
    elif kind == "a string figure":
        entry["perplexity"] = "50"
    elif kind == "true":
        entry["perplexity"] = True
    elif kind == "NaN":
        return json.dumps(entry | {"perplexity": float("nan")}).encode()
    elif kind == "infinite":
        return json.dumps(entry | {"perplexity": float("inf")}).encode()
    elif kind == "below one":
        entry["perplexity"] = 0.5
    elif kind == "huge":
        entry["padding"] = "x" * (stored.MAX_ENTRY_BYTES + 1)
    else:
        return HOSTILE[kind]
    return json.dumps(entry).encode()


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_entry_is_ignored(family, tmp_path, kind):
    key = cache.key(source(family[0][0]), "cpu")
    cache.write(tmp_path, key, "base", 50.0)
    assert cache.read(tmp_path, key) == 50.0
    stored.entry_path(tmp_path, key).write_bytes(hostile_bytes(kind, key))
    assert cache.read(tmp_path, key) is None


def test_a_hostile_entry_is_measured_again_and_replaced(copied, tmp_path):
    paths, out = copied
    options = CheckOptions(cache_dir=tmp_path / "cache")
    first = run_checks(out, sources_of(out), options=options)
    found = entries(tmp_path / "cache")
    for entry in found.values():
        entry["path"].write_text(json.dumps({"key": entry["key"], "perplexity": -3}))
    base = found[str(paths[0])]["path"]
    base.unlink()
    base.mkdir()  # cannot be read nor replaced: the figure is measured, not cached
    again = run_checks(out, sources_of(out), options=options)
    assert [s.perplexity for s in again.sources] == [s.perplexity for s in first.sources]
    assert base.is_dir()
    assert {e["source"]: e["perplexity"] for e in entries(tmp_path / "cache").values()} == {
        s.name: s.perplexity for s in first.sources[1:]}


def test_cli_keeps_the_figures_in_the_perplexity_cache(copied, tmp_path, capsys):
    paths, out = copied
    assert main(["check", str(out), "--perplexity-cache", str(tmp_path / "cache")]) == 0
    first = capsys.readouterr().out
    found = entries(tmp_path / "cache")
    assert set(found) == {str(p) for p in paths}
    for entry in found.values():
        assert f"perplexity of {entry['source']}: {entry['perplexity']:.2f}" in first
        poison(entry)
    assert main(["check", str(out), "--perplexity-cache", str(tmp_path / "cache")]) == 0
    assert capsys.readouterr().out.count(": 42.00\n") == 3
