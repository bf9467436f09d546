"""A tiny llama family whose word-level tokenizer covers the checks' built-in text, so
perplexities and generations are real (random weights: about the vocabulary size)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from merge_engine.check.behaviour import PROMPT, TEXT
from merge_engine.synth import write_family

from .conftest import TINY
from .tokutil import write_tokenizer

WORDS = sorted(set(re.findall(r"\w+|[^\w\s]+", TEXT + " " + PROMPT)))
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def tokenized_family(root: Path, *, template_on: int | None = None) -> list[Path]:
    """[base, donor-1, donor-2] of the TINY shape, each with the tokenizer; model number
    ``template_on`` also gets a chat template."""
    paths = write_family(root, TINY, donors=2, delta_scale=0.01)
    for i, path in enumerate(paths):
        write_tokenizer(path, WORDS, [("<|extra|>", True)])
        if i == template_on:
            config = json.loads((path / "tokenizer_config.json").read_text())
            config["chat_template"] = TEMPLATE
            (path / "tokenizer_config.json").write_text(json.dumps(config))
    return paths
