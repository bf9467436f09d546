"""Evaluation texts from a Hub dataset: the parquet files of one config and split, pinned
to a commit SHA, read with pyarrow through HTTP range requests.

Where the files are, at the resolved commit (as the Hub and ``datasets`` lay them out):

1. The dataset card's ``configs:`` list (``config_name``, ``data_files`` as a pattern, a
   list of patterns or ``{split, path}`` items, ``default: true``); the config asked for,
   or without one the default config (marked ``default``, named ``default``, or the only one).
2. Without ``configs:``, files named after the split: ``{split}/``, ``data/{split}-*`` or
   ``data/{split}/`` first, then any folder or file name holding the split's keyword between
   delimiters (``train``/``training``, ``validation``/``valid``/``val``/``dev``,
   ``test``/``testing``/``eval``/``evaluation``); with no split keyword anywhere, every
   file is ``train``. A config asked for without ``configs:`` is a folder of that name.
3. The parquet converter's branch ``refs/convert/parquet``: ``{config}/{split}/*.parquet``
   and ``{config}/partial-{split}/*.parquet`` (``default`` without a config) — rule 2 inside
   the config's folder. Read when asked for (``revision="refs/convert/parquet"`` or one of
   its commits), or when the default branch has no parquet file for the split (CSV or JSON
   datasets) and no revision was asked for; the SHA returned is then that branch's.

Only the asked column is read, row group by row group and page by page (no pre-buffering),
through a read-ahead window of ``READ_BLOCK`` bytes: a few samples out of a large file cost
its footer and the first pages of that column, not the file.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import httpx2
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import errors as hub_errors
from huggingface_hub import hf_hub_url
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers

from merge_engine.errors import InputError, MergeEngineError, RecipeError, SourceError
from merge_engine.io.hub import HubAccess, read_range
from merge_engine.io.retry import retry
from merge_engine.recipe.locations import CARD_LIMITS, load_yaml

CONVERT_REF = "refs/convert/parquet"
READ_BLOCK = 256 * 1024
"""Bytes fetched per range request (pyarrow's small reads are served from this window)."""
MAX_READ_BYTES = 64 * 1024 * 1024
"""The most one read of a parquet file may ask for (a page or the footer): a file that
needs more is refused rather than held in memory."""
MAX_DECODED_BYTES = 256 * 1024 * 1024
"""The most the text column of one row group may decode to (its declared size, checked
before the row group is read)."""
SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_DELIM = r"[-._ 0-9]"
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.S)


@dataclass(frozen=True)
class _Where:
    """What the user asked for, for messages."""

    repo: str
    config: str | None
    split: str
    column: str

    def __str__(self) -> str:
        config = f", config {self.config!r}" if self.config else ""
        return f"dataset {self.repo}{config}, split {self.split!r}"


def load_dataset_texts(hub: HubAccess, repo: str, *, config: str | None, split: str,
                       column: str, samples: int,
                       revision: str | None = None) -> tuple[list[str], str]:
    """The first ``samples`` non-empty texts of ``column`` in split ``split`` of ``config``
    of the Hub dataset ``repo`` at ``revision`` (a branch, tag or SHA; None: the default
    branch), and the commit SHA they were read at. Texts that are null, empty or only
    whitespace are skipped; a split with fewer gives what it has. SourceError when the repo,
    revision, config or the split's parquet files cannot be found; InputError when the
    column is missing or does not hold text.
    """
    where = _Where(repo, config, split, column)
    if samples < 1:
        raise InputError(f"{where}: samples must be at least 1, not {samples}")
    sha, files = _snapshot(hub, repo, revision, where)
    configs = _card_configs(hub, repo, sha, files, where)
    chosen = _split_files(configs, files, where)
    hint = f"; pass revision {CONVERT_REF!r} to read the Hub's parquet conversion"
    if chosen is None and revision in (None, "main"):
        hint = f" and no {CONVERT_REF} branch"
        converted = _snapshot(hub, repo, CONVERT_REF, where, missing_ok=True)
        if converted is not None:
            hint = f", nor has its {CONVERT_REF} branch"
            name = config or (_default_config(configs, where) if configs else "default")
            found = _in_folder(converted[1], name, split)
            if found:
                (sha, files), chosen = converted, found
    if not chosen:
        raise SourceError(f"{where}: no parquet file holds this split at {sha[:12]}{hint}")
    texts: list[str] = []
    for path in chosen:
        _read_texts(hub, repo, sha, path, files[path], where, texts, samples)
        if len(texts) >= samples:
            break
    if not texts:
        raise InputError(f"{where}: column {column!r} holds no non-empty text at {sha[:12]}")
    return texts, sha


def _snapshot(hub: HubAccess, repo: str, revision: str | None, where: _Where,
              missing_ok: bool = False) -> tuple[str, dict[str, int]] | None:
    """(commit SHA of ``revision``, {path: size} of its files); None for a missing
    revision when ``missing_ok``."""
    api = hub.api()
    at = revision or "main"
    try:
        sha = retry(lambda: api.dataset_info(repo, revision=revision)).sha
        tree = retry(lambda: list(api.list_repo_tree(repo, repo_type="dataset", revision=sha,
                                                     recursive=True)))
    except hub_errors.RevisionNotFoundError as e:
        if missing_ok:
            return None
        raise SourceError(f"{where}: the dataset has no revision {at!r}") from e
    except hub_errors.GatedRepoError as e:
        raise SourceError(f"{where}: the dataset is gated and the token given has no "
                          "access to it") from e
    except hub_errors.RepositoryNotFoundError as e:
        raise SourceError(f"{where}: no such dataset on the Hub (or it is private and the "
                          "token given has no access to it)") from e
    except (hub_errors.HfHubHTTPError, httpx2.TransportError) as e:
        raise SourceError(f"{where}: could not read the dataset at {at!r}: {_first_line(e)}"
                          ) from e
    return sha, {f.path: f.size for f in tree if isinstance(f, RepoFile)}


@dataclass
class _Config:
    """One ``configs:`` item: {split: glob patterns}, or None to split by file names under
    ``data_dir``."""

    splits: dict[str, list[str]] | None
    data_dir: str = ""
    default: bool = False


def _card_configs(hub: HubAccess, repo: str, sha: str, files: dict[str, int],
                  where: _Where) -> dict[str, _Config]:
    """The card's ``configs:`` by name ({} without them)."""
    size = files.get("README.md", 0)
    if size == 0:
        return {}
    if size > CARD_LIMITS.max_bytes:
        raise SourceError(f"{where}: the dataset card README.md is {size} bytes; the limit "
                          f"is {CARD_LIMITS.max_bytes}")
    text = _fetch(hub, repo, sha, "README.md", 0, size - 1, where).decode("utf-8", "replace")
    match = _FRONT_MATTER.match(text)
    try:  # the recipes' budgeted loader: a card is anyone's text
        card = load_yaml(match.group(1), CARD_LIMITS)[0] if match else None
    except RecipeError as e:
        raise SourceError(f"{where}: the dataset card cannot be read: {e.msg}") from e
    items = card.get("configs") if isinstance(card, dict) else None
    configs: dict[str, _Config] = {}
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            splits = _data_files(item.get("data_files"))
            configs[str(item.get("config_name", "default"))] = _Config(
                splits, str(item.get("data_dir") or "").strip("/"), item.get("default") is True)
    return configs


def _data_files(value: object) -> dict[str, list[str]] | None:
    """{split: patterns} of a config's ``data_files``: a pattern or a list of them is the
    ``train`` split; ``[{split, path}]`` or ``{split: path}`` name theirs."""
    if value is None:
        return None
    if all(isinstance(v, str) for v in _listed(value)):
        return {"train": [str(v) for v in _listed(value)]}
    if isinstance(value, dict):
        value = [{"split": k, "path": v} for k, v in value.items()]
    splits: dict[str, list[str]] = {}
    for item in _listed(value):
        if isinstance(item, dict) and "split" in item:
            splits.setdefault(str(item["split"]), []).extend(
                str(p) for p in _listed(item.get("path")))
    return splits


def _listed(value: object) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _default_config(configs: dict[str, _Config], where: _Where) -> str:
    """The config used when none is named: marked ``default``, named ``default``, or the
    only one."""
    marked = [name for name, c in configs.items() if c.default]
    if marked:
        return marked[0]
    if "default" in configs or len(configs) == 1:
        return "default" if "default" in configs else next(iter(configs))
    raise SourceError(f"{where}: the dataset has several configs ({', '.join(sorted(configs))})"
                      "; name one")


def _split_files(configs: dict[str, _Config], files: dict[str, int],
                 where: _Where) -> list[str] | None:
    """Parquet files of the split at one commit (rules 1-3 of the module docstring); None
    when no parquet file there holds it."""
    if configs:
        name = where.config or _default_config(configs, where)
        if name not in configs:
            raise SourceError(f"{where}: the dataset has no config {name!r}; its configs are "
                              f"{', '.join(sorted(configs))}")
        config = configs[name]
        if config.splits is None:
            return _in_folder(files, config.data_dir, where.split)
        patterns = config.splits.get(where.split)
        if patterns is None:
            raise SourceError(f"{where}: config {name!r} has no split {where.split!r}; its "
                              f"splits are {', '.join(sorted(config.splits))}")
        regexes = [_glob(p) for p in patterns]
        found = [p for p in sorted(files)
                 if p.endswith(".parquet") and any(r.fullmatch(p) for r in regexes)]
        return found or None
    if where.config is not None:
        return _in_folder(files, where.config, where.split)
    if any(p.startswith("default/") and p.endswith(".parquet") for p in files):
        return _in_folder(files, "default", where.split)
    return _in_folder(files, "", where.split)


def _in_folder(files: dict[str, int], folder: str, split: str) -> list[str] | None:
    """Parquet files of ``split`` under ``folder`` ("" = the repo), by their names:
    ``{split}/``, ``partial-{split}/`` (the converter), ``data/{split}-*``, ``data/{split}/``;
    then, for train/validation/test, a keyword between delimiters in a folder or file name;
    with no keyword anywhere, every file is train."""
    prefix = f"{folder}/" if folder else ""
    paths = [p[len(prefix):] for p in sorted(files)
             if p.startswith(prefix) and p.endswith(".parquet")]
    exact = [p for p in paths
             if p.split("/", 1)[0] in (split, f"partial-{split}")
             or p.startswith((f"data/{split}-", f"data/{split}/"))]
    keywords = SPLIT_KEYWORDS.get(split, ())
    found = exact or [p for p in paths if _has_keyword(p, keywords)]
    every = tuple(k for ks in SPLIT_KEYWORDS.values() for k in ks)
    if not found and split == "train" and not any(_has_keyword(p, every) for p in paths):
        found = paths
    return [prefix + p for p in found] or None


def _has_keyword(path: str, keywords: tuple[str, ...]) -> bool:
    """Does a folder or file name of ``path`` hold a keyword between delimiters
    (``-._ `` or digits, as the Hub's split rule says)?"""
    return any(re.search(rf"(^|{_DELIM}){re.escape(k)}({_DELIM}|$)", part)
               for part in path.split("/") for k in keywords)


def _glob(pattern: str) -> re.Pattern:
    """A ``data_files`` glob as a regex over repo paths: ``*`` and ``?`` stay inside one
    folder, ``**`` crosses folders, ``[...]`` is a character class."""
    out, i = [], 0
    pattern = pattern.removeprefix("./")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] in "*?":
            out.append("[^/]*" if pattern[i] == "*" else "[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end].replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body.startswith("!") else f"[{body}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _url(hub: HubAccess, repo: str, sha: str, path: str) -> str:
    return hf_hub_url(repo, path, repo_type="dataset", revision=sha, endpoint=hub.endpoint)


def _fetch(hub: HubAccess, repo: str, sha: str, path: str, first: int, last: int,
           where: _Where) -> bytes:
    """Bytes ``first..last`` of a file of the dataset at ``sha`` (one range request)."""
    url, headers = _url(hub, repo, sha, path), build_hf_headers(token=hub.token)
    try:
        data, _ = retry(lambda: read_range(url, first, last, headers))
    except hub_errors.GatedRepoError as e:
        raise SourceError(f"{where}: the dataset is gated and the token given has no "
                          "access to its files") from e
    except (hub_errors.HfHubHTTPError, httpx2.TransportError, MergeEngineError) as e:
        raise SourceError(f"{where}: could not read {path} at {sha[:12]}: {_first_line(e)}"
                          ) from e
    if len(data) != last - first + 1:
        raise SourceError(f"{where}: {path} at {sha[:12]} is shorter than its listed size")
    return data


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class _RemoteFile(io.RawIOBase):
    """A read-only, seekable view of one file of the dataset: reads become range requests
    of at least ``READ_BLOCK`` bytes, the last block kept to serve small reads."""

    def __init__(self, fetch, size: int, name: str) -> None:
        super().__init__()
        self._fetch, self._size, self._pos, self._name = fetch, size, 0, name
        self._block_start, self._block = 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        if end <= self._pos:
            return b""
        if end - self._pos > MAX_READ_BYTES:
            raise SourceError(f"{self._name} needs a single read of {end - self._pos} bytes; "
                              f"the limit is {MAX_READ_BYTES}")
        block_end = self._block_start + len(self._block)
        if not (self._block_start <= self._pos and end <= block_end):
            last = min(self._size, max(end, self._pos + READ_BLOCK)) - 1
            self._block_start, self._block = self._pos, self._fetch(self._pos, last)
        offset = self._pos - self._block_start
        data = self._block[offset:offset + end - self._pos]
        self._pos = end
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _check_decoded_size(group, where: _Where, path: str) -> None:
    """SourceError when the column's chunk in this row group decodes to more than
    :data:`MAX_DECODED_BYTES` (a few KB of zstd can declare gigabytes of text)."""
    for i in range(group.num_columns):
        chunk = group.column(i)
        if chunk.path_in_schema.split(".")[0] == where.column and (
                chunk.total_uncompressed_size > MAX_DECODED_BYTES):
            raise SourceError(f"{where}: {path} holds {chunk.total_uncompressed_size:,} bytes "
                              f"of column {where.column!r} in one row group; the limit is "
                              f"{MAX_DECODED_BYTES:,}")


def _read_texts(hub: HubAccess, repo: str, sha: str, path: str, size: int, where: _Where,
                texts: list[str], samples: int) -> None:
    """Append non-empty texts of ``where.column`` from one parquet file until ``texts``
    holds ``samples`` of them, reading only that column, batch by batch."""
    remote = _RemoteFile(lambda a, b: _fetch(hub, repo, sha, path, a, b, where), size,
                         f"{where}: {path} at {sha[:12]}")
    try:
        parquet = pq.ParquetFile(remote, buffer_size=READ_BLOCK, pre_buffer=False)
        schema = parquet.schema_arrow
        if where.column not in schema.names:
            shown = ", ".join(schema.names[:10]) + (", ..." if len(schema.names) > 10 else "")
            raise InputError(f"{where}: {path} has no column {where.column!r}; its columns "
                             f"are {shown}")
        kind = schema.field(where.column).type
        values = kind.value_type if pa.types.is_dictionary(kind) else kind
        if not (pa.types.is_string(values) or pa.types.is_large_string(values)
                or pa.types.is_string_view(values)):
            raise InputError(f"{where}: column {where.column!r} in {path} holds {kind}, "
                             "not text")
        for group in range(parquet.metadata.num_row_groups):
            _check_decoded_size(parquet.metadata.row_group(group), where, path)
            batches = parquet.iter_batches(batch_size=min(1024, max(16, samples)),
                                           row_groups=[group], columns=[where.column])
            for batch in batches:
                for text in batch.column(0).to_pylist():
                    if text and text.strip():
                        texts.append(text)
                        if len(texts) >= samples:
                            return
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{where}: {path} at {sha[:12]} is not a readable parquet file: "
                          f"{_first_line(e)}") from e
