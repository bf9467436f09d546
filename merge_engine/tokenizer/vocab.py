"""Tokenizer merging: the output vocabulary, each model's rows mapped onto it, chat templates.

``tokenizer_source``, or the ``tokenizer:`` block's ``source`` (mergekit's meaning):

- absent: the base's tokenizer files as they are; embeddings keep the base's rows (a
  donor with more rows is cut). Nothing here runs.
- ``base``: the base's vocabulary; every model's rows are mapped onto it by token (when
  every model's vocabulary is the base's, that is the same as absent, and nothing runs).
- ``<model>``: that model's tokenizer (it must be one of the recipe's models).
- ``union``: the base's vocabulary first, unchanged, then the regular tokens of the other
  models not in it (models in recipe order, each model's tokens by increasing id), then
  the added tokens of every model (base first, by id; the first model's settings win).
  mergekit walks each vocabulary in dict order, which is not stable; increasing id is.

The block adds per-token rules (``tokens``, see :mod:`merge_engine.recipe.tokenizer_block`) and
``pad_to_multiple_of`` (the row count rounded up; the tokenizer files are unchanged).

Each model then gets a row map: for every output token id, the row of that model's
embedding (and output head) for the same token string, or -1 when the model lacks it (or
its id is past the model's ``vocab_size``). Missing rows are filled before the merge, as
mergekit's ``PermutedEmbeddings`` does (see :func:`fill_rows`).

Vocabularies are read by :mod:`merge_engine.tokenizer.files` (tokenizer.json, or a slow
tokenizer's files); Hub models fetch only their small tokenizer files.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from merge_engine.errors import PlanError
from merge_engine.io.sources import Source
from merge_engine.recipe import Recipe, ref_key
from merge_engine.recipe.chat_templates import NAMED_TEMPLATES
from merge_engine.recipe.refs import parse_ref
from merge_engine.tokenizer.files import ModelVocab, read_vocab, tokenizers_module

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "chat_template.jinja", "chat_template.json")
"""The side files that make a tokenizer (all come from one model)."""
SLOW_FILES = ("added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt")
"""Slow-tokenizer files: left out of a union tokenizer (they would not match it)."""


@dataclass(frozen=True)
class RowRule:
    """A ``tokenizer.tokens`` entry resolved: output row ``row`` takes row ``source_row``
    of input ``model`` (zeros when ``model`` is None) where a model lacks the token, or
    for every model with ``force``. In :class:`Vocab`, ``model`` indexes the plan's
    sources; in a task (:attr:`merge_engine.plan.build.TensorTask.row_rules`), its inputs."""

    row: int
    model: int | None
    source_row: int
    force: bool
    loc: str


@dataclass
class Vocab:
    """The output vocabulary and how every source's rows map onto it."""

    source: str
    """``union``, ``base`` or the tokenizer model's reference."""
    size: int
    """Rows of the output embeddings (and ``vocab_size`` in the config), padded to
    ``tokenizer.pad_to_multiple_of`` (the padding rows are zeros)."""
    maps: tuple[torch.Tensor, ...]
    """Per plan source: int64 ``[size]``, the source row of each output token, -1 missing."""
    tokenizer: object | None = None
    """The union's ``tokenizers.Tokenizer``, written as the output's tokenizer.json."""
    files_from: int = 0
    """The source whose other tokenizer files (tokenizer_config.json, ...) are used."""
    rules: tuple[RowRule, ...] = ()
    """The ``tokenizer.tokens`` entries, in recipe order."""


def _limit(source: Source) -> int | None:
    size = source.config.get("vocab_size")
    if size is None and isinstance(source.config.get("text_config"), dict):
        size = source.config["text_config"].get("vocab_size")
    return size if isinstance(size, int) else None


def model_index(recipe: Recipe, name: str) -> int:
    """The index in ``recipe.inputs()`` of the model ``name`` refers to (a LoRA source
    may be named without its adapter); -1 when none."""
    want = ref_key(parse_ref(name, "tokenizer"))
    models = recipe.inputs()
    for i, m in enumerate(models):
        if ref_key(m.ref) == want:
            return i
    for i, m in enumerate(models):
        if ref_key(m.ref)[:2] == want[:2] and want[2] is None:
            return i
    return -1


def build_vocab(recipe: Recipe, sources: Sequence[Source],
                warnings: list[str]) -> Vocab | None:
    """The output vocabulary for ``recipe.vocab_source``; None when there is nothing to
    map: no tokenizer setting, or ``base`` with every model's vocabulary the base's."""
    source = recipe.vocab_source
    if source is None:
        return None
    block = recipe.tokenizer
    if source == "base" and block is None and not all(_has_vocab(s) for s in sources):
        missing = next(s.name for s in sources if not _has_vocab(s))
        warnings.append(f"tokenizer_source: {missing} has no tokenizer files; embeddings "
                        "are matched by row, not by token")
        return None
    vocabs = [read_vocab(s) for s in sources]
    limits = [_limit(s) for s in sources]
    out, files_from = None, 0
    if source == "union":
        out = _union(vocabs, limits, sources[0].name)
        out_vocab = out.get_vocab(with_added_tokens=True)
    else:
        files_from = 0 if source == "base" else model_index(recipe, source)
        out_vocab = vocabs[files_from].full()
    size = max(out_vocab.values()) + 1 if out_vocab else 0
    pad = block.pad_to_multiple_of if block is not None else None
    if pad:
        size = -(-size // pad) * pad
    maps = []
    for vocab, limit in zip(vocabs, limits, strict=True):
        have = vocab.full()
        row = torch.full((size,), -1, dtype=torch.int64)
        for token, new_id in out_vocab.items():
            old = have.get(token)
            if old is not None and (limit is None or old < limit):
                row[new_id] = old
        maps.append(row)
    rules = _rules(recipe, sources, vocabs, limits, out_vocab, warnings)
    identity = torch.arange(size)
    same = all(limit == size and torch.equal(m, identity)
               for m, limit in zip(maps, limits, strict=True))
    if source == "base" and not rules and same:
        return None
    return Vocab(source, size, tuple(maps), out, files_from, rules)


def _has_vocab(source: Source) -> bool:
    return any(n in source.files for n in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def _rules(recipe: Recipe, sources: Sequence[Source], vocabs: Sequence[ModelVocab],
           limits: Sequence[int | None], out_vocab: dict[str, int],
           warnings: list[str]) -> tuple[RowRule, ...]:
    """``tokenizer.tokens`` resolved to rows; PlanError (with the YAML path) when a
    named token or id is not in its model."""
    rules = []
    for rule in recipe.tokenizer.tokens if recipe.tokenizer is not None else ():
        row = out_vocab.get(rule.token)
        if row is None:
            warnings.append(f"{rule.loc}: {rule.token!r} is not in the output vocabulary; "
                            "ignored")
            continue
        src = rule.source
        if src is None:
            continue
        if src.kind == "zero":
            rules.append(RowRule(row, None, 0, rule.force, rule.loc))
            continue
        k = model_index(recipe, src.model)
        source_row = src.token_id
        if source_row is None:
            want = rule.token if src.token is None else src.token
            source_row = vocabs[k].full().get(want)
            if source_row is None:
                raise PlanError(f"{recipe.where(rule.loc)}: {sources[k].name} has no token "
                                f"{want!r}")
        if limits[k] is not None and source_row >= limits[k]:
            raise PlanError(f"{recipe.where(rule.loc)}: token id {source_row} is past "
                            f"{sources[k].name}'s vocab_size {limits[k]}")
        rules.append(RowRule(row, k, source_row, rule.force, rule.loc))
    return tuple(rules)


def _union(vocabs: Sequence[ModelVocab], limits: Sequence[int | None], base_name: str):
    """The base's tokenizer (``vocabs[0]``, a fresh copy) with the others' tokens added."""
    if vocabs[0].tokenizer is None:
        raise PlanError(f"tokenizer union: {base_name} (the first model, whose tokenizer is "
                        "extended) has no tokenizer.json")
    out = tokenizers_module().Tokenizer.from_str(vocabs[0].tokenizer.to_str())
    have = set(out.get_vocab(with_added_tokens=True))
    added_names = {a.content for v in vocabs for a in v.added.values()}
    for vocab, limit in zip(vocabs[1:], limits[1:], strict=True):
        regular = sorted((i, t) for t, i in vocab.regular.items()
                         if limit is None or i < limit)
        new = [t for _, t in regular if t not in have and t not in added_names]
        if new:
            out.add_tokens(new)
            have.update(new)
    for vocab, limit in zip(vocabs, limits, strict=True):
        for i in sorted(vocab.added):
            info = vocab.added[i]
            if info.content in have or (limit is not None and i >= limit):
                continue
            if info.special:
                out.add_special_tokens([info])
            else:
                out.add_tokens([info])
            have.add(info.content)
    return out


RowTaker = Callable[[int, torch.Tensor], torch.Tensor]
"""``take(k, rows)``: rows ``rows`` (int64 indices, on the CPU) of input ``k`` as a new
tensor; every input's in the same floating dtype, on one device."""


def fill_rows(take: RowTaker, maps: Sequence[torch.Tensor], has_base: bool,
              rules: Sequence[RowRule], r0: int, r1: int) -> list[torch.Tensor]:
    """Output rows ``[r0, r1)`` of every input, missing ones filled (mergekit's rule).

    ``maps[k][i]`` is input ``k``'s row for output row ``i`` (-1: missing), on the CPU.
    A model that has a token keeps its own row. A model that lacks it gets: the row a
    ``tokenizer.tokens`` rule gives (``rules``, ``model`` indexing the inputs); else the
    row of the only model that has it; else the base's row when there is a base and it
    has the token; else the mean of the rows of the models that have it; zeros when no
    model has it (padding rows too). A forced rule's row replaces every model's row.
    So with a base, a token only a donor has comes out as that donor's row for any method
    whose result is the base when the donors equal it.

    The mean is ``sum_k present_k * row_k / max(1, count)``, the sum taken in float64 in
    input order, and only for the rows some model lacks (usually few): the result does
    not depend on ``[r0, r1)``, so any split into row ranges gives the whole's rows.
    """
    present = [m[r0:r1] >= 0 for m in maps]
    out = [take(k, m[r0:r1].clamp(min=0)) for k, m in enumerate(maps)]
    device = out[0].device
    need = (~torch.stack(present).all(0)).nonzero().squeeze(1)
    at = need.to(device)
    have = [p[need].to(device).unsqueeze(1) for p in present]
    sub = [x[at] for x in out]
    total = torch.zeros(sub[0].shape, dtype=torch.float64, device=device)
    for x, p in zip(sub, have, strict=True):
        total += torch.where(p, x, 0.0)
    default = (total / torch.stack(have).sum(0).clamp(min=1)).to(out[0].dtype)
    if has_base:
        default = torch.where(have[0], sub[0], default)
    position = torch.full((r1 - r0,), -1, dtype=torch.int64)
    position[need] = torch.arange(len(need))
    local = [(rule, 0.0 if rule.model is None
              else take(rule.model, torch.tensor([rule.source_row]))[0])
             for rule in rules if r0 <= rule.row < r1]
    for rule, value in local:
        if position[rule.row - r0] >= 0:
            default[position[rule.row - r0]] = value
    for x, p, s in zip(out, have, sub, strict=True):
        x[at] = torch.where(p, s, default)
    for rule, value in local:
        if rule.force:
            for x in out:
                x[rule.row - r0] = value
    return out


# --- chat templates ------------------------------------------------------------------------


def source_template(source: Source) -> str | None:
    """A model's own chat template (chat_template.jinja, else tokenizer_config.json)."""
    if "chat_template.jinja" in source.files:
        return source.fetch("chat_template.jinja").read_text()
    if "tokenizer_config.json" in source.files:
        found = json.loads(source.fetch("tokenizer_config.json").read_text()).get(
            "chat_template")
        if isinstance(found, list):  # named templates: [{"name": ..., "template": ...}]
            found = next((t.get("template") for t in found if t.get("name") == "default"), None)
        if isinstance(found, str):
            return found
    return None


def resolve_chat_template(value: str | None, sources: Sequence[Source]) -> str | None:
    """The template text for ``chat_template``: a named one, the most common among the
    models for ``auto`` (None when none has one), or the literal itself."""
    if value is None:
        return None
    if value == "auto":
        found = [t.strip() for s in sources if (t := source_template(s))]
        return Counter(found).most_common(1)[0][0] if found else None
    return NAMED_TEMPLATES.get(value, value)


def write_tokenizer(directory: Path, vocab: Vocab | None, template: str | None,
                    sources: Sequence[Source]) -> list[Path]:
    """The output's tokenizer files: the chosen model's (the base's without a vocab), the
    union's tokenizer.json and added tokens, and the chat template; returns the paths."""
    index = vocab.files_from if vocab is not None else 0
    owner = sources[index]
    written = []
    for name in owner.side_files():
        if name not in TOKENIZER_FILES:
            continue
        if vocab is not None and vocab.tokenizer is not None and name in SLOW_FILES:
            continue
        path = directory / name
        path.write_bytes(owner.fetch(name).read_bytes())
        written.append(path)
    if vocab is not None and vocab.tokenizer is not None:
        path = directory / "tokenizer.json"
        vocab.tokenizer.save(str(path))
        if path not in written:
            written.append(path)
        _update_config(directory, written, lambda cfg: cfg.__setitem__(
            "added_tokens_decoder", _added_tokens_json(vocab.tokenizer)))
    if template is not None:
        if not any(p.name == "tokenizer.json" for p in written):
            return written  # no tokenizer to attach it to (a warning was given)
        _update_config(directory, written, lambda cfg: cfg.__setitem__("chat_template",
                                                                         template))
        path = directory / "chat_template.jinja"
        path.write_text(template)
        if path not in written:
            written.append(path)
        stale = directory / "chat_template.json"
        if stale.exists():
            stale.write_text(json.dumps({"chat_template": template}, indent=2) + "\n")
    return written


def _update_config(directory: Path, written: list[Path], change) -> None:
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    change(config)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    if path not in written:
        written.append(path)


def _added_tokens_json(tokenizer) -> dict:
    return {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                     "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
            for i, t in sorted(tokenizer.get_added_tokens_decoder().items())}
