"""Linear merge: a weighted average of the models, with no base role."""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import torch

from merge_engine.methods.registry import REQUIRED, MethodSpec, Params, always_chunkable

NORMALIZE_EPS = 1e-8
"""A weight sum smaller than this in magnitude divides by 1 instead."""


def linear(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``sum_i w_i t_i``, divided by ``sum_i w_i`` when ``normalize`` (|sum| < 1e-8 -> 1).

    Accumulates in place into the first tensor; ``base`` is unused (always None).
    """
    weights = [float(p["weight"]) for p in model_params]
    divisor = sum(weights) if bool(global_params["normalize"]) else 1.0
    if abs(divisor) < NORMALIZE_EPS:
        divisor = 1.0
    acc = None
    for tensor, weight in zip(tensors, weights, strict=True):
        scale = weight / divisor
        if acc is None:
            acc = tensor if scale == 1 else tensor.mul_(scale)
        else:
            acc.add_(tensor, alpha=scale)
    if acc is None:
        raise ValueError("linear merge needs at least one tensor")
    return acc


SPECS: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="linear",
        needs_base=False,
        global_params=MappingProxyType({"normalize": True}),
        model_params=MappingProxyType({"weight": REQUIRED}),
        merge=linear,
        chunkable=always_chunkable,
    ),
)
