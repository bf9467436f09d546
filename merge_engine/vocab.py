"""Tokenizer merging: the output vocabulary, each model's rows mapped onto it, chat templates.

``tokenizer_source`` (mergekit's meaning):

- ``base`` (or absent): the base's tokenizer as it is; embeddings keep the base's rows
  (a donor with more rows is cut, as before). Nothing here runs.
- ``<model>``: that model's tokenizer (it must be one of the recipe's models).
- ``union``: the base's vocabulary first, unchanged, then the regular tokens of the other
  models not in it (models in recipe order, each model's tokens by increasing id), then
  the added tokens of every model (base first, by id; the first model's settings win).
  mergekit walks each vocabulary in dict order, which is not stable; increasing id is.

Each model then gets a row map: for every output token id, the row of that model's
embedding (and output head) for the same token string, or -1 when the model lacks it (or
its id is past the model's ``vocab_size``). Missing rows are filled before the merge, as
mergekit's ``PermutedEmbeddings`` does (see :func:`fill_missing`).

The tokenizers are read from their ``tokenizer.json`` with the ``tokenizers`` library;
Hub models fetch only their small tokenizer files.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import PlanError
from .recipe import Recipe, ref_key
from .refs import parse_ref
from .sources import Source

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "chat_template.jinja", "chat_template.json")
"""The side files that make a tokenizer (all come from one model)."""
SLOW_FILES = ("added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt")
"""Slow-tokenizer files: left out of a union tokenizer (they would not match it)."""

# Written for mergebot (mergekit ships templates under the same names).
NAMED_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
        "+ message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "alpaca": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}"
        "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% else %}{{ message['content'] + '\\n\\n' }}"
        "{% endif %}"
        "{% endfor %}"
    ),
}


@dataclass
class Vocab:
    """The output vocabulary and how every source's rows map onto it."""

    source: str
    """``union`` or the tokenizer model's reference."""
    size: int
    """Rows of the output embeddings (and ``vocab_size`` in the config)."""
    maps: tuple[torch.Tensor, ...]
    """Per plan source: int64 ``[size]``, the source row of each output token, -1 missing."""
    tokenizer: object | None = None
    """The union's ``tokenizers.Tokenizer``, written as the output's tokenizer.json."""
    files_from: int = 0
    """The source whose other tokenizer files (tokenizer_config.json, ...) are used."""


def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - installed with transformers
        raise PlanError("tokenizer merging needs the 'tokenizers' package "
                        "(pip install tokenizers)") from e
    return tokenizers


def load_tokenizer(source: Source):
    """``source``'s tokenizer.json as a ``tokenizers.Tokenizer`` (fetches only that file)."""
    if "tokenizer.json" not in source.files:
        raise PlanError(f"{source.name} has no tokenizer.json; tokenizer merging needs one "
                        "(slow-only tokenizers, e.g. a lone tokenizer.model, are not read)")
    return _tokenizers().Tokenizer.from_file(str(source.fetch("tokenizer.json")))


def _limit(source: Source) -> int | None:
    size = source.config.get("vocab_size")
    if size is None and isinstance(source.config.get("text_config"), dict):
        size = source.config["text_config"].get("vocab_size")
    return size if isinstance(size, int) else None


def tokenizer_index(recipe: Recipe) -> int | None:
    """The recipe input whose tokenizer ``tokenizer_source`` names (None for base/union)."""
    name = recipe.tokenizer_source
    if name in (None, "base", "union"):
        return None
    want = ref_key(parse_ref(name, "tokenizer_source"))
    models = recipe.inputs()
    for i, m in enumerate(models):
        if ref_key(m.ref) == want:
            return i
    for i, m in enumerate(models):  # a LoRA source named without its adapter
        if ref_key(m.ref)[:2] == want[:2] and want[2] is None:
            return i
    return -1


def build_vocab(recipe: Recipe, sources: Sequence[Source]) -> Vocab | None:
    """The output vocabulary for ``recipe.tokenizer_source``; None for ``base``."""
    source = recipe.tokenizer_source
    if source in (None, "base"):
        return None
    toks = [load_tokenizer(s) for s in sources]
    limits = [_limit(s) for s in sources]
    if source == "union":
        out = _union(toks, limits)
        files_from = 0
    else:
        files_from = tokenizer_index(recipe)
        out = None
    out_vocab = (out or toks[files_from]).get_vocab(with_added_tokens=True)
    size = max(out_vocab.values()) + 1 if out_vocab else 0
    maps = []
    for tok, limit in zip(toks, limits, strict=True):
        vocab = tok.get_vocab(with_added_tokens=True)
        row = torch.full((size,), -1, dtype=torch.int64)
        for token, new_id in out_vocab.items():
            old = vocab.get(token)
            if old is not None and (limit is None or old < limit):
                row[new_id] = old
        maps.append(row)
    return Vocab(source, size, tuple(maps), out, files_from)


def _union(toks: Sequence, limits: Sequence[int | None]):
    """The base's tokenizer (``toks[0]``, a fresh copy) with the others' tokens added."""
    tk = _tokenizers()
    out = tk.Tokenizer.from_str(toks[0].to_str())
    have = set(out.get_vocab(with_added_tokens=True))
    added_by_model = [tok.get_added_tokens_decoder() for tok in toks]
    added_names = {a.content for added in added_by_model for a in added.values()}
    for tok, limit, added in zip(toks[1:], limits[1:], added_by_model[1:], strict=True):
        regular = sorted((i, t) for t, i in tok.get_vocab(with_added_tokens=False).items()
                         if i not in added and (limit is None or i < limit))
        new = [t for _, t in regular if t not in have and t not in added_names]
        if new:
            out.add_tokens(new)
            have.update(new)
    for added, limit in zip(added_by_model, limits, strict=True):
        for i in sorted(added):
            info = added[i]
            if info.content in have or (limit is not None and i >= limit):
                continue
            if info.special:
                out.add_special_tokens([info])
            else:
                out.add_tokens([info])
            have.add(info.content)
    return out


def fill_missing(xs: Sequence[torch.Tensor], maps: Sequence[torch.Tensor],
                 has_base: bool) -> list[torch.Tensor]:
    """Every input's rows in output-vocabulary order, missing ones filled (mergekit's rule).

    A model that has a token keeps its own row. A model that lacks it gets: the row of the
    only model that has it; else the base's row when there is a base and it has the token;
    else the mean of the rows of the models that have it; zeros when no model has it.
    So with a base, a token only a donor has comes out as that donor's row for any method
    whose result is the base when the donors equal it.
    """
    present = [m >= 0 for m in maps]
    rows = [x[m.clamp(min=0)] * p.unsqueeze(1).to(x.dtype)
            for x, m, p in zip(xs, maps, present, strict=True)]
    count = torch.stack(present).sum(0)
    total = torch.stack([r.double() for r in rows]).sum(0)
    default = (total / count.clamp(min=1).unsqueeze(1)).to(xs[0].dtype)
    if has_base:
        default = torch.where(present[0].unsqueeze(1), rows[0], default)
    return [torch.where(p.unsqueeze(1), r, default) for r, p in zip(rows, present, strict=True)]


# --- chat templates ------------------------------------------------------------------------


def check_chat_template(value: str) -> str | None:
    """Why ``chat_template`` is not usable (None when it is): a known name, ``auto``, or
    a literal Jinja template (mergekit: at least 20 characters with a ``{``)."""
    if value in NAMED_TEMPLATES or value == "auto":
        return None
    if len(value) < 20 or "{" not in value:
        return (f"unknown chat template {value!r}; use one of "
                f"{', '.join(sorted(NAMED_TEMPLATES))}, auto, or a literal Jinja template")
    return None


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
