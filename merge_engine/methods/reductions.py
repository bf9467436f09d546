"""Accurate dot products and norms of float32 tensors, whole or along the last dim.

The geometric methods branch on cosines near 1 and scale by norms, so these sums must
not lose digits. torch's float32 whole-tensor reductions can, on the CPU: over 1e8
values ``torch.linalg.vector_norm`` was measured 1% off (its L1 norm 17%), ``torch.dot``
3.5e-7, and a float32 BLAS dot of 65,536 values up to 1e-6 on some CPUs. Here a whole
tensor is summed in blocks, each widened to float64 in a small reused buffer (exact
products, float64 sums), with no full-size temporary.
Row sums (along the last dim) use ``(a * b).sum(-1)``, whose float32 cascade sum is
accurate for rows of any realistic length.
"""

from __future__ import annotations

import math
import threading

import torch

CPU_BLOCK = 1 << 16
"""Elements per block on the CPU (its float64 buffers stay in cache)."""
DEVICE_BLOCK = 1 << 22
"""Elements per block on an accelerator (fewer, larger kernels)."""


def _block(x: torch.Tensor) -> int:
    return CPU_BLOCK if x.device.type == "cpu" else DEVICE_BLOCK


_scratch = threading.local()


def _wide_buffers(device: torch.device, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This thread's two float64 block buffers on ``device``, at least ``numel`` long:
    allocated once per thread (and freed with it: the executor's workers end with the
    merge), so the many small dots of a merge do not churn (and, over several worker
    threads, fragment) the allocator. Scratch only: no result depends on it."""
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    pair = buffers.get(device)
    if pair is None or pair[0].numel() < numel:
        pair = buffers[device] = (torch.empty(numel, dtype=torch.float64, device=device),
                                  torch.empty(numel, dtype=torch.float64, device=device))
    return pair


def dot_parts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The float64 dots of ``a`` and ``b`` over consecutive blocks of their flattened
    elements (1-D); :func:`dot` is their sum. Each block is widened to float64 in a reused
    buffer, so its products are exact and its sum is accurate to about 1e-16 relative: the
    result hardly depends on where row-chunks cut the tensor, and parts of row-chunks that
    start at block boundaries, concatenated in order, are exactly the whole tensor's."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    n, block = fa.numel(), _block(fa)
    if n == 0:
        return torch.zeros(1, dtype=torch.float64, device=fa.device)
    wide_a, wide_b = _wide_buffers(fa.device, block)
    parts = []
    for s in range(0, n, block):
        k = min(block, n - s)
        x = wide_a[:k].copy_(fa[s : s + k])
        y = x if a is b else wide_b[:k].copy_(fb[s : s + k])
        parts.append(torch.dot(x, y))
    return torch.stack(parts)


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``sum(a * b)`` over every element, as a Python float (float64 accumulation)."""
    return float(dot_parts(a, b).sum())


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
