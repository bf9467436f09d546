"""JSON shapes of Hub API answers, built from storage objects (no I/O here).

Each function mirrors what `huggingface_hub` parses: `ModelInfo`/`DatasetInfo`,
`RepoFile`/`RepoFolder`,
`GitCommitInfo`, `GitRefs`, `whoami`.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

from merge_engine import CARD_LIMITS, load_yaml

from .lfs import lfs_pointer
from .storage import Commit, FileEntry, RepoMeta

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.S)


def iso(ts: float) -> str:
    """Hub-style timestamp: `2024-05-01T12:00:00.000Z`."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def split_front_matter(readme: str) -> tuple[str | None, str]:
    """(the README's YAML front matter or None, the Markdown body after it)."""
    match = _FRONT_MATTER.match(readme)
    return (match.group(1), readme[match.end() :]) if match else (None, readme)


def parse_card_data(readme: str) -> dict | None:
    """The README's YAML front matter as a dict; None when absent. Raises RecipeError
    (invalid, or over the card budgets: an alias bomb would otherwise be expanded when
    the card data is sent as JSON)."""
    match = _FRONT_MATTER.match(readme)
    if match is None:
        return None
    data = load_yaml(match.group(1), CARD_LIMITS)[0]
    return data if isinstance(data, dict) else None


def card_tags(card: dict | None) -> list[str]:
    """Tags the Hub derives from card data: its `tags`, `license:...`, `base_model:...`."""
    if not card:
        return []
    tags = [str(t) for t in _as_list(card.get("tags"))]
    tags += [f"license:{lic}" for lic in _as_list(card.get("license"))]
    tags += [f"base_model:{bm}" for bm in _as_list(card.get("base_model"))]
    return tags


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def lfs_info(entry: FileEntry, key: str) -> dict:
    """LFS block; `key` is "oid" (tree API) or "sha256" (siblings)."""
    pointer = len(lfs_pointer(entry.sha256, entry.size))
    return {key: entry.sha256, "size": entry.size, "pointerSize": pointer}


def file_entry(path: str, entry: FileEntry) -> dict:
    item = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
    if entry.lfs:
        item["lfs"] = lfs_info(entry, "oid")
    return item


def folder_entry(path: str, tree: dict[str, FileEntry]) -> dict:
    prefix = path + "/"
    digest = hashlib.sha1()
    for p in sorted(p for p in tree if p.startswith(prefix)):
        digest.update(f"{p}\0{tree[p].oid}\n".encode())
    return {"type": "directory", "oid": digest.hexdigest(), "size": 0, "path": path}


def folders(tree: dict[str, FileEntry]) -> set[str]:
    """Every folder path that holds at least one file."""
    out = set()
    for path in tree:
        parts = path.split("/")[:-1]
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return out


def tree_listing(tree: dict[str, FileEntry], path: str, recursive: bool) -> list[dict] | None:
    """Entries under folder `path` ("" = root); None when `path` is not a folder."""
    path = path.strip("/")
    all_folders = folders(tree)
    if path and path not in all_folders:
        return None
    prefix = f"{path}/" if path else ""

    def wanted(p: str) -> bool:
        return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

    dirs = [folder_entry(d, tree) for d in sorted(all_folders) if wanted(d)]
    files = [file_entry(p, tree[p]) for p in sorted(tree) if wanted(p)]
    return dirs + files


def paths_info(tree: dict[str, FileEntry], paths: list[str]) -> list[dict]:
    """Entries for the requested paths that exist (missing ones are left out, like the Hub)."""
    all_folders = folders(tree)
    out = []
    for raw in paths:
        path = raw.strip("/")
        if path in tree:
            out.append(file_entry(path, tree[path]))
        elif path in all_folders:
            out.append(folder_entry(path, tree))
    return out


def repo_info(meta: RepoMeta, commit: Commit, card: dict | None, blobs: bool) -> dict:
    """`/api/models|datasets/{repo_id}[/revision/{rev}]` answer (a model's has `modelId`,
    `library_name` and `pipeline_tag`)."""
    siblings = []
    for path, entry in sorted(commit.tree.items()):
        sibling: dict = {"rfilename": path}
        if blobs:
            sibling.update(size=entry.size, blobId=entry.oid)
            if entry.lfs:
                sibling["lfs"] = lfs_info(entry, "sha256")
        siblings.append(sibling)
    info = {
        "_id": meta.uid,
        "id": meta.repo_id,
        "author": meta.namespace,
        "sha": commit.id,
        "lastModified": iso(commit.date),
        "createdAt": iso(meta.created_at),
        "private": meta.private,
        "gated": meta.gated,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": card_tags(card),
        "siblings": siblings,
        "spaces": [],
        "usedStorage": sum(e.size for e in commit.tree.values()),
    }
    if meta.repo_type == "model":
        info["modelId"] = meta.repo_id
    if card is not None:
        info["cardData"] = card
        for key in ("library_name", "pipeline_tag"):
            if meta.repo_type == "model" and isinstance(card.get(key), str):
                info[key] = card[key]
    return info


def commit_item(commit: Commit) -> dict:
    """One `/api/models/{repo_id}/commits/{rev}` item."""
    return {
        "id": commit.id,
        "title": commit.title,
        "message": commit.message,
        "authors": [{"user": commit.author, "avatar": None}],
        "date": iso(commit.date),
        "formatted": {"title": commit.title, "message": commit.message},
    }


def refs(meta: RepoMeta, include_prs: bool) -> dict:
    """`/api/models|datasets/{repo_id}/refs` answer (`refs/convert/parquet` is a convert)."""

    def item(ref: str, name: str) -> dict:
        return {"name": name, "ref": ref, "targetCommit": meta.refs[ref]}

    def under(prefix: str) -> list[dict]:
        return [item(r, r.removeprefix(prefix)) for r in sorted(meta.refs) if r.startswith(prefix)]

    out: dict = {"branches": under("refs/heads/"), "converts": under("refs/convert/"), "tags": []}
    if include_prs:
        out["pullRequests"] = [
            item(r, r.removeprefix("refs/")) for r in sorted(meta.refs) if r.startswith("refs/pr/")
        ]
    return out


def whoami(name: str, uid: str) -> dict:
    """`/api/whoami-v2` answer for a user token."""
    return {
        "type": "user",
        "id": uid,
        "name": name,
        "fullname": name,
        "email": None,
        "emailVerified": False,
        "canPay": False,
        "isPro": False,
        "periodEnd": None,
        "avatarUrl": "",
        "orgs": [],
        "auth": {
            "type": "access_token",
            "accessToken": {"displayName": "localhub", "role": "write"},
        },
    }
