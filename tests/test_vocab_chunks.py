"""Row-mapped tensors (tokenizer merging) merged by chunks of output rows: the same bits as
merged whole, with the default rows computed only where a model lacks the token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import merge_engine.execute.executor as executor
from merge_engine import run_merge, validate
from merge_engine.tokenizer.vocab import RowRule, fill_rows

from .conftest import load_model, recipe_text
from .test_lora import write_adapter
from .test_tokenizer_block import block
from .tokutil import fill_missing, make_pair, recipe

EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def whole_stack_fill(xs, maps, has_base, rules=()):
    """The whole-tensor formula: every input's rows gathered, the mean of a float64 stack
    of all of them as every row's default."""
    present = [m >= 0 for m in maps]
    rows = [x[m.clamp(min=0)] * p.unsqueeze(1).to(x.dtype)
            for x, m, p in zip(xs, maps, present, strict=True)]
    count = torch.stack(present).sum(0)
    total = torch.stack([r.double() for r in rows]).sum(0)
    default = (total / count.clamp(min=1).unsqueeze(1)).to(xs[0].dtype)
    if has_base:
        default = torch.where(present[0].unsqueeze(1), rows[0], default)
    values = [(r, xs[r.model][r.source_row] if r.model is not None else 0.0) for r in rules]
    for rule, value in values:
        default[rule.row] = value
    out = [torch.where(p.unsqueeze(1), r, default) for r, p in zip(rows, present, strict=True)]
    for rule, value in values:
        if rule.force:
            for x in out:
                x[rule.row] = value
    return out


@pytest.mark.parametrize("has_base", [True, False])
def test_fill_rows_in_any_split_equals_the_whole_stack(has_base):
    gen = torch.Generator().manual_seed(0)
    size, sizes = 90, (50, 37, 61)
    xs = [(torch.randn(n, 8, generator=gen) * torch.exp(4 * torch.randn(n, 8, generator=gen)))
          for n in sizes]
    maps = [torch.where(torch.rand(size, generator=gen) < 0.3, -1,
                        torch.randint(0, n, (size,), generator=gen)) for n in sizes]
    maps[0][80:] = maps[1][80:] = maps[2][80:] = -1  # padding: nobody has these rows
    lacking = (torch.stack(maps) < 0).any(0).nonzero().squeeze(1).tolist()
    full = [r for r in range(80) if r not in lacking]
    rules = (RowRule(lacking[0], 2, 5, False, "a"), RowRule(lacking[1], None, 0, False, "b"),
             RowRule(full[0], 1, 3, True, "c"), RowRule(lacking[2], None, 0, True, "d"),
             RowRule(full[1], 0, 7, False, "e"))
    want = whole_stack_fill(xs, maps, has_base, rules)
    got = fill_missing(xs, maps, has_base, rules)
    cuts = [0, 1, 7, 30, 31, 80, 90]
    parts = [fill_rows(lambda k, rows: xs[k][rows], maps, has_base, rules, r0, r1)
             for r0, r1 in zip(cuts, cuts[1:], strict=False)]
    for k, w in enumerate(want):
        assert torch.equal(got[k], w)
        assert torch.equal(torch.cat([p[k] for p in parts]), w)
    assert not want[0][80:].any() and torch.equal(want[1][full[0]], xs[1][3])


def test_fill_rows_takes_only_the_chunk_and_the_rule_rows():
    xs = [torch.arange(20.0).view(10, 2), torch.arange(20.0, 40.0).view(10, 2)]
    maps = [torch.arange(10), torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, -1, -1])]
    asked = []

    def take(k, rows):
        asked.append((k, rows.tolist()))
        return xs[k][rows]

    out = fill_rows(take, maps, False, (RowRule(8, 0, 1, False, "x"),), 6, 9)
    assert asked == [(0, [6, 7, 8]), (1, [3, 2, 0]), (0, [1])]
    assert out[1].tolist() == [[26, 27], [24, 25], [2, 3]]  # row 8: the rule's row of input 0


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("tok"))


def union_cases(a, b) -> dict[str, str]:
    return {
        "linear": recipe("linear", a, b, "tokenizer_source: union\n"),
        "task_arithmetic": recipe("task_arithmetic", a, b, "tokenizer_source: union\n",
                                  base=a, wa=1.0, wb=0.5),
        "block": recipe("linear", a, b, block(a, b)),
        "ties": recipe_text("ties", a, [(a, {"weight": 1.0, "density": 0.5}),
                                        (b, {"weight": 0.5, "density": 0.5})],
                            "out_dtype: float32\ntokenizer_source: union\n"),
    }


@pytest.fixture
def method_calls(monkeypatch):
    """The row counts each merge call of the embedding got."""
    calls = []
    real = executor.Executor._pass_chunk

    def record(self, chunk):
        if chunk.task.out.name == EMB:
            calls.append(chunk.rows)
        return real(self, chunk)

    monkeypatch.setattr(executor.Executor, "_pass_chunk", record)
    return calls


@pytest.mark.parametrize("case", ["linear", "task_arithmetic", "block", "ties"])
def test_chunked_union_is_bit_identical(pair, tmp_path, monkeypatch, method_calls, case):
    a, b, _, _ = pair
    text = union_cases(a, b)[case]
    run_merge(text, tmp_path / "one", device="cpu", random_seed=0)
    rows = validate(text).vocab.size
    assert method_calls == [rows]  # one piece under the default chunk size
    method_calls.clear()
    monkeypatch.setattr(executor, "DEFAULT_CHUNK_ELEMS", 96)  # 3 rows of 32
    run_merge(text, tmp_path / "chunked", device="cpu", random_seed=0)
    chunks = [3] * (rows // 3) + [rows % 3] * (rows % 3 > 0)
    if case == "ties":  # whole-tensor statistics: passes over the chunks, then the apply pass
        assert len(method_calls) > len(chunks)
        assert sorted(method_calls) == sorted(chunks * (len(method_calls) // len(chunks)))
    else:
        assert sorted(method_calls) == sorted(chunks)
    one, chunked = load_model(tmp_path / "one"), load_model(tmp_path / "chunked")
    assert one.keys() == chunked.keys()
    for name in one:
        assert torch.equal(one[name], chunked[name]), name


@pytest.mark.parametrize("case", ["linear", "task_arithmetic", "block"])
def test_chunked_union_equals_the_whole_tensor_formula(pair, tmp_path, monkeypatch, case):
    """The merged embedding and head are the method run on whole tensors filled by the
    whole-stack formula, bit for bit."""
    a, b, _, _ = pair
    text = union_cases(a, b)[case]
    monkeypatch.setattr(executor, "DEFAULT_CHUNK_ELEMS", 96)
    run_merge(text, tmp_path / "out", device="cpu", random_seed=0)
    merged = load_model(tmp_path / "out")
    plan = validate(text)
    for task in (t for t in plan.tasks if t.out.name in (EMB, HEAD)):
        xs = [load_model(plan.sources[inp.model].local_dir)[inp.name].float()
              for inp in task.inputs]
        xs = whole_stack_fill(xs, [inp.row_map for inp in task.inputs], plan.has_base,
                              task.row_rules)
        base, tensors = (xs[0], xs[1:]) if plan.has_base else (None, xs)
        want = plan.method.merge(tensors, base, task.model_params, task.global_params, None)
        assert torch.equal(merged[task.out.name], want), task.out.name


def test_chunked_union_with_an_embedding_lora(pair, tmp_path, monkeypatch):
    """A LoRA update on a row-mapped embedding is added to the gathered rows."""
    a, b, _, _ = pair
    adapter = write_adapter(tmp_path / "ad", embed=True, targets=())
    text = recipe("linear", a, Path(f"{b}+{adapter}"), "tokenizer_source: union\n")
    run_merge(text, tmp_path / "one", device="cpu", random_seed=0)
    monkeypatch.setattr(executor, "DEFAULT_CHUNK_ELEMS", 64)
    run_merge(text, tmp_path / "chunked", device="cpu", random_seed=0)
    one, chunked = load_model(tmp_path / "one"), load_model(tmp_path / "chunked")
    plain = tmp_path / "plain"
    run_merge(recipe("linear", a, b, "tokenizer_source: union\n"), plain, device="cpu",
              random_seed=0)
    assert not torch.equal(one[EMB], load_model(plain)[EMB])
    for name in one:
        assert torch.equal(one[name], chunked[name]), name
