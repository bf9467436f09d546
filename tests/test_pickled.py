"""Pickle (torch zip) checkpoints: read without running code, bit-identical to safetensors,
and every malformed or hostile file a one-line exit 2."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from merge_engine import SourceError, run_merge
from merge_engine.cli import main
from merge_engine.io.pickled import ALLOWED_GLOBALS
from merge_engine.io.weights import read_bin
from merge_engine.synth import save_as_bin, write_family

from .conftest import TINY, load_model, recipe_text
from .pickles import entries, malicious, patch_directory_offset, rezip, saved, zip64


def bin_file(tmp_path, data: bytes, name="pytorch_model.bin"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """The same family as sharded safetensors and as sharded pickle checkpoints."""
    root = tmp_path_factory.mktemp("pickled")
    safe = write_family(root / "safe", TINY, donors=2, delta_scale=0.01, shard_bytes=8_000)
    bins = [save_as_bin(p, root / "bin" / p.name) for p in safe]
    return safe, bins


def test_bin_family_is_laid_out_as_transformers_writes_it(families):
    safe, bins = families
    names = sorted(p.name for p in bins[0].iterdir())
    assert "pytorch_model.bin.index.json" in names and "config.json" in names
    assert not any(n.endswith(".safetensors") for n in names)
    index = json.loads((bins[0] / "pytorch_model.bin.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(list(safe[0].glob("*.safetensors")))


@pytest.mark.parametrize("method, params", [
    ("task_arithmetic", {"weight": 0.7}),
    ("ties", {"weight": 1.0, "density": 0.5}),
])
def test_bin_and_safetensors_families_merge_bit_identically(families, tmp_path, method,
                                                           params):
    results = []
    for base, d1, d2 in families:
        text = recipe_text(method, base, [(d1, params), (d2, params)])
        run_merge(text, tmp_path / base.parent.name, device="cpu", random_seed=0)
        results.append(load_model(tmp_path / base.parent.name))
    safe, pickled = results
    assert safe.keys() == pickled.keys() and len(safe) == len(TINY.tensors())
    for name in safe:
        assert torch.equal(safe[name].view(torch.uint8), pickled[name].view(torch.uint8)), name


def test_every_dtype_views_and_parameters_read_like_torch_load(tmp_path):
    base = torch.randn(4, 6)
    state = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16), "f16": torch.randn(7).half(),
        "f64": torch.randn(2, 2).double(), "i64": torch.arange(5), "bool": torch.rand(6) > 0.5,
        "u8": torch.arange(9, dtype=torch.uint8), "f8": torch.randn(4).to(torch.float8_e4m3fn),
        "whole": base, "row": base[2], "param": torch.nn.Parameter(torch.randn(3, 2)),
        "scalar": torch.tensor(3.5),
    }
    path = bin_file(tmp_path, saved(state))
    metas = read_bin(path)
    raw = path.read_bytes()
    for name, value in state.items():
        meta = metas[name]
        assert meta.shape == tuple(value.shape) and meta.torch_dtype == value.dtype
        expected = value.detach().contiguous().reshape(-1).view(torch.uint8)
        assert raw[meta.begin:meta.end] == expected.numpy().tobytes(), name


def test_zip64_archives_as_torch_writes_them_over_4_gb(tmp_path):
    state = {"w": torch.randn(3, 4), "h": torch.randn(5).half()}
    data = zip64(entries(saved(state)))
    with zipfile.ZipFile(bin_file(tmp_path, data)) as z:  # a valid zip, by Python's reader
        assert z.testzip() is None
    metas = read_bin(tmp_path / "pytorch_model.bin")
    for name, value in state.items():
        assert data[metas[name].begin:metas[name].end] == value.numpy().tobytes()


def test_a_pickle_naming_os_system_is_refused_and_nothing_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    model = tmp_path / "evil"
    model.mkdir()
    bin_file(model, malicious(marker))
    (tmp_path / "r.yml").write_text(recipe_text("linear", None, [(model, {"weight": 1.0})]))
    assert main(["validate", str(tmp_path / "r.yml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "posix.system" in err and "pytorch_model.bin" in err
    assert not marker.exists()


def test_only_the_listed_globals_resolve():
    assert ("collections", "OrderedDict") in ALLOWED_GLOBALS
    assert not any(module in ("builtins", "os", "posix", "subprocess")
                   for module, _ in ALLOWED_GLOBALS)


def _with_data_pkl(original: bytes, edit) -> bytes:
    files = entries(original)
    pkl = next(n for n in files if n.endswith("/data.pkl"))
    files[pkl] = edit(files[pkl])
    return rezip(files)


TWO = {"aa": torch.ones(4), "bb": torch.zeros(4)}


@pytest.mark.parametrize("build, message", [
    (lambda: rezip({k: (v[:-4] if k.endswith("/data/0") else v)
                    for k, v in entries(saved(TWO)).items()}),
     r"tensor aa in .*: its storage entry has 12 bytes where the checkpoint says 16"),
    (lambda: patch_directory_offset(saved(TWO), "/data/1", 0xFFFFFFF0),
     r"zip entry .*/data/1 lies outside the file"),
    (lambda: _with_data_pkl(saved(TWO), lambda p: p.replace(b"bb", b"aa")),
     r"names aa twice"),
    (lambda: rezip(list(entries(saved(TWO)).items()) + [("archive/data.pkl", b"x")]),
     r"has the zip entry .* twice"),
    (lambda: rezip(entries(saved(TWO)), zipfile.ZIP_DEFLATED),
     r"is compressed \(method 8\); torch checkpoints store tensors uncompressed"),
    (lambda: _legacy(),
     r"is in torch's legacy \(pre-1.6\) format"),
    (lambda: saved({"t": torch.randn(4, 3).t()}),
     r"tensor t in .* is not contiguous"),
    (lambda: _with_data_pkl(saved({"t": torch.ones(4)}),
                            lambda p: p.replace(b"K\x04\x85", b"K\x09\x85", 1)),
     r"tensor t in .* ends at byte \d+, past the end of its data"),
    (lambda: b"not a checkpoint at all",
     r"is not a zip archive \(no end of central directory record\)"),
    (lambda: _with_data_pkl(saved(TWO), lambda p: p[: len(p) // 2]),
     r"has a data.pkl that is not a readable state dict"),
])
def test_malformed_bins_are_one_line_source_errors(tmp_path, build, message):
    path = bin_file(tmp_path, build())
    with pytest.raises(SourceError, match=message) as caught:
        read_bin(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def _legacy() -> bytes:
    out = io.BytesIO()
    torch.save({"w": torch.ones(2)}, out, _use_new_zipfile_serialization=False)
    return out.getvalue()


def test_a_repo_with_both_formats_reads_the_safetensors(families, tmp_path):
    safe, bins = families
    both = tmp_path / "both"
    both.mkdir()
    for src in (safe[1], bins[1]):
        for f in src.iterdir():
            (both / f.name).write_bytes(f.read_bytes())
    (both / "pytorch_model-00001-of-00099.bin").write_bytes(malicious(tmp_path / "m"))
    text = recipe_text("linear", None, [(both, {"weight": 1.0})])
    run_merge(text, tmp_path / "out", device="cpu")
    assert load_model(tmp_path / "out").keys() == load_model(safe[1]).keys()
