"""Mixture-of-experts recipes in mergekit-moe's YAML: a dense base model's attention, norms,
embeddings and head, and each expert's MLP from its own fine-tune, behind a router.

    base_model: org/base
    gate_mode: hidden            # hidden (default) | cheap_embed | random | uniform_random
    dtype: bfloat16              # the output's dtype (default: the base's)
    experts_per_token: 2         # default 2 (1 with a single expert)
    architecture: mixtral        # mixtral | qwen2_moe (alias qwen) | qwen3_moe; default from
                                 # the base (qwen2 -> qwen2_moe, qwen3 -> qwen3_moe, else mixtral)
    experts:
      - source_model: org/code-tune
        positive_prompts: ["def main():"]
        negative_prompts: ["Once upon a time"]   # optional
        noise_scale: 0.01                        # optional: Gaussian noise on its MLP
    shared_experts:              # qwen2_moe only: exactly one, run for every token
      - source_model: org/base
        positive_prompts: ["..."]                # optional: its gate's row
        residual_scale: 0.1                      # optional: its output scaled down

A document is an MoE recipe when it has ``experts`` and no ``merge_method``
(:func:`is_moe`). :func:`parse_moe` checks it against this schema, errors at the YAML path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from merge_engine.errors import RecipeError
from merge_engine.recipe.params import unknown_key
from merge_engine.recipe.refs import ModelRef, parse_ref_value

TOP_KEYS = ("base_model", "gate_mode", "dtype", "experts_per_token", "experts",
            "shared_experts", "architecture", "tokenizer_source", "name")
EXPERT_KEYS = ("source_model", "positive_prompts", "negative_prompts", "noise_scale")
SHARED_KEYS = ("source_model", "positive_prompts", "negative_prompts", "residual_scale")
GATE_MODES = ("hidden", "cheap_embed", "random", "uniform_random")
PROMPT_MODES = ("hidden", "cheap_embed")
"""Gate modes whose router rows come from the prompts."""
ARCHITECTURES = {"mixtral": "mixtral", "qwen2_moe": "qwen2_moe", "qwen": "qwen2_moe",
                 "qwen3_moe": "qwen3_moe"}
"""Output architectures by the names a recipe may give."""
MAX_EXPERTS = 256
MAX_PROMPT_CHARS = 4096
"""Characters of one prompt (each is run through the base model with ``hidden``)."""


@dataclass(frozen=True)
class Expert:
    """One expert (or shared expert) of the output: whose MLP, and the prompts that route
    to it."""

    ref: ModelRef
    positive_prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    loc: str
    """``experts[i]`` or ``shared_experts[i]``."""
    noise_scale: float = 0.0
    """Standard deviation of Gaussian noise added to its MLP weights."""
    residual_scale: float = 1.0
    """A shared expert's output factor (its ``down_proj`` is scaled by it)."""


@dataclass(frozen=True)
class MoeSpec:
    """The MoE part of a recipe (see the module docstring)."""

    gate_mode: str
    experts_per_token: int
    experts: tuple[Expert, ...]
    shared_experts: tuple[Expert, ...]
    architecture: str | None
    """``mixtral``, ``qwen2_moe``, ``qwen3_moe``; None: chosen from the base's config."""

    @property
    def all_experts(self) -> tuple[Expert, ...]:
        return (*self.experts, *self.shared_experts)


def kind_of(raw: object) -> str:
    """How a wrong value reads in an error (``nothing (null)``, ``a list``, ``'x'``)."""
    if raw is None:
        return "nothing (null)"
    return "a mapping" if isinstance(raw, dict) else "a list" if isinstance(raw, list) \
        else repr(raw)


def is_moe(doc: object) -> bool:
    """Is this YAML document an MoE recipe (``experts`` given, no ``merge_method``)?"""
    return isinstance(doc, dict) and "experts" in doc and "merge_method" not in doc


def parse_moe(doc: dict) -> tuple[ModelRef, MoeSpec]:
    """(base model, MoE spec) of an MoE recipe document; RecipeError at the YAML path of the
    first mistake. ``dtype``, ``tokenizer_source`` and ``name`` are left to the caller."""
    for key in doc:
        if key not in TOP_KEYS:
            raise unknown_key(str(key), key, TOP_KEYS)
    if doc.get("base_model") is None:
        raise RecipeError("base_model", "missing required key 'base_model' (the model whose "
                          "attention, norms and embeddings the MoE keeps)")
    base = parse_ref_value(doc["base_model"], "base_model")
    gate_mode = doc.get("gate_mode", "hidden")
    if gate_mode not in GATE_MODES:
        raise RecipeError("gate_mode", f"unknown gate_mode {gate_mode!r}; expected one of "
                          + ", ".join(GATE_MODES))
    experts = _experts(doc.get("experts"), "experts", EXPERT_KEYS, gate_mode, required=True)
    if len(experts) > MAX_EXPERTS:
        raise RecipeError("experts", f"{len(experts)} experts; at most {MAX_EXPERTS} are "
                          "supported")
    shared = _experts(doc.get("shared_experts"), "shared_experts", SHARED_KEYS, gate_mode,
                      required=False)
    if len(shared) > 1:
        raise RecipeError("shared_experts[1]", "at most one shared expert is supported")
    per_token = doc.get("experts_per_token", min(2, len(experts)))
    if isinstance(per_token, bool) or not isinstance(per_token, int) or not (
            1 <= per_token <= len(experts)):
        raise RecipeError("experts_per_token", f"expected a whole number from 1 to the "
                          f"{len(experts)} experts, got {kind_of(per_token)}")
    architecture = doc.get("architecture")
    if architecture is not None:
        if architecture not in ARCHITECTURES:
            raise RecipeError("architecture", f"unknown architecture {kind_of(architecture)}; "
                              "expected mixtral, qwen2_moe (or qwen) or qwen3_moe")
        architecture = ARCHITECTURES[architecture]
    if shared and architecture not in (None, "qwen2_moe"):
        raise RecipeError("shared_experts", f"the {architecture} architecture has no shared "
                          "expert; use architecture: qwen2_moe")
    return base, MoeSpec(gate_mode, per_token, experts, shared, architecture)


def _experts(raw: object, loc: str, keys: tuple[str, ...], gate_mode: str,
             required: bool) -> tuple[Expert, ...]:
    if raw is None and not required:
        return ()
    if not isinstance(raw, list) or (required and not raw):
        raise RecipeError(loc, f"expected a non-empty list of experts, each with a "
                          f"source_model, got {kind_of(raw)}")
    found = []
    for i, item in enumerate(raw):
        where = f"{loc}[{i}]"
        if not isinstance(item, dict):
            hint = f"; write '- source_model: {item}'" if isinstance(item, str) else ""
            raise RecipeError(where, f"expected a mapping with source_model and "
                              f"positive_prompts{hint}")
        for key in item:
            if key not in keys:
                raise unknown_key(f"{where}.{key}", key, keys)
        if item.get("source_model") is None:
            raise RecipeError(where, "missing required key 'source_model'")
        ref = parse_ref_value(item["source_model"], f"{where}.source_model")
        positive = _prompts(item.get("positive_prompts"), f"{where}.positive_prompts")
        negative = _prompts(item.get("negative_prompts"), f"{where}.negative_prompts")
        if gate_mode in PROMPT_MODES and not positive and loc == "experts":
            raise RecipeError(f"{where}.positive_prompts", f"gate_mode {gate_mode} routes "
                              "by prompts: give this expert at least one positive prompt")
        found.append(Expert(ref, positive, negative, where,
                            _number(item, "noise_scale", where, 0.0),
                            _number(item, "residual_scale", where, 1.0)))
    return tuple(found)


def _prompts(raw: object, loc: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise RecipeError(loc, f"expected a list of prompt strings, got {kind_of(raw)}")
    for i, prompt in enumerate(raw):
        if not isinstance(prompt, str):
            raise RecipeError(f"{loc}[{i}]", f"expected a prompt string, got {kind_of(prompt)}")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise RecipeError(f"{loc}[{i}]", f"the prompt has {len(prompt)} characters; at "
                              f"most {MAX_PROMPT_CHARS} are allowed")
    return tuple(raw)


def _number(item: dict, key: str, where: str, default: float) -> float:
    raw = item.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) \
            or raw < 0:
        raise RecipeError(f"{where}.{key}", f"expected a number at least 0, got {kind_of(raw)}")
    return float(raw)
