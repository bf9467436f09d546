"""Passthrough: one model's tensor as is, times its ``scale``.

With ``slices:`` and ``layer_range`` this builds frankenmerges: the planner picks, per
output tensor, the one slice source it comes from; the method only copies (and scales).
mergekit's ``scale`` defaults to None (no scaling); 1.0 here means the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import torch

from merge_engine.errors import InputError
from merge_engine.methods.registry import MethodSpec, Params, always_chunkable


def passthrough(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``scale * t`` for the single input ``t`` (in place)."""
    count = len(tensors) + (base is not None)
    if count != 1 or base is not None:
        raise InputError(
            f"passthrough takes exactly one model per tensor, but this tensor has {count}"
        )
    scale = float(model_params[0]["scale"])
    return tensors[0] if scale == 1 else tensors[0].mul_(scale)


SPECS: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="passthrough",
        needs_base=False,
        global_params=MappingProxyType({}),
        model_params=MappingProxyType({"scale": 1.0}),
        merge=passthrough,
        chunkable=always_chunkable,
        min_donors=1,
        max_donors=1,
    ),
)
"""Passthrough (mergekit's name and parameter)."""
