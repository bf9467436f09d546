"""Tokenizer merging: ``tokenizer_source`` union / a model, row maps, chat templates."""

from __future__ import annotations

import json

import pytest
import torch

from merge_engine import run_merge, validate
from merge_engine.errors import RecipeError
from merge_engine.recipe import parse_recipe
from merge_engine.recipe.chat_templates import NAMED_TEMPLATES

from .conftest import TINY, load_model
from .tokutil import SHARED, SPECIALS, fill_missing, make_pair, recipe


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("tok"))


def test_union_merge_maps_rows_and_loads(pair, tmp_path):
    a, b, va, vb = pair
    out = tmp_path / "out"
    run_merge(recipe("linear", a, b, "tokenizer_source: union\n"), out, device="cpu",
              random_seed=0)
    tok = json.loads((out / "tokenizer.json").read_text())
    vocab = {t["content"]: t["id"] for t in tok["added_tokens"]} | tok["model"]["vocab"]
    # base (A) vocabulary unchanged, then B's own words, then B's added token
    assert all(vocab[t] == i for t, i in va.items())
    assert [vocab[f"b{i}"] for i in range(10)] == list(range(44, 54))
    assert vocab["<|b_tok|>"] == 54 and len(vocab) == 55
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 55
    assert not (out / "tokenizer.model").exists()

    sa, sb, merged = load_model(a), load_model(b), load_model(out)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        got = merged[name]
        assert got.shape == (55, TINY.hidden)
        xa, xb = sa[name].double(), sb[name].double()
        for token in SHARED + SPECIALS:
            want = 0.6 * xa[va[token]] + 0.4 * xb[vb[token]]
            torch.testing.assert_close(got[vocab[token]].double(), want, rtol=1e-6,
                                       atol=1e-7)
        # a token only one model has: every model gets that model's row (mergekit)
        torch.testing.assert_close(got[vocab["a3"]], sa[name][va["a3"]].float())
        torch.testing.assert_close(got[vocab["<|b_tok|>"]], sb[name][vb["<|b_tok|>"]].float())
    # other tensors merge as before
    torch.testing.assert_close(
        merged["model.norm.weight"].double(),
        0.6 * sa["model.norm.weight"].double() + 0.4 * sb["model.norm.weight"].double(),
        rtol=1e-6, atol=1e-7)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(out)
    ids = hf_tok("w1 <|a_tok|> b2 <|b_tok|>", add_special_tokens=False)["input_ids"]
    assert ids == [vocab["w1"], vocab["<|a_tok|>"], vocab["b2"], vocab["<|b_tok|>"]]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == 55
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, 4, 55) and torch.isfinite(logits).all()


def test_union_with_base_fills_from_base_then_donor(pair, tmp_path):
    a, b, va, vb = pair
    out = tmp_path / "out"
    run_merge(recipe("task_arithmetic", a, b, "tokenizer_source: union\n", base=a,
                     wa=1.0, wb=0.5), out, device="cpu", random_seed=0)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    added = {t["content"]: t["id"] for t in json.loads(
        (out / "tokenizer.json").read_text())["added_tokens"]}
    vocab |= added
    sa, sb, merged = load_model(a), load_model(b), load_model(out)
    name = "model.embed_tokens.weight"
    xa, xb = sa[name].double(), sb[name].double()
    got = merged[name].double()
    for token in SHARED[:5]:
        want = xa[va[token]] + 0.5 * (xb[vb[token]] - xa[va[token]])
        torch.testing.assert_close(got[vocab[token]], want, rtol=1e-6, atol=1e-7)
    # only the donor has b4: the base's row is the donor's, so the result is the donor's
    torch.testing.assert_close(got[vocab["b4"]], xb[vb["b4"]], rtol=1e-6, atol=1e-7)
    # only the base has a4: the donor's row is the base's
    torch.testing.assert_close(got[vocab["a4"]], xa[va["a4"]], rtol=1e-6, atol=1e-7)


def test_tokenizer_source_model(pair, tmp_path):
    a, b, va, vb = pair
    out = tmp_path / "out"
    run_merge(recipe("linear", a, b, f"tokenizer_source: {b}\n"), out, device="cpu",
              random_seed=0)
    assert (out / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(vb) == 44
    sa, sb, merged = load_model(a), load_model(b), load_model(out)
    got = merged["lm_head.weight"].double()
    assert got.shape == (44, TINY.hidden)
    for token in SHARED:
        want = 0.6 * sa["lm_head.weight"][va[token]].double() + 0.4 * sb[
            "lm_head.weight"][vb[token]].double()
        torch.testing.assert_close(got[vb[token]], want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[vb["b7"]], sb["lm_head.weight"][vb["b7"]].double())


def test_tokenizer_source_not_in_recipe(pair, tmp_path):
    a, b, _, _ = pair
    with pytest.raises(RecipeError) as err:
        parse_recipe(recipe("linear", a, b, f"tokenizer_source: {tmp_path / 'other'}\n"))
    assert err.value.loc == "tokenizer_source" and "not one of the recipe's models" in str(
        err.value)


@pytest.mark.parametrize("name", sorted(NAMED_TEMPLATES))
def test_named_chat_template(pair, tmp_path, name):
    a, b, _, _ = pair
    out = tmp_path / "out"
    run_merge(recipe("linear", a, b, f"chat_template: {name}\n"), out, device="cpu",
              random_seed=0)
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == (
        NAMED_TEMPLATES[name])
    assert (out / "chat_template.jinja").read_text() == NAMED_TEMPLATES[name]
    from transformers import AutoTokenizer

    text = AutoTokenizer.from_pretrained(out).apply_chat_template(
        [{"role": "user", "content": "w1 w2"}], tokenize=False)
    assert "w1 w2" in text


def test_literal_chat_template_with_union(pair, tmp_path):
    a, b, _, _ = pair
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    out = tmp_path / "out"
    run_merge(recipe("linear", a, b, "tokenizer_source: union\nchat_template: \"" + template
                     + "\"\n"), out, device="cpu", random_seed=0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                   tokenize=False) == "<user>hi"
    assert len(tok) == 55


def test_chat_template_auto_and_bad(pair, tmp_path):
    a, b, _, _ = pair
    plan = validate(recipe("linear", a, b, "chat_template: auto\n"))
    assert plan.chat_template is None and any("auto found no" in w for w in plan.warnings)
    with pytest.raises(RecipeError) as err:
        parse_recipe(recipe("linear", a, b, "chat_template: nosuch\n"))
    assert err.value.loc == "chat_template" and "unknown chat template" in err.value.msg


def test_fill_missing_rule():
    x = [torch.tensor([[1.0], [2.0]]), torch.tensor([[10.0], [20.0]]),
         torch.tensor([[100.0]])]
    maps = [torch.tensor([0, -1, 1, -1]), torch.tensor([1, 0, -1, -1]),
            torch.tensor([0, 0, -1, -1])]
    # token 0: all have it; 1: models 1 and 2 (mean / not the base); 2: only model 0
    with_base = fill_missing(x, maps, has_base=True)
    assert [r.squeeze(1).tolist() for r in with_base] == [
        [1, 55, 2, 0], [20, 10, 2, 0], [100, 100, 2, 0]]
    no_base = fill_missing(x, maps, has_base=False)
    assert no_base[0].squeeze(1).tolist() == [1, 55, 2, 0]
