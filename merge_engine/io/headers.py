"""One validator for checkpoint headers, whatever they come from (a local file, ranged
reads from the Hub, a pickle checkpoint's ``data.pkl``), applied before anything is
allocated for the tensors they describe.

Rules, after the safetensors format's own: a header of at most :data:`MAX_HEADER_BYTES`;
one JSON object with unique keys; ``__metadata__`` a map of strings to strings; every other
entry ``{"dtype": known, "shape": [int >= 0, ...], "data_offsets": [begin, end]}`` with
``0 <= begin <= end``, ``end - begin == prod(shape) x itemsize`` and ``end`` inside the
data section; sorted by offset, the tensors tile the data section exactly (no overlap,
no gap, nothing after the last). Every message names the file and the tensor.

Index files (``*.index.json``) name weight files: each must be a plain relative name inside
the model (no ``..``, ``.`` or empty segments, no leading ``/``, no backslash, no ``%``
escape, no control character) with the format's suffix.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

from merge_engine.errors import SourceError
from merge_engine.io.checkpoint import DTYPES, MAX_HEADER_BYTES, TensorMeta, header_size

_BAD_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f\\%?#:]")


def shown(value: object) -> str:
    """A value from a file, fit for a one-line message: a short printable string as is,
    anything else as its repr, cut to 200 characters (never failing: an int too long to
    print, or a structure too deep, is named by its type)."""
    if isinstance(value, str) and value.isprintable() and 0 < len(value) <= 200:
        return value
    try:
        return repr(value)[:200]
    except (ValueError, RecursionError):
        return f"<{type(value).__name__} too large to show>"


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _unique_object(where: str):
    """A json ``object_pairs_hook`` refusing duplicate keys (the safetensors rule)."""

    def build(pairs: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise SourceError(f"{where} names tensor {shown(key)} twice in its header")
            out[key] = value
        return out

    return build


def check_tensor(what: str, dtype: object, shape: object, begin: object, end: object,
                 limit: int | None) -> None:
    """The checks one tensor entry needs, whatever the format: a known dtype, a shape of
    non-negative ints, ``0 <= begin <= end <= limit`` and ``end - begin`` equal to the
    tensor's byte size; else a :class:`SourceError` starting with ``what`` ("tensor x in
    file")."""
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise SourceError(f"{what} has unsupported dtype {shown(dtype)}")
    if not isinstance(shape, list | tuple) or not all(_is_count(d) for d in shape):
        raise SourceError(f"{what} has a shape that is not a list of "
                          f"non-negative integers: {shown(shape)}")
    if not (_is_count(begin) and _is_count(end) and begin <= end):
        raise SourceError(f"{what} has bad data offsets "
                          f"[{shown(begin)}, {shown(end)}]")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != nbytes:
        raise SourceError(f"{what} has {end - begin} bytes of data but "
                          f"{dtype} x {list(shape)} needs {nbytes}")
    if limit is not None and end > limit:
        raise SourceError(f"{what} ends at byte {end}, past the end of "
                          f"its data ({limit} bytes)")


def parse_header(raw: bytes, file: str, where: str,
                 data_len: int | None) -> dict[str, TensorMeta]:
    """Validated tensor metadata from the JSON header of safetensors ``file`` (``where``
    names it in messages); ``data_len``, the size of the data section, when known (the
    exact-tiling rule needs it)."""
    try:
        header = json.loads(raw, object_pairs_hook=_unique_object(where))
    except (ValueError, RecursionError) as e:
        raise SourceError(f"{where} is not a valid safetensors file (bad header: "
                          f"{str(e)[:100]})") from None
    if not isinstance(header, dict):
        raise SourceError(f"{where} is not a valid safetensors file (header is not an object)")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(v, str) for v in metadata.values()):
        raise SourceError(f"{where} has a __metadata__ that is not a map of strings to strings")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not isinstance(info.get("data_offsets"), list) or (
                len(info["data_offsets"]) != 2):
            raise SourceError(f"tensor {shown(name)} in {where} needs dtype, shape and "
                              "data_offsets [begin, end]")
        begin, end = info["data_offsets"]
        dtype, shape = info.get("dtype"), info.get("shape")
        check_tensor(f"tensor {shown(name)} in {where}", dtype, shape, begin, end, data_len)
        tensors[name] = TensorMeta(file, dtype, tuple(shape), begin, end)
    _check_tiling(tensors, where, data_len)
    return tensors


def _check_tiling(tensors: dict[str, TensorMeta], where: str, data_len: int | None) -> None:
    """Sorted by offset, each tensor starts where the previous one ended (the first at 0),
    and the last ends at the end of the data section."""
    at, previous = 0, None
    for name, meta in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        what = f"tensor {shown(name)} in {where}"
        if meta.begin < at:
            raise SourceError(f"{what} overlaps tensor {shown(previous)}")
        if meta.begin > at:
            raise SourceError(f"{what} starts at byte {meta.begin}, leaving a gap after "
                              f"byte {at}")
        at, previous = meta.end, name
    if data_len is not None and at != data_len:
        raise SourceError(f"{where} has {data_len - at} bytes of data after its last tensor")


def read_header(path: Path) -> dict[str, TensorMeta]:
    """Validated tensor metadata of a local safetensors file, reading only its header."""
    n = header_size(path)
    size = os.path.getsize(path)
    if 8 + n > size:
        raise SourceError(f"{path} is not a safetensors file (header of {n} bytes in a file "
                          f"of {size})")
    with open(path, "rb") as f:
        f.seek(8)
        return parse_header(f.read(n), path.name, str(path), size - 8 - n)


def join_shards(parts: Iterable[tuple[str, dict[str, TensorMeta]]],
                where: str) -> dict[str, TensorMeta]:
    """The tensors of a model's weight files together; a name in two files is refused."""
    tensors: dict[str, TensorMeta] = {}
    for file, part in parts:
        for name, meta in part.items():
            if name in tensors:
                raise SourceError(f"{where} has tensor {shown(name)} in both "
                                  f"{tensors[name].file} and {file}")
            tensors[name] = meta
    return tensors


def check_file_name(name: object, where: str, index_name: str, suffix: str) -> str:
    """``name`` from an index, if it is a plain relative file name inside the model."""
    if (not isinstance(name, str) or not name or len(name) > 1000 or name.startswith("/")
            or _BAD_NAME_CHARS.search(name) or not name.endswith(suffix)
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise SourceError(f"{where}: {index_name} names weight file {shown(name)}, which is "
                          f"not a plain {suffix} file name inside the model")
    return name


def index_files(raw: bytes | str, where: str, index_name: str, suffix: str) -> list[str]:
    """The weight files an index (``weight_map`` of tensor -> file) names, each checked
    with :func:`check_file_name`."""
    if len(raw) > MAX_HEADER_BYTES:
        raise SourceError(f"{where}: {index_name} is larger than {MAX_HEADER_BYTES} bytes")
    try:
        index = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise SourceError(f"{where}: {index_name} is not valid JSON ({str(e)[:100]})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise SourceError(f"{where}: {index_name} has no weight_map of tensor names to files")
    return sorted({check_file_name(f, where, index_name, suffix) for f in weight_map.values()})
