"""Merge methods by name. See ``registry`` for the method interface.

    spec = get_method("ties")
    spec.merge(tensors, base, model_params, global_params, generator)

``spec.merge is None`` for a method that parses but is not supported yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from . import linear, pending, task_arithmetic
from .registry import REQUIRED, MethodSpec

__all__ = ["METHODS", "REQUIRED", "MethodSpec", "get_method", "method_names"]

METHODS: Mapping[str, MethodSpec] = MappingProxyType(
    {spec.name: spec for spec in (*task_arithmetic.SPECS, *linear.SPECS, *pending.SPECS)}
)
"""Every known method, by its mergekit name."""


def get_method(name: str) -> MethodSpec:
    """The method called ``name``; KeyError (naming the known ones) if there is none."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise KeyError(f"unknown merge method {name!r}; known methods: {known}") from None


def method_names() -> list[str]:
    """All known method names, sorted (supported or not yet)."""
    return sorted(METHODS)
