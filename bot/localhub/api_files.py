"""`GET/HEAD /[datasets/]{repo_id}/resolve/{revision}/{path}`: file downloads with HTTP Range.

Answers like the Hub (minus the CDN redirect): `X-Repo-Commit` (the resolved commit),
`ETag` (git oid, or sha256 for LFS files), `X-Linked-Etag`/`X-Linked-Size` for LFS files,
`Content-Length`, `Accept-Ranges: bytes`. A single `Range: bytes=a-b | a- | -n` gets a 206
with `Content-Range` (the end is clamped to the file); an unsatisfiable one gets 416. Bodies
are streamed in 64 KiB chunks through the bandwidth bucket and counted in the stats.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from starlette.responses import Response, StreamingResponse

from . import errors
from .auth import check_files
from .context import Call, HubContext
from .storage import FileEntry
from .throttle import throttle

CHUNK = 64 * 1024
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Inclusive (start, end) of a single byte range; None = whole file; 416 if unsatisfiable.

    Malformed or multi-range headers are ignored (the whole file is served), as RFC 9110 allows.
    """
    if not header:
        return None
    match = _RANGE_RE.match(header.strip().replace(" ", ""))
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise errors.HubError(
            416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"}
        )
    return start, end


def safetensors_header_end(blob: Path, size: int) -> int:
    """Offset where a safetensors file's JSON header ends (8-byte length + header)."""
    with open(blob, "rb") as f:
        prefix = f.read(8)
    if len(prefix) < 8:
        return size
    return min(size, 8 + int.from_bytes(prefix, "little"))


def _headers(path: str, entry: FileEntry, commit_id: str) -> dict[str, str]:
    name = path.rsplit("/", 1)[-1]
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_")
    headers = {
        "X-Repo-Commit": commit_id,
        "ETag": f'"{entry.etag}"',
        "Accept-Ranges": "bytes",
        "Content-Type": mimetypes.guess_type(name)[0] or "application/octet-stream",
        "Content-Disposition": (
            f"inline; filename*=UTF-8''{quote(name)}; filename=\"{ascii_name}\";"
        ),
    }
    if entry.lfs:
        headers["X-Linked-Etag"] = f'"{entry.sha256}"'
        headers["X-Linked-Size"] = str(entry.size)
    return headers


async def _body(
    ctx: HubContext, blob: Path, start: int, length: int, name: str, header_end: int | None
) -> AsyncIterator[bytes]:
    offset, remaining = start, length
    with open(blob, "rb") as f:
        f.seek(start)
        while remaining > 0:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:
                break
            await throttle(ctx.downloads, len(chunk))
            yield chunk
            ctx.stats.sent(name, len(chunk), header_end, offset)
            offset += len(chunk)
            remaining -= len(chunk)


async def resolve(call: Call) -> Response:
    meta = check_files(call.user, call.ctx.storage.get_repo(call.repo_key))
    commit = call.ctx.storage.resolve(meta, call.params["rev"])
    path = call.params["path"]
    entry = commit.tree.get(path)
    if entry is None:
        raise errors.entry_not_found(path, commit.id)
    headers = _headers(path, entry, commit.id)
    span = parse_range(call.request.headers.get("range"), entry.size)
    start, end = span if span else (0, entry.size - 1)
    status = 206 if span else 200
    if span:
        headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
    headers["Content-Length"] = str(end - start + 1)
    if call.request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    blob = call.ctx.storage.blob_path(entry.sha256)
    header_end = None
    if path.endswith(".safetensors"):
        header_end = safetensors_header_end(blob, entry.size)
        call.ctx.stats.incr("safetensors", "range_requests" if span else "full_requests")
    name = f"{meta.key}/{path}"
    body = _body(call.ctx, blob, start, end - start + 1, name, header_end)
    return StreamingResponse(body, status_code=status, headers=headers)


ROUTES = (("GET HEAD", r"/{prefix}{repo}/resolve/{rev}/{path}", resolve),)
