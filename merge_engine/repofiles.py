"""Fetching the files of a local directory or a Hub repo pinned to a commit SHA."""

from __future__ import annotations

from pathlib import Path

import httpx2
from huggingface_hub import errors as hub_errors
from huggingface_hub import hf_hub_download

from .errors import MergeEngineError
from .retry import retry


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
