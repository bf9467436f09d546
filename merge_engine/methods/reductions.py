"""Accurate dot products and norms of float32 tensors, whole or along the last dim.

The geometric methods branch on cosines near 1 and scale by norms, so these sums must
not lose digits. torch's float32 whole-tensor reductions can, on the CPU: over 1e8
values ``torch.linalg.vector_norm`` was measured 1% off (its L1 norm 17%), ``torch.dot``
3.5e-7. Here a whole tensor is summed in blocks (each block's float32 dot accurate to
about 1e-9 relative) and the block sums are added in float64, with no full-size temporary.
Row sums (along the last dim) use ``(a * b).sum(-1)``, whose float32 cascade sum is
accurate for rows of any realistic length.
"""

from __future__ import annotations

import math

import torch

CPU_BLOCK = 1 << 16
"""Elements per float32 block dot on the CPU (BLAS accumulates a block in float32)."""
DEVICE_BLOCK = 1 << 22
"""Elements per block on an accelerator (tree reductions: larger blocks are accurate)."""


def _block(x: torch.Tensor) -> int:
    return CPU_BLOCK if x.device.type == "cpu" else DEVICE_BLOCK


def dot_parts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The float32 dots of ``a`` and ``b`` over consecutive blocks of their flattened
    elements (1-D); :func:`dot` is their float64 sum. Parts of row-chunks that start at
    block boundaries, concatenated in order, are exactly the whole tensor's parts."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    n, block = fa.numel(), _block(fa)
    if n <= block:
        return torch.dot(fa, fb).view(1)
    return torch.stack([torch.dot(fa[s : s + block], fb[s : s + block])
                        for s in range(0, n, block)])


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``sum(a * b)`` over every element, as a Python float (float64 accumulation)."""
    return float(dot_parts(a, b).double().sum())


def norm(a: torch.Tensor) -> float:
    """The L2 norm of all of ``a``, as a Python float."""
    return math.sqrt(dot(a, a))


def l1_parts(a: torch.Tensor) -> torch.Tensor:
    """The float64 sums of ``|a|`` over blocks, as :func:`dot_parts`; :func:`l1_norm` is
    their sum."""
    flat = a.reshape(-1)
    n, block = flat.numel(), _block(flat)
    if n <= block:
        return flat.abs().sum(dtype=torch.float64).view(1)
    return torch.stack([flat[s : s + block].abs().sum(dtype=torch.float64)
                        for s in range(0, n, block)])


def l1_norm(a: torch.Tensor) -> float:
    """``sum(|a|)`` over every element, as a Python float (float64 accumulation).

    A drop-in for ``torch.linalg.vector_norm(a, ord=1)``, which on the CPU was measured
    2.6% low over 4.5e7 float32 values (16% over 1e8).
    """
    return float(l1_parts(a).sum())


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum(a * b)`` along the last dim, kept as a size-1 dim, in float64."""
    return (a * b).sum(dim=-1, keepdim=True, dtype=torch.float64)


def row_norm(a: torch.Tensor) -> torch.Tensor:
    """The L2 norm along the last dim, kept as a size-1 dim, in float64."""
    return row_dot(a, a).sqrt_()
