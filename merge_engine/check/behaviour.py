"""Behaviour checks with transformers: the weights' shapes against the architecture built
from config.json, one forward pass, the perplexity of a built-in paragraph, and a short
greedy generation.

Perplexity of token ids ``x_0..x_n`` is ``exp(-1/n * sum_{i>=1} log p(x_i | x_<i))``,
computed in float32 from one forward pass. Models are loaded from local files only,
without remote code (``trust_remote_code`` stays off); transformers is imported when a
check first needs it (it takes seconds; importing it in the background while the merge
ran made ``run --check`` slower on two cores: the import holds the GIL the merge's
threads need between their torch operations).
"""

from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from merge_engine.errors import CheckError
from merge_engine.io.checkpoint import TensorMeta
from merge_engine.tokenizer.files import tokenizers_module

TEXT = (
    "The old lighthouse stood at the end of the harbour wall, and every evening the keeper "
    "climbed its narrow stairs to light the lamp. Fishing boats came home by its beam, and "
    "the children of the town learned to tell the time by the moment it first swept across "
    "the water. When the keeper grew old, his daughter took the keys, and the light never "
    "missed a night."
)
"""The paragraph whose perplexity is measured (written for this project)."""
PROMPT = "The capital of France is"
NEW_TOKENS = 12
MAX_TOKENS = 128
BYTES_PER_PARAMETER = 4
"""float32 weights while checking."""
HEADROOM = 1.5
TRANSFORMERS_LOCK = threading.RLock()
"""transformers' lazy modules are not safe to import from two threads at once, and
building a model patches global state (torch's default dtype and device,
``torch.linspace``): every import and every model construction
(:func:`transformers_module`, :func:`meta_model`, :func:`load`) holds this lock; forward
passes and generations of several models run concurrently."""


def transformers_module():
    with TRANSFORMERS_LOCK:
        import transformers
        from transformers.models.auto import modeling_auto  # noqa: F401 - loaded here

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    return transformers


def unsupported(config: dict) -> str | None:
    """Why transformers cannot build a causal LM from ``config`` here (None: it can)."""
    if config.get("auto_map"):
        return "the architecture needs remote code, which is never run"
    model_type = config.get("model_type")
    if not model_type:
        return "config.json has no model_type"
    try:
        transformers = transformers_module()
    except ImportError:
        return "transformers is not installed (pip install transformers)"
    names = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if model_type not in names:
        return f"transformers has no causal LM for model_type {model_type!r}"
    return None


def available_bytes(device: str) -> int:
    """Free memory for the model: the GPU's free memory, else MemAvailable."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def too_large(parameters: int, device: str) -> str | None:
    need = int(parameters * BYTES_PER_PARAMETER * HEADROOM)
    free = available_bytes(device)
    if need > free:
        return (f"the model needs about {need / 1e9:.1f} GB to run but {free / 1e9:.1f} GB "
                f"are free on {device}")
    return None


def check_shapes(config: dict, metas: dict[str, TensorMeta]) -> str:
    """Every tensor the architecture expects is on disk with the shape it expects (built
    on the meta device: no memory, no initialisation). Names are the checkpoint's: an
    architecture that fuses tensors in memory (transformers 5's MoE experts) is compared
    in the per-tensor layout it loads and saves."""
    model = meta_model(config)
    cfg = model.config
    arch = type(model).__name__
    tied = {k for k, v in model.state_dict(keep_vars=True).items()
            if getattr(cfg, "tie_word_embeddings", False)
            and v is model.get_output_embeddings().weight}
    expected = model.state_dict()
    if not all(name in metas or name in tied for name in expected):
        expected = checkpoint_layout(model, expected)
    for name, tensor in expected.items():
        if name not in metas:
            if name in tied:
                continue
            raise CheckError(f"tensor {name} that {arch} expects from config.json is not on "
                             "disk")
        if tuple(tensor.shape) != metas[name].shape:
            raise CheckError(f"tensor {name} has shape {list(metas[name].shape)} on disk but "
                             f"{arch} expects {list(tensor.shape)} from config.json")
    return f"every tensor {arch} expects is on disk with its shape"


def checkpoint_layout(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` under the names transformers saves (its weight conversions reverted, as
    ``save_pretrained`` does); as it is before transformers 5, which had none."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return state
    return revert_weight_conversion(model, dict(state))
def meta_model(config: dict):
    """The causal LM ``config`` describes, built on the meta device (no memory)."""
    transformers = transformers_module()
    with TRANSFORMERS_LOCK:  # the architecture's modules are imported here the first time
        cfg = transformers.AutoConfig.for_model(**config)
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(cfg)


def cores() -> int:
    return len(os.sched_getaffinity(0))


def parallel_models(models: int, parameters: int, device: str) -> int:
    """How many models to measure at once: one per core (two models on two cores each
    compute with one thread), as many as fit in memory with the headroom; one on a GPU."""
    if device.startswith("cuda"):
        return 1
    fit = available_bytes(device) // max(1, int(parameters * BYTES_PER_PARAMETER * HEADROOM))
    return max(1, min(models, cores(), fit))


@contextmanager
def cpu_threads(models: int = 1):
    """Torch uses all cores but one while checking (the executor left one thread per
    worker), shared by the ``models`` measured at once. Torch's OpenMP threads spin while
    they wait: on a busy 2-core machine, two threads ran the tiny test model's checks 3-8x
    slower than one, and a 0.19B model's perplexity pass took 1.5 s with two threads and
    0.75 s with one (load average about 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (cores() - 1) // models))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load(directory: Path, device: str):
    transformers = transformers_module()
    try:
        with TRANSFORMERS_LOCK:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                directory, dtype=torch.float32, local_files_only=True,
                trust_remote_code=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckError(f"transformers cannot load the model in {directory}: "
                         f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval()


def tokenizer(directory: Path):
    return tokenizers_module().Tokenizer.from_file(str(directory / "tokenizer.json"))


def perplexity(model, ids: list[int]) -> float:
    """exp of the mean negative log-likelihood of ``ids[1:]`` given their prefixes."""
    x = torch.tensor([ids], device=model.device)
    logits = model(input_ids=x).logits[0, :-1].float()
    if not torch.isfinite(logits).all():
        raise CheckError("the forward pass of the merged model produced NaN or infinite "
                         "logits")
    nll = torch.nn.functional.cross_entropy(logits, x[0, 1:])
    return math.exp(min(nll.item(), 700.0))


def greedy(model, ids: list[int], new_tokens: int) -> list[int]:
    """Up to ``new_tokens`` most likely next tokens, one at a time (stops at EOS)."""
    x = torch.tensor([ids], device=model.device)
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                         max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                         pad_token_id=model.config.eos_token_id or 0)
    return out[0, len(ids):].tolist()


def measure(directory: Path, device: str, *, generate: bool) -> tuple[float, str | None]:
    """(perplexity of :data:`TEXT`, greedy continuation of :data:`PROMPT` when
    ``generate``) of the model in ``directory``, with torch's threads as the caller set
    them (:func:`cpu_threads`)."""
    tok = tokenizer(directory)
    ids = tok.encode(TEXT).ids[:MAX_TOKENS]
    if len(ids) < 2:
        raise CheckError(f"the tokenizer in {directory} encodes the check text to "
                         f"{len(ids)} token(s)")
    with torch.inference_mode():
        model = load(directory, device)
        value = perplexity(model, ids)
        text = None
        if generate:
            prompt = tok.encode(PROMPT).ids
            text = tok.decode(greedy(model, prompt, NEW_TOKENS), skip_special_tokens=False)
        del model
    return value, text
