"""The human side of the Hub, for the links mergebot writes: server-rendered HTML pages.

    GET /                                     the namespaces
    GET /{namespace}                          a user's models and datasets
    GET /{repo}                               model card, files, branches, commits
                                              (a dataset's pages: /datasets/{repo}/...)
    GET /{repo}/commits/{rev}                 the commit list of a branch
    GET /{repo}/commit/{rev}                  a commit: message, parent, changed files
    GET /{repo}/tree/{rev}[/{folder}]         files at a revision
    GET /{repo}/blob/{rev}/{path}             one file (text shown, binary described)

Contracts: plain HTML and CSS, no JavaScript; every value from a repo (card, messages,
file names and contents) is escaped, and the model card's Markdown is rendered with raw
HTML disabled, so a hostile card shows as text. Visibility is the API's: a private repo is
a 404 page to anyone but its owner, a gated repo's file contents need the owner's token.
These routes come after the API's, so ``/api/...`` never reaches them.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from urllib.parse import quote

from markdown_it import MarkdownIt
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, Response

from . import errors, views
from .auth import check_files, check_read
from .context import Call
from .storage import DEFAULT_BRANCH, Commit, FileEntry, RepoMeta

MAX_SHOWN_BYTES = 512 * 1024
"""Text files up to this size are shown inline; larger ones get a download link."""
MAX_COMMITS = 100
_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1f2328;background:#fff}
header{background:#f6f8fa;border-bottom:1px solid #d0d7de;padding:10px 24px}
header a{font-weight:600}
main{max-width:1100px;margin:0 auto;padding:16px 24px}
a{color:#0969da;text-decoration:none} a:hover{text-decoration:underline}
table{border-collapse:collapse;margin:8px 0;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left;vertical-align:top}
td{overflow-wrap:normal;word-break:normal}
code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;border-radius:6px}
.muted{color:#656d76} .card{border:1px solid #d0d7de;border-radius:6px;padding:0 20px}
nav a{margin-right:14px}
"""
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
"""Raw HTML in a card is shown as text, never passed through."""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _url(*parts: str) -> str:
    """A site path from unescaped parts (each percent-quoted, slashes kept)."""
    return "/" + "/".join(quote(p, safe="/") for p in parts if p)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}'
        f'</title><meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<style>{_CSS}</style></head><body><header><a href=\"/\">localhub</a></header>"
        f"<main>{body}</main></body></html>"
    )
    return HTMLResponse(doc, status_code=status)


def _error_page(exc: errors.HubError) -> HTMLResponse:
    """The error as a page; a repo hidden from the caller is a 404, as on the Hub's site."""
    status = 404 if exc.code == "RepoNotFound" else exc.status
    title = "Not found" if status == 404 else f"Error {status}"
    body = f"<h1>{_e(title)}</h1><p>{_e(exc.message)}</p>"
    return _page(title, body, status)


def html_route(handler):
    """Render a ``HubError`` as an HTML page with its status (the API answers JSON)."""

    async def wrapper(call: Call) -> Response:
        try:
            return await run_in_threadpool(handler, call)
        except errors.HubError as exc:
            return _error_page(exc)

    return wrapper


def _repo_title(meta: RepoMeta) -> str:
    ns, name = meta.repo_id.split("/", 1)
    badge = ' <span class="muted">(private)</span>' if meta.private else ""
    return (
        f'<h1><a href="{_url(ns)}">{_e(ns)}</a> / <a href="{_url(meta.key)}">{_e(name)}'
        f"</a>{badge}</h1>"
    )


def _nav(meta: RepoMeta, rev: str) -> str:
    return (
        f'<nav><a href="{_url(meta.key)}">{meta.repo_type.capitalize()} card</a>'
        f'<a href="{_url(meta.key, "tree", rev)}">Files</a>'
        f'<a href="{_url(meta.key, "commits", rev)}">Commits</a></nav>'
    )


def render_card(readme: str) -> str:
    """A model card as HTML: its Markdown body (raw HTML escaped), then its metadata."""
    front, body = views.split_front_matter(readme)
    out = _MARKDOWN.render(body)
    if front is not None:
        out += f"<h3>Card metadata</h3><pre>{_e(front)}</pre>"
    return out


def _readme(call: Call, commit: Commit) -> str | None:
    entry = commit.tree.get("README.md")
    if entry is None or entry.size > MAX_SHOWN_BYTES:
        return None
    try:
        return call.ctx.storage.blob_path(entry.sha256).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _files_table(meta: RepoMeta, rev: str, commit: Commit, folder: str) -> str:
    listing = views.tree_listing(commit.tree, folder, recursive=False)
    if listing is None:
        raise errors.entry_not_found(folder, commit.id)
    rows = []
    if folder:
        parent = folder.rsplit("/", 1)[0] if "/" in folder else ""
        rows.append(f'<tr><td><a href="{_url(meta.key, "tree", rev, parent)}">..</a></td>'
                    "<td></td><td></td></tr>")
    for item in listing:
        path = item["path"]
        name = path.rsplit("/", 1)[-1]
        if item["type"] == "directory":
            link, size, kind = _url(meta.key, "tree", rev, path), "", "folder"
        else:
            entry = commit.tree[path]
            link, size = _url(meta.key, "blob", rev, path), _size(entry.size)
            kind = "LFS" if entry.lfs else ""
        rows.append(f'<tr><td><a href="{link}">{_e(name)}</a></td><td>{size}</td>'
                    f"<td>{kind}</td></tr>")
    return "<table><tr><th>file</th><th>size</th><th></th></tr>" + "".join(rows) + "</table>"


def _size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _commit_rows(meta: RepoMeta, history: list[Commit]) -> str:
    rows = [
        f'<tr><td><a href="{_url(meta.key, "commit", c.id)}"><code>{c.id[:12]}</code></a>'
        f"</td><td>{_e(c.title)}</td><td>{_e(c.author)}</td><td>{_when(c.date)}</td></tr>"
        for c in history[:MAX_COMMITS]
    ]
    head = "<tr><th>commit</th><th>title</th><th>author</th><th>date</th></tr>"
    more = f'<p class="muted">{len(history) - MAX_COMMITS} older commits not shown.</p>'
    return f"<table>{head}{''.join(rows)}</table>" + (more if len(history) > MAX_COMMITS else "")


def _read(call: Call) -> RepoMeta:
    return check_read(call.user, call.ctx.storage.get_repo(call.repo_key))


def repo_page(call: Call) -> Response:
    meta = _read(call)
    storage = call.ctx.storage
    head = storage.resolve(meta, DEFAULT_BRANCH)
    readme = _readme(call, head) if check_files_ok(call, meta) else None
    kind = meta.repo_type.capitalize()
    card = (render_card(readme) if readme
            else f'<p class="muted">This repo has no {meta.repo_type} card.</p>')
    branches = "".join(
        f'<li><a href="{_url(meta.key, "tree", ref.removeprefix("refs/heads/"))}">'
        f"{_e(ref.removeprefix('refs/heads/'))}</a> at <a href=\""
        f'{_url(meta.key, "commit", sha)}"><code>{sha[:12]}</code></a></li>'
        for ref, sha in sorted(meta.refs.items())
        if ref.startswith("refs/heads/")
    )
    body = (
        _repo_title(meta) + _nav(meta, DEFAULT_BRANCH)
        + f'<p class="muted">main at <a href="{_url(meta.key, "commit", head.id)}">'
        f"<code>{head.id}</code></a>, {_when(head.date)}</p>"
        + f'<h2>{kind} card</h2><div class="card">{card}</div>'
        + "<h2>Files</h2>" + _files_table(meta, DEFAULT_BRANCH, head, "")
        + f"<h2>Branches</h2><ul>{branches}</ul>"
        + "<h2>Commits</h2>" + _commit_rows(meta, storage.history(meta.key, head))
    )
    return _page(meta.repo_id, body)


def check_files_ok(call: Call, meta: RepoMeta) -> bool:
    """May the caller read the repo's files (a gated repo's need the owner's token)?"""
    try:
        check_files(call.user, meta)
    except errors.HubError:
        return False
    return True


def commits_page(call: Call) -> Response:
    meta = _read(call)
    rev = call.params["rev"]
    head = call.ctx.storage.resolve(meta, rev)
    body = (_repo_title(meta) + _nav(meta, rev) + f"<h2>Commits on <code>{_e(rev)}</code></h2>"
            + _commit_rows(meta, call.ctx.storage.history(meta.key, head)))
    return _page(f"Commits · {meta.repo_id}", body)


def _changes(old: dict[str, FileEntry], new: dict[str, FileEntry]) -> list[tuple[str, str]]:
    """(change, path) for every file added, modified or deleted, by path."""
    out = []
    for path in sorted(set(old) | set(new)):
        if path not in old:
            out.append(("added", path))
        elif path not in new:
            out.append(("deleted", path))
        elif old[path].oid != new[path].oid:
            out.append(("modified", path))
    return out


def commit_page(call: Call) -> Response:
    meta = _read(call)
    storage = call.ctx.storage
    commit = storage.resolve(meta, call.params["rev"])
    parent = storage.read_commit(meta.key, commit.parents[0]) if commit.parents else None
    changed = _changes(parent.tree if parent else {}, commit.tree)
    rows = []
    for change, path in changed:
        link = _e(path)
        if change != "deleted":
            link = f'<a href="{_url(meta.key, "blob", commit.id, path)}">{_e(path)}</a>'
            size = _size(commit.tree[path].size)
        else:
            size = ""
        rows.append(f"<tr><td>{change}</td><td>{link}</td><td>{size}</td></tr>")
    parent_link = (
        f'<a href="{_url(meta.key, "commit", parent.id)}"><code>{parent.id[:12]}</code></a>'
        if parent else "none"
    )
    message = f"<pre>{_e(commit.message)}</pre>" if commit.message.strip() else ""
    body = (
        _repo_title(meta) + _nav(meta, commit.id)
        + f"<h2>{_e(commit.title)}</h2>{message}"
        + f"<p>Commit <code>{commit.id}</code> by {_e(commit.author or 'unknown')}, "
        f"{_when(commit.date)} · parent {parent_link} · "
        f'<a href="{_url(meta.key, "tree", commit.id)}">browse files</a></p>'
        + f"<h3>{len(changed)} changed files</h3><table><tr><th>change</th><th>file</th>"
        f"<th>size</th></tr>{''.join(rows)}</table>"
    )
    return _page(f"{commit.title} · {meta.repo_id}", body)


def tree_page(call: Call) -> Response:
    meta = _read(call)
    rev = call.params["rev"]
    commit = call.ctx.storage.resolve(meta, rev)
    folder = call.params.get("path", "").strip("/")
    where = f"<code>{_e(rev)}</code>" + (f" / <code>{_e(folder)}</code>" if folder else "")
    body = (_repo_title(meta) + _nav(meta, rev)
            + f"<h2>Files at {where}</h2>"
            + f'<p class="muted">commit <a href="{_url(meta.key, "commit", commit.id)}">'
            f"<code>{commit.id}</code></a></p>"
            + _files_table(meta, rev, commit, folder))
    return _page(f"Files · {meta.repo_id}", body)


def blob_page(call: Call) -> Response:
    meta = check_files(call.user, call.ctx.storage.get_repo(call.repo_key))
    rev, path = call.params["rev"], call.params["path"]
    commit = call.ctx.storage.resolve(meta, rev)
    entry = commit.tree.get(path)
    if entry is None:
        raise errors.entry_not_found(path, commit.id)
    download = _url(meta.key, "resolve", rev, path)
    facts = (f"<p>{_size(entry.size)}" + (" · stored with LFS" if entry.lfs else "")
             + f" · sha256 <code>{entry.sha256}</code> · <a href=\"{download}\">download</a>"
             f"</p>")
    text = _text(call, entry)
    shown = f"<pre>{_e(text)}</pre>" if text is not None else (
        '<p class="muted">Binary or large file: not shown.</p>'
    )
    body = (_repo_title(meta) + _nav(meta, rev)
            + f"<h2><code>{_e(path)}</code> at <code>{_e(rev)}</code></h2>" + facts + shown)
    return _page(f"{path} · {meta.repo_id}", body)


def _text(call: Call, entry: FileEntry) -> str | None:
    """A small UTF-8 text file's contents; None for LFS, large or binary (NUL) files."""
    if entry.lfs or entry.size > MAX_SHOWN_BYTES:
        return None
    try:
        text = call.ctx.storage.blob_path(entry.sha256).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return None if "\x00" in text else text


def user_page(call: Call) -> Response:
    namespace = call.params["ns"]
    storage = call.ctx.storage
    repos = [m for m in storage.list_repos(namespace) if _visible(call, m)]
    datasets = [m for m in storage.list_repos(namespace, "dataset") if _visible(call, m)]
    known = namespace in call.ctx.users.names()
    if not repos and not datasets and not known:
        raise errors.HubError(404, f"No user or organization named {namespace!r} here.")
    body = f"<h1>{_e(namespace)}</h1><h2>Models</h2>" + (
        _repo_list(repos) if repos else '<p class="muted">No models yet.</p>'
    )
    if datasets:
        body += "<h2>Datasets</h2>" + _repo_list(datasets)
    return _page(namespace, body)


def _repo_list(repos: list[RepoMeta]) -> str:
    return "<ul>" + "".join(
        f'<li><a href="{_url(m.key)}">{_e(m.repo_id)}</a>'
        + (' <span class="muted">(private)</span>' if m.private else "") + "</li>"
        for m in repos
    ) + "</ul>"


def _visible(call: Call, meta: RepoMeta) -> bool:
    try:
        check_read(call.user, meta)
    except errors.HubError:
        return False
    return True


def index_page(call: Call) -> Response:
    users = sorted(set(call.ctx.users.names()) | call.ctx.storage.namespaces())
    items = "".join(f'<li><a href="{_url(n)}">{_e(n)}</a></li>' for n in users)
    return _page("localhub", f"<h1>localhub</h1><h2>Users</h2><ul>{items}</ul>")


_NS = r"(?P<ns>(?!api$|_localhub$)[^/]+)"
ROUTES = (
    ("GET HEAD", r"/", html_route(index_page)),
    ("GET HEAD", rf"/{_NS}/?", html_route(user_page)),
    ("GET HEAD", r"/{prefix}{repo}/?", html_route(repo_page)),
    ("GET HEAD", r"/{prefix}{repo}/commits/{rev}", html_route(commits_page)),
    ("GET HEAD", r"/{prefix}{repo}/commit/{rev}", html_route(commit_page)),
    ("GET HEAD", r"/{prefix}{repo}/tree/{rev}(?:/{path})?", html_route(tree_page)),
    ("GET HEAD", r"/{prefix}{repo}/blob/{rev}/{path}", html_route(blob_page)),
)
