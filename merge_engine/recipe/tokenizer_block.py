"""mergekit's ``tokenizer:`` block, parsed and validated.

.. code-block:: yaml

    tokenizer:
      source: union            # union (default), base, or one of the recipe's models
      pad_to_multiple_of: 64   # output vocabulary rows rounded up; extra rows are zeros
      tokens:
        <|im_start|>:
          source: org/chat-model         # that model's row for the same token
        <|im_end|>:
          source: {kind: model_token, model: org/chat-model, token: "</s>"}  # or token_id
          force: true                    # every model's row is replaced, not only missing ones
        <|pad|>:
          source: {kind: zero}

A token's ``source`` gives the embedding (and output-head) row used for models that lack
the token; with ``force`` it replaces every model's row, so methods that return their
inputs' common value give exactly it. See :func:`merge_engine.tokenizer.vocab.fill_rows`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from merge_engine.errors import RecipeError
from merge_engine.recipe.params import _kind, unknown_key
from merge_engine.recipe.refs import parse_ref, parse_ref_value

BLOCK_KEYS = ("source", "tokens", "pad_to_multiple_of")
TOKEN_KEYS = ("source", "force")
SOURCE_KINDS = ("model_token", "zero")
MODEL_TOKEN_KEYS = ("kind", "model", "token", "token_id")


@dataclass(frozen=True)
class TokenSource:
    """Where one token's row comes from: ``zero``, or ``model``'s row for ``token`` /
    ``token_id`` (``token`` None and ``token_id`` None: the configured token itself)."""

    kind: str
    """``zero`` or ``model``."""
    model: str | None = None
    """The model's reference, canonical (``str(ModelRef)``)."""
    token: str | None = None
    token_id: int | None = None
    loc: str = field(default="", compare=False)
    """The YAML path of :attr:`model`."""


@dataclass(frozen=True)
class TokenRule:
    """``tokenizer.tokens[token]``."""

    token: str
    source: TokenSource | None
    force: bool
    loc: str


@dataclass(frozen=True)
class TokenizerBlock:
    """The parsed block; :attr:`source` is ``union``, ``base`` or a model reference."""

    source: str
    tokens: tuple[TokenRule, ...]
    pad_to_multiple_of: int | None


def parse_tokenizer_block(raw: object, loc: str = "tokenizer") -> TokenizerBlock:
    """The block at ``loc``; RecipeError at the YAML path of the first mistake."""
    if not isinstance(raw, dict):
        raise RecipeError(loc, f"expected a mapping, got {_kind(raw)}")
    for key in raw:
        if key not in BLOCK_KEYS:
            raise unknown_key(f"{loc}.{key}", key, BLOCK_KEYS)
    source = raw.get("source", "union")
    if source not in ("union", "base"):
        if source is None:
            raise RecipeError(f"{loc}.source", "expected union, base or a model, got nothing")
        source = str(parse_ref(source, f"{loc}.source") if isinstance(source, str)
                     else parse_ref_value(source, f"{loc}.source"))
    pad = raw.get("pad_to_multiple_of")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 1):
        raise RecipeError(f"{loc}.pad_to_multiple_of",
                          f"expected a positive whole number, got {pad!r}")
    tokens = raw.get("tokens") or {}
    if not isinstance(tokens, dict):
        raise RecipeError(f"{loc}.tokens",
                          f"expected a mapping of token strings, got {_kind(tokens)}")
    rules = tuple(_rule(str(tok), body, f"{loc}.tokens.{tok}") for tok, body in tokens.items())
    return TokenizerBlock(source, rules, pad)


def _rule(token: str, body: object, loc: str) -> TokenRule:
    if not isinstance(body, dict):
        raise RecipeError(loc, f"expected a mapping with source and force, got {_kind(body)}")
    for key in body:
        if key not in TOKEN_KEYS:
            raise unknown_key(f"{loc}.{key}", key, TOKEN_KEYS)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise RecipeError(f"{loc}.force", f"expected true or false, got {force!r}")
    raw = body.get("source")
    source = None if raw is None else _source(raw, f"{loc}.source")
    if force and source is None:
        raise RecipeError(f"{loc}.force", "force needs a source to force the token's row to")
    return TokenRule(token, source, force, loc)


def _source(raw: object, loc: str) -> TokenSource:
    if isinstance(raw, str):
        return TokenSource("model", str(parse_ref(raw, loc)), loc=loc)
    if not isinstance(raw, Mapping):
        raise RecipeError(loc, f"expected a model or a mapping with kind, got {_kind(raw)}")
    kind = raw.get("kind")
    if kind is None and "model" not in raw:  # mergekit's mapping form of a model reference
        return TokenSource("model", str(parse_ref_value(raw, loc)), loc=loc)
    if kind not in SOURCE_KINDS:
        raise RecipeError(f"{loc}.kind", f"unknown kind {kind!r}; use model_token or zero")
    if kind == "zero":
        extra = [k for k in raw if k != "kind"]
        if extra:
            raise RecipeError(f"{loc}.{extra[0]}", "a zero source takes no other keys")
        return TokenSource("zero")
    for key in raw:
        if key not in MODEL_TOKEN_KEYS:
            raise unknown_key(f"{loc}.{key}", key, MODEL_TOKEN_KEYS)
    if raw.get("model") is None:
        raise RecipeError(f"{loc}.model", "a model_token source needs a model")
    model = str(parse_ref_value(raw["model"], f"{loc}.model"))
    token, token_id = raw.get("token"), raw.get("token_id")
    if token is not None and token_id is not None:
        raise RecipeError(f"{loc}.token_id", "give token or token_id, not both")
    if token is not None and not isinstance(token, str):
        raise RecipeError(f"{loc}.token", f"expected a token string, got {_kind(token)}")
    if token_id is not None and (isinstance(token_id, bool) or not isinstance(token_id, int)
                                 or token_id < 0):
        raise RecipeError(f"{loc}.token_id", f"expected a token id (0 or more), got {token_id!r}")
    return TokenSource("model", model, token, token_id, f"{loc}.model")
