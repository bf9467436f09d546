"""Methods a recipe may name that parse and validate but cannot run yet (``merge=None``).

Parameter names, the global/per-model split and defaults are mergekit's, so a recipe is
checked exactly as mergekit would check it. Implementing one: write its function (in a
module of its family, e.g. ``spherical.py`` for the slerp family), move its spec there,
and give it ``merge`` and ``chunkable``. The semantics are in
``shared/reference/merge-methods.md``; the notes below say what the table cannot.

- slerp: exactly two models; the base is the t=0 end.
- nuslerp, multislerp: the base is optional (``needs_base`` False): with a base distinct
  from the donors they interpolate task vectors, without one the models themselves.
  nuslerp takes exactly two donors, ``t = w2 / (w1 + w2)`` (0.5 when |w1 + w2| < 1e-6).
- karcher: no base role; a ``base_model`` in the recipe is just one more input.
- passthrough: exactly one input. mergekit's ``scale`` defaults to None (no scaling);
  1.0 here means the same.
- sce: ``select_topk`` keeps that fraction of elements by variance across task vectors,
  then sign consensus; each task vector weighted by its mean square.
- nearswap: two models, base plus one; ``t`` is the distance scale.
- ram, ramplus_tl: task-vector entries with |d| <= ``epsilon`` count as absent; entries
  present in one model are taken as is, shared ones averaged (ramplus_tl boosts unique
  ones by ``1 + r * clamp(shared/unique, 0, alpha)`` per model).
- arcee_fusion: base plus one model, no parameters.
"""

from __future__ import annotations

from types import MappingProxyType

from .registry import REQUIRED, MethodSpec


def _pending(
    name: str,
    *,
    needs_base: bool,
    global_params: dict[str, object] | None = None,
    model_params: dict[str, object] | None = None,
) -> MethodSpec:
    return MethodSpec(
        name=name,
        needs_base=needs_base,
        global_params=MappingProxyType(global_params or {}),
        model_params=MappingProxyType(model_params or {}),
    )


SPECS: tuple[MethodSpec, ...] = (
    _pending("slerp", needs_base=True, global_params={"t": REQUIRED}),
    _pending(
        "nuslerp",
        needs_base=False,
        global_params={"nuslerp_flatten": True, "nuslerp_row_wise": False},
        model_params={"weight": REQUIRED},
    ),
    _pending(
        "multislerp",
        needs_base=False,
        global_params={"normalize_weights": True, "eps": 1e-8},
        model_params={"weight": REQUIRED},
    ),
    _pending("karcher", needs_base=False, global_params={"max_iter": 10, "tol": 1e-5}),
    _pending("model_stock", needs_base=True, global_params={"filter_wise": False}),
    _pending("passthrough", needs_base=False, model_params={"scale": 1.0}),
    _pending("sce", needs_base=True, global_params={"select_topk": 1.0, "int8_mask": False}),
    _pending("nearswap", needs_base=True, global_params={"t": REQUIRED}),
    _pending("ram", needs_base=True, global_params={"epsilon": 1e-5}),
    _pending(
        "ramplus_tl",
        needs_base=True,
        global_params={"r": 0.1, "alpha": 0.2, "epsilon": 1e-5},
    ),
    _pending("arcee_fusion", needs_base=True),
)
"""Parse-only methods: known names and parameters, no merge function yet."""
