"""safetensors reading and writing: headers, ranged reads, sharded layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_engine.errors import SourceError
from merge_engine.io.checkpoint import (
    INDEX_NAME,
    FileReader,
    OutTensor,
    ShardedWriter,
    shard_layout,
)
from merge_engine.io.headers import read_header
from merge_engine.io.weights import weight_layout


def test_read_header_matches_safetensors(tmp_path):
    tensors = {"a": torch.randn(5, 3), "b": torch.arange(7, dtype=torch.int64),
               "c": torch.randn(4, 2).to(torch.bfloat16)}
    save_file(tensors, tmp_path / "m.safetensors")
    header = read_header(tmp_path / "m.safetensors")
    assert {n: (m.dtype, m.shape) for n, m in header.items()} == {
        "a": ("F32", (5, 3)), "b": ("I64", (7,)), "c": ("BF16", (4, 2))}


def test_ranged_read_of_rows(tmp_path):
    value = torch.randn(10, 6).to(torch.bfloat16)
    save_file({"w": value, "x": torch.ones(3)}, tmp_path / "m.safetensors")
    meta = read_header(tmp_path / "m.safetensors")["w"]
    reader = FileReader()
    buf = torch.empty(1000, dtype=torch.uint8)
    rows = reader.read(tmp_path / "m.safetensors", meta, 3, 4, buf, "w")
    assert torch.equal(rows, value[3:7])
    reader.close()


def test_truncated_file_is_a_clear_error(tmp_path):
    save_file({"w": torch.randn(100, 10)}, tmp_path / "m.safetensors")
    meta = read_header(tmp_path / "m.safetensors")["w"]
    with open(tmp_path / "m.safetensors", "r+b") as f:
        f.truncate(200)
    with pytest.raises(SourceError, match="truncated"):
        FileReader().read(tmp_path / "m.safetensors", meta, 0, 100,
                          torch.empty(4000, dtype=torch.uint8), "w")


def test_sharded_writer_round_trip(tmp_path):
    tensors = {f"t{i}": torch.randn(16, 8) for i in range(5)}  # 512 bytes each
    specs = [OutTensor(n, torch.float32, tuple(t.shape)) for n, t in tensors.items()]
    writer = ShardedWriter(tmp_path, specs, max_shard_bytes=1100)
    for name, t in tensors.items():
        writer.write(name, t[:10])
        writer.write(name, t[10:])
    files = writer.close()
    assert [f.name for f in files] == [
        "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors", INDEX_NAME]
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == 5 * 512
    assert index["weight_map"]["t4"] == "model-00003-of-00003.safetensors"
    loaded = {}
    for f in files[:-1]:
        loaded.update(load_file(f))
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t)


def test_single_shard_has_no_index(tmp_path):
    writer = ShardedWriter(tmp_path, [OutTensor("w", torch.float16, (3,))], 10**9)
    writer.write("w", torch.ones(3, dtype=torch.float16))
    assert [f.name for f in writer.close()] == ["model.safetensors"]
    assert torch.equal(load_file(tmp_path / "model.safetensors")["w"], torch.ones(3).half())


def test_oversized_tensor_gets_its_own_shard():
    specs = [OutTensor("a", torch.float32, (10,)), OutTensor("b", torch.float32, (100,)),
             OutTensor("c", torch.float32, (10,))]
    assert [[t.name for t in s] for s in shard_layout(specs, 100)] == [["a"], ["b"], ["c"]]


def test_safetensors_wins_over_pickle_and_other_pickles_are_refused():
    assert weight_layout(["model.safetensors", "pytorch_model.bin"], "m").suffix == ".safetensors"
    assert weight_layout(["config.json", "pytorch_model.bin"], "m").files == ["pytorch_model.bin"]
    with pytest.raises(SourceError, match="model.ckpt is not one of"):
        weight_layout(["config.json", "model.ckpt"], "org/model")
