"""Model sources: a local directory, or a Hub repo pinned to a commit SHA.

Opening a source reads only metadata: the file list, ``config.json`` and the checkpoint
headers, safetensors or torch zip (over HTTP range requests for Hub repos). Weight files
are fetched one at a time, when the executor first needs them, with :meth:`Source.fetch`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from huggingface_hub import errors as hub_errors

from merge_engine.errors import MergeEngineError, SourceError
from merge_engine.io.checkpoint import INDEX_NAME, TensorMeta
from merge_engine.io.hub import (
    HubAccess,
    PinnedFiles,
    download,
    hub_weight_files,
    remote_tensors,
)
from merge_engine.io.lora import Adapter, attach, open_adapter
from merge_engine.io.retry import retry
from merge_engine.io.weights import local_tensors
from merge_engine.recipe.refs import ModelRef

SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
"""Small files copied from the base model (config and tokenizer)."""


@dataclass
class Source(PinnedFiles):
    """One input model, resolved: its tensors' metadata and a way to fetch its files."""

    ref: ModelRef
    revision: str | None
    """The commit SHA for a Hub repo; None for a local directory."""
    tensors: dict[str, TensorMeta]
    config: dict
    files: list[str]
    card_data: dict = field(default_factory=dict)
    local_dir: Path | None = None
    access: HubAccess | None = None
    adapter: Adapter | None = None
    """The LoRA adapter of a ``model+adapter`` reference, applied while streaming; the
    other fields (revision, tensors, files) are the base model's."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        """The reference as written (repo id or directory), without revisions:
        ``org/model+org/adapter`` for a LoRA source."""
        if self.adapter is not None:
            return f"{self.ref.path}+{self.adapter.ref.path}"
        return self.ref.path

    @property
    def short_name(self) -> str:
        short = Path(self.ref.path.rstrip("/")).name
        if self.adapter is not None:
            short += "+" + Path(self.adapter.ref.path.rstrip("/")).name
        return short

    @property
    def adapter_revision(self) -> str | None:
        """The commit SHA the LoRA adapter was pinned to (None: no adapter, or a local one).
        :attr:`revision` stays the base model's."""
        return self.adapter.revision if self.adapter is not None else None

    @property
    def pinned(self) -> str:
        """The reference with every Hub part pinned to its commit SHA."""
        text = self.ref.path if self.revision is None else f"{self.ref.path}@{self.revision}"
        if self.adapter is not None:
            rev = self.adapter.revision
            text += "+" + (self.adapter.name if rev is None else f"{self.adapter.name}@{rev}")
        return text

    def side_files(self) -> list[str]:
        """The config/tokenizer files this model has."""
        return [f for f in SIDE_FILES if f in self.files]

    @contextmanager
    def model_files(self) -> Iterator[Path]:
        """The directory holding the model as transformers loads it: config.json,
        tokenizer.json, the weight files and their index, fetched; the weight files a
        streaming source fetched are deleted again on exit."""
        weights = sorted({m.file for m in self.tensors.values()})
        names = ["config.json", "tokenizer.json", *weights]
        if INDEX_NAME in self.files:
            names.append(INDEX_NAME)
        fetched = [self.fetch(n) for n in names]
        try:
            yield fetched[0].parent
        finally:
            if self.streams_files:
                for path in fetched[2:]:
                    path.unlink(missing_ok=True)


def open_source(ref: ModelRef, access: HubAccess | None = None) -> Source:
    """Resolve ``ref`` and read its metadata; no weight bytes are read or downloaded.

    A ``model+adapter`` reference opens the base model and the LoRA adapter (see
    :mod:`merge_engine.io.lora`) and checks that every adapter tensor fits the base."""
    if ref.lora is not None:
        source = open_source(ModelRef(ref.path, ref.revision, local=ref.local), access)
        adapter = open_adapter(ref.lora, access)
        attach(adapter, source.tensors, source.name)
        source.ref, source.adapter = ref, adapter
        return source
    if ref.is_local:
        return _open_local(ref)
    return _open_hub(ref, access or HubAccess())


def _open_local(ref: ModelRef) -> Source:
    directory = Path(ref.path).expanduser()
    if not directory.is_dir():
        raise SourceError(f"model directory {ref.path} does not exist")
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    tensors = local_tensors(directory, files)
    return Source(ref, None, tensors, _read_config(directory / "config.json"), files,
                  local_dir=directory)


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise SourceError(f"{path} is not valid JSON: {e}") from e


def _open_hub(ref: ModelRef, access: HubAccess) -> Source:
    api = access.api()
    where = f"{ref.path}@{ref.revision}" if ref.revision else ref.path
    try:
        info = retry(lambda: api.model_info(ref.path, revision=ref.revision))
        sha = info.sha
        files = sorted(s.rfilename for s in info.siblings or [])
        weights = hub_weight_files(ref.path, sha, files, access)
        config = {}
        if "config.json" in files:
            config = _read_config(Path(download(ref.path, "config.json", sha, access)))
        tensors = remote_tensors(ref.path, sha, weights, access)
    except hub_errors.RevisionNotFoundError as e:
        raise SourceError(f"revision '{ref.revision}' does not exist in {ref.path}") from e
    except (hub_errors.RepositoryNotFoundError, hub_errors.GatedRepoError) as e:
        raise SourceError(
            f"model repo {ref.path} does not exist, or the token used cannot read it") from e
    except (hub_errors.HfHubHTTPError, httpx2.TransportError) as e:
        raise MergeEngineError(f"could not read {where} from the Hub: {e}") from e
    card = info.card_data.to_dict() if info.card_data else {}
    return Source(ref, sha, tensors, config, files, card_data=card, access=access)


