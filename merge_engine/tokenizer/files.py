"""A model's vocabulary read from its tokenizer files, fast or slow.

``tokenizer.json`` is read with the ``tokenizers`` library. Without one (older Llama-2 and
Mistral fine-tunes ship only a SentencePiece ``tokenizer.model``; GPT-2 style ones
``vocab.json``) the vocabulary comes from those files, read as data: the SentencePiece
model is a protobuf whose field 1 lists the pieces in id order, and is parsed here with a
small wire-format reader (no protobuf or sentencepiece package, nothing executed). Added
tokens come from ``tokenizer_config.json``'s ``added_tokens_decoder`` and
``added_tokens.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from merge_engine.errors import PlanError
from merge_engine.io.sources import Source


@dataclass
class ModelVocab:
    """Token string -> id for one model, with its added tokens."""

    regular: dict[str, int]
    """The tokenizer model's own vocabulary (added tokens excluded)."""
    added: dict[int, object] = field(default_factory=dict)
    """Added tokens by id, as ``tokenizers.AddedToken``."""
    tokenizer: object | None = None
    """The ``tokenizers.Tokenizer`` when the model has a tokenizer.json."""

    def full(self) -> dict[str, int]:
        """Every token, added ones included (an added token wins a clash, as in HF)."""
        return self.regular | {t.content: i for i, t in self.added.items()}


def tokenizers_module():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - installed with transformers
        raise PlanError("tokenizer merging needs the 'tokenizers' package "
                        "(pip install tokenizers)") from e
    return tokenizers


def read_vocab(source: Source) -> ModelVocab:
    """``source``'s vocabulary from tokenizer.json, else tokenizer.model, else vocab.json
    (fetches only those small files)."""
    if "tokenizer.json" in source.files:
        tok = tokenizers_module().Tokenizer.from_file(str(source.fetch("tokenizer.json")))
        added = tok.get_added_tokens_decoder()
        regular = {t: i for t, i in tok.get_vocab(with_added_tokens=False).items()
                   if i not in added}
        return ModelVocab(regular, dict(added), tok)
    if "tokenizer.model" in source.files:
        data = source.fetch("tokenizer.model").read_bytes()
        try:
            pieces = sentencepiece_pieces(data)
        except ValueError as e:
            raise PlanError(f"{source.name}: tokenizer.model is not a SentencePiece model "
                            f"({e})") from None
        regular = {}
        for i, piece in enumerate(pieces):
            regular.setdefault(piece, i)
    elif "vocab.json" in source.files:
        raw = json.loads(source.fetch("vocab.json").read_text())
        regular = {str(t): int(i) for t, i in raw.items()}
    else:
        raise PlanError(f"{source.name} has no tokenizer.json, tokenizer.model or vocab.json; "
                        "tokenizer merging needs one of them")
    added = _slow_added(source)
    return ModelVocab({t: i for t, i in regular.items() if i not in added}, added)


def _slow_added(source: Source) -> dict[int, object]:
    """Added tokens of a slow tokenizer: tokenizer_config.json's ``added_tokens_decoder``,
    then ``added_tokens.json`` for ids not listed there."""
    AddedToken = tokenizers_module().AddedToken  # noqa: N806 - a class
    added = {}
    if "tokenizer_config.json" in source.files:
        config = json.loads(source.fetch("tokenizer_config.json").read_text())
        for key, info in (config.get("added_tokens_decoder") or {}).items():
            flags = {k: bool(info[k]) for k in ("special", "lstrip", "rstrip", "single_word",
                                                "normalized") if k in info}
            added[int(key)] = AddedToken(info["content"], **flags)
    if "added_tokens.json" in source.files:
        for content, i in json.loads(source.fetch("added_tokens.json").read_text()).items():
            added.setdefault(int(i), AddedToken(content, normalized=False))
    return added


def sentencepiece_pieces(data: bytes) -> list[str]:
    """The pieces of a serialized SentencePiece ``ModelProto``, in id order.

    Wire format: a stream of (key varint = field << 3 | type, value); field 1 (type 2,
    length-delimited) is a ``SentencePiece`` message whose field 1 is the piece text."""
    pieces = []
    for number, kind, value in _fields(data):
        if number == 1 and kind == 2:
            text = next((v for n, k, v in _fields(value) if n == 1 and k == 2), b"")
            pieces.append(text.decode("utf-8"))
    if not pieces:
        raise ValueError("no pieces found")
    return pieces


def _fields(data: bytes):
    """(field number, wire type, value) of each field of one protobuf message."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, pos = _varint(data, pos)
        elif kind == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif kind == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif kind == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {kind}")
        if pos > end:
            raise ValueError("truncated data")
        yield number, kind, value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
