"""Reaching the Hub: access settings (endpoint, token, cache or stream directory), files
of a repo pinned to a commit SHA, and tensor metadata from ranged reads of checkpoint
headers (safetensors headers; a torch zip's directory and ``data.pkl``).
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
from huggingface_hub import errors as hub_errors
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from merge_engine.errors import MergeEngineError, SourceError
from merge_engine.io.checkpoint import MAX_HEADER_BYTES, TensorMeta
from merge_engine.io.headers import join_shards, parse_header
from merge_engine.io.pickled import bin_tensors
from merge_engine.io.retry import retry
from merge_engine.io.weights import weight_layout


@dataclass(frozen=True)
class HubAccess:
    """How to reach the Hub: endpoint (None: huggingface_hub's default) and token."""

    endpoint: str | None = None
    token: str | None = None
    cache_dir: Path | None = None
    """The Hugging Face cache to use (None: the default one)."""
    stream_dir: Path | None = None
    """When set, files are downloaded here instead of the cache, and weight files are
    deleted as soon as the merge has read them (bounded disk for large merges)."""

    def api(self) -> HfApi:
        return HfApi(endpoint=self.endpoint, token=self.token)


def download(repo_id: str, filename: str, revision: str, access: HubAccess) -> str:
    return retry(lambda: hf_hub_download(repo_id, filename, revision=revision,
                                         token=access.token, endpoint=access.endpoint,
                                         cache_dir=access.cache_dir))


def read_range(url: str, first: int, last: int | None, headers: dict) -> tuple[bytes, int]:
    """Bytes ``first..last`` of a file (``last`` None: the last ``-first`` bytes) and the
    file's size, from one range request; a server that ignores the range is an error
    (the whole file would come back)."""
    span = f"bytes={first}-{last}" if last is not None else f"bytes={first}"
    response = get_session().get(url, headers={**headers, "range": span})
    hf_raise_for_status(response)
    total = response.headers.get("content-range", "").rpartition("/")[2]
    if response.status_code != 206 or not total.isdigit():
        raise MergeEngineError(f"{url} did not answer a range request with a byte range")
    return response.content, int(total)


def remote_tensors(repo_id: str, revision: str, weights: list[str],
                   access: HubAccess) -> dict[str, TensorMeta]:
    """Validated tensor metadata of weight files of a Hub repo, from exact range requests.

    safetensors: the 8-byte length, then the header. torch zip (``.bin``): the end of
    central directory record (and zip64 records), the central directory, ``data.pkl`` and
    each storage's local header. Files go in parallel; no byte of weight data is read.
    """
    headers = build_hf_headers(token=access.token)
    where = f"{repo_id}@{revision}"

    def fetch(url: str, first: int, last: int | None) -> tuple[bytes, int]:
        data, total = retry(lambda: read_range(url, first, last, headers))
        if len(data) != (last - first + 1 if last is not None else min(-first, total)):
            raise SourceError(f"{url} is shorter than its headers say")
        return data, total

    def tensors_of(filename: str) -> tuple[str, dict[str, TensorMeta]]:
        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=access.endpoint)
        name = f"{filename} in {where}"
        if filename.endswith(".bin"):
            tail, total = fetch(url, -22, None)  # the end of central directory record

            def read_at(offset: int, length: int) -> bytes:
                if offset == total - len(tail) and length == len(tail):
                    return tail
                if offset < 0 or length <= 0 or offset + length > total:
                    raise SourceError(f"{name} is shorter than its zip directory says")
                return fetch(url, offset, offset + length - 1)[0]

            return filename, bin_tensors(read_at, total, filename, name)
        head, total = fetch(url, 0, 7)
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER_BYTES or 8 + size > total:
            raise SourceError(f"{name} is not a safetensors file (header of {size} bytes)")
        return filename, parse_header(fetch(url, 8, 7 + size)[0], filename, name,
                                      total - 8 - size)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return join_shards(pool.map(tensors_of, weights), where)


def hub_weight_files(repo_id: str, revision: str, files: list[str],
                     access: HubAccess) -> list[str]:
    """The weight files of a Hub model (downloading its index, when it has one)."""
    layout = weight_layout(files, repo_id)
    index = None
    if layout.index is not None:
        index = Path(download(repo_id, layout.index, revision, access)).read_bytes()
    return layout.weight_files(index, repo_id)


class PinnedFiles:
    """Mixin for a resolved model or adapter with ``ref``, ``revision`` (the commit SHA,
    None when local), ``local_dir``, ``access`` (a ``HubAccess``) and ``_lock``."""

    @property
    def streams_files(self) -> bool:
        """Are weight files deleted once read (downloaded into a stream directory)?"""
        return self.access is not None and self.access.stream_dir is not None

    def fetch(self, filename: str) -> Path:
        """A local path of ``filename``, downloading it at the pinned revision if needed
        (retried on transient failures; one at a time per repo)."""
        if self.local_dir is not None:
            return self.local_dir / filename
        access = self.access
        where = {"cache_dir": access.cache_dir}
        if access.stream_dir is not None:
            where = {"local_dir": access.stream_dir / f"{self.ref.path}@{self.revision}"}
        with self._lock:
            try:
                return Path(retry(lambda: hf_hub_download(
                    self.ref.path, filename, revision=self.revision, token=access.token,
                    endpoint=access.endpoint, **where,
                )))
            except (hub_errors.HfHubHTTPError, httpx2.TransportError) as e:
                raise MergeEngineError(
                    f"could not download {filename} from {self.ref.path}@{self.revision}: {e}"
                ) from e
