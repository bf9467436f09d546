"""Merge methods by name. See ``registry`` for the method interface.

    spec = get_method("ties")
    spec.merge(tensors, base, model_params, global_params, generator)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from merge_engine.methods import geometric, linear, passthrough, selective, task_arithmetic
from merge_engine.methods.registry import REQUIRED, MethodSpec

__all__ = ["METHODS", "REQUIRED", "MethodSpec", "get_method", "method_names"]

METHODS: Mapping[str, MethodSpec] = MappingProxyType(
    {
        spec.name: spec
        for module in (task_arithmetic, linear, geometric, passthrough, selective)
        for spec in module.SPECS
    }
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
    """All known method names, sorted."""
    return sorted(METHODS)
