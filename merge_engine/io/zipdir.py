"""The directory of a zip archive (torch's checkpoint container) from exact ranged reads.

Only what locating stored entries needs: the end of central directory record (and its
zip64 locator and record when the 32-bit fields are saturated), the central directory,
and an entry's local header, whose length fixes where the entry's data starts
(``header offset + 30 + name length + extra length``). Everything is read through a
``read_at(offset, length)`` callable, so a local file and a Hub file (HTTP range
requests) go through the same code, and every size and offset is checked against the
file before anything is read or allocated.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from merge_engine.errors import SourceError
from merge_engine.io.headers import shown

ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, length)``: exactly ``length`` bytes of the file from ``offset``."""

EOCD = struct.Struct("<4sHHHHIIH")
ZIP64_LOCATOR = struct.Struct("<4sIQI")
ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
LOCAL = struct.Struct("<4sHHHHHIIIHH")
MAX_COMMENT = 0xFFFF
MAX_DIRECTORY_BYTES = 64 << 20
STORED = 0


@dataclass(frozen=True)
class ZipEntry:
    """One file of the archive, per the central directory."""

    name: str
    header_offset: int
    size: int
    """Bytes of the entry's data as stored (compressed size)."""
    method: int


@dataclass(frozen=True)
class ZipDirectory:
    entries: dict[str, ZipEntry]
    data_end: int
    """Where the central directory starts: every entry's data ends before it."""


def _unpack(layout: struct.Struct, raw: bytes, where: str, what: str) -> tuple:
    if len(raw) < layout.size:
        raise SourceError(f"{where} is not a readable zip archive (short {what})")
    return layout.unpack_from(raw)


def _find_eocd(read_at: ReadAt, size: int, where: str) -> tuple[int, tuple]:
    """Offset and fields of the end of central directory record: the last 22 bytes, or,
    when the archive has a comment, found in the last 64 KiB."""
    if size < EOCD.size:
        raise SourceError(f"{where} is not a zip archive (only {size} bytes)")
    fields = EOCD.unpack(read_at(size - EOCD.size, EOCD.size))
    if fields[0] == b"PK\x05\x06" and fields[7] == 0:
        return size - EOCD.size, fields
    span = min(size, EOCD.size + MAX_COMMENT)
    tail = read_at(size - span, span)
    at = tail.rfind(b"PK\x05\x06", 0, span - EOCD.size + 4)
    while at >= 0:
        fields = EOCD.unpack_from(tail, at)
        if at + EOCD.size + fields[7] == span:
            return size - span + at, fields
        at = tail.rfind(b"PK\x05\x06", 0, at)
    raise SourceError(f"{where} is not a zip archive (no end of central directory record)")


def _directory_span(read_at: ReadAt, size: int, where: str) -> tuple[int, int, int]:
    """(offset, size, entry count) of the central directory."""
    eocd_at, (_, disk, cd_disk, _, count, cd_size, cd_offset, _) = _find_eocd(
        read_at, size, where)
    end = eocd_at
    if 0xFFFF in (count, disk, cd_disk) or 0xFFFFFFFF in (cd_size, cd_offset):
        if eocd_at < ZIP64_LOCATOR.size:
            raise SourceError(f"{where} is not a readable zip archive (no zip64 locator)")
        sig, disk, record_at, _ = _unpack(
            ZIP64_LOCATOR, read_at(eocd_at - ZIP64_LOCATOR.size, ZIP64_LOCATOR.size), where,
            "zip64 locator")
        if sig != b"PK\x06\x07" or record_at + ZIP64_EOCD.size > eocd_at - ZIP64_LOCATOR.size:
            raise SourceError(f"{where} is not a readable zip archive (bad zip64 locator)")
        fields = _unpack(ZIP64_EOCD, read_at(record_at, ZIP64_EOCD.size), where, "zip64 record")
        if fields[0] != b"PK\x06\x06":
            raise SourceError(f"{where} is not a readable zip archive (bad zip64 record)")
        disk, cd_disk, count, cd_size, cd_offset = fields[4], fields[5], fields[7], *fields[8:]
        end = record_at
    if disk or cd_disk:
        raise SourceError(f"{where} is a multi-part zip archive, which is not supported")
    if cd_size > MAX_DIRECTORY_BYTES or cd_offset + cd_size > end:
        raise SourceError(f"{where} has a central directory outside the file "
                          f"({cd_size} bytes at {cd_offset})")
    return cd_offset, cd_size, count


def _zip64_values(extra: bytes, wanted: int, where: str) -> list[int]:
    """The first ``wanted`` 64-bit values of the zip64 extra field (id 1)."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        if kind == 1:
            if length < 8 * wanted or at + 4 + length > len(extra):
                break
            return list(struct.unpack_from(f"<{wanted}Q", extra, at + 4))
        at += 4 + length
    raise SourceError(f"{where} is not a readable zip archive (missing zip64 sizes)")


def read_directory(read_at: ReadAt, size: int, where: str) -> ZipDirectory:
    """Every entry of the archive; duplicate names and entries past the directory are
    refused."""
    cd_offset, cd_size, count = _directory_span(read_at, size, where)
    data_end = cd_offset
    raw = read_at(cd_offset, cd_size)
    entries: dict[str, ZipEntry] = {}
    at = 0
    for _ in range(count):
        fields = _unpack(CENTRAL, raw[at:at + CENTRAL.size], where, "central directory")
        (sig, _, _, _, method, _, _, _, csize, usize, nlen, elen, clen, _, _, _,
         offset) = fields
        if sig != b"PK\x01\x02" or at + CENTRAL.size + nlen + elen + clen > len(raw):
            raise SourceError(f"{where} is not a readable zip archive (bad central directory)")
        name_raw = raw[at + CENTRAL.size:at + CENTRAL.size + nlen]
        extra = raw[at + CENTRAL.size + nlen:at + CENTRAL.size + nlen + elen]
        big = [v for v in (usize, csize, offset) if v == 0xFFFFFFFF]
        if big:
            values = iter(_zip64_values(extra, len(big), where))
            usize, csize, offset = (next(values) if v == 0xFFFFFFFF else v
                                    for v in (usize, csize, offset))
        name = name_raw.decode("utf-8", errors="replace")
        if name in entries:
            raise SourceError(f"{where} has the zip entry {shown(name)} twice")
        if offset + csize > data_end:
            raise SourceError(f"{where}: zip entry {shown(name)} lies outside the file")
        entries[name] = ZipEntry(name, offset, csize, method)
        at += CENTRAL.size + nlen + elen + clen
    return ZipDirectory(entries, data_end)


def data_offset(read_at: ReadAt, entry: ZipEntry, directory: ZipDirectory, where: str) -> int:
    """Where a stored entry's data starts in the file, from its local header; a compressed
    entry, or a local header that disagrees with the directory, is refused."""
    name = entry.name.encode()
    if entry.method != STORED:
        raise SourceError(f"{where}: zip entry {shown(entry.name)} is compressed (method "
                          f"{entry.method}); torch checkpoints store tensors uncompressed")
    if entry.header_offset + LOCAL.size + len(name) > directory.data_end:
        raise SourceError(f"{where}: zip entry {shown(entry.name)} lies outside the file")
    raw = read_at(entry.header_offset, LOCAL.size + len(name))
    sig, _, _, method, _, _, _, _, _, nlen, elen = LOCAL.unpack_from(raw)
    if sig != b"PK\x03\x04" or method != STORED or raw[LOCAL.size:] != name or (
            nlen != len(name)):
        raise SourceError(f"{where}: the local header of zip entry {shown(entry.name)} disagrees "
                          "with the central directory")
    start = entry.header_offset + LOCAL.size + nlen + elen
    if start + entry.size > directory.data_end:
        raise SourceError(f"{where}: zip entry {shown(entry.name)} lies outside the file")
    return start
