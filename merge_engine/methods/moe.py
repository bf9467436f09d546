"""The one tensor function of a mixture-of-experts recipe: an expert's weight as it is,
with its ``noise_scale`` and ``scale``. Not a mergekit ``merge_method`` (it is not in
:data:`merge_engine.methods.METHODS`): MoE recipes plan with it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import torch

from merge_engine.methods.registry import MethodSpec, Params, always_chunkable


def expert_copy(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[Params],
    global_params: Params,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``scale * (t + noise_scale * N(0, 1))`` for the single input ``t`` (in place); the
    noise is drawn from the chunk's generator, so it is reproducible from the seed."""
    x = tensors[0]
    noise = float(model_params[0].get("noise_scale", 0.0))
    scale = float(model_params[0].get("scale", 1.0))
    if noise:
        x.add_(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype),
               alpha=noise)
    return x if scale == 1 else x.mul_(scale)


SPEC = MethodSpec(
    name="moe",
    needs_base=False,
    global_params=MappingProxyType({}),
    model_params=MappingProxyType({}),
    merge=expert_copy,
    chunkable=always_chunkable,
    min_donors=1,
    max_donors=1,
)
"""Each task of an MoE plan passes its own ``noise_scale`` and ``scale`` (the recipe's
experts have no ``parameters`` block)."""
