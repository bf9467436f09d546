"""Upload endpoints: preupload, the ndjson commit, and the LFS batch/upload/verify trio.

Flow the client follows (`HfApi.create_commit` / `preupload_lfs_files`):
1. `POST /api/models/{repo}/preupload/{rev}`: per file, "lfs" or "regular" (+ remote oid).
2. LFS files: `POST /{repo}.git/info/lfs/objects/batch` gives, per missing object, a signed
   PUT URL on this server (`/_lfs/upload/...`, no auth needed) and a verify URL.
3. `POST /api/models/{repo}/commit/{rev}` (ndjson: header, file, lfsFile, deletedFile,
   deletedFolder) makes ONE commit; 412 when `parentCommit` is not the branch head.
Datasets use the same paths with `/api/datasets/` and a `datasets/` prefix before `{repo}`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from . import errors, lfs
from .api_repos import json_body
from .context import Call
from .paths import check_path
from .storage import AddFile, DeletePath, FileEntry, RepoMeta
from .throttle import throttle
from .webhooks import content_event

_OID_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_BODY_LIMIT = 64 * 1024 * 1024
"""Bytes of one ndjson commit body (regular files under 10 MB travel in it, base64)."""
UPLOAD_URL_TTL = 3600
LFS_MEDIA_TYPE = "application/vnd.git-lfs+json"


def _no_pr(call: Call) -> None:
    if call.flag("create_pr"):
        raise errors.bad_request("create_pr is not supported by localhub; commit to a branch.")


async def preupload(call: Call) -> Response:
    meta = call.write_repo()
    _no_pr(call)
    body = await json_body(call)
    head = call.ctx.storage.branch_head(meta, call.params["rev"])
    attributes = head.tree.get(".gitattributes")
    text = call.ctx.storage.blob_path(attributes.sha256).read_text() if attributes else ""
    patterns = lfs.lfs_patterns(text)
    files = []
    for item in _list(body, "files"):
        path = check_path(item.get("path"))
        try:
            sample = base64.b64decode(item.get("sample", ""))
        except (binascii.Error, TypeError) as exc:
            raise errors.bad_request(f"Invalid base64 sample for {path}") from exc
        size = item.get("size", 0)
        if not isinstance(size, int) or size < 0:
            raise errors.bad_request(f"Invalid size for {path}: {size!r}")
        mode = lfs.upload_mode(path, size, sample, patterns)
        answer = {"path": path, "uploadMode": mode, "shouldIgnore": False}
        existing = head.tree.get(path)
        if existing is not None:
            answer["oid"] = existing.sha256 if existing.lfs else existing.oid
        files.append(answer)
    return JSONResponse({"files": files, "commitOid": head.id})


def _list(body: dict, key: str) -> list[dict]:
    """``body[key]``: a list of objects; 400 otherwise."""
    items = body.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise errors.bad_request(f"'{key}' must be a list of objects.")
    return items


def _file_content(value: dict) -> bytes:
    content = str(value.get("content", ""))
    if value.get("encoding", "base64") != "base64":
        return content.encode()
    try:
        return base64.b64decode(content, validate=True)
    except binascii.Error as exc:
        raise errors.bad_request(f"Invalid base64 content for {value.get('path')}") from exc


def _parse_commit(call: Call, meta: RepoMeta,
                  raw: bytes) -> tuple[dict, list[AddFile | DeletePath]]:
    """Header and operations of an ndjson commit body (regular files are stored here);
    LFS files must be objects uploaded to this repo."""
    header: dict = {}
    operations: list[AddFile | DeletePath] = []
    storage = call.ctx.storage
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise errors.bad_request(f"Malformed commit line: {exc}") from exc
        if not isinstance(value, dict):
            raise errors.bad_request(f"Malformed commit line: the value of '{key}' must be "
                                     "an object")
        if key == "header":
            header = value
        elif key == "file":
            data = _file_content(value)
            operations.append(AddFile(check_path(value.get("path")), storage.put_blob(data)))
        elif key == "lfsFile":
            oid = str(value.get("oid", ""))
            if not storage.repo_has_lfs(meta, oid):
                raise errors.bad_request(
                    f"LFS object {oid} for {value.get('path')} was never uploaded to "
                    f"{meta.key}: upload it through the LFS batch API before committing."
                )
            size = storage.blob_path(oid).stat().st_size
            if value.get("size") not in (None, size):
                raise errors.bad_request(f"LFS object {oid} has size {size}, not {value['size']}")
            operations.append(AddFile(check_path(value.get("path")), FileEntry.large(oid, size)))
        elif key in ("deletedFile", "deletedFolder"):
            path = value.get("path")
            folder = key == "deletedFolder"
            if folder and isinstance(path, str) and path.endswith("/"):
                path = path[:-1]
            operations.append(DeletePath(check_path(path), folder))
        else:
            raise errors.bad_request(f"Unknown commit operation '{key}'")
    if not isinstance(header.get("summary"), str) or not header["summary"]:
        raise errors.bad_request("The commit header needs a summary (the commit message).")
    if not isinstance(header.get("parentCommit"), str | None):
        raise errors.bad_request("The commit header's parentCommit must be a commit id.")
    return header, operations


async def commit(call: Call) -> Response:
    meta = call.write_repo()
    _no_pr(call)
    raw = await call.body(COMMIT_BODY_LIMIT)
    call.ctx.stats.incr("upload", "commit_bytes", by=len(raw))
    await throttle(call.ctx.uploads, len(raw))
    header, operations = await run_in_threadpool(_parse_commit, call, meta, raw)
    result = await run_in_threadpool(
        lambda: call.ctx.storage.commit(
            meta.key,
            call.params["rev"],
            operations,
            title=str(header["summary"]),
            message=str(header.get("description") or ""),
            author=call.user.name if call.user else "anonymous",
            parent_commit=header.get("parentCommit"),
        )
    )
    call.ctx.stats.incr("commits")
    fresh = call.ctx.storage.get_repo(meta.key) or meta
    event = content_event(fresh, call.base_url, result.ref, result.old_sha, result.commit.id)
    call.ctx.emit(fresh, event)
    return JSONResponse(
        {
            "success": True,
            "commitOid": result.commit.id,
            "commitUrl": f"{call.base_url}/{meta.key}/commit/{result.commit.id}",
            "hookOutput": "",
            "pullRequestUrl": None,
        }
    )


def _upload_url(call: Call, oid: str, size: int) -> str:
    expires = str(int(time.time()) + UPLOAD_URL_TTL)
    sig = lfs.sign(call.ctx.secret, call.repo_key, oid, str(size), expires)
    query = urlencode({"size": size, "expires": expires, "sig": sig})
    return f"{call.base_url}/_lfs/upload/{call.repo_key}/{oid}?{query}"


async def lfs_batch(call: Call) -> Response:
    body = await json_body(call)
    if body.get("operation") != "upload":
        call.read_repo()
        raise errors.bad_request("localhub's LFS batch API supports uploads only.")
    meta = call.write_repo()
    objects = []
    for obj in _list(body, "objects"):
        oid, size = str(obj.get("oid", "")), obj.get("size")
        if not _OID_RE.match(oid) or not isinstance(size, int) or size < 0:
            error = {"code": 422, "message": "Invalid oid or size"}
            objects.append({"oid": oid, "size": size, "error": error})
            continue
        answer: dict = {"oid": oid, "size": size, "authenticated": True}
        if not call.ctx.storage.repo_has_lfs(meta, oid):
            answer["actions"] = {
                "upload": {"href": _upload_url(call, oid, size), "expires_in": UPLOAD_URL_TTL},
                "verify": {"href": f"{call.base_url}/{call.repo_key}.git/info/lfs/objects/verify"},
            }
        objects.append(answer)
    payload = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
    return JSONResponse(payload, media_type=LFS_MEDIA_TYPE)


async def lfs_upload(call: Call) -> Response:
    """PUT of one LFS object to a signed URL; the body must hash to the oid."""
    query = call.request.query_params
    oid, size, expires = call.params["oid"], query.get("size", ""), query.get("expires", "")
    sig_ok = lfs.verify_signature(
        call.ctx.secret, query.get("sig", ""), call.repo_key, oid, size, expires
    )
    if not sig_ok or not expires.isdigit() or int(expires) < time.time():
        raise errors.forbidden("Invalid or expired upload URL.")
    writer = call.ctx.storage.blob_writer()
    try:
        async for chunk in call.request.stream():
            if not chunk:
                continue
            await throttle(call.ctx.uploads, len(chunk))
            call.ctx.stats.incr("upload", "lfs_bytes", by=len(chunk))
            writer.write(chunk)
            if writer.size > int(size):
                raise errors.bad_request("Upload is larger than announced.")
        await run_in_threadpool(writer.finish, oid, int(size))
    except BaseException:
        writer.abort()
        raise
    await run_in_threadpool(call.ctx.storage.add_lfs_object, call.repo_key, oid)
    return Response(status_code=200)


async def lfs_verify(call: Call) -> Response:
    meta = call.write_repo()
    body = await json_body(call)
    oid = str(body.get("oid", ""))
    if not call.ctx.storage.repo_has_lfs(meta, oid):
        raise errors.HubError(404, f"LFS object {oid} not found")
    if call.ctx.storage.blob_path(oid).stat().st_size != body.get("size"):
        raise errors.HubError(422, f"LFS object {oid} has another size")
    return JSONResponse({}, media_type=LFS_MEDIA_TYPE)


ROUTES = (
    ("POST", r"/api/{kind}/{repo}/preupload/{rev}", preupload),
    ("POST", r"/api/{kind}/{repo}/commit/{rev}", commit),
    ("POST", r"/{prefix}{repo}\.git/info/lfs/objects/batch", lfs_batch),
    ("POST", r"/{prefix}{repo}\.git/info/lfs/objects/verify", lfs_verify),
    ("PUT", r"/_lfs/upload/{prefix}{repo}/(?P<oid>[0-9a-f]{64})", lfs_upload),
)
