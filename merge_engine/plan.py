"""The plan: for each output tensor, its inputs, method and resolved parameters.

Built from the recipe and the sources' metadata alone (safetensors headers and configs),
so every shape problem is found before a weight byte is read.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .checkpoint import DTYPES, OutTensor, TensorMeta
from .errors import PlanError
from .methods import get_method
from .methods.registry import MethodSpec
from .params import layer_t
from .recipe import InputModel, Recipe
from .sources import Source

EMBEDDING_SUFFIXES = (
    "embed_tokens.weight",
    "lm_head.weight",
    "wte.weight",
    "embed_in.weight",
    "embed_out.weight",
    "word_embeddings.weight",
)
"""Tensors with one row per vocabulary entry, which may be cut to the base's vocabulary."""

TIED_ALIASES = {
    "lm_head.weight": ("model.embed_tokens.weight", "transformer.wte.weight"),
    "embed_out.weight": ("gpt_neox.embed_in.weight",),
}
"""Output head -> the input embedding it equals in a model with tied embeddings."""

LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DTYPES_BY_NAME = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TensorInput:
    """One input of an output tensor: which model, where it lives, how many rows to read."""

    model: int
    """Index into :attr:`Plan.sources`."""
    name: str
    """The tensor's name in that model (differs from the output's for tied embeddings)."""
    meta: TensorMeta
    rows: int
    """Rows read from the start of dim 0 (fewer than the tensor has when the vocab is cut)."""


@dataclass(frozen=True)
class TensorTask:
    """How to make one output tensor."""

    out: OutTensor
    inputs: tuple[TensorInput, ...]
    """The base's first when the method has a base."""
    global_params: dict
    model_params: tuple[dict, ...]
    """One per non-base input, in the order of :attr:`inputs`."""
    chunkable: bool
    copy: bool
    """Not floating point: copied from the first input, no math."""

    @property
    def rows(self) -> int:
        return self.out.shape[0] if self.out.shape else 1


@dataclass
class Plan:
    """Everything the executor needs; built by :func:`build_plan`."""

    recipe: Recipe
    method: MethodSpec
    models: tuple[InputModel, ...]
    sources: tuple[Source, ...]
    tasks: list[TensorTask]
    out_dtype: torch.dtype
    read_dtype: torch.dtype | None
    warnings: list[str]

    @property
    def has_base(self) -> bool:
        """Is the first source the base (passed to the method as ``base``)?"""
        return self.recipe.has_base_role

    @property
    def base(self) -> Source | None:
        return self.sources[0] if self.has_base else None

    @property
    def output_bytes(self) -> int:
        return sum(t.out.nbytes for t in self.tasks)

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(t.out.shape) for t in self.tasks)


def build_plan(recipe: Recipe, sources: Sequence[Source]) -> Plan:
    """Check that the sources fit the recipe and lay out every output tensor.

    ``sources`` are aligned with ``recipe.inputs()`` (base first when the method has one).
    """
    method = get_method(recipe.merge_method)
    models = recipe.inputs()
    reference = sources[0]
    if not reference.tensors:
        raise PlanError(f"{reference.name} has no tensors")
    n_layers = _layer_count(reference)
    out_dtype = _out_dtype(recipe, reference)
    warnings: list[str] = []
    tasks = []
    for name in _ordered_names(reference):
        inputs = tuple(_find_input(name, i, src, reference, warnings)
                       for i, src in enumerate(sources))
        meta = reference.tensors[name]
        dtype = out_dtype if meta.torch_dtype in FLOAT_DTYPES else meta.torch_dtype
        out = OutTensor(name, dtype, meta.shape)
        position, layer = _position(name)
        t = layer_t(layer, n_layers, position)
        donors = models[1:] if recipe.has_base_role else models
        global_params = {p: recipe.global_param(p, name, t) for p in method.global_params}
        model_params = tuple(
            {p: recipe.model_param(m, p, name, t) for p in method.model_params} for m in donors
        )
        tasks.append(TensorTask(
            out, inputs, global_params, model_params,
            chunkable=len(meta.shape) >= 2 and method.chunkable(global_params, model_params),
            copy=dtype not in FLOAT_DTYPES,
        ))
    warnings += _architecture_warnings(sources, n_layers)
    return Plan(recipe, method, models, tuple(sources), tasks, out_dtype,
                DTYPES_BY_NAME.get(recipe.dtype), warnings)


def _architecture_warnings(sources: Sequence[Source], n_layers: int) -> list[str]:
    """Sources whose config names another architecture, or a layout we did not read."""
    reference = sources[0]
    found = []
    if not reference.config:
        found.append(f"{reference.name} has no config.json; the output will have none")
    arch = reference.config.get("architectures")
    for source in sources[1:]:
        other = source.config.get("architectures")
        if arch and other and other != arch:
            found.append(f"{source.name} is a {', '.join(other)} but {reference.name} is a "
                         f"{', '.join(arch)}; the tensors fit, check that the merge makes sense")
    if not any(LAYER_RE.search(n) for n in reference.tensors) and n_layers > 1:
        found.append(f"no layer stack found in {reference.name}'s tensor names; gradient "
                     "parameters use their first value everywhere")
    return found


def _ordered_names(source: Source) -> list[str]:
    """Tensor names in file order, so reads are sequential within each shard."""
    return sorted(source.tensors, key=lambda n: (source.tensors[n].file, source.tensors[n].begin))


def _find_input(name: str, index: int, source: Source, reference: Source,
                warnings: list[str]) -> TensorInput:
    want = reference.tensors[name]
    found = name if name in source.tensors else next(
        (a for a in TIED_ALIASES.get(name, ()) if a in source.tensors), None)
    if found is None:
        raise PlanError(f"tensor {name} is missing from {source.name}")
    meta = source.tensors[found]
    if meta.shape == want.shape:
        return TensorInput(index, found, meta, meta.shape[0] if meta.shape else 1)
    if (name.endswith(EMBEDDING_SUFFIXES) and len(meta.shape) == 2 and len(want.shape) == 2
            and meta.shape[1] == want.shape[1] and meta.shape[0] > want.shape[0]):
        warnings.append(
            f"{name}: {source.name} has {meta.shape[0]} vocabulary rows, cut to the "
            f"{want.shape[0]} of {reference.name}")
        return TensorInput(index, found, meta, want.shape[0])
    raise PlanError(
        f"tensor {name} has shape {list(meta.shape)} in {source.name} but "
        f"{list(want.shape)} in {reference.name}")


def _position(name: str) -> tuple[str, int | None]:
    """Where a tensor sits: ('layer', i) inside the layer stack, else 'pre' or 'post'."""
    match = LAYER_RE.search(name)
    if match:
        return "layer", int(match.group(1))
    return ("pre", None) if "embed" in name or "wte" in name or "wpe" in name else ("post", None)


def _layer_count(source: Source) -> int:
    for key in LAYER_COUNT_KEYS:
        if isinstance(source.config.get(key), int):
            return source.config[key]
    layers = {int(m.group(1)) for n in source.tensors if (m := LAYER_RE.search(n))}
    return max(layers) + 1 if layers else 1


def _out_dtype(recipe: Recipe, reference: Source) -> torch.dtype:
    """``out_dtype``, else ``dtype``, else the base's own dtype."""
    name = recipe.out_dtype or recipe.dtype
    if name:
        return DTYPES_BY_NAME[name]
    declared = reference.config.get("torch_dtype") or reference.config.get("dtype")
    if declared in DTYPES_BY_NAME:
        return DTYPES_BY_NAME[declared]
    counts = Counter(m.dtype for m in reference.tensors.values()
                     if DTYPES[m.dtype] in FLOAT_DTYPES)
    return DTYPES[counts.most_common(1)[0][0]] if counts else torch.float32
