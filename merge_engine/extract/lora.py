"""LoRA extraction: a PEFT adapter of (model - base), by truncated SVD per weight matrix.

For each 2-D tensor that both models have with the same shape, ``D = W_model - W_base``
in float32 on the device, and ``D = U S V^T``. The kept rank ``k`` is the number of
singular values ``s_i >= sv_cutoff * s_1``, at most ``max_rank`` (a tensor with ``D = 0``
is left out). The factors are the best rank-k approximation (Eckart-Young), split evenly:

    Linear (weight [out, in]):      lora_B = U_k sqrt(S_k)  [out, k],
                                    lora_A = sqrt(S_k) V_k^T  [k, in]
    Embedding (weight [vocab, d]):  lora_embedding_A = sqrt(S_k) U_k^T  [k, vocab],
                                    lora_embedding_B = V_k sqrt(S_k)  [d, k]

with ``lora_alpha = r`` for every module (PEFT's scale ``alpha / r = 1``), so PEFT's
``W + B A`` (embeddings: ``W + (B A)^T``) gives back ``W_base + D_k``. The relative error
reported per module is the truncation error ``||D - D_k||_F / ||D||_F =
sqrt(sum_{i>k} s_i^2) / ||D||_F`` (before the factors are rounded to the output dtype).

Tensors of other ranks (norms, biases) cannot be expressed by LoRA: those that differ are
listed in :attr:`Extraction.not_captured` with their relative change.

:class:`LoraExtractor` does the work tensor by tensor (or finished shard by shard, so a
merge can be factorized as it is written: :func:`merge_engine.api.run_merge`);
:func:`extract_lora` feeds it a model's tensors.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from merge_engine.errors import InputError, MergeEngineError
from merge_engine.io.checkpoint import FileReader, TensorMeta
from merge_engine.io.headers import read_header
from merge_engine.io.hub import HubAccess
from merge_engine.io.sources import Source, open_source
from merge_engine.recipe.refs import parse_ref

PREFIX = "base_model.model."
EMBEDDING_MODULES = ("embed_tokens", "wte", "wpe", "embed_in", "word_embeddings",
                     "position_embeddings", "token_type_embeddings")
"""Last name parts of ``nn.Embedding`` modules (PEFT gives them ``lora_embedding_A/B``)."""
FULL_SVD_MAX = 2048
"""Matrices whose smaller side is at most this get an exact SVD; larger ones a randomized
one (``torch.svd_lowrank``: rank + 16 columns, 6 power iterations)."""
OUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModuleResult:
    """One extracted module: its name, kept rank and relative truncation error."""

    module: str
    shape: tuple[int, ...]
    rank: int
    error: float
    embedding: bool = False


@dataclass
class Extraction:
    """What an extraction wrote (:func:`extract_lora`, :meth:`LoraExtractor.write`)."""

    out_dir: Path
    model: str
    base: str
    model_revision: str | None
    base_revision: str | None
    max_rank: int
    sv_cutoff: float
    modules: list[ModuleResult] = field(default_factory=list)
    unchanged: int = 0
    """2-D tensors equal in both models (no LoRA needed)."""
    not_captured: dict[str, float] = field(default_factory=dict)
    """Tensors that differ but LoRA cannot express (norms, biases, changed shapes), with
    their relative change ``||D|| / ||W_base||`` (``inf`` for a changed shape)."""

    @property
    def rank(self) -> int:
        return max((m.rank for m in self.modules), default=0)


@dataclass(frozen=True)
class AdapterOptions:
    """How to extract an adapter: the largest rank per module, the singular-value cutoff
    (relative to each matrix's largest) and the dtype of the factors."""

    max_rank: int
    sv_cutoff: float = 0.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.max_rank, bool) or not isinstance(self.max_rank, int) \
                or self.max_rank < 1:
            raise InputError(f"max_rank must be a whole number >= 1, got {self.max_rank!r}")
        if isinstance(self.sv_cutoff, bool) or not isinstance(self.sv_cutoff, int | float) \
                or not 0.0 <= self.sv_cutoff < 1.0:
            raise InputError(f"sv_cutoff must be in [0, 1), got {self.sv_cutoff!r}")
        if self.dtype not in OUT_DTYPES:
            raise InputError(f"dtype must be one of {', '.join(OUT_DTYPES)}, "
                             f"got {self.dtype!r}")


def extract_lora(model: str, base: str, out_dir: str | os.PathLike, *, max_rank: int,
                 sv_cutoff: float = 0.0, device: str = "cpu", dtype: str = "float32",
                 access: HubAccess | None = None) -> Extraction:
    """Write a PEFT LoRA adapter of ``model - base`` into ``out_dir`` (created whole, or
    not at all). ``model``/``base`` are local directories or Hub repos (``org/name@rev``)."""
    options = AdapterOptions(max_rank, sv_cutoff, dtype)
    out = Path(out_dir)
    _check_empty(out)
    tuned = open_source(parse_ref(model, "model"), access)
    reference = open_source(parse_ref(base, "base"), access)
    extractor = LoraExtractor(reference, options, device=device, model=tuned.name,
                              model_revision=tuned.revision)
    try:
        reader = Reader()
        try:
            for name, meta in tuned.tensors.items():
                if meta.shape and _is_float(meta) and name in reference.tensors:
                    extractor.add(name, reader.read(tuned, name, meta))
        finally:
            reader.close()
        return extractor.write(out)
    finally:
        extractor.close()


def _check_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeEngineError(f"output directory {out} already exists and is not empty")


class LoraExtractor:
    """A LoRA adapter of (model - ``base``) built tensor by tensor: :meth:`add` each tensor
    of the model (or :meth:`add_file` each finished safetensors shard of it, e.g. a merge's
    output as it is written), then :meth:`write`. Only the factors stay in memory.

    ``expected``: the names the model will have; with it, a weight file of a base whose
    files are streamed (``HubAccess.stream_dir``) is deleted once every tensor of it that
    the model has was compared."""

    def __init__(self, base: Source, options: AdapterOptions, *, device: str = "cpu",
                 model: str = "", model_revision: str | None = None,
                 expected: set[str] | None = None) -> None:
        if base.adapter is not None:
            raise InputError(f"the base {base.name} has a LoRA adapter; an adapter can only "
                             "be extracted against a plain model")
        self.base = base
        self.device = torch.device(device)
        self.out_dtype = OUT_DTYPES[options.dtype]
        self.result = Extraction(Path(), model, base.name, model_revision, base.revision,
                                 options.max_rank, options.sv_cutoff)
        self.factors: dict[str, torch.Tensor] = {}
        self._reader = Reader()
        self._left: dict[str, int] | None = None
        if expected is not None and base.streams_files:
            self._left = {}
            for name in expected & base.tensors.keys():
                file = base.tensors[name].file
                self._left[file] = self._left.get(file, 0) + 1

    def add_file(self, path: Path) -> None:
        """Compare every floating-point tensor of a finished safetensors file."""
        files = FileReader()
        try:
            for name, meta in read_header(path).items():
                if not meta.shape or not _is_float(meta) or name not in self.base.tensors:
                    continue
                buf = torch.empty(meta.end - meta.begin, dtype=torch.uint8)
                self.add(name, files.read(path, meta, 0, meta.shape[0], buf,
                                          f"{name} of {path.name}"))
        finally:
            files.close()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Compare one tensor of the model with the base's tensor of that name (which the
        base must have); a float32 ``tensor`` on the device is overwritten."""
        base_meta = self.base.tensors[name]
        try:
            self._compare(name, tensor, base_meta)
        finally:
            self._release(base_meta.file)

    def _compare(self, name: str, tensor: torch.Tensor, base_meta: TensorMeta) -> None:
        result = self.result
        if base_meta.shape != tuple(tensor.shape):
            result.not_captured[name] = math.inf
            return
        b = self._reader.read(self.base, name, base_meta).to(self.device, torch.float32)
        delta = tensor.to(self.device, torch.float32).sub_(b)
        norm = float(torch.linalg.vector_norm(delta, dtype=torch.float64))
        if norm == 0.0:
            result.unchanged += delta.dim() == 2
            return
        if delta.dim() != 2 or not name.endswith(".weight"):
            scale = float(torch.linalg.vector_norm(b, dtype=torch.float64)) or 1.0
            result.not_captured[name] = norm / scale
            return
        module = name.removesuffix(".weight")
        embedding = module.rsplit(".", 1)[-1] in EMBEDDING_MODULES
        low, high, rank, error = _low_rank(delta, result.max_rank, result.sv_cutoff, norm)
        if embedding:  # PEFT: W + (B A)^T with A [k, vocab], B [d, k]
            pairs = {"lora_embedding_A": high.T, "lora_embedding_B": low.T}
        else:
            pairs = {"lora_A.weight": low, "lora_B.weight": high}
        for suffix, factor in pairs.items():
            self.factors[f"{PREFIX}{module}.{suffix}"] = factor.to("cpu", self.out_dtype) \
                .contiguous()
        result.modules.append(ModuleResult(module, tuple(tensor.shape), rank, error, embedding))

    def _release(self, file: str) -> None:
        if self._left is None or file not in self._left:
            return
        self._left[file] -= 1
        if self._left[file] == 0:
            self._reader.delete(self.base, file)

    def write(self, out_dir: str | os.PathLike, card: str | None = None) -> Extraction:
        """Write ``adapter_model.safetensors``, ``adapter_config.json`` and README.md
        (``card``, default :func:`render_adapter_card`) into ``out_dir``, whole or not at
        all; an adapter with no module is an ``InputError``."""
        out = Path(out_dir)
        _check_empty(out)
        result = self.result
        result.out_dir = out
        if not self.factors:
            raise InputError(f"{result.model or 'the model'} and {result.base} have no "
                             "differing weight matrix: there is nothing to extract")
        out.parent.mkdir(parents=True, exist_ok=True)
        work = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            save_file(self.factors, work / "adapter_model.safetensors",
                      metadata={"format": "pt"})
            (work / "adapter_config.json").write_text(json.dumps(_config(result), indent=2)
                                                      + "\n")
            (work / "README.md").write_text(card if card is not None
                                            else render_adapter_card(result))
            if out.exists():
                out.rmdir()
            work.rename(out)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return result

    def close(self) -> None:
        self._reader.close()


def _low_rank(delta: torch.Tensor, max_rank: int, cutoff: float,
              norm: float) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """(A [k, in], B [out, k], k, relative truncation error) of ``delta`` [out, in]."""
    q = min(max_rank, *delta.shape)
    if min(delta.shape) <= FULL_SVD_MAX:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    else:
        u, s, v = torch.svd_lowrank(delta, q=min(q + 16, *delta.shape), niter=6)
        vh = v.T
    keep = int((s >= cutoff * s[0]).sum()) if cutoff > 0 else len(s)
    k = max(1, min(q, keep))
    root = s[:k].sqrt()
    low, high = root[:, None] * vh[:k], u[:, :k] * root[None, :]
    residual = delta - high @ low  # measured, not from the singular values: no cancellation
    error = float(torch.linalg.vector_norm(residual, dtype=torch.float64)) / norm
    return low, high, k, error


def _is_float(meta: TensorMeta) -> bool:
    return meta.torch_dtype.is_floating_point


class Reader:
    """Whole tensors of sources, one at a time, from files fetched on first use."""

    def __init__(self) -> None:
        self._files = FileReader()
        self._paths: dict[tuple[int, str], Path] = {}

    def read(self, source: Source, name: str, meta: TensorMeta) -> torch.Tensor:
        path = self._paths.get((id(source), meta.file))
        if path is None:
            path = self._paths[id(source), meta.file] = source.fetch(meta.file)
        buf = torch.empty(meta.end - meta.begin, dtype=torch.uint8)
        return self._files.read(path, meta, 0, meta.shape[0], buf, f"{name} of {source.name}")

    def delete(self, source: Source, file: str) -> None:
        """Close and delete a fetched file of a source whose files are streamed."""
        path = self._paths.pop((id(source), file), None)
        if path is not None and source.streams_files:
            self._files.close(path)
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self._files.close()


def _config(result: Extraction) -> dict:
    """PEFT's ``LoraConfig`` as JSON: ``r`` the largest kept rank, the others in
    ``rank_pattern`` (keys are exact module names, regex-escaped, as PEFT matches them
    as patterns), ``lora_alpha`` equal to each rank (scale 1)."""
    r = result.rank
    pattern = {_exact(m.module): m.rank for m in result.modules if m.rank != r}
    return {
        "peft_type": "LORA",
        "base_model_name_or_path": result.base,
        "revision": result.base_revision,
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(m.module for m in result.modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
        "task_type": None,
    }


def _exact(module: str) -> str:
    return module.replace(".", r"\.")


def render_adapter_card(result: Extraction, *, recipe: str | None = None,
                        provenance: str | None = None,
                        license: tuple[str | None, str | None] = (None, None)) -> str:
    """The adapter's README.md: base model, source model with revisions, rank and the
    relative reconstruction error of every module; for a merge's adapter (``recipe``, its
    YAML) the recipe it came from, ``provenance`` (Markdown) and ``license`` (the front
    matter's id, a sentence when the sources disagree)."""
    front = ["---", "library_name: peft", "tags:", "- mergebot", "- lora", "- extracted-lora"]
    if recipe is not None:
        front.append("- merge")
    if "/" in result.base and not Path(result.base).exists():
        front += [f"base_model: {result.base}", "base_model_relation: adapter"]
    if license[0]:
        front.append(f"license: {license[0]}")
    front.append("---")
    worst = max((m.error for m in result.modules), default=0.0)
    if recipe is None:
        title = f"# LoRA extracted from {result.model}"
        what = (f"A PEFT LoRA adapter of `{result.model}` minus `{result.base}`, by truncated "
                "SVD of each weight matrix's difference (mergebot).")
        model_line = f"- model: `{result.model}`" + _at(result.model_revision)
    else:
        title = f"# {result.model} (LoRA adapter)"
        what = (f"A PEFT LoRA adapter of the merge of the recipe below minus its base "
                f"`{result.base}`, by truncated SVD of each weight matrix's difference "
                "(mergebot). Apply it to the base at the revision below.")
        model_line = "- model: the merge of the recipe below"
    lines = [
        *front, "", title, "", what, "",
        model_line,
        f"- base: `{result.base}`" + _at(result.base_revision),
        f"- max_rank: {result.max_rank}, singular-value cutoff: {result.sv_cutoff:g} "
        f"(relative to each matrix's largest)",
        f"- modules: {len(result.modules)}, largest rank kept: {result.rank}, worst relative "
        f"error: {worst:.3g}",
        f"- weight matrices equal in both models: {result.unchanged}", "",
    ]
    if result.not_captured:
        lines += ["Differences LoRA cannot carry (kept from the base when the adapter is "
                  "applied):", ""]
        lines += [f"- `{n}`: " + ("shape differs" if math.isinf(c) else f"relative change "
                                  f"{c:.3g}") for n, c in sorted(result.not_captured.items())]
        lines.append("")
    lines += ["| module | shape | rank | relative error |", "| --- | --- | --- | --- |"]
    lines += [f"| `{m.module}` | {list(m.shape)} | {m.rank} | {m.error:.3g} |"
              for m in result.modules]
    lines += ["", "Relative error: `||D - D_k||_F / ||D||_F` for `D = W_model - W_base` and its "
              "rank-k approximation `D_k`.", ""]
    if license[1]:
        lines += [license[1], ""]
    if recipe is not None:
        lines += ["## Merge recipe", "", "```yaml", recipe.rstrip("\n"), "```", ""]
    if provenance:
        lines += ["## Provenance", "", provenance, ""]
    return "\n".join(lines)


def _at(revision: str | None) -> str:
    return f" at `{revision}`" if revision else ""
