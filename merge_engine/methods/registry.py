"""Merge methods by name: their parameters, defaults, whether they need a base, and function.

A method function takes float32 tensors of one output tensor (or of one row-chunk of it,
when ``chunkable`` says the method may be run chunk by chunk) and returns the merged
float32 tensor. It may modify its inputs in place: the executor hands over ownership.

    merge(tensors, base, model_params, global_params, generator) -> Tensor

- ``tensors``: one per non-base input model, in recipe order, same shape as ``base``.
- ``base``: the base model's tensor, or None for methods without a base role (and for
  ``base_optional`` methods when the recipe names no ``base_model``).
- ``model_params``: one mapping per entry of ``tensors``: every per-model parameter,
  resolved to a number or bool for this tensor (defaults filled in).
- ``global_params``: every global parameter, resolved likewise.
- ``generator``: a seeded ``torch.Generator`` on the tensors' device, for random methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from merge_engine.methods.multipass import MultiPass

REQUIRED = object()
"""Default of a parameter the recipe must give (per model, or globally as a fallback)."""

Params = Mapping[str, float | int | bool | str]
MergeFn = Callable[
    [Sequence[torch.Tensor], torch.Tensor | None, Sequence[Params], Params, torch.Generator | None],
    torch.Tensor,
]
MultiPassFn = Callable[[Params, Sequence[Params], int], MultiPass | None]
"""``(global_params, model_params, numel) -> runner``, or None where these parameters
(or this many models) have no multi-pass form."""


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
    merge: MergeFn
    chunkable: Callable[[Params, Sequence[Params]], bool] = field(default=_never)
    """True when, for these resolved parameters, merging row-chunks independently gives
    the same result as merging the whole tensor (element- or row-wise math)."""
    base_optional: bool = False
    """Only with ``needs_base`` False: a recipe's ``base_model``, when it gives one, takes
    the base role (passed as ``base``, never among ``tensors``, its own per-model
    parameters ignored, first in the inputs as with ``needs_base``); a recipe without one
    merges every model as a donor with ``base`` None. See :meth:`uses_base`."""
    min_donors: int = 1
    """The fewest entries of ``tensors`` (inputs other than the base role) a recipe may
    give; fewer is a recipe error."""
    max_donors: int | None = None
    """The most entries of ``tensors`` a recipe may give (None: no limit)."""
    multipass: MultiPassFn | None = None
    """For a method that is not chunkable: the same merge as statistics passes over
    row-chunks and an apply pass (see :mod:`~merge_engine.methods.multipass`), so that a
    large tensor is never held whole. Its result equals ``merge``'s up to the float32
    rounding of whole-tensor sums (bit for bit for rank cuts); random draws follow the
    chunks' generators. None: always merged whole."""

    def uses_base(self, has_base_model: bool) -> bool:
        """Whether a recipe with (or without) a ``base_model`` gives this method a base
        tensor: always with ``needs_base``; with ``base_optional``, when it names one."""
        return self.needs_base or (self.base_optional and has_base_model)
