"""Scoring a model on evaluation sets: mean token negative log-likelihood and perplexity.

For the texts of one set, tokenized with the model's own tokenizer (``tokenizer.json``,
special tokens as its post-processor adds them) and cut at ``max_length`` tokens, every
token after the first of each text is predicted from its prefix:

    NLL = -1/N * sum over texts t, positions i >= 1 of log p(x_{t,i} | x_{t,<i})
    perplexity = exp(NLL)

with N the number of predicted tokens of all the set's texts together (a token-weighted
mean). The model is loaded once, in float32, from local files only and without remote
code, when it fits in the device's memory with 50 % headroom. Texts go through it in
batches of similar length whose padded size stays within a token budget sized to the free
memory of the device; padding is masked out of attention (right padding: no real token
attends to it) and out of the sum.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from merge_engine.check import behaviour, structure
from merge_engine.errors import InputError, MergeEngineError, MergeError
from merge_engine.evaluate.sets import EvalSet
from merge_engine.execute.executor import resolve_device
from merge_engine.io.datasets import load_dataset_texts
from merge_engine.io.hub import HubAccess

MAX_LENGTH = 1024
"""Tokens per text; longer texts are cut."""
MAX_BATCH_TOKENS = {"cuda": 16384, "cpu": 2048}
"""Padded tokens per forward pass, at most: more does not run faster (a CPU's matrix
products are already efficient at a few hundred rows)."""
MEMORY_SHARE = 0.5
"""Share of the free memory (after loading the model) one batch may use."""


@dataclass(frozen=True)
class EvalScore:
    """A model's score on one set: ``tokens`` predicted tokens of ``samples`` texts;
    ``revision``: the dataset commit SHA read (None for pasted texts)."""

    set: str
    nll: float
    perplexity: float
    tokens: int
    samples: int
    revision: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SetTexts:
    """The texts of one set as read, with the dataset revision they were read at."""

    set: EvalSet
    texts: tuple[str, ...]
    revision: str | None

    @property
    def identity(self) -> str:
        """What fixes the texts: the dataset, its place and commit SHA, or the texts'
        digest (a cache key part)."""
        s = self.set
        if s.dataset is None:
            return "texts:" + hashlib.sha256(json.dumps(self.texts).encode()).hexdigest()
        return f"dataset:{s.dataset}:{s.config}:{s.split}:{s.column}:{s.samples}@{self.revision}"


def read_sets(sets: list[EvalSet], hub: HubAccess | None = None) -> list[SetTexts]:
    """The texts of every set: pasted ones as they are, a dataset's first ``samples``
    non-empty texts of its column, read at a commit SHA."""
    out = []
    for s in sets:
        if s.dataset is None:
            out.append(SetTexts(s, tuple(s.texts), None))
            continue
        texts, sha = load_dataset_texts(hub or HubAccess(), s.dataset, config=s.config,
                                        split=s.split, column=s.column, samples=s.samples,
                                        revision=s.revision)
        out.append(SetTexts(s, tuple(texts), sha))
    return out


def evaluate_model(directory: str | Path, sets: list[EvalSet], *, device: str = "auto",
                   hub: HubAccess | None = None, cache_dir: Path | None = None,
                   max_length: int = MAX_LENGTH) -> list[EvalScore]:
    """The score of the model in ``directory`` on each set, in order (see the module
    docstring). ``hub``: how to reach the Hub for dataset sets. ``cache_dir``: where the
    Hub client keeps dataset files (None: ``hub``'s own cache)."""
    if cache_dir is not None:
        hub = replace(hub or HubAccess(), cache_dir=cache_dir)
    return score_model(directory, read_sets(sets, hub), device=device, max_length=max_length)


def score_model(directory: str | Path, sets: list[SetTexts], *, device: str = "auto",
                max_length: int = MAX_LENGTH) -> list[EvalScore]:
    """The score of the model in ``directory`` on sets already read."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InputError(f"{directory} has no config.json, so it cannot be evaluated")
    if not (directory / "tokenizer.json").is_file():
        raise InputError(f"{directory} has no tokenizer.json, so it cannot be evaluated with "
                         "its own tokenizer")
    why = behaviour.unsupported(json.loads(config_path.read_text()))
    if why:
        raise InputError(f"the model in {directory} cannot be evaluated: {why}")
    dev = str(resolve_device(device))
    parameters = sum(m.numel for m in structure.disk_tensors(directory).values())
    too_large = behaviour.too_large(parameters, dev)
    if too_large:
        raise MergeEngineError(f"the model in {directory} cannot be evaluated: {too_large}")
    tok = behaviour.tokenizer(directory)
    tok.no_padding()  # a tokenizer.json may pad (or cut) every text; batches pad here
    tok.no_truncation()
    with behaviour.cpu_threads(), torch.inference_mode():
        model = behaviour.load(directory, dev)
        budget = token_budget(model, dev, max_length)
        scores = [_score_set(model, tok, s, max_length, budget, directory) for s in sets]
        del model
    return scores


def token_budget(model, device: str, max_length: int) -> int:
    """Padded tokens per batch: the free memory's share over the bytes one token takes
    (float32 logits, their log-softmax and a copy, plus a layer's activations), within
    ``[max_length, MAX_BATCH_TOKENS]``."""
    config = model.config
    hidden = getattr(config, "hidden_size", 4096)
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    per_token = 4 * (3 * config.vocab_size + 4 * hidden + 3 * intermediate)
    fits = int(behaviour.available_bytes(device) * MEMORY_SHARE) // per_token
    cap = MAX_BATCH_TOKENS["cuda" if device.startswith("cuda") else "cpu"]
    return max(max_length, min(cap, fits))


def batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices of texts grouped longest first, each group's count x its longest length
    within ``budget`` (a text longer than the budget goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _score_set(model, tok, texts: SetTexts, max_length: int, budget: int,
               directory: Path) -> EvalScore:
    name = texts.set.name
    ids = [e.ids[:max_length] for e in tok.encode_batch(list(texts.texts))]
    ids = [x for x in ids if len(x) >= 2]
    if not ids:
        raise InputError(f"evaluation set {name!r} has no text of two or more tokens for the "
                         f"tokenizer in {directory}")
    total, count = 0.0, 0
    for group in batches([len(x) for x in ids], budget):
        nll, n = _batch_nll(model, [ids[i] for i in group])
        if not math.isfinite(nll):
            raise MergeError(f"the model in {directory} gives a NaN or infinite "
                             f"log-likelihood on evaluation set {name!r}")
        total += nll
        count += n
    mean = total / count
    return EvalScore(set=name, nll=mean, perplexity=math.exp(min(mean, 700.0)), tokens=count,
                     samples=len(ids), revision=texts.revision)


def _batch_nll(model, rows: list[list[int]]) -> tuple[float, int]:
    """(sum of -log p over the predicted tokens, their count) of right-padded ``rows``."""
    width = max(len(r) for r in rows)
    x = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(x)
    for k, row in enumerate(rows):
        x[k, :len(row)] = torch.tensor(row)
        mask[k, :len(row)] = 1
    x, mask = x.to(model.device), mask.to(model.device)
    logits = model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
    labels = x[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                            labels.reshape(-1), ignore_index=-100,
                                            reduction="sum")
    return nll.item(), int(mask[:, 1:].sum())
