"""torch's pickle checkpoints (``pytorch_model*.bin``) read without running anything.

torch.save writes a zip archive: ``<archive>/data.pkl``, a pickle of the state dict, and
one stored (uncompressed) entry ``<archive>/data/<key>`` per storage. ``data.pkl`` is read
by :class:`StateDictUnpickler`, which resolves only the globals in :data:`ALLOWED_GLOBALS`
(to inert stand-ins defined here: no torch function is ever called) and answers any other
global with a :class:`SourceError` naming it; storages come back as references, never
loaded. Each tensor then becomes a :class:`TensorMeta` whose ``begin``/``end`` are
absolute offsets in the file (its storage entry's data start, plus its storage offset),
checked by :func:`merge_engine.io.headers.check_tensor`, so the executor reads its bytes
straight from the file like a safetensors tensor. Only contiguous tensors are accepted.
torch's legacy (pre-1.6, non-zip) format is refused.
"""

from __future__ import annotations

import io
import math
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from merge_engine.errors import SourceError
from merge_engine.io.checkpoint import DTYPE_CODES, DTYPES, MAX_HEADER_BYTES, TensorMeta
from merge_engine.io.headers import check_tensor, shown
from merge_engine.io.zipdir import ReadAt, ZipDirectory, data_offset, read_directory

LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
"""How a legacy torch checkpoint starts: protocol 2, then torch's magic number as a long."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    """A storage class named by the pickle (``torch.FloatStorage``...); ``dtype`` is None
    for ``torch.storage.UntypedStorage``, whose tensors carry their dtype."""

    dtype: str | None


@dataclass(frozen=True, slots=True)
class _Dtype:
    """A dtype global (``torch.float8_e4m3fn``), as ``_rebuild_tensor_v3`` receives it."""

    code: str


@dataclass(frozen=True, slots=True)
class _Storage:
    """A reference to one storage entry: its key and size (elements, or bytes when untyped)."""

    key: str
    dtype: str | None
    numel: int


@dataclass(frozen=True, slots=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple
    dtype: str | None


class _StateDict(dict):
    """What ``collections.OrderedDict`` resolves to: an empty dict, filled by the
    unpickler's item opcodes (which refuse duplicates, :meth:`StateDictUnpickler._put`)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()


def _tensor_v2(storage, offset, shape, stride, requires_grad=False, hooks=None,
               metadata=None) -> _Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records where the tensor is."""
    return _Tensor(storage, offset, tuple(shape), tuple(stride), storage.dtype)


def _tensor_v3(storage, offset, shape, stride, requires_grad, hooks, dtype,
               metadata=None) -> _Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v3`` (an untyped storage and a dtype,
    as torch.save writes float8 tensors)."""
    if not isinstance(dtype, _Dtype):
        raise TypeError("dtype")
    return _Tensor(storage, offset, tuple(shape), tuple(stride), dtype.code)


def _parameter(data, requires_grad=False, hooks=None, state=None) -> _Tensor:
    """Stand-in for ``torch._utils._rebuild_parameter`` (and ``..._with_state``): a
    parameter saved in a state dict is its tensor."""
    return data


_STORAGES = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16",
    "BFloat16Storage": "BF16", "LongStorage": "I64", "IntStorage": "I32",
    "ShortStorage": "I16", "CharStorage": "I8", "ByteStorage": "U8", "BoolStorage": "BOOL",
}
ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): _StateDict,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.storage", "UntypedStorage"): _StorageType(None),
    **{("torch", name): _StorageType(code) for name, code in _STORAGES.items()},
    **{("torch", str(dtype).removeprefix("torch.")): _Dtype(code)
       for dtype, code in DTYPE_CODES.items()},
}
"""Every global a state dict saved by torch.save may name (what torch 2.x writes for
tensors of each supported dtype, parameters, and the OrderedDict of hooks and of the state
dict itself), mapped to the inert stand-in it resolves to. Nothing else is resolved."""


class StateDictUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, restricted: globals only from :data:`ALLOWED_GLOBALS`,
    persistent ids only torch's storage references, and no key set twice in a dict. (The
    Python implementation, not the C one, so the item opcodes can refuse duplicates.)"""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, where: str):
        super().__init__(io.BytesIO(data))
        self.where = where

    def find_class(self, module: str, name: str) -> object:
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            what = shown(f"{module}.{name}")
            raise SourceError(f"{self.where} names the global {what}, which a state dict "
                              "never needs; refusing to load it")
        return found

    def persistent_load(self, pid: object) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and type(pid[4]) is int and pid[4] >= 0):
            raise SourceError(f"{self.where} has a persistent id that is not a torch "
                              f"storage: {shown(pid)}")
        return _Storage(pid[2], pid[1].dtype, pid[4])

    def _put(self, target: object, key: object, value: object) -> None:
        if not isinstance(target, dict):
            raise TypeError("items set on a non-dict")
        if key in target:
            raise SourceError(f"{self.where} names {shown(key)} twice")
        target[key] = value

    def _load_dict(self) -> None:
        items = self.pop_mark()
        d: dict = {}
        for i in range(0, len(items) - 1, 2):
            self._put(d, items[i], items[i + 1])
        self.append(d)

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._put(self.stack[-1], key, value)

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        for i in range(0, len(items) - 1, 2):
            self._put(self.stack[-1], items[i], items[i + 1])

    dispatch[pickle.DICT[0]] = _load_dict
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems


def load_state_dict(data: bytes, where: str) -> dict[str, _Tensor]:
    """The tensors ``data.pkl`` describes, by name; anything but a flat state dict of
    tensors, or any pickle the restricted unpickler cannot read, is a :class:`SourceError`."""
    try:
        state = StateDictUnpickler(data, where).load()
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure on untrusted bytes is bad input
        raise SourceError(f"{where} has a data.pkl that is not a readable state dict "
                          f"({type(e).__name__}: {shown(str(e))})") from None
    if not isinstance(state, dict):
        raise SourceError(f"{where} does not hold a state dict (a dict of tensors)")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, _Tensor):
            raise SourceError(f"{where} holds {shown(name)}, which is not a named tensor")
    return state


def _contiguous(shape: tuple, stride: tuple) -> bool:
    """Row-major with no gaps (strides of size-1 dimensions do not matter, as in torch)."""
    if len(stride) != len(shape) or not all(type(s) is int for s in stride):
        return False
    expected = 1
    for size, step in zip(reversed(shape), reversed(stride), strict=True):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True


def _archive(directory: ZipDirectory, where: str) -> str:
    """The archive's folder name: the one ``<archive>/data.pkl`` entry."""
    names = [n for n in directory.entries if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(names) != 1:
        raise SourceError(f"{where} is a zip archive but not a torch checkpoint (no data.pkl)")
    return names[0].removesuffix("/data.pkl")


def _entry_bytes(read_at: ReadAt, directory: ZipDirectory, name: str, where: str,
                 limit: int) -> bytes:
    entry = directory.entries[name]
    if entry.size > limit:
        raise SourceError(f"{where}: zip entry {shown(name)} has {entry.size} bytes, over the "
                          f"limit of {limit}")
    return read_at(data_offset(read_at, entry, directory, where), entry.size)


def bin_tensors(read_at: ReadAt, size: int, file: str, where: str) -> dict[str, TensorMeta]:
    """Validated tensor metadata of torch checkpoint ``file`` of ``size`` bytes, read through
    ``read_at``: the zip directory, ``data.pkl`` and the local header of each storage entry
    (never a tensor's bytes; the local headers are read in parallel, since on the Hub each
    is a request). ``where`` names the file in messages."""
    try:
        directory = read_directory(read_at, size, where)
    except SourceError:
        if size >= len(LEGACY_MAGIC) and read_at(0, len(LEGACY_MAGIC)) == LEGACY_MAGIC:
            raise SourceError(f"{where} is in torch's legacy (pre-1.6) format, which is not "
                              "supported; re-save it with torch >= 1.6 or as safetensors"
                              ) from None
        raise
    archive = _archive(directory, where)
    if f"{archive}/byteorder" in directory.entries and _entry_bytes(
            read_at, directory, f"{archive}/byteorder", where, 16) != b"little":
        raise SourceError(f"{where} is a big-endian torch checkpoint, which is not supported")
    state = load_state_dict(_entry_bytes(read_at, directory, f"{archive}/data.pkl", where,
                                         MAX_HEADER_BYTES), where)
    entries = {}
    for name, t in state.items():
        entries[t.storage.key] = directory.entries.get(f"{archive}/data/{t.storage.key}")
        if entries[t.storage.key] is None:
            raise SourceError(f"tensor {shown(name)} in {where} has no storage entry "
                              f"data/{shown(t.storage.key)}")
    with ThreadPoolExecutor(max_workers=8) as pool:  # one small read each, in parallel
        starts = dict(zip(entries, pool.map(
            lambda entry: data_offset(read_at, entry, directory, where), entries.values()),
            strict=True))
    return {name: _meta(t, starts[t.storage.key], entries[t.storage.key].size, file,
                        f"tensor {shown(name)} in {where}") for name, t in state.items()}


def _meta(t: _Tensor, start: int, stored: int, file: str, what: str) -> TensorMeta:
    """Where tensor ``t`` lies in the file, its storage's ``stored`` bytes starting at
    ``start``; checked against the storage and by :func:`check_tensor`."""
    itemsize = DTYPES[t.dtype].itemsize if t.dtype in DTYPES else 1
    expected = t.storage.numel * (1 if t.storage.dtype is None else itemsize)
    if expected != stored:
        raise SourceError(f"{what}: its storage entry has {stored} bytes where the "
                          f"checkpoint says {expected}")
    if type(t.offset) is not int or t.offset < 0:
        raise SourceError(f"{what} has a bad storage offset")
    if not all(type(d) is int and d >= 0 for d in t.shape):
        raise SourceError(f"{what} has a shape that is not a list of non-negative integers: "
                          f"{shown(t.shape)}")
    if not _contiguous(t.shape, t.stride):
        raise SourceError(f"{what} is not contiguous (stride {shown(t.stride)}); re-save it "
                          "from a contiguous copy")
    begin = start + t.offset * itemsize
    end = begin + math.prod(t.shape) * itemsize
    check_tensor(what, t.dtype, t.shape, begin, end, start + stored)
    return TensorMeta(file, t.dtype, tuple(t.shape), begin, end)
