"""Reaching the Hub: access settings (endpoint, token, cache or stream directory), files
of a repo pinned to a commit SHA, and tensor metadata from ranged reads of
safetensors headers.
"""

from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
from huggingface_hub import errors as hub_errors
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from merge_engine.errors import MergeEngineError, SourceError
from merge_engine.io.checkpoint import INDEX_NAME, MAX_HEADER_BYTES, TensorMeta, parse_header
from merge_engine.io.retry import retry


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


def remote_tensors(repo_id: str, revision: str, files: list[str],
                   access: HubAccess) -> dict[str, TensorMeta]:
    """Tensor metadata of a Hub model from exact ranged reads of its safetensors headers.

    Two small range requests per weight file (the 8-byte length, then the header), run in
    parallel: no byte of weight data is downloaded.
    """
    if INDEX_NAME in files:
        index = json.loads(Path(download(repo_id, INDEX_NAME, revision, access)).read_text())
        weights = sorted(set(index["weight_map"].values()))
    else:
        weights = [f for f in files if f.endswith(".safetensors") and "/" not in f]
    headers = build_hf_headers(token=access.token)

    def read_range(url: str, first: int, last: int) -> bytes:
        response = get_session().get(url, headers={**headers, "range": f"bytes={first}-{last}"})
        hf_raise_for_status(response)
        return response.content

    def header_of(filename: str) -> dict[str, TensorMeta]:
        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=access.endpoint)
        (size,) = struct.unpack("<Q", retry(lambda: read_range(url, 0, 7)))
        if size > MAX_HEADER_BYTES:
            raise SourceError(f"{filename} in {repo_id} is not a safetensors file")
        return parse_header(retry(lambda: read_range(url, 8, 7 + size)), filename)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return {name: meta for part in pool.map(header_of, weights)
                for name, meta in part.items()}


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
