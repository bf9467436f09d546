"""Property-based fuzzing of checkpoint headers: every safetensors header and every torch
zip / pickle, however mangled, ends in metadata that fits the file or in a one-line
:class:`SourceError` (exit 2), never another exception, and no read is larger than the
file."""

from __future__ import annotations

import json
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merge_engine import SourceError
from merge_engine.io.checkpoint import DTYPES
from merge_engine.io.headers import parse_header
from merge_engine.io.pickled import bin_tensors

from .pickles import entries, rezip, saved, zip64

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=2)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=2), max_leaves=4)
NUMBER = st.one_of(st.integers(-4, 64), st.integers(-2**70, 2**70), st.booleans(), st.floats(),
                   st.none(), st.text(max_size=2))
ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from([*DTYPES, "F4", ""]) | JSON,
    "shape": st.lists(NUMBER, max_size=3) | JSON,
    "data_offsets": st.lists(NUMBER, min_size=2, max_size=2) | JSON,
})


def one_line_or_tiles(raw: bytes, data_len: int | None) -> None:
    try:
        tensors = parse_header(raw, "m.safetensors", "m.safetensors", data_len)
    except SourceError as e:
        assert "\n" not in str(e)
        return
    spans = sorted((m.begin, m.end) for m in tensors.values())
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(end - begin == math.prod(m.shape) * m.torch_dtype.itemsize
               for m in tensors.values() for begin, end in [(m.begin, m.end)])
    if data_len is not None:
        assert (spans[-1][1] if spans else 0) == data_len


@FUZZ
@given(st.dictionaries(st.text(max_size=6), ENTRY | JSON, max_size=5),
       st.none() | st.integers(0, 200))
def test_safetensors_headers_of_any_shape(header, data_len):
    one_line_or_tiles(json.dumps(header).encode(), data_len)


@st.composite
def tiled_headers(draw):
    """A valid header, then maybe one field changed."""
    header, at = {}, 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(list(DTYPES)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        size = math.prod(shape) * DTYPES[dtype].itemsize
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + size]}
        at += size
    if header and draw(st.booleans()):
        name = draw(st.sampled_from(sorted(header)))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        header[name][field] = draw(JSON | st.lists(st.integers(-2, 10**13), max_size=3))
    return json.dumps(header).encode(), at + draw(st.sampled_from([0, 0, 1]))


@FUZZ
@given(tiled_headers())
def test_nearly_valid_safetensors_headers(case):
    one_line_or_tiles(*case)


@FUZZ
@given(st.binary(max_size=200))
def test_safetensors_header_bytes(raw):
    one_line_or_tiles(raw, None)


STATE = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(3).half(),
         "n": torch.tensor(7), "v": torch.arange(6, dtype=torch.bfloat16)[2:]}
ORIGINAL = saved(STATE)
FILES = entries(ORIGINAL)
PKL = next(n for n in FILES if n.endswith("/data.pkl"))
ZIP64 = zip64(FILES)


def one_line_or_inside(data: bytes) -> None:
    def read_at(offset: int, length: int) -> bytes:
        assert 0 <= length <= len(data)  # nothing read or allocated beyond the file
        if offset < 0 or offset + length > len(data):
            raise SourceError("read past the end")
        return data[offset:offset + length]

    try:
        tensors = bin_tensors(read_at, len(data), "m.bin", "m.bin")
    except SourceError as e:
        assert "\n" not in str(e)
        return
    for meta in tensors.values():
        assert 0 <= meta.begin <= meta.end <= len(data)
        assert meta.end - meta.begin == meta.numel * meta.torch_dtype.itemsize


def flipped(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for at, value in flips:
        out[at % len(out)] = value
    return bytes(out)


FLIPS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6)


@FUZZ
@given(st.sampled_from([ORIGINAL, ZIP64]), FLIPS)
def test_torch_zips_with_flipped_bytes(original, flips):
    one_line_or_inside(flipped(original, flips))


@FUZZ
@given(FLIPS, st.integers(0, 400))
def test_mangled_data_pkl(flips, cut):
    pkl = flipped(FILES[PKL], flips)
    one_line_or_inside(rezip({**FILES, PKL: pkl[:len(pkl) - cut % 3 * cut]}))


@FUZZ
@given(st.binary(max_size=300))
def test_data_pkl_of_random_bytes(pkl):
    one_line_or_inside(rezip({**FILES, PKL: b"\x80\x02" + pkl}))


@FUZZ
@given(st.sampled_from([ORIGINAL, ZIP64]), st.integers(0, len(ORIGINAL)))
def test_truncated_torch_zips(original, size):
    one_line_or_inside(original[:size])
