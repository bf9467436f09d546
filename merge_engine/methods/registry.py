"""Merge methods by name: their parameters, defaults, whether they need a base, and function.

A method function takes float32 tensors of one output tensor (or of one row-chunk of it,
when ``chunkable`` says the method may be run chunk by chunk) and returns the merged
float32 tensor. It may modify its inputs in place: the executor hands over ownership.

    merge(tensors, base, model_params, global_params, generator) -> Tensor

- ``tensors``: one per non-base input model, in recipe order, same shape as ``base``.
- ``base``: the base model's tensor, or None for methods without a base role.
- ``model_params``: one mapping per entry of ``tensors``: every per-model parameter,
  resolved to a number or bool for this tensor (defaults filled in).
- ``global_params``: every global parameter, resolved likewise.
- ``generator``: a seeded ``torch.Generator`` on the tensors' device, for random methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

REQUIRED = object()
"""Default of a parameter the recipe must give (per model, or globally as a fallback)."""

Params = Mapping[str, float | int | bool | str]
MergeFn = Callable[
    [Sequence[torch.Tensor], torch.Tensor | None, Sequence[Params], Params, torch.Generator | None],
    torch.Tensor,
]


def _never(global_params: Params, model_params: Sequence[Params]) -> bool:
    return False


def always_chunkable(global_params: Params, model_params: Sequence[Params]) -> bool:
    """``MethodSpec.chunkable`` for element-wise methods: any row-chunking is exact."""
    return True


@dataclass(frozen=True)
class MethodSpec:
    """What the engine needs to know about one merge method."""

    name: str
    needs_base: bool
    global_params: Mapping[str, object]
    model_params: Mapping[str, object]
    merge: MergeFn | None = None
    """None: the method parses but is not supported yet."""
    chunkable: Callable[[Params, Sequence[Params]], bool] = field(default=_never)
    """True when, for these resolved parameters, merging row-chunks independently gives
    the same result as merging the whole tensor (element- or row-wise math)."""
