"""Where a model keeps its layers: the layer stack, the layer count, tied embeddings.

Any decoder-only model is read by its tensor names: a *layer stack* is the set of names
``<prefix><N>.<suffix>`` whose prefix ends in ``layers.``, ``h.``, ``blocks.``, ``block.``
or ``layer.`` (``model.layers.3.mlp.up_proj.weight``: prefix ``model.layers.``, layer 3,
suffix ``mlp.up_proj.weight``). A small table names the stack, the config key of the layer
count and the embeddings of the families whose names differ; a model of another family is
read generically when its names show one decoder stack.

:func:`detect_layout` returns a :class:`Layout`. With ``strict`` (what ``slices:`` needs:
layers are renamed and stacked, so the stack must be known exactly) a layout that is not
understood is a :class:`PlanError` naming what did not fit; otherwise the layout is a best
guess and the caller may warn.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from merge_engine.errors import PlanError

EMBEDDING_SUFFIXES = (
    "embed_tokens.weight",
    "lm_head.weight",
    "wte.weight",
    "embed_in.weight",
    "embed_out.weight",
    "word_embeddings.weight",
)
"""Tensors with one row per vocabulary entry, which may be cut to the base's vocabulary."""

LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")
"""The first layer index in a tensor name (``model.layers.3.`` -> 3)."""
_STACK_RE = re.compile(r"^((?:.*?\.)??(?:layers|h|blocks|block|layer)\.)(\d+)\.(.+)$")
"""(prefix, index, suffix) at the first layer-like part of a name."""
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
"""Config keys that hold the layer count, in the order they are tried (generic models)."""
_HEAD_SUFFIXES = ("lm_head.weight", "lm_head.bias", "embed_out.weight", "embed_out.bias")
_FINAL_NORM_RE = re.compile(
    r"(?:^|\.)(?:norm|ln_f|final_layer_norm|final_layernorm|final_norm|norm_f)\.(?:weight|bias)$"
)
_PRE_HINTS = ("embed", "wte", "wpe")

STALE_BUFFERS: tuple[tuple[re.Pattern, int | None], ...] = (
    (re.compile(r"(?:^|\.)inv_freq$"), None),
    (re.compile(r"(?:^|\.)rotary_emb\.(?:cos|sin)_cached$"), None),
    (re.compile(r"(?:^|\.)(?:attn|attention)\.bias$"), 4),
    (re.compile(r"(?:^|\.)(?:attn|attention)\.masked_bias$"), 0),
)
"""Floating-point buffers that older transformers saved with the weights and newer ones
compute instead, as (name pattern, number of dimensions or None for any): the rotary
frequencies ``inv_freq`` and ``cos/sin_cached`` tables (Llama-2 era llama, mistral,
gpt-neox, falcon checkpoints) and the causal masks of GPT-2, GPT-J and GPT-Neo(X)
(``attn.bias`` ``[1, 1, n, n]``, ``attn.masked_bias`` a scalar; the dimensions keep a
real 1-D ``bias`` parameter out). They are not merged: see :func:`is_buffer`."""

MODULE_PATTERNS = (
    ("multi_modal_projector",
     re.compile(r"(?:^|\.)(?:multi_modal_projector|mm_projector)\.|(?:^|\.)visual\.merger\.")),
    ("vision_tower",
     re.compile(r"(?:^|\.)(?:vision_tower|vision_model|visual|vision_encoder)\.")),
)
"""Parts of a multi-part (vision-language) model by tensor name, as mergekit's
``modules`` names them; every other tensor belongs to ``text_decoder``. Covers the
Llava / Mistral3 / Gemma3 / Llama4 layouts (``vision_tower.``, ``multi_modal_projector.``,
with or without a ``model.`` prefix) and Qwen2-VL's (``visual.``, ``visual.merger.``)."""
TEXT_MODULE = "text_decoder"


def module_of(name: str) -> str:
    """The part of a multi-part model tensor ``name`` belongs to (see :data:`MODULE_PATTERNS`)."""
    return next((part for part, pattern in MODULE_PATTERNS if pattern.search(name)),
                TEXT_MODULE)


@dataclass(frozen=True)
class Family:
    """One row of the table: a family whose tensor names are known."""

    name: str
    model_types: tuple[str, ...]
    layer_prefixes: tuple[str, ...]
    """Where the decoder layers live; the first one the model's names use is its stack."""
    count_keys: tuple[str, ...] = ("num_hidden_layers",)
    """Config keys of the layer count (dotted for nested configs), first present wins."""
    tied: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Output head -> the input embedding it equals when the embeddings are tied."""
    architectures: tuple[str, ...] = ()
    """Config ``architectures`` class names, for configs without a known ``model_type``."""


_LLAMA_TIED = {"lm_head.weight": ("model.embed_tokens.weight",)}

FAMILIES: tuple[Family, ...] = (
    Family(
        "llama",
        (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "phi3",
            "mixtral",
            "qwen2_moe",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
        ),
        ("model.layers.",),
        tied=_LLAMA_TIED,
        architectures=(
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
            "Phi3ForCausalLM",
            "MixtralForCausalLM",
            "GemmaForCausalLM",
            "Gemma2ForCausalLM",
            "Gemma3ForCausalLM",
        ),
    ),
    Family(
        "gemma3",
        ("gemma3",),
        ("language_model.model.layers.", "model.language_model.layers."),
        count_keys=("text_config.num_hidden_layers", "num_hidden_layers"),
        tied={
            "language_model.lm_head.weight": ("language_model.model.embed_tokens.weight",),
            "lm_head.weight": ("model.language_model.embed_tokens.weight",),
        },
        architectures=("Gemma3ForConditionalGeneration",),
    ),
    Family(
        "gpt2",
        ("gpt2",),
        ("transformer.h.",),
        count_keys=("n_layer", "num_hidden_layers"),
        tied={"lm_head.weight": ("transformer.wte.weight",)},
        architectures=("GPT2LMHeadModel",),
    ),
    Family(
        "gpt_neox",
        ("gpt_neox",),
        ("gpt_neox.layers.",),
        tied={"embed_out.weight": ("gpt_neox.embed_in.weight",)},
        architectures=("GPTNeoXForCausalLM",),
    ),
    Family(
        "falcon",
        ("falcon", "RefinedWeb", "RefinedWebModel"),
        ("transformer.h.",),
        count_keys=("num_hidden_layers", "n_layer"),
        tied={"lm_head.weight": ("transformer.word_embeddings.weight",)},
        architectures=("FalconForCausalLM", "RWForCausalLM"),
    ),
)
"""The families whose names differ from each other (llama's names cover many more)."""


def _merge_tied(families: Iterable[Family]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for family in families:
        for head, embeds in family.tied.items():
            out[head] = out.get(head, ()) + tuple(e for e in embeds if e not in out.get(head, ()))
    return out


TIED_ALIASES: dict[str, tuple[str, ...]] = _merge_tied(FAMILIES)
"""Output head -> the input embeddings it equals in a model with tied embeddings (any
family): a tied model read where an untied one has ``lm_head.weight`` gives its embedding."""


def family_for(config: Mapping) -> Family | None:
    """The table row for a config's ``model_type`` (else its ``architectures``), or None."""
    model_type = config.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    archs = config.get("architectures") or ()
    for family in FAMILIES:
        if any(a in family.architectures for a in archs):
            return family
    return None


def is_buffer(name: str, shape: tuple[int, ...], floating: bool) -> bool:
    """Is tensor ``name`` a buffer rather than a weight: not floating point (position or
    token type ids, ``num_batches_tracked``, masks), or a stale floating buffer
    (:data:`STALE_BUFFERS`)? Buffers are taken from one model, not merged, and models
    may lack them."""
    if not floating:
        return True
    return any(pattern.search(name) and dims in (None, len(shape))
               for pattern, dims in STALE_BUFFERS)


def split_layer_name(name: str) -> tuple[str, int, str] | None:
    """``model.layers.3.mlp.up_proj.weight`` -> (``model.layers.``, 3, ``mlp.up_proj.weight``)."""
    match = _STACK_RE.match(name)
    if not match:
        return None
    return match.group(1), int(match.group(2)), match.group(3)


def find_stacks(names: Iterable[str]) -> dict[str, set[int]]:
    """Every layer stack in ``names``: prefix -> the layer indices that have tensors."""
    stacks: dict[str, set[int]] = {}
    for name in names:
        parts = split_layer_name(name)
        if parts:
            stacks.setdefault(parts[0], set()).add(parts[1])
    return stacks


def config_get(config: Mapping, key: str) -> object:
    """``config[key]`` for a dotted ``key`` (``text_config.num_hidden_layers``), else None."""
    node: object = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def config_set(config: dict, key: str, value: object) -> None:
    """Set a dotted ``key`` in a (nested, copied) config dict."""
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    node[last] = value


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class Layout:
    """How one model's tensors are laid out."""

    family: str
    """The table row's name, or ``generic``."""
    prefix: str | None
    """The decoder stack's prefix (``model.layers.``); None when the names show none."""
    num_layers: int
    """Layers in the decoder stack (the config's count, else counted from the names)."""
    count_key: str
    """The config key (dotted when nested) that holds the layer count."""
    stacks: Mapping[str, int] = field(default_factory=dict)
    """Every stack found (vision towers too): prefix -> layers counted from the names."""
    note: str | None = None
    """Not strict: why the layout is a guess (the config's family did not fit the names)."""

    def layer_of(self, name: str) -> tuple[int, str] | None:
        """(layer index, suffix) when ``name`` is in the decoder stack, else None."""
        if self.prefix is None or not name.startswith(self.prefix):
            return None
        parts = split_layer_name(name)
        if parts is None or parts[0] != self.prefix:
            return None
        return parts[1], parts[2]

    def layer_name(self, index: int, suffix: str) -> str:
        """The name of ``suffix`` in layer ``index`` of this model's decoder stack."""
        if self.prefix is None:
            raise ValueError("this layout has no layer stack")
        return f"{self.prefix}{index}.{suffix}"

    def position(self, name: str) -> tuple[str, int | None, int]:
        """(where, layer index, layers in that stack) for a tensor name.

        ``where`` is ``layer`` inside the decoder stack, ``stack`` inside another stack (a
        vision tower; its index counts in its own stack), ``post`` for the output head and
        the final norm, ``pre`` for everything else (embeddings first of all).
        """
        layer = self.layer_of(name)
        if layer is not None:
            return "layer", layer[0], self.num_layers
        parts = split_layer_name(name)
        if parts is not None and parts[0] in self.stacks:
            return "stack", parts[1], self.stacks[parts[0]]
        if name.endswith(_HEAD_SUFFIXES) or name in TIED_ALIASES:
            return "post", None, 0
        if _FINAL_NORM_RE.search(name) and not any(h in name for h in _PRE_HINTS):
            return "post", None, 0
        return "pre", None, 0


def detect_layout(
    config: Mapping, names: Iterable[str], model: str, *, strict: bool = False
) -> Layout:
    """The layout of a model from its config and tensor names.

    ``strict``: PlanError, naming the model and what was not understood, when the config's
    family does not match the names, when no (or no single) decoder stack is found, or
    when the config's layer count disagrees with the layers the names have. Not strict:
    the best guess (generic reading by names; no stack gives ``prefix`` None).
    """
    names = list(names)
    stacks = find_stacks(names)
    counted = {p: max(idx) + 1 for p, idx in stacks.items()}
    family = family_for(config)
    what = _describe(config)
    prefix = note = None
    count_keys = LAYER_COUNT_KEYS + tuple(f"text_config.{k}" for k in LAYER_COUNT_KEYS)
    if family is not None:
        prefix = next((p for p in family.layer_prefixes if p in stacks), None)
        if prefix is None:
            found = ", ".join(f"{p}N." for p in stacks) or "none"
            note = (
                f"{model}: {what} says a {family.name} model, whose layers are named "
                f"{family.layer_prefixes[0]}N.*, but no tensor is named that way (layer "
                f"stacks found: {found})"
            )
            if strict:
                raise PlanError(f"{note}; this layout is not understood")
            note += "; its tensors were read by name alone"
            family = None
        else:
            count_keys = family.count_keys
    config_count = next((v for k in count_keys if _is_count(v := config_get(config, k))), None)
    count_key = next((k for k in count_keys if _is_count(config_get(config, k))), count_keys[0])
    if prefix is None:
        prefix = _pick_stack(counted, config_count, model, what, strict)
    if prefix is None:
        return Layout(
            family.name if family else "generic", None, config_count or 1, count_key, counted, note
        )
    if strict and config_count is not None and config_count != counted[prefix]:
        raise PlanError(
            f"{model}: config.json says {config_count} layers ({count_key}) but its tensors "
            f"{prefix}N.* have layers 0 to {counted[prefix] - 1}; the layout is not understood"
        )
    if strict and len(stacks[prefix]) != counted[prefix]:
        missing = sorted(set(range(counted[prefix])) - stacks[prefix])
        raise PlanError(f"{model}: layers {missing} of {prefix}N.* have no tensors")
    return Layout(
        family.name if family else "generic",
        prefix,
        config_count or counted[prefix],
        count_key,
        counted,
        note,
    )


def _describe(config: Mapping) -> str:
    model_type = config.get("model_type")
    archs = config.get("architectures") or ()
    if model_type:
        return f"config.json (model_type {model_type!r})"
    if archs:
        return f"config.json (architectures {', '.join(archs)})"
    return "config.json"


def _pick_stack(
    counted: dict[str, int], config_count: int | None, model: str, what: str, strict: bool
) -> str | None:
    """The decoder stack of a model read generically."""
    if not counted:
        if strict:
            raise PlanError(
                f"{model}: no layer stack found in its tensor names ({what}); expected names "
                "like model.layers.N.* or transformer.h.N.*, so its layers cannot be sliced"
            )
        return None
    if len(counted) == 1:
        return next(iter(counted))
    matching = [p for p, n in counted.items() if n == config_count]
    if len(matching) == 1:
        return matching[0]
    if strict:
        found = ", ".join(f"{p}N. ({n} layers)" for p, n in counted.items())
        raise PlanError(
            f"{model}: several layer stacks in its tensor names ({found}) and {what} does not "
            "say which is the decoder; this layout is not understood"
        )
    return max(counted, key=lambda p: (counted[p], -len(p)))
