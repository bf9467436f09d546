"""LoRA adapters (PEFT's safetensors format) applied to a base model while streaming.

A source ``org/model+org/adapter`` is the base model's :class:`~merge_engine.io.sources.Source`
with an :class:`Adapter` attached. Opening the adapter reads metadata only:
``adapter_config.json`` and the header of ``adapter_model.safetensors`` (two exact range
requests for a Hub repo, which is pinned to a commit SHA first). Every adapter tensor is
mapped onto a base tensor and checked against its shape before any weight byte is read:

- ``base_model.model.<module>.lora_A[.default].weight`` and ``.lora_B...`` (linear layers)
  and ``lora_embedding_A``/``lora_embedding_B`` (embeddings) make a :class:`LoraDelta` on
  ``<module>.weight``: the effective tensor is ``W + scale * B @ A`` (transposed for
  embeddings and for ``fan_in_fan_out`` layers such as gpt2's Conv1D), with
  ``scale = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``) and per-module
  ``rank_pattern``/``alpha_pattern`` matched as PEFT matches them;
- ``<module>.lora_magnitude_vector`` (DoRA, ``use_dora``) makes the update
  ``m / ||W + scale * B @ A|| * (W + scale * B @ A)``, each output row rescaled to its
  trained magnitude ``m[row]`` (PEFT's merge; linear layers only, the norm taken over a
  row, so whole-row chunks stay exact);
- any other ``base_model.model.<name>`` (``modules_to_save`` copies, trained biases)
  replaces the base's tensor ``<name>`` outright.

The executor adds the delta in float32 on the device, chunk by chunk (rows ``[r0, r1)`` of
``W`` get ``B[r0:r1] @ A``): no merged copy of the model is ever written. LoRA biases, DoRA
on embeddings or ``fan_in_fan_out`` layers, convolutions and pickle adapters
(``adapter_model.bin``) are refused with a message saying so.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import yaml
from huggingface_hub import errors as hub_errors
from huggingface_hub import hf_hub_download, metadata_load

from merge_engine.errors import MergeEngineError, SourceError
from merge_engine.io.checkpoint import PICKLE_SUFFIXES, TensorMeta
from merge_engine.io.headers import read_header
from merge_engine.io.hub import HubAccess, PinnedFiles, remote_tensors
from merge_engine.io.retry import retry
from merge_engine.recipe.refs import ModelRef

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector)(?:\.[A-Za-z0-9_]+)?(?:\.weight)?"
)
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class LoraDelta:
    """The low-rank update of one base tensor: ``scale * B @ A`` (transposed if asked)."""

    a_name: str
    a: TensorMeta
    """``(r, in)``; for a transposed delta its columns follow the base tensor's rows."""
    b_name: str
    b: TensorMeta
    """``(out, r)``."""
    scale: float
    transpose: bool
    """The base tensor is ``(B @ A).T``-shaped: embeddings and ``fan_in_fan_out`` layers."""
    magnitude_name: str | None = None
    magnitude: TensorMeta | None = None
    """DoRA: ``(out,)``, the trained norm of each output row (None: plain LoRA)."""


@dataclass
class Adapter(PinnedFiles):
    """A LoRA adapter, resolved: its config, tensor metadata and the mapping onto the base."""

    ref: ModelRef
    revision: str | None
    """The commit SHA for a Hub repo; None for a local directory."""
    config: dict
    tensors: dict[str, TensorMeta]
    deltas: dict[str, LoraDelta] = field(default_factory=dict)
    """Base tensor name -> its low-rank update."""
    replaced: dict[str, tuple[str, TensorMeta]] = field(default_factory=dict)
    """Base tensor name -> (adapter tensor name, meta) that replaces it whole."""
    local_dir: Path | None = None
    access: object | None = None
    """A :class:`~merge_engine.io.sources.HubAccess` for a Hub adapter."""
    card_data: dict = field(default_factory=dict)
    """The front matter of the adapter's README.md (its license, ...), if any."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return self.ref.path


def _refuse_files(files: list[str], where: str) -> None:
    if WEIGHTS_NAME in files:
        if CONFIG_NAME not in files:
            raise SourceError(f"LoRA adapter {where} has no {CONFIG_NAME}")
        return
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise SourceError(
            f"LoRA adapter {where} has only a pickle checkpoint ({pickles[0]}), which is never "
            f"loaded because unpickling can run code; save it as {WEIGHTS_NAME} "
            "(PeftModel.save_pretrained(out, safe_serialization=True))"
        )
    raise SourceError(f"LoRA adapter {where} has no {WEIGHTS_NAME}")


def _parse_config(raw: str, where: str) -> dict:
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise SourceError(f"LoRA adapter {where}: {CONFIG_NAME} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise SourceError(f"LoRA adapter {where}: {CONFIG_NAME} is not a JSON object")
    kind = config.get("peft_type", "LORA")
    if str(kind).upper() != "LORA":
        raise SourceError(f"adapter {where} is a {kind} adapter; only LoRA is supported")
    if config.get("lora_bias"):
        raise SourceError(
            f"LoRA adapter {where} has LoRA biases (lora_bias), which are not supported"
        )
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise SourceError(
                f"LoRA adapter {where}: {CONFIG_NAME} needs a positive '{key}', got {value!r}"
            )
    return config


def _readme_metadata(directory: Path) -> dict:
    """The front matter of a local adapter's README.md (empty: none, or not parseable)."""
    readme = directory / "README.md"
    try:
        return (metadata_load(readme) or {}) if readme.is_file() else {}
    except (ValueError, yaml.YAMLError):  # bad YAML or encoding: the license is unknown
        return {}


def open_adapter(ref: ModelRef, access=None) -> Adapter:
    """Resolve and read an adapter's metadata only: its config, safetensors header and
    card metadata (the Hub's, or a local README.md's front matter)."""
    if ref.is_local:
        directory = Path(ref.path).expanduser()
        if not directory.is_dir():
            raise SourceError(f"LoRA adapter directory {ref.path} does not exist")
        files = sorted(str(p.relative_to(directory)) for p in directory.iterdir() if p.is_file())
        _refuse_files(files, ref.path)
        config = _parse_config((directory / CONFIG_NAME).read_text(), ref.path)
        return Adapter(ref, None, config, read_header(directory / WEIGHTS_NAME),
                       local_dir=directory, card_data=_readme_metadata(directory))
    access = access or HubAccess()
    where = f"{ref.path}@{ref.revision}" if ref.revision else ref.path
    try:
        info = retry(lambda: access.api().model_info(ref.path, revision=ref.revision))
        files = sorted(s.rfilename for s in info.siblings or [])
        _refuse_files(files, where)
        path = retry(
            lambda: hf_hub_download(
                ref.path,
                CONFIG_NAME,
                revision=info.sha,
                token=access.token,
                endpoint=access.endpoint,
                cache_dir=access.cache_dir,
            )
        )
        config = _parse_config(Path(path).read_text(), where)
        tensors = remote_tensors(ref.path, info.sha, [WEIGHTS_NAME], access)
    except hub_errors.RevisionNotFoundError as e:
        raise SourceError(f"revision '{ref.revision}' does not exist in adapter {ref.path}") from e
    except (hub_errors.RepositoryNotFoundError, hub_errors.GatedRepoError) as e:
        raise SourceError(
            f"LoRA adapter repo {ref.path} does not exist, or the token used cannot read it"
        ) from e
    except (hub_errors.HfHubHTTPError, httpx2.TransportError) as e:
        raise MergeEngineError(f"could not read adapter {where} from the Hub: {e}") from e
    card = info.card_data.to_dict() if info.card_data else {}
    return Adapter(ref, info.sha, config, tensors, access=access, card_data=card)


def _pattern_value(pattern: dict, module: str, default: float) -> float:
    """PEFT's ``get_pattern_key``: the first key that matches the end of the module name."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _base_name(name: str, base: dict[str, TensorMeta]) -> str | None:
    """The base tensor ``name`` refers to; tolerates a checkpoint without the model's
    outer prefix (gpt2's ``h.0...`` for ``transformer.h.0...``)."""
    if name in base:
        return name
    head, dot, rest = name.partition(".")
    return rest if dot and rest in base else None


def attach(adapter: Adapter, base: dict[str, TensorMeta], base_name: str) -> None:
    """Map the adapter's tensors onto the base model's, checking every shape; fills
    :attr:`Adapter.deltas` and :attr:`Adapter.replaced`. SourceError names the tensor."""
    config, where = adapter.config, f"LoRA adapter {adapter.name}"
    pairs: dict[str, dict[str, tuple[str, TensorMeta]]] = {}
    embeddings: set[str] = set()
    for key, meta in adapter.tensors.items():
        if not key.startswith(PREFIX):
            raise SourceError(
                f"{where}: tensor {key} does not start with '{PREFIX}' (not a PEFT LoRA adapter)"
            )
        inner = key.removeprefix(PREFIX)
        found = _LORA_KEY.fullmatch(inner)
        if found:
            kind = found["kind"]
            part = "M" if kind == "lora_magnitude_vector" else kind[-1]
            slot = pairs.setdefault(found["module"], {})
            slot[part] = (key, meta)
            if "embedding" in kind:
                embeddings.add(found["module"])
            continue
        if "lora_" in inner:
            raise SourceError(f"{where}: tensor {key} is not a LoRA part mergebot supports")
        plain = inner.replace("modules_to_save.", "").replace(".default.", ".")
        target = _base_name(plain, base)
        if target is None:
            raise SourceError(
                f"{where}: tensor {key} replaces {plain}, which {base_name} does not have"
            )
        if meta.shape != base[target].shape:
            raise SourceError(
                f"{where}: tensor {key} has shape {list(meta.shape)} but "
                f"{target} has {list(base[target].shape)} in {base_name}"
            )
        adapter.replaced[target] = (key, meta)
    for module, slot in pairs.items():
        if "A" not in slot or "B" not in slot:
            missing = "lora_B" if "A" in slot else "lora_A"
            raise SourceError(f"{where}: module {module} has no {missing} tensor")
        (a_name, a), (b_name, b) = slot["A"], slot["B"]
        target = _base_name(f"{module}.weight", base)
        if target is None:
            raise SourceError(
                f"{where}: tensor {a_name} targets {module}.weight, which {base_name} does not have"
            )
        w = base[target]
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise SourceError(
                f"{where}: tensor {a_name} has shape {list(a.shape)}; only "
                "linear and embedding layers are supported (not convolutions)"
            )
        if w.dtype not in _FLOAT_DTYPES or len(w.shape) != 2:
            raise SourceError(f"{where}: {target} in {base_name} is not a 2-d float tensor")
        transpose = module in embeddings or bool(config.get("fan_in_fan_out"))
        want = (w.shape[1], w.shape[0]) if transpose else w.shape
        if a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(want):
            raise SourceError(
                f"{where}: tensor {a_name} {list(a.shape)} and {b_name} {list(b.shape)} do "
                f"not fit {target}, which has shape {list(w.shape)} in {base_name}"
            )
        rank = _pattern_value(config.get("rank_pattern"), module, config["r"])
        alpha = _pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
        if a.shape[0] != rank:
            raise SourceError(
                f"{where}: tensor {a_name} has rank {a.shape[0]} but "
                f"{CONFIG_NAME} gives r={rank} for {module}"
            )
        scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        m_name, m = _magnitude(slot, module, target, w, transpose, config, where)
        adapter.deltas[target] = LoraDelta(a_name, a, b_name, b, float(scale), transpose,
                                           m_name, m)
    both = adapter.deltas.keys() & adapter.replaced.keys()
    if both:
        raise SourceError(f"{where}: {sorted(both)[0]} has both a LoRA update and a replacement")


def _magnitude(slot: dict, module: str, target: str, w: TensorMeta, transpose: bool,
               config: dict, where: str) -> tuple[str | None, TensorMeta | None]:
    """A module's DoRA magnitude (name, meta), checked; (None, None) for plain LoRA."""
    if "M" not in slot:
        if config.get("use_dora"):
            raise SourceError(f"{where}: module {module} has no lora_magnitude_vector, which "
                              f"DoRA (use_dora in {CONFIG_NAME}) needs")
        return None, None
    name, meta = slot["M"]
    if not config.get("use_dora"):
        raise SourceError(f"{where}: tensor {name} is a DoRA magnitude but {CONFIG_NAME} "
                          "does not set use_dora")
    if transpose:
        raise SourceError(f"{where}: DoRA on {module} (an embedding or fan_in_fan_out layer) "
                          "is not supported; only linear layers")
    if tuple(meta.shape) != (w.shape[0],):
        raise SourceError(f"{where}: tensor {name} has shape {list(meta.shape)} but {target} "
                          f"has {w.shape[0]} rows")
    return name, meta
