"""On-disk repositories: content-addressed blobs, immutable commit objects, refs.

Layout under the data directory (everything survives a restart):

    blobs/<sha256[:2]>/<sha256>            file contents, regular and LFS alike
    repos/<namespace>/<name>/repo.json     a model repo: metadata + refs ({"refs/heads/main":
                                           sha, ...}) and its repo type
    repos/<namespace>/<name>/commits/<sha>.json
    repos/<namespace>/<name>/lfs/<sha256>  empty: this LFS object was uploaded to this repo
    datasets/<namespace>/<name>/...        a dataset repo, laid out like a model repo
    tmp/                                   partial uploads and atomic-write staging

A repo is addressed by its key, the path the Hub's web URLs give it: ``alice/x`` for a
model, ``datasets/alice/x`` for a dataset (``repo_key``). Models and datasets live in
separate folders, so a model and a dataset of the same name never share refs, commits or
LFS objects; the namespaces ``datasets``, ``spaces`` and ``models`` are reserved, as on the
Hub, so a key is never ambiguous.

Contracts:
- Every file is written to a temporary name, fsynced and renamed, so a crash leaves either
  the old or the new version, never a torn one. A commit object is written before the ref
  that points at it moves.
- Commits to one repo are serialised by a per-repo lock; different repos commit in parallel.
- Blobs are shared, but an LFS object belongs to the repos it was uploaded to (or committed
  in): a commit or LFS batch in another repo cannot use it by naming its sha256.
- A commit id is the sha1 of (parents, tree, message, author, time): a 40-hex string, new for
  every commit (not git-compatible).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import errors
from .lfs import DEFAULT_GITATTRIBUTES, git_blob_oid, lfs_pointer

DEFAULT_BRANCH = "main"
REPO_TYPES = ("model", "dataset")
URL_PREFIXES = {"model": "", "dataset": "datasets/"}
"""What the Hub's URLs put before a repo id (huggingface_hub's REPO_TYPES_URL_PREFIXES)."""
_TYPE_DIRS = {"model": "repos", "dataset": "datasets"}
_RESERVED_NAMESPACES = ("datasets", "spaces", "models")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_PR_RE = re.compile(r"^refs/pr/\d+$")


@dataclass(frozen=True)
class FileEntry:
    """One file of a tree: content hash, size, whether it is stored as LFS, its git oid."""

    sha256: str
    size: int
    lfs: bool
    oid: str

    @classmethod
    def regular(cls, data: bytes) -> FileEntry:
        return cls(hashlib.sha256(data).hexdigest(), len(data), False, git_blob_oid(data))

    @classmethod
    def large(cls, sha256: str, size: int) -> FileEntry:
        return cls(sha256, size, True, git_blob_oid(lfs_pointer(sha256, size)))

    @property
    def etag(self) -> str:
        """What `/resolve` answers as ETag: the sha256 for LFS files, the git oid otherwise."""
        return self.sha256 if self.lfs else self.oid


@dataclass(frozen=True)
class Commit:
    """An immutable commit object."""

    id: str
    parents: list[str]
    tree: dict[str, FileEntry]
    title: str
    message: str
    author: str
    date: float

    def to_json(self) -> dict:
        tree = {p: [e.sha256, e.size, e.lfs, e.oid] for p, e in sorted(self.tree.items())}
        return {
            "id": self.id,
            "parents": self.parents,
            "title": self.title,
            "message": self.message,
            "author": self.author,
            "date": self.date,
            "tree": tree,
        }

    @classmethod
    def from_json(cls, data: dict) -> Commit:
        tree = {p: FileEntry(*v) for p, v in data["tree"].items()}
        return cls(
            data["id"],
            data["parents"],
            tree,
            data["title"],
            data["message"],
            data["author"],
            data["date"],
        )


@dataclass
class RepoMeta:
    """A repository's mutable metadata: visibility, gating and refs."""

    repo_id: str
    uid: str
    private: bool
    created_at: float
    refs: dict[str, str] = field(default_factory=dict)
    gated: str | bool = False  # False, "auto" or "manual": files need the owner's token
    repo_type: str = "model"  # "model" or "dataset"

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def key(self) -> str:
        """``repo_key(repo_type, repo_id)``: where storage and the web URLs find the repo."""
        return repo_key(self.repo_type, self.repo_id)


@dataclass(frozen=True)
class AddFile:
    """Commit operation: put the blob `entry` at `path`."""

    path: str
    entry: FileEntry


@dataclass(frozen=True)
class DeletePath:
    """Commit operation: delete a file, or a folder and everything under it."""

    path: str
    folder: bool = False


@dataclass(frozen=True)
class CommitResult:
    commit: Commit
    ref: str
    old_sha: str | None


def ref_name(revision: str) -> str:
    """Full ref name of a branch-like revision: "main" -> "refs/heads/main"."""
    if revision.startswith("refs/"):
        return revision
    return f"refs/heads/{revision}"


def repo_key(repo_type: str, repo_id: str) -> str:
    """The key of a repo: its id behind the Hub's URL prefix (``datasets/alice/x``)."""
    return URL_PREFIXES[repo_type] + repo_id


def split_key(key: str) -> tuple[str, str]:
    """(repo type, repo id) of a repo key."""
    for repo_type, prefix in URL_PREFIXES.items():
        if prefix and key.startswith(prefix):
            return repo_type, key[len(prefix) :]
    return "model", key


def validate_repo_id(repo_id: str) -> None:
    """Raise 400 unless `repo_id` is `namespace/name` with Hub-valid parts and a namespace
    that is not a reserved URL prefix."""
    parts = repo_id.split("/")
    ok = len(parts) == 2 and parts[0] not in _RESERVED_NAMESPACES and all(
        _NAME_RE.match(p) and "--" not in p and ".." not in p and not p.endswith(".git")
        for p in parts
    )
    if not ok:
        raise errors.bad_request(f"Invalid repo id '{repo_id}': expected 'namespace/name'.")


def write_atomic(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write `data` to `path` via a fsynced temporary file in `tmp_dir` and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class BlobWriter:
    """Streams one upload to a temporary file, hashing as it goes; `finish` stores it."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._path = storage.tmp_dir / f"{uuid.uuid4().hex}.upload"
        self._file = open(self._path, "wb")  # noqa: SIM115 - closed in finish/abort
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def finish(self, expected_sha256: str, expected_size: int) -> None:
        """Store the blob; raise 400 (and drop it) when hash or size differ."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._hash.hexdigest()
        if digest != expected_sha256 or self.size != expected_size:
            self._path.unlink(missing_ok=True)
            raise errors.bad_request(
                f"Uploaded content does not match: got sha256 {digest} and size {self.size}, "
                f"expected {expected_sha256} and {expected_size}."
            )
        target = self._storage.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path, target)

    def abort(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)


class Storage:
    """All repositories under one data directory. Thread-safe."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        for sub in ("blobs", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- blobs ---------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return bool(re.fullmatch(r"[0-9a-f]{64}", sha256)) and self.blob_path(sha256).is_file()

    def put_blob(self, data: bytes) -> FileEntry:
        """Store `data` as a regular file blob and return its entry."""
        entry = FileEntry.regular(data)
        path = self.blob_path(entry.sha256)
        if not path.is_file():
            write_atomic(path, data, self.tmp_dir)
        return entry

    def blob_writer(self) -> BlobWriter:
        return BlobWriter(self)

    def _lfs_marker(self, key: str, sha256: str) -> Path:
        return self._repo_dir(key) / "lfs" / sha256

    def add_lfs_object(self, key: str, sha256: str) -> None:
        """Record that LFS object ``sha256`` was uploaded to repo ``key`` (if it still exists)."""
        with self.lock(key):
            if self.get_repo(key) is not None and self.has_blob(sha256):
                write_atomic(self._lfs_marker(key, sha256), b"", self.tmp_dir)

    def repo_has_lfs(self, meta: RepoMeta, sha256: str) -> bool:
        """Whether ``meta``'s repo may use LFS object ``sha256``: uploaded to it, or in one of
        its branches (e.g. a copy of one of its own files)."""
        if not self.has_blob(sha256):
            return False
        if self._lfs_marker(meta.key, sha256).is_file():
            return True
        for sha in meta.refs.values():
            commit = self.read_commit(meta.key, sha)
            if commit and any(e.lfs and e.sha256 == sha256 for e in commit.tree.values()):
                return True
        return False

    # -- repos ---------------------------------------------------------------------------
    def _repo_dir(self, key: str) -> Path:
        repo_type, repo_id = split_key(key)
        return self.root / _TYPE_DIRS[repo_type] / repo_id

    def lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def get_repo(self, key: str) -> RepoMeta | None:
        """The repo's metadata; None when missing or when `key` holds no valid repo id."""
        repo_type, repo_id = split_key(key)
        try:
            validate_repo_id(repo_id)
        except errors.HubError:
            return None
        path = self._repo_dir(key) / "repo.json"
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        return RepoMeta(**{**data, "repo_type": repo_type})

    def list_repos(self, namespace: str, repo_type: str = "model") -> list[RepoMeta]:
        """The repos of one type in ``namespace``, sorted by name (none for an invalid
        namespace)."""
        if not _NAME_RE.match(namespace):
            return []
        folder = self.root / _TYPE_DIRS[repo_type] / namespace
        names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        found = (self.get_repo(repo_key(repo_type, f"{namespace}/{name}")) for name in names)
        return [meta for meta in found if meta is not None]

    def namespaces(self) -> set[str]:
        """Namespaces that hold a repo folder of any type."""
        roots = [self.root / folder for folder in _TYPE_DIRS.values()]
        return {p.name for root in roots if root.is_dir() for p in root.iterdir() if p.is_dir()}

    def _save_repo(self, meta: RepoMeta) -> None:
        data = json.dumps(meta.__dict__, indent=1).encode()
        write_atomic(self._repo_dir(meta.key) / "repo.json", data, self.tmp_dir)

    def create_repo(self, key: str, private: bool, author: str) -> RepoMeta:
        """Create a repo with the Hub's initial `.gitattributes` commit; 409 if it exists."""
        repo_type, repo_id = split_key(key)
        validate_repo_id(repo_id)
        with self.lock(key):
            if self.get_repo(key) is not None:
                raise errors.HubError(409, f"You already created this {repo_type} repo")
            now = time.time()
            uid = hashlib.sha1(f"{key}:{now}:{uuid.uuid4()}".encode()).hexdigest()[:24]
            meta = RepoMeta(repo_id, uid, private, now, repo_type=repo_type)
            entry = self.put_blob(DEFAULT_GITATTRIBUTES.encode())
            commit = self._new_commit([], {".gitattributes": entry}, "initial commit", "", author)
            self._write_commit(key, commit)
            meta.refs = {ref_name(DEFAULT_BRANCH): commit.id}
            self._save_repo(meta)
            return meta

    def delete_repo(self, key: str) -> RepoMeta:
        """Delete a repo (its blobs stay: they are shared and content-addressed)."""
        with self.lock(key):
            meta = self.get_repo(key)
            if meta is None:
                raise errors.repo_not_found()
            trash = self.tmp_dir / f"deleted-{uuid.uuid4().hex}"
            os.replace(self._repo_dir(key), trash)
            shutil.rmtree(trash, ignore_errors=True)
            return meta

    def update_settings(self, key: str, **settings) -> None:
        """Set `private` and/or `gated` (keys with value None are left alone)."""
        with self.lock(key):
            meta = self.get_repo(key)
            if meta is None:
                raise errors.repo_not_found()
            for key in ("private", "gated"):
                if settings.get(key) is not None:
                    setattr(meta, key, settings[key])
            self._save_repo(meta)

    def set_ref(self, key: str, ref: str, sha: str | None) -> None:
        """Point `ref` at commit `sha` (None deletes the ref)."""
        with self.lock(key):
            meta = self.get_repo(key)
            if meta is None:
                raise errors.repo_not_found()
            if sha is None:
                meta.refs.pop(ref, None)
            else:
                meta.refs[ref] = sha
            self._save_repo(meta)

    # -- commits -------------------------------------------------------------------------
    def _commit_path(self, key: str, sha: str) -> Path:
        return self._repo_dir(key) / "commits" / f"{sha}.json"

    def _write_commit(self, key: str, commit: Commit) -> None:
        data = json.dumps(commit.to_json()).encode()
        write_atomic(self._commit_path(key, commit.id), data, self.tmp_dir)

    def read_commit(self, key: str, sha: str) -> Commit | None:
        if not _SHA_RE.match(sha):
            return None
        try:
            return Commit.from_json(json.loads(self._commit_path(key, sha).read_text()))
        except FileNotFoundError:
            return None

    def resolve(self, meta: RepoMeta, revision: str | None) -> Commit:
        """The commit a branch, `refs/...` name or full commit sha names; 404 RevisionNotFound."""
        revision = revision or DEFAULT_BRANCH
        sha = meta.refs.get(ref_name(revision))
        if sha is None and _SHA_RE.match(revision.lower()):
            sha = revision.lower()
        commit = self.read_commit(meta.key, sha) if sha else None
        if commit is None:
            raise errors.revision_not_found(revision)
        return commit

    def branch_head(self, meta: RepoMeta, revision: str) -> Commit:
        """The commit a write to branch `revision` builds on (a new `refs/pr/N` starts at main).

        400 for a commit sha, 404 RevisionNotFound for an unknown branch.
        """
        if _SHA_RE.match(revision):
            raise errors.bad_request("Cannot commit to a commit sha: pass a branch name.")
        ref = ref_name(revision)
        sha = meta.refs.get(ref)
        if sha is None and _PR_RE.match(ref):
            sha = meta.refs.get(ref_name(DEFAULT_BRANCH))
        commit = self.read_commit(meta.key, sha) if sha else None
        if commit is None:
            raise errors.revision_not_found(revision)
        return commit

    def history(self, key: str, head: Commit) -> list[Commit]:
        """Commits reachable from `head` by first parents, newest first."""
        commits = [head]
        while commits[-1].parents:
            parent = self.read_commit(key, commits[-1].parents[0])
            if parent is None:
                break
            commits.append(parent)
        return commits

    @staticmethod
    def _new_commit(
        parents: list[str], tree: dict[str, FileEntry], title: str, message: str, author: str
    ) -> Commit:
        date = time.time()
        body = json.dumps(
            {
                "parents": parents,
                "tree": {p: e.oid for p, e in sorted(tree.items())},
                "title": title,
                "message": message,
                "author": author,
                "date": date,
                "nonce": uuid.uuid4().hex,
            }
        )
        sha = hashlib.sha1(body.encode()).hexdigest()
        return Commit(sha, parents, tree, title, message, author, date)

    def commit(
        self,
        key: str,
        revision: str,
        operations: Iterable[AddFile | DeletePath],
        *,
        title: str,
        message: str,
        author: str,
        parent_commit: str | None = None,
    ) -> CommitResult:
        """Apply `operations` on the head of branch `revision` and move the branch.

        A `refs/pr/N` ref that does not exist yet is created from main. 412 when
        `parent_commit` is given and is not (a prefix of) the current head.
        """
        with self.lock(key):
            meta = self.get_repo(key)
            if meta is None:
                raise errors.repo_not_found()
            ref = ref_name(revision)
            old_sha = meta.refs.get(ref)
            base = self.branch_head(meta, revision)
            if parent_commit is not None and not base.id.startswith(parent_commit.lower()):
                raise errors.HubError(
                    412,
                    f"A commit has happened since. Please refresh and try again. "
                    f"(parent commit {parent_commit} is not the head {base.id})",
                )
            tree = _apply(dict(base.tree), operations)
            commit = self._new_commit([base.id], tree, title, message, author)
            self._write_commit(key, commit)
            meta.refs[ref] = commit.id
            self._save_repo(meta)
            return CommitResult(commit, ref, old_sha)


def _apply(tree: dict[str, FileEntry], operations: Iterable[AddFile | DeletePath]) -> dict:
    for op in operations:
        if isinstance(op, AddFile):
            tree[op.path] = op.entry
            continue
        path = op.path.strip("/")
        prefix = path + "/"
        doomed = [p for p in tree if p.startswith(prefix)] if op.folder else []
        if not op.folder and path in tree:
            doomed = [path]
        if not doomed:
            kind = "folder" if op.folder else "file"
            raise errors.HubError(
                404,
                f"A {kind} with this name doesn't exist: {path}",
                "EntryNotFound",
            )
        for p in doomed:
            del tree[p]
    return tree
