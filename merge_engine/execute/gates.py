"""The routers of an MoE plan (:mod:`merge_engine.plan.moe`), computed before the merge.

Row ``e`` of a router is expert ``e``'s, per ``gate_mode``:

- ``random``: standard normal entries;
- ``uniform_random``: uniform in ``[-1/sqrt(hidden), 1/sqrt(hidden)]`` (``nn.Linear``'s
  default initialization);
- ``cheap_embed``: ``v = mean_p(emb(p)) - mean_n(emb(n))`` over the expert's positive
  prompts ``p`` and negative prompts ``n`` (the second term only when it has some), where
  ``emb(p)`` is the mean of the base's input-embedding rows of ``p``'s tokens; the same
  row in every layer;
- ``hidden``: the same with ``emb(p)`` replaced, for the router of layer ``N``, by the
  base model's hidden state entering layer ``N`` (transformers' ``hidden_states[N]``) at
  ``p``'s last token, from one forward pass of ``p`` alone (in the weights' stored
  dtype, float16 widened to float32 on a CPU; at most ``max_position_embeddings`` tokens,
  the first);

then ``v / ||v||``. Prompts are tokenized with the base's ``tokenizer.json`` (its special
tokens, such as a BOS, added as the tokenizer defines); a prompt with no tokens counts for
nothing. A Qwen2-MoE shared expert's gate is its row likewise, or zeros (a constant gate
of sigmoid(0) = 1/2) when it has no prompts. Random rows come from generators seeded by
the merge's seed and the router's name.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from merge_engine.errors import PlanError
from merge_engine.execute.executor import chunk_seed
from merge_engine.io.checkpoint import FileReader
from merge_engine.io.sources import Source
from merge_engine.plan.moe import MoePlan
from merge_engine.recipe.moe import PROMPT_MODES, Expert
from merge_engine.tokenizer.files import tokenizers_module

Embedder = Callable[[str], torch.Tensor | None]
"""A prompt -> its vector per layer ``[layers, hidden]`` (None: no tokens)."""


def fill_gates(plan: MoePlan, device: torch.device, seed: int) -> MoePlan:
    """``plan`` with every router task's ``value`` computed (float32, on the CPU)."""
    spec = plan.recipe.moe
    assert spec is not None
    values: dict[str, torch.Tensor] = {}
    if spec.gate_mode in PROMPT_MODES:
        embed = (_hidden_embedder(plan, device) if spec.gate_mode == "hidden"
                 else _cheap_embedder(plan))
        cache: dict[str, torch.Tensor | None] = {}

        def vector(prompt: str) -> torch.Tensor | None:
            if prompt not in cache:
                cache[prompt] = embed(prompt)
            return cache[prompt]

        for router in plan.routers:
            values[router.name] = torch.stack(
                [_row(expert, vector, router.layer, plan.hidden_size)
                 for expert in router.experts])
    else:
        for router in plan.routers:
            shape = (len(router.experts), plan.hidden_size)
            generator = torch.Generator().manual_seed(chunk_seed(seed, router.name, 0))
            if spec.gate_mode == "random":
                values[router.name] = torch.randn(shape, generator=generator)
            else:
                bound = 1 / math.sqrt(plan.hidden_size)
                values[router.name] = torch.rand(shape, generator=generator) * 2 * bound - bound
    tasks = [dataclasses.replace(t, value=values[t.out.name]) if t.out.name in values else t
             for t in plan.tasks]
    return dataclasses.replace(plan, tasks=tasks)


def _mean(prompts: Sequence[str], vector: Embedder, layer: int) -> torch.Tensor | None:
    found = [v[min(layer, v.shape[0] - 1)] for p in prompts if (v := vector(p)) is not None]
    return torch.stack(found).mean(0) if found else None


def _row(expert: Expert, vector: Embedder, layer: int, hidden: int) -> torch.Tensor:
    """One expert's router row at ``layer``: normalized (positive mean - negative mean)."""
    positive = _mean(expert.positive_prompts, vector, layer)
    negative = _mean(expert.negative_prompts, vector, layer)
    row = torch.zeros(hidden) if positive is None else positive
    if negative is not None:
        row = row - negative
    norm = row.norm()
    return row / norm if norm > 0 else row


def _tokenizer(base: Source):
    return tokenizers_module().Tokenizer.from_file(str(base.fetch("tokenizer.json")))


def _cheap_embedder(plan: MoePlan) -> Embedder:
    """Mean input-embedding row of a prompt's tokens, as a one-layer ``[1, hidden]``."""
    base = plan.sources[0]
    name = next((n for n in base.tensors if n.endswith("embed_tokens.weight")), None)
    if name is None:
        raise PlanError(f"{plan.recipe.where('gate_mode')}: gate_mode cheap_embed reads the "
                        f"base's embed_tokens.weight, which {base.name} lacks")
    meta = base.tensors[name]
    reader = FileReader()
    try:
        buf = torch.empty(meta.end - meta.begin, dtype=torch.uint8)
        table = reader.read(base.fetch(meta.file), meta, 0, meta.shape[0], buf, name)
        table = table.to(torch.float32)
    finally:
        reader.close()
    tok = _tokenizer(base)

    def embed(prompt: str) -> torch.Tensor | None:
        ids = [i for i in tok.encode(prompt).ids if i < table.shape[0]]
        return table[ids].mean(0, keepdim=True) if ids else None

    return embed


def _hidden_embedder(plan: MoePlan, device: torch.device) -> Embedder:
    """A prompt's last-token hidden state entering each layer, ``[layers, hidden]``."""
    base = plan.sources[0]
    tok = _tokenizer(base)
    model = _load_base(plan, device)
    limit = base.config.get("max_position_embeddings")
    limit = limit if isinstance(limit, int) and limit > 0 else None

    def embed(prompt: str) -> torch.Tensor | None:
        ids = tok.encode(prompt).ids[:limit]
        if not ids:
            return None
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
        return torch.stack([h[0, -1] for h in out.hidden_states[:-1]]).float().cpu()

    return embed


def _load_base(plan: MoePlan, device: torch.device):
    """The base model with transformers' own class (no remote code), eval mode, in its
    stored dtype (memory: about its file size)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()

    base = plan.sources[0]
    dtype = max(base.tensors.values(), key=lambda meta: meta.numel).torch_dtype
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # CPU float16 kernels are missing or slow
    with tempfile.TemporaryDirectory(prefix="mergebot-gates-") as scratch:
        directory = base.local_dir or _linked(base, Path(scratch))
        try:
            model = AutoModelForCausalLM.from_pretrained(
                directory, dtype=dtype, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, RuntimeError) as e:
            raise PlanError(f"{plan.recipe.where('gate_mode')}: gate_mode hidden runs the base "
                            f"model, but transformers cannot load {base.name}: "
                            f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval()


def _linked(base: Source, directory: Path) -> Path:
    """A directory of links to a Hub base's config and weight files (fetched)."""
    weights = {meta.file for meta in base.tensors.values()}
    for name in base.files:
        if name == "config.json" or name.endswith(".index.json") or name in weights:
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(base.fetch(name))
    return directory
