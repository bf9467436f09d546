"""Repo and account endpoints: whoami, create/delete/settings, info, tree, commits, refs.

Repo endpoints serve models (`/api/models/...`) and datasets (`/api/datasets/...`) alike.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from merge_engine import RecipeError

from . import errors, views
from .auth import check_write, require_user
from .context import Call
from .storage import DEFAULT_BRANCH, REPO_TYPES, Commit, ref_name, repo_key
from .webhooks import repo_event

JSON_BODY_LIMIT = 2 * 1024 * 1024
"""Bytes of a JSON request body (a preupload or LFS batch of 256 files needs ~200 KB)."""


async def json_body(call: Call) -> dict:
    """The request's JSON object body; 400 when it is not one, 413 when over the limit."""
    try:
        body = json.loads(await call.body(JSON_BODY_LIMIT) or b"{}")
    except (ValueError, RecursionError) as exc:
        raise errors.bad_request(f"Invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise errors.bad_request("Expected a JSON object body.")
    return body


def read_card(call: Call, commit: Commit) -> dict | None:
    """Card data of the README at `commit` (None when missing or unparsable)."""
    entry = commit.tree.get("README.md")
    if entry is None or entry.size > 1_000_000:
        return None
    try:
        text = call.ctx.storage.blob_path(entry.sha256).read_text(encoding="utf-8")
        return views.parse_card_data(text)
    except (OSError, UnicodeDecodeError, RecipeError):
        return None


async def whoami(call: Call) -> Response:
    user = require_user(call.user)
    return JSONResponse(views.whoami(user.name, user.uid))


def body_repo_key(body: dict, user_name: str) -> tuple[str, str]:
    """(repo type, storage key) of a create/delete body: ``type``, ``organization``,
    ``name``; 400 for a repo type localhub does not serve."""
    repo_type = body.get("type") or "model"
    if repo_type not in REPO_TYPES:
        raise errors.bad_request(f"localhub serves model and dataset repos, not {repo_type!r}.")
    repo_id = f"{body.get('organization') or user_name}/{body.get('name')}"
    return repo_type, repo_key(repo_type, repo_id)


async def create_repo(call: Call) -> Response:
    user = require_user(call.user)
    body = await json_body(call)
    repo_type, key = body_repo_key(body, user.name)
    namespace = body.get("organization") or user.name
    if namespace != user.name:
        raise errors.forbidden(
            f"You don't have the rights to create a {repo_type} under {namespace}"
        )
    private = body.get("visibility") == "private" or body.get("private") is True
    url = f"{call.base_url}/{key}"
    try:
        meta = await run_in_threadpool(call.ctx.storage.create_repo, key, private, user.name)
    except errors.HubError as exc:
        exc.extra["url"] = url  # the client reads it back when exist_ok=True
        raise
    call.ctx.emit(meta, repo_event(meta, call.base_url, "create"))
    return JSONResponse({"url": url, "name": meta.repo_id, "id": meta.uid})


async def delete_repo(call: Call) -> Response:
    user = require_user(call.user)
    body = await json_body(call)
    _, key = body_repo_key(body, user.name)
    check_write(user, call.ctx.storage.get_repo(key))
    meta = await run_in_threadpool(call.ctx.storage.delete_repo, key)
    call.ctx.emit(meta, repo_event(meta, call.base_url, "delete"))
    return Response(status_code=200)


async def update_settings(call: Call) -> Response:
    call.write_repo()
    body = await json_body(call)
    visibility = body.get("visibility", body.get("private"))
    private = None if visibility is None else visibility in ("private", True)
    gated = body.get("gated")
    if gated not in (None, False, "auto", "manual"):
        raise errors.bad_request("'gated' must be false, 'auto' or 'manual'.")
    await run_in_threadpool(
        lambda: call.ctx.storage.update_settings(call.repo_key, private=private, gated=gated)
    )
    return JSONResponse({})


async def validate_yaml(call: Call) -> Response:
    body = await json_body(call)
    try:
        views.parse_card_data(str(body.get("content", "")))
    except RecipeError as exc:
        message = f"Invalid YAML front matter: {exc}"
        return JSONResponse({"errors": [{"message": message}], "warnings": []}, status_code=400)
    return JSONResponse({"errors": [], "warnings": []})


async def repo_info(call: Call) -> Response:
    meta = call.read_repo()
    commit = call.ctx.storage.resolve(meta, call.params.get("rev"))
    info = views.repo_info(meta, commit, read_card(call, commit), blobs=call.flag("blobs"))
    expand = call.request.query_params.getlist("expand") + call.request.query_params.getlist(
        "expand[]"
    )
    if expand:
        info = {k: v for k, v in info.items() if k in {"_id", "id", *expand}}
    return JSONResponse(info)


async def tree(call: Call) -> Response:
    meta = call.read_repo()
    commit = call.ctx.storage.resolve(meta, call.params["rev"])
    path = call.params.get("path", "")
    listing = views.tree_listing(commit.tree, path, recursive=call.flag("recursive"))
    if listing is None:
        raise errors.entry_not_found(path, commit.id)
    return JSONResponse(listing)


async def paths_info(call: Call) -> Response:
    meta = call.read_repo()
    commit = call.ctx.storage.resolve(meta, call.params["rev"])
    if call.request.headers.get("content-type", "").startswith("application/json"):
        paths = (await json_body(call)).get("paths", [])
    else:
        raw = await call.body(JSON_BODY_LIMIT)
        paths = parse_qs(raw.decode("utf-8", "replace")).get("paths", [])
    if not isinstance(paths, list):
        raise errors.bad_request("'paths' must be a list of paths.")
    return JSONResponse(views.paths_info(commit.tree, [str(p) for p in paths]))


async def commits(call: Call) -> Response:
    meta = call.read_repo()
    head = call.ctx.storage.resolve(meta, call.params["rev"])
    history = call.ctx.storage.history(meta.key, head)
    return JSONResponse([views.commit_item(c) for c in history])


async def refs(call: Call) -> Response:
    meta = call.read_repo()
    return JSONResponse(views.refs(meta, include_prs=call.flag("include_prs")))


async def create_branch(call: Call) -> Response:
    """A branch, or for a dataset the `refs/convert/parquet` ref the Hub's converter writes
    (here its owner writes the converted files there, as the converter would)."""
    meta = call.write_repo()
    body = await json_body(call)
    ref = ref_name(call.params["rev"])
    if ref.startswith("refs/convert/") and meta.repo_type != "dataset":
        raise errors.bad_request(f"Only dataset repos have {ref}.")
    if ref in meta.refs:
        raise errors.HubError(409, "Reference already exists")
    start = call.ctx.storage.resolve(meta, body.get("startingPoint") or DEFAULT_BRANCH)
    await run_in_threadpool(call.ctx.storage.set_ref, meta.key, ref, start.id)
    return JSONResponse({})


async def delete_branch(call: Call) -> Response:
    meta = call.write_repo()
    ref = ref_name(call.params["rev"])
    if ref == ref_name(DEFAULT_BRANCH):
        raise errors.forbidden("Cannot delete the default branch.")
    if ref not in meta.refs:
        raise errors.revision_not_found(call.params["rev"])
    await run_in_threadpool(call.ctx.storage.set_ref, meta.key, ref, None)
    return JSONResponse({})


async def legacy_repo(call: Call) -> Response:
    """A repo id without a namespace (``gpt2``): localhub has none of those."""
    raise errors.repo_not_found(anonymous=call.user is None)


ROUTES = (
    ("GET", r"/api/whoami-v2", whoami),
    ("POST", r"/api/repos/create", create_repo),
    ("DELETE", r"/api/repos/delete", delete_repo),
    ("POST", r"/api/validate-yaml", validate_yaml),
    ("PUT", r"/api/{kind}/{repo}/settings", update_settings),
    ("GET", r"/api/{kind}/{repo}", repo_info),
    ("GET", r"/api/{kind}/{repo}/revision/{rev}", repo_info),
    ("GET", r"/api/{kind}/{repo}/tree/{rev}(?:/{path})?", tree),
    ("POST", r"/api/{kind}/{repo}/paths-info/{rev}", paths_info),
    ("GET", r"/api/{kind}/{repo}/commits/{rev}", commits),
    ("GET", r"/api/{kind}/{repo}/refs", refs),
    ("POST", r"/api/{kind}/{repo}/branch/{rev}", create_branch),
    ("DELETE", r"/api/{kind}/{repo}/branch/{rev}", delete_branch),
    ("GET", r"/api/{kind}/[^/]+(?:/revision/[^/]+)?", legacy_repo),
)
