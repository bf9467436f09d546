"""Structural checks of a merged model directory: each returns the line it passed with,
or raises ``CheckError`` with one line naming the file, field or tensor at fault.

They read only the config, the tokenizer files and the safetensors headers (``metas``),
except :func:`check_finite`, which reads every tensor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from merge_engine.errors import CheckError
from merge_engine.execute.executor import not_finite
from merge_engine.io.checkpoint import TensorMeta
from merge_engine.io.sources import Source
from merge_engine.io.weights import local_tensors
from merge_engine.tokenizer.files import tokenizers_module
from merge_engine.tokenizer.vocab import source_template

EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "embed_in.weight",
              "word_embeddings.weight", "tok_embeddings.weight")
HEADS = ("lm_head.weight", "embed_out.weight", "output.weight")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
SPECIAL_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckError(f"{path.name} in {path.parent} is not valid JSON: {e}") from None


def disk_tensors(directory: Path) -> dict[str, TensorMeta]:
    """Every tensor's metadata from the weight files' headers of ``directory``."""
    return local_tensors(directory, sorted(p.name for p in directory.iterdir()))


def text_config(config: dict) -> dict:
    """The language model's part of ``config`` (``text_config`` of multi-part models)."""
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) else config


def find(metas: dict[str, TensorMeta], suffixes: Sequence[str]) -> str | None:
    """The 2-D tensor whose name ends with one of ``suffixes`` (shortest name first)."""
    found = [n for n in metas if len(metas[n].shape) == 2
             and any(n == s or n.endswith("." + s) for s in suffixes)]
    return min(found, key=len) if found else None


def check_config_weights(config: dict, metas: dict[str, TensorMeta]) -> str:
    """vocab_size = embedding rows, hidden_size = its columns, and the layer count of
    config.json = the decoder layers on disk."""
    text = text_config(config)
    embed = find(metas, EMBEDDINGS)
    if embed is None:
        raise CheckError("no input embedding tensor (e.g. model.embed_tokens.weight) is on disk")
    rows, cols = metas[embed].shape
    vocab = text.get("vocab_size")
    if vocab is not None and vocab != rows:
        raise CheckError(f"config.json has vocab_size {vocab} but {embed} has {rows} rows")
    hidden = text.get("hidden_size", text.get("n_embd"))
    if hidden is not None and hidden != cols:
        raise CheckError(f"config.json has hidden_size {hidden} but {embed} has {cols} columns")
    head = find(metas, HEADS)
    if head is not None and metas[head].shape != (rows, cols):
        raise CheckError(f"{head} has shape {list(metas[head].shape)} but {embed} has "
                         f"{[rows, cols]}")
    key = next((k for k in LAYER_COUNT_KEYS if isinstance(text.get(k), int)), None)
    prefix = embed.rsplit(".", 2)[0] + "." if embed.count(".") >= 2 else ""
    pattern = re.compile(re.escape(prefix) + r"(?:layers|h|blocks|layer)\.(\d+)\.")
    found = {int(m.group(1)) for n in metas if (m := pattern.match(n))}
    if key is not None and found != set(range(text[key])):
        missing = sorted(set(range(text[key])) - found)
        detail = (f"layer {missing[0]} is missing" if missing
                  else f"{len(found)} layers are on disk")
        raise CheckError(f"config.json has {key} {text[key]} but {detail} "
                         f"(tensors {pattern.pattern.replace(chr(92), '')})")
    return (f"config.json matches the weights (vocab_size {rows}, hidden_size {cols}"
            + (f", {text[key]} layers" if key else "") + ")")


def check_tied(config: dict, metas: dict[str, TensorMeta]) -> str | None:
    """tie_word_embeddings agrees with the output head on disk: a tied model writes it
    once (a second copy is wasted parameters), an untied one must write it."""
    text = text_config(config)
    tie = text.get("tie_word_embeddings", config.get("tie_word_embeddings"))
    if tie is None:
        return None
    embed, head = find(metas, EMBEDDINGS), find(metas, HEADS)
    if tie and head is not None:
        raise CheckError(f"config.json sets tie_word_embeddings true but {head} is written "
                         f"too, a duplicate of {embed}")
    if not tie and head is None:
        raise CheckError("config.json sets tie_word_embeddings false but no output head "
                         "(lm_head.weight) is on disk")
    return ("tied embeddings written once" if tie
            else f"untied output head {head} on disk")


def check_tokenizer(directory: Path, config: dict, rows: int) -> str | None:
    """tokenizer.json's ids (added tokens too) fit the embedding rows; the special tokens
    of tokenizer_config.json are in the vocabulary; the special token ids of config.json
    and generation_config.json are in range; tokenizer_config.json's added tokens sit at
    tokenizer.json's ids."""
    for name in ("config.json", "generation_config.json"):
        path = directory / name
        data = text_config(read_json(path)) if path.is_file() else {}
        for key in SPECIAL_ID_KEYS:
            ids = data.get(key)
            for token_id in ids if isinstance(ids, list) else [ids]:
                if isinstance(token_id, int) and not 0 <= token_id < rows:
                    raise CheckError(f"{name} has {key} {token_id}, outside the {rows} "
                                     "embedding rows")
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        tok = tokenizers_module().Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the library's error types vary
        raise CheckError(f"tokenizer.json in {directory} cannot be read: {e}") from None
    vocab = tok.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1 if vocab else 0
    added = tok.get_added_tokens_decoder()
    for entry in read_json(path).get("added_tokens") or []:
        token_id, content = entry.get("id"), entry.get("content")
        if isinstance(token_id, int) and not 0 <= token_id < rows:
            raise CheckError(f"tokenizer.json's added token {content!r} has id {token_id}, "
                             f"outside the {rows} embedding rows")
    if size > rows:
        raise CheckError(f"tokenizer.json has {size} token ids but the embeddings have only "
                         f"{rows} rows")
    tok_config_path = directory / "tokenizer_config.json"
    tok_config = read_json(tok_config_path) if tok_config_path.is_file() else {}
    for key in SPECIAL_TOKENS:
        value = tok_config.get(key)
        content = value.get("content") if isinstance(value, dict) else value
        if isinstance(content, str) and content not in vocab:
            raise CheckError(f"tokenizer_config.json's {key} {content!r} is not in "
                             "tokenizer.json's vocabulary")
    for key, entry in (tok_config.get("added_tokens_decoder") or {}).items():
        content = entry.get("content") if isinstance(entry, dict) else None
        if content is not None and str(key).isdigit() and vocab.get(content) != int(key):
            raise CheckError(f"tokenizer_config.json lists added token {content!r} at id "
                             f"{key} but tokenizer.json has it at {vocab.get(content)}")
    return (f"tokenizer.json fits the embeddings ({size} ids in {rows} rows, "
            f"{len(added)} added tokens, special tokens in range)")


def has_template(directory: Path) -> bool:
    if (directory / "chat_template.jinja").is_file():
        return True
    path = directory / "tokenizer_config.json"
    return path.is_file() and bool(read_json(path).get("chat_template"))


def check_chat_template(directory: Path, sources: Sequence[Source]) -> str | None:
    """The output has a chat template when any source had one."""
    having = [s.name for s in sources if source_template(s)]
    if not having:
        return None
    if not has_template(directory):
        raise CheckError(f"the merged model has no chat template but {having[0]} has one; "
                         "set chat_template (e.g. auto) in the recipe")
    return "chat template present"


def check_generation_config(directory: Path, base: Source) -> str | None:
    """The base model's generation_config.json is carried over unchanged."""
    if "generation_config.json" not in base.files:
        return None
    path = directory / "generation_config.json"
    if not path.is_file():
        raise CheckError(f"generation_config.json of {base.name} was not carried over")
    if read_json(path) != read_json(base.fetch("generation_config.json")):
        raise CheckError(f"generation_config.json differs from {base.name}'s")
    return f"generation_config.json carried over from {base.name}"


def check_finite(directory: Path, metas: dict[str, TensorMeta]) -> str:
    """No floating-point tensor holds a NaN or an infinity (reads every tensor)."""
    for file in sorted({m.file for m in metas.values()}):
        with safe_open(directory / file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                x = f.get_tensor(name)
                if x.is_floating_point() and bool(not_finite(x.to(torch.float32))):
                    raise CheckError(f"tensor {name} in {file} holds NaN or infinite values")
    return f"no NaN or infinite values in {len(metas)} tensors"
