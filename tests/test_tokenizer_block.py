"""The ``tokenizer:`` block (per-token rules, ``pad_to_multiple_of``), ``tokenizer_source:
base`` mapping by token, and slow tokenizers (SentencePiece ``tokenizer.model``)."""

from __future__ import annotations

import json

import pytest
import torch

from merge_engine import run_merge, validate
from merge_engine.errors import PlanError, RecipeError
from merge_engine.recipe import parse_recipe
from merge_engine.recipe.tokenizer_block import TokenSource
from merge_engine.synth import write_model
from merge_engine.tokenizer.files import sentencepiece_pieces

from .conftest import TINY, load_model
from .tokutil import SHARED, SPECIALS, make_pair, recipe, write_tokenizer

EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("tok"))


def out_vocab(out) -> dict[str, int]:
    tok = json.loads((out / "tokenizer.json").read_text())
    return tok["model"]["vocab"] | {t["content"]: t["id"] for t in tok["added_tokens"]}


def block(a, b) -> str:
    return f"""tokenizer:
  source: union
  pad_to_multiple_of: 64
  tokens:
    "<|b_tok|>":
      source: {{kind: model_token, model: {a}, token: w1}}
      force: true
    a3:
      source: {{kind: zero}}
    w5:
      source: {b}
    w6:
      source: {{kind: zero}}
      force: true
    "<|a_tok|>":
      source: {{kind: model_token, model: {b}, token_id: 3}}
      force: true
"""


def test_block_rules_and_padding(pair, tmp_path):
    a, b, va, vb = pair
    out = tmp_path / "out"
    run_merge(recipe("linear", a, b, block(a, b)), out, device="cpu", random_seed=0)
    vocab = out_vocab(out)
    assert len(vocab) == 55
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 64
    sa, sb, merged = load_model(a), load_model(b), load_model(out)
    for name in (EMB, HEAD):
        got = merged[name].double()
        xa, xb = sa[name].double(), sb[name].double()
        assert got.shape == (64, TINY.hidden)
        # forced from A's "w1": every model's row is that row, so the linear merge is it
        torch.testing.assert_close(got[vocab["<|b_tok|>"]], xa[va["w1"]], rtol=1e-6, atol=1e-7)
        # zero for models lacking a3 (B): A keeps its row
        torch.testing.assert_close(got[vocab["a3"]], 0.6 * xa[va["a3"]], rtol=1e-6, atol=1e-7)
        # every model has w5: its rule only fills missing rows, so nothing changes
        torch.testing.assert_close(got[vocab["w5"]], 0.6 * xa[va["w5"]] + 0.4 * xb[vb["w5"]],
                                   rtol=1e-6, atol=1e-7)
        assert not got[vocab["w6"]].any()
        torch.testing.assert_close(got[vocab["<|a_tok|>"]], xb[3], rtol=1e-6, atol=1e-7)
        assert not got[55:].any()  # padding rows
        # untouched tokens merge as without the block
        torch.testing.assert_close(got[vocab["w2"]], 0.6 * xa[va["w2"]] + 0.4 * xb[vb["w2"]],
                                   rtol=1e-6, atol=1e-7)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("w1 <|b_tok|> b2", add_special_tokens=False)["input_ids"]
    assert ids == [vocab["w1"], vocab["<|b_tok|>"], vocab["b2"]]
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, 3, 64) and torch.isfinite(logits).all()


def test_block_source_base_maps_donor_rows_by_token(pair, tmp_path):
    a, b, va, vb = pair
    out = tmp_path / "out"
    run_merge(recipe("linear", a, b, "tokenizer_source: base\n"), out, device="cpu",
              random_seed=0)
    assert (out / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(va) == 44
    sa, sb, merged = load_model(a), load_model(b), load_model(out)
    got, xa, xb = merged[EMB].double(), sa[EMB].double(), sb[EMB].double()
    for token in SHARED:  # B's rows found by token, though B orders them otherwise
        torch.testing.assert_close(got[va[token]], 0.6 * xa[va[token]] + 0.4 * xb[vb[token]],
                                   rtol=1e-6, atol=1e-7)
    # a token only A has: B's row is A's (the only model with it)
    torch.testing.assert_close(got[va["a1"]], xa[va["a1"]], rtol=1e-6, atol=1e-7)


def test_source_base_with_one_vocabulary_maps_nothing(tmp_path):
    a, b = write_model(tmp_path / "a", TINY, seed=0), write_model(tmp_path / "b", TINY, seed=1)
    words = SHARED + [f"x{i}" for i in range(93 - len(SHARED))]
    for path in (a, b):
        write_tokenizer(path, words, [])
        config = json.loads((path / "config.json").read_text())
        assert config["vocab_size"] == 96
    plan = validate(recipe("linear", a, b, "tokenizer:\n  source: base\n"))
    assert plan.vocab is None  # the same as no tokenizer setting: rows kept, chunked
    assert all(t.inputs[0].row_map is None for t in plan.tasks)
    padded = validate(recipe("linear", a, b, "tokenizer:\n  source: base\n"
                             "  pad_to_multiple_of: 128\n"))
    assert padded.vocab.size == 128


@pytest.mark.parametrize(("text", "loc", "words"), [
    ("tokenizer:\n  sorce: union\n", "tokenizer.sorce", "did you mean 'source'"),
    ("tokenizer:\n  pad_to_multiple_of: 0\n", "tokenizer.pad_to_multiple_of", "positive"),
    ("tokenizer:\n  pad_to_multiple_of: true\n", "tokenizer.pad_to_multiple_of", "positive"),
    ("tokenizer:\n  tokens: [a]\n", "tokenizer.tokens", "mapping of token strings"),
    ("tokenizer:\n  tokens:\n    x:\n      force: true\n", "tokenizer.tokens.x.force",
     "force needs a source"),
    ("tokenizer:\n  tokens:\n    x:\n      force: yes please\n", "tokenizer.tokens.x.force",
     "true or false"),
    ("tokenizer:\n  tokens:\n    x:\n      source: {kind: mean}\n",
     "tokenizer.tokens.x.source.kind", "unknown kind 'mean'"),
    ("tokenizer:\n  tokens:\n    x:\n      source: {kind: zero, model: a}\n",
     "tokenizer.tokens.x.source.model", "takes no other keys"),
    ("tokenizer:\n  tokens:\n    x:\n      source: {kind: model_token, token: y}\n",
     "tokenizer.tokens.x.source.model", "needs a model"),
    ("tokenizer:\n  tokens:\n    x:\n      source: {kind: model_token, model: org/a,"
     " token: y, token_id: 2}\n", "tokenizer.tokens.x.source.token_id", "not both"),
    ("tokenizer:\n  tokens:\n    x:\n      source: {kind: model_token, model: org/a,"
     " token_id: -1}\n", "tokenizer.tokens.x.source.token_id", "0 or more"),
    ("tokenizer:\n  tokens:\n    x:\n      source: org/nope\n", "tokenizer.tokens.x.source",
     "not one of the recipe's models"),
    ("tokenizer:\n  tokens:\n    x:\n      source: {kind: model_token, model: org/nope}\n",
     "tokenizer.tokens.x.source.model", "not one of the recipe's models"),
    ("tokenizer:\n  source: org/nope\n", "tokenizer.source", "not one of the recipe's models"),
    ("tokenizer: union\n", "tokenizer", "expected a mapping"),
])
def test_block_errors(text, loc, words):
    base = ("merge_method: linear\nmodels:\n  - model: org/a\n    parameters: {weight: 1}\n"
            "  - model: org/b\n    parameters: {weight: 1}\n")
    with pytest.raises(RecipeError) as err:
        parse_recipe(base + text)
    assert err.value.loc == loc and words in err.value.msg
    assert err.value.line is not None


def test_block_parses_every_source_form():
    base = ("merge_method: linear\nmodels:\n  - model: org/a\n    parameters: {weight: 1}\n"
            "  - model: org/b\n    parameters: {weight: 1}\n")
    r = parse_recipe(base + """tokenizer:
  source: org/b
  tokens:
    t1: {source: org/a}
    t2: {source: {kind: zero}, force: true}
    t3: {source: {kind: model_token, model: org/b, token_id: 7}}
    t4: {source: {kind: model_token, model: org/a, token: "<s>"}}
    t5: {}
""")
    assert r.vocab_source == "org/b" and r.tokenizer.pad_to_multiple_of is None
    assert [(t.token, t.source, t.force) for t in r.tokenizer.tokens] == [
        ("t1", TokenSource("model", "org/a"), False),
        ("t2", TokenSource("zero"), True),
        ("t3", TokenSource("model", "org/b", None, 7), False),
        ("t4", TokenSource("model", "org/a", "<s>"), False),
        ("t5", None, False)]
    assert parse_recipe(base + "tokenizer: {}\n").vocab_source == "union"


def test_rule_token_missing_from_its_model(pair):
    a, b, _, _ = pair
    text = recipe("linear", a, b, f"tokenizer:\n  tokens:\n    w1:\n      source: "
                  f"{{kind: model_token, model: {a}, token: b3}}\n")
    with pytest.raises(PlanError) as err:
        validate(text)
    assert "tokenizer.tokens.w1 (line" in str(err.value) and "has no token 'b3'" in str(
        err.value)
    text = recipe("linear", a, b, f"tokenizer:\n  tokens:\n    w1:\n      source: "
                  f"{{kind: model_token, model: {a}, token_id: 500}}\n")
    with pytest.raises(PlanError, match="token id 500 is past"):
        validate(text)


def test_rule_token_not_in_output_vocabulary_warns(pair):
    a, b, _, _ = pair
    plan = validate(recipe("linear", a, b, "tokenizer:\n  source: base\n  tokens:\n"
                           "    b1:\n      source: {kind: zero}\n"))
    assert any("tokenizer.tokens.b1" in w and "not in the output vocabulary" in w
               for w in plan.warnings)


# --- slow tokenizers ---------------------------------------------------------------------


def train_sentencepiece(path, words: list[str], vocab_size: int) -> list[str]:
    """A real SentencePiece model at ``path/tokenizer.model``; returns its pieces by id."""
    spm = pytest.importorskip("sentencepiece")
    corpus = path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(words[i:] + words[:i]) for i in range(len(words))))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(path / "tokenizer"), vocab_size=vocab_size,
        model_type="word", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    corpus.unlink()
    (path / "tokenizer.vocab").unlink()
    proc = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    return [proc.id_to_piece(i) for i in range(proc.get_piece_size())]


def test_sentencepiece_reader_matches_sentencepiece(tmp_path):
    pieces = train_sentencepiece(tmp_path, [f"word{i}" for i in range(40)], 30)
    assert sentencepiece_pieces((tmp_path / "tokenizer.model").read_bytes()) == pieces
    with pytest.raises(ValueError):
        sentencepiece_pieces(b"\x0a\xff")


def test_slow_tokenizer_donor_joins_union(pair, tmp_path):
    """A donor with only tokenizer.model (and added_tokens.json) takes part in a union."""
    a, _, va, _ = pair
    c = write_model(tmp_path / "c", TINY, seed=2)
    words = SHARED[:20] + [f"c{i}" for i in range(30)]
    pieces = train_sentencepiece(c, words, 40)
    extra = len(pieces)
    (c / "added_tokens.json").write_text(json.dumps({"<|c_tok|>": extra}))
    (c / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    out = tmp_path / "out"
    run_merge(recipe("linear", a, c, "tokenizer_source: union\n"), out, device="cpu",
              random_seed=0)
    vocab = out_vocab(out)
    c_ids = {p: i for i, p in enumerate(pieces)} | {"<|c_tok|>": extra}
    new = [p for p in pieces if p not in va]
    assert all(vocab[t] == i for t, i in va.items())
    assert [vocab[p] for p in new] == list(range(len(va), len(va) + len(new)))
    assert vocab["<|c_tok|>"] == len(va) + len(new)
    sa, sc, merged = load_model(a), load_model(c), load_model(out)
    got = merged[EMB].double()
    shared = [w for w in c_ids if w in va]
    assert shared == SPECIALS  # SentencePiece's words are "▁w1", ...: not A's "w1"
    for w in shared:
        torch.testing.assert_close(
            got[vocab[w]], 0.6 * sa[EMB][va[w]].double() + 0.4 * sc[EMB][c_ids[w]].double(),
            rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[vocab["<|c_tok|>"]], sc[EMB][extra].double())
    torch.testing.assert_close(got[vocab["▁c7"]], sc[EMB][c_ids["▁c7"]].double())


def test_slow_tokenizer_as_source(pair, tmp_path):
    """``tokenizer_source`` naming a slow-only model: its files are copied, rows mapped."""
    a, _, va, _ = pair
    c = write_model(tmp_path / "c", TINY, seed=2)
    pieces = train_sentencepiece(c, SHARED[:20] + [f"c{i}" for i in range(30)], 40)
    (c / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    out = tmp_path / "out"
    run_merge(recipe("linear", a, c, f"tokenizer_source: {c}\n"), out, device="cpu",
              random_seed=0)
    assert (out / "tokenizer.model").read_bytes() == (c / "tokenizer.model").read_bytes()
    assert not (out / "tokenizer.json").exists()
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(pieces)
    sa, sc, merged = load_model(a), load_model(c), load_model(out)
    got = merged[HEAD].double()
    for i, p in enumerate(pieces):
        want = sc[HEAD][i].double() if p not in va else (
            0.6 * sa[HEAD][va[p]].double() + 0.4 * sc[HEAD][i].double())
        torch.testing.assert_close(got[i], want, rtol=1e-6, atol=1e-7)


def test_union_needs_the_base_tokenizer_json(pair, tmp_path):
    _, b, _, _ = pair
    c = write_model(tmp_path / "c", TINY, seed=2)
    train_sentencepiece(c, [f"c{i}" for i in range(40)], 30)
    with pytest.raises(PlanError, match=r"has no tokenizer\.json"):
        validate(recipe("linear", c, b, "tokenizer_source: union\n"))
