"""The one checkpoint-header validator: hostile safetensors headers and index file names
are one-line source errors naming the file and the tensor, before any allocation."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from merge_engine import SourceError
from merge_engine.cli import main
from merge_engine.io.headers import read_header, shown
from merge_engine.io.weights import local_tensors
from merge_engine.synth import write_model

from .conftest import TINY, recipe_text


def write_raw(path, header: dict | bytes, data: bytes = b"") -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize("header, data, message", [
    (b"[1, 2]", b"", "header is not an object"),
    (b"{not json", b"", "bad header"),
    (b'{"w": ' + json.dumps(entry()).encode() + b', "w": ' + json.dumps(entry()).encode()
     + b"}", bytes(8), "names tensor w twice"),
    ({"w": entry(dtype="F4")}, bytes(8), "tensor w in .* unsupported dtype F4"),
    ({"w": entry(shape=(-2,))}, bytes(8), "tensor w in .* shape that is not a list of non-neg"),
    ({"w": entry(shape=(True, 2))}, bytes(8), "tensor w in .* shape"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": "0-8"}}, bytes(8),
     "tensor w in .* needs dtype, shape and data_offsets"),
    ({"w": [1, 2]}, bytes(8), "tensor w in .* needs dtype, shape and data_offsets"),
    ({"w": entry(offsets=(8, 0))}, bytes(8), r"tensor w in .* bad data offsets \[8, 0\]"),
    ({"w": entry(offsets=(0, 10**13))}, bytes(8), "tensor w in .* has 10000000000000 bytes"),
    ({"w": entry(shape=(10**12,), offsets=(0, 4 * 10**12))}, bytes(8),
     "tensor w in .* ends at byte 4000000000000, past the end of its data"),
    ({"w": entry(offsets=(0.0, 8))}, bytes(8), "tensor w in .* bad data offsets"),
    ({"a": entry(), "b": entry(offsets=(4, 12))}, bytes(12), "tensor b in .* overlaps tensor a"),
    ({"a": entry(), "b": entry(offsets=(12, 20))}, bytes(20), "tensor b in .* leaving a gap"),
    ({"a": entry()}, bytes(12), "4 bytes of data after its last tensor"),
    ({"a": entry(), "__metadata__": {"k": 1}}, bytes(8), "__metadata__ that is not a map"),
])
def test_hostile_safetensors_headers_are_refused(tmp_path, header, data, message):
    path = tmp_path / "model.safetensors"
    write_raw(path, header, data)
    with pytest.raises(SourceError, match=message) as caught:
        read_header(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_huge_header_length_is_refused_unread(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10**13) + b"{}")
    with pytest.raises(SourceError, match="header of 10000000000000 bytes"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(SourceError, match="header of 1000 bytes in a file of 10"):
        read_header(path)


def test_a_hostile_header_is_exit_2_in_one_line(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    write_raw(model / "model.safetensors", {"lm_head.weight": entry(offsets=(0, 10**13))},
              bytes(8))
    (tmp_path / "r.yml").write_text(recipe_text("linear", None, [(model, {"weight": 1.0})]))
    assert main(["validate", str(tmp_path / "r.yml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tensor lm_head.weight in" in err


@pytest.mark.parametrize("name", [
    "../other/model.safetensors", "/etc/model.safetensors", "a\\..\\model.safetensors",
    "%2e%2e/model.safetensors", "./model.safetensors", "shards//model.safetensors",
    "a/../model.safetensors", "model.safetensors/..", "", "config.json", 7,
    "model\x00.safetensors",
])
def test_index_file_names_must_be_plain_names_inside_the_model(tmp_path, name):
    model = write_model(tmp_path / "m", TINY, shard_bytes=20_000)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = name
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SourceError, match=r"model.safetensors.index.json names weight file "
                                          r".*not a plain .safetensors file name") as caught:
        local_tensors(model, sorted(p.name for p in model.iterdir()))
    assert str(model) in str(caught.value)


def test_a_tensor_in_two_shards_is_refused(tmp_path):
    for i in (1, 2):
        save_file({"w": torch.ones(2), f"only{i}": torch.ones(1)},
                  tmp_path / f"model-{i}.safetensors")
    index = {"weight_map": {"w": "model-1.safetensors", "only2": "model-2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SourceError, match="has tensor w in both model-1.safetensors and "
                                          "model-2.safetensors"):
        local_tensors(tmp_path, sorted(p.name for p in tmp_path.iterdir()))


def test_names_from_files_are_shown_on_one_line_whatever_they_are():
    assert shown("model.layers.0.weight") == "model.layers.0.weight"
    assert shown("a\nb") == "'a\\nb'"
    assert shown(10**5000) == "<int too large to show>"
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert shown(deep) == "<list too large to show>"
    assert len(shown("x" * 10_000)) == 200
