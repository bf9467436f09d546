"""torch zip checkpoints for tests: real ones from torch.save, and hostile variants
(rewritten entries, patched directory fields, pickles naming other globals)."""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import torch


def saved(tensors: dict[str, torch.Tensor]) -> bytes:
    """What torch.save writes for this (plain dict) state dict, as transformers saves shards."""
    out = io.BytesIO()
    torch.save(tensors, out)
    return out.getvalue()


def entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {name: z.read(name) for name in z.namelist()}


def rezip(files: dict[str, bytes] | list[tuple[str, bytes]],
          compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of these entries, in order (a list allows duplicate names)."""
    out = io.BytesIO()
    items = files.items() if isinstance(files, dict) else files
    with zipfile.ZipFile(out, "w", compression) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name", wanted here
        for name, body in items:
            z.writestr(name, body)
    return out.getvalue()


def patch_directory_offset(data: bytes, name: str, offset: int) -> bytes:
    """``data`` with the central directory's local header offset of ``name`` replaced."""
    at = data.rindex(b"PK\x01\x02", 0, data.rindex(name.encode()))
    return data[:at + 42] + struct.pack("<I", offset) + data[at + 46:]


class Payload:
    """Unpickling this runs ``touch marker`` (if the unpickler lets it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious(marker: Path) -> bytes:
    """A torch checkpoint whose data.pkl calls os.system via __reduce__."""
    good = entries(saved({"w": torch.ones(2)}))
    pkl = next(n for n in good if n.endswith("/data.pkl"))
    good[pkl] = pickle.dumps({"w": Payload(marker)}, protocol=2)
    return rezip(good)


def zip64(files: dict[str, bytes]) -> bytes:
    """A stored zip of these entries written the way archives over 4 GB are: every size
    and offset in zip64 extra fields (0xFFFFFFFF in the 32-bit ones), a zip64 end record
    and locator, and a saturated end of central directory record."""
    out, central = bytearray(), bytearray()
    full = 0xFFFFFFFF
    for name, body in files.items():
        crc, raw = zlib.crc32(body), name.encode()
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, 0, 0, 0, crc, full, full,
                           len(raw), 20) + raw
        out += struct.pack("<HHQQ", 1, 16, len(body), len(body)) + body
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, 0, 0, 0, 0, crc,
                               full, full, len(raw), 28, 0, 0, 0, 0, full) + raw
        central += struct.pack("<HHQQQ", 1, 24, len(body), len(body), offset)
    cd_offset = len(out)
    out += central
    record = len(out)
    out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, len(files),
                       len(files), len(central), cd_offset)
    out += struct.pack("<4sIQI", b"PK\x06\x07", 0, record, 1)
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, full,
                       full, 0)
    return bytes(out)
