"""Models with small word-level tokenizers, and recipes over two of them."""

from __future__ import annotations

import json

from merge_engine.synth import write_model
from merge_engine.tokenizer.vocab import fill_rows

from .conftest import TINY

SPECIALS = ["<unk>", "<s>", "</s>"]
SHARED = [f"w{i}" for i in range(30)]


def write_tokenizer(path, words: list[str], added: list[tuple[str, bool]]) -> dict[str, int]:
    """A word-level tokenizer (whitespace pre-tokenizer) with ``added`` tokens after the
    words; returns its full vocabulary."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    for content, special in added:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
        "bos_token": "<s>", "eos_token": "</s>", "model_max_length": 256}))
    return tok.get_vocab(with_added_tokens=True)


def make_pair(root):
    """Models A and B (96 embedding rows each) with different tokenizers: shared words
    in another order, 10 words of their own, and one added token each. Returns
    (a, b, A's vocabulary, B's vocabulary)."""
    a, b = write_model(root / "a", TINY, seed=0), write_model(root / "b", TINY, seed=1)
    va = write_tokenizer(a, SHARED + [f"a{i}" for i in range(10)], [("<|a_tok|>", True)])
    vb = write_tokenizer(b, SHARED[::-1] + [f"b{i}" for i in range(10)],
                         [("<|b_tok|>", False)])
    return a, b, va, vb


def recipe(method: str, a, b, extra: str, *, base=None, wa=0.6, wb=0.4) -> str:
    lines = [f"merge_method: {method}", "out_dtype: float32"]
    if base is not None:
        lines.append(f"base_model: {base}")
    lines += ["models:", f"  - model: {a}", "    parameters:", f"      weight: {wa}",
              f"  - model: {b}", "    parameters:", f"      weight: {wb}"]
    return "\n".join(lines) + "\n" + extra


def fill_missing(xs, maps, has_base, rules=()):
    """:func:`merge_engine.tokenizer.vocab.fill_rows` over every output row of whole
    tensors ``xs``."""
    return fill_rows(lambda k, rows: xs[k][rows], maps, has_base, rules, 0, len(maps[0]))
