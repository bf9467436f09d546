"""A tiny llama family actually trained, for tests and benchmarks of evaluation: a base
and donors fine-tuned from it on different synthetic text distributions, with a real
tokenizer, saved by transformers (``save_pretrained``).

Two templated "languages" (:data:`LANGUAGES`) share no words and differ in word order.
A byte-pair tokenizer (``tokenizers`` BPE over Metaspace pieces, ``<s>`` added in front of
every text) is trained on both; the base is trained for a few steps on a mix of both
languages, and donor ``i`` starts from the base and is trained on language ``i`` only. So
``base + a1 (d1 - base) + a2 (d2 - base)`` does better on language 2 and worse on
language 1 as ``a2`` grows: a sweep with a real shape. Everything is seeded; training runs
on the CPU with one thread and takes seconds at the default size. (Rank 8 in the engine's
layout, after ``check``: transformers is imported through the checks' import lock.)
"""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from merge_engine.check.behaviour import transformers_module

LANGUAGES = {
    "north": {
        "template": "the {a} {n} {v} the {n} {p} the {a} {n} .",
        "a": ["red", "quiet", "old", "bright", "small", "cold", "green", "heavy"],
        "n": ["river", "stone", "house", "bird", "window", "garden", "road", "lamp"],
        "v": ["watches", "follows", "carries", "finds", "paints", "hides"],
        "p": ["near", "under", "beside", "behind"],
    },
    "south": {
        "template": "ka {n} {n} zu {v} mo {a} {a} lo {n} !",
        "a": ["vindo", "sarel", "kumpa", "trilo", "melba", "dosko", "yaren", "fupta"],
        "n": ["orvak", "tesli", "brumo", "quinta", "zelda", "pokri", "ulmen", "harvo"],
        "v": ["dravi", "seplo", "monki", "trasu", "welpo", "gisti"],
    },
}
"""Sentence templates and word lists of the two languages (donor 1 learns ``north``,
donor 2 ``south``)."""
SPECIALS = ["<unk>", "<s>", "</s>"]


@dataclass(frozen=True)
class TrainSettings:
    """Model size and training schedule."""

    hidden: int = 64
    intermediate: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 192
    base_steps: int = 60
    donor_steps: int = 40
    batch: int = 16
    lr: float = 3e-3
    seed: int = 0


def sentences(language: str, count: int, seed: int) -> list[str]:
    """``count`` sentences of ``language``, the same for the same seed."""
    spec = LANGUAGES[language]
    rng = random.Random(f"{language}:{seed}")
    out = []
    for _ in range(count):
        words = []
        for piece in spec["template"].split():
            key = piece.strip("{}")
            words.append(rng.choice(spec[key]) if piece.startswith("{") else piece)
        out.append(" ".join(words))
    return out


def train_tokenizer(directory: Path, vocab: int, seed: int) -> object:
    """A BPE ``tokenizers.Tokenizer`` trained on both languages, saved as tokenizer.json
    with a tokenizer_config.json; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS,
                                  show_progress=False)
    corpus = [s for lang in LANGUAGES for s in sentences(lang, 200, seed + 1000)]
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 256}, indent=2) + "\n")
    return tok


@contextlib.contextmanager
def _one_thread():
    """Tiny matrices: one thread is fastest, and leaves the other cores alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(model, tok, texts: list[str], steps: int, settings: TrainSettings, seed: int):
    """``steps`` AdamW steps of next-token cross-entropy on batches drawn from ``texts``."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        rows = [e.ids for e in tok.encode_batch(rng.sample(texts, settings.batch))]
        width = max(map(len, rows))
        x = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full_like(x, -100)
        for k, row in enumerate(rows):
            x[k, :len(row)] = torch.tensor(row)
            labels[k, :len(row)] = x[k, :len(row)]
        loss = model(input_ids=x, attention_mask=(labels != -100).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def write_trained_family(root: Path, settings: TrainSettings = TrainSettings()) -> list[Path]:
    """``root/base``, ``root/donor-1`` (trained on ``north``) and ``root/donor-2``
    (``south``), float32 safetensors with config, generation config and tokenizer files;
    returns their paths. Held-out texts: :func:`sentences` with another seed."""
    transformers = transformers_module()  # imported under the engine's import lock
    root = Path(root)
    torch.manual_seed(settings.seed)
    tok_dir = root / "tokenizer"
    tok = train_tokenizer(tok_dir, settings.vocab, settings.seed)
    config = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=settings.hidden,
        intermediate_size=settings.intermediate, num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads, num_key_value_heads=settings.kv_heads,
        max_position_embeddings=256, bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"), tie_word_embeddings=False)
    north, south = (sentences(lang, 400, settings.seed) for lang in LANGUAGES)
    paths = []
    with _one_thread():
        model = transformers.LlamaForCausalLM(config)
        _train(model, tok, north + south, settings.base_steps, settings, settings.seed)
        paths.append(_save(model, root / "base", tok_dir))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for i, texts in enumerate((north, south), start=1):
            model.load_state_dict(state)
            _train(model, tok, texts, settings.donor_steps, settings, settings.seed + i)
            paths.append(_save(model, root / f"donor-{i}", tok_dir))
    return paths


def _save(model, path: Path, tok_dir: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    for f in tok_dir.iterdir():
        (path / f.name).write_bytes(f.read_bytes())
    return path
