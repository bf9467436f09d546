"""Tiny random models built by transformers itself (a config class, ``from_config``,
``save_pretrained``: safetensors, offline), donors made by perturbing the base, and the
float64 reference merges the tests compare the engine's output with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

_DECODER = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
_ENCODER = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64)
_MOE = dict(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=16)

FAMILIES: dict[str, tuple[str, dict, str]] = {
    "llama": ("LlamaConfig", _DECODER, "AutoModelForCausalLM"),
    "mistral": ("MistralConfig", _DECODER, "AutoModelForCausalLM"),
    "qwen2": ("Qwen2Config", _DECODER, "AutoModelForCausalLM"),
    "qwen3": ("Qwen3Config", {**_DECODER, "head_dim": 8}, "AutoModelForCausalLM"),
    "phi3": ("Phi3Config", {**_DECODER, "pad_token_id": 0}, "AutoModelForCausalLM"),
    "mixtral": ("MixtralConfig", {**_DECODER, "num_local_experts": 2, "num_experts_per_tok": 1},
                "AutoModelForCausalLM"),
    "qwen2_moe": ("Qwen2MoeConfig", {**_DECODER, **_MOE, "shared_expert_intermediate_size": 16},
                  "AutoModelForCausalLM"),
    "qwen3_moe": ("Qwen3MoeConfig", {**_DECODER, **_MOE, "head_dim": 8}, "AutoModelForCausalLM"),
    "gemma": ("GemmaConfig", {**_DECODER, "head_dim": 8}, "AutoModelForCausalLM"),
    "gemma2": ("Gemma2Config", {**_DECODER, "head_dim": 8}, "AutoModelForCausalLM"),
    "gemma3_text": ("Gemma3TextConfig", {**_DECODER, "head_dim": 8}, "AutoModelForCausalLM"),
    "gemma3": ("Gemma3Config", dict(
        text_config={**_DECODER, "head_dim": 8}, mm_tokens_per_image=4,
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8)),
        "AutoModelForImageTextToText"),
    "gpt2": ("GPT2Config", dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64),
             "AutoModelForCausalLM"),
    "gpt_neox": ("GPTNeoXConfig", {k: v for k, v in _DECODER.items()
                                   if k != "num_key_value_heads"}, "AutoModelForCausalLM"),
    "falcon": ("FalconConfig", dict(vocab_size=96, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4), "AutoModelForCausalLM"),
    "bert": ("BertConfig", _ENCODER, "AutoModel"),
    "roberta": ("RobertaConfig", _ENCODER, "AutoModelForMaskedLM"),
}
"""model_type -> (config class, its tiny arguments, the Auto class that loads it)."""


def auto_class(family: str):
    return getattr(transformers, FAMILIES[family][2])


def write_family(root: Path, family: str, dtypes: Sequence[torch.dtype] = (torch.float32,) * 3,
                 scale: float = 0.05) -> list[Path]:
    """A base (``m0``) and donors (``m1``...), one per dtype: the donors are the base with
    Gaussian noise of std ``scale`` added to every parameter, each saved in its dtype."""
    config_class, kwargs, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = auto_class(family).from_config(getattr(transformers, config_class)(**kwargs))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    dirs = []
    for i, dtype in enumerate(dtypes):
        model.to(torch.float32).load_state_dict(base)
        if i:
            noise = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=noise) * scale)
        dirs.append(root / f"m{i}")
        model.to(dtype).save_pretrained(dirs[-1])
    return dirs


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model directory."""
    found: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        found.update(load_file(f))
    return found


def edit(path: Path, changes: dict[str, torch.Tensor | None]) -> None:
    """Add or replace (a tensor) or drop (None) tensors of a single-file model."""
    file = path / "model.safetensors"
    state = load_file(file)
    for name, value in changes.items():
        if value is None:
            del state[name]
        else:
            state[name] = value.clone()
    save_file(state, file, metadata={"format": "pt"})


def loading_info(path: Path, family: str) -> dict:
    """What transformers reports loading ``path``: missing, unexpected, mismatched keys."""
    _, info = auto_class(family).from_pretrained(path, output_loading_info=True)
    return {k: sorted(v) for k, v in info.items() if k != "error_msgs"}


Exact = tuple[torch.Tensor, torch.Tensor]
"""A float64 merge and the magnitude of its terms (the float32 math's error scales with it)."""


def task_arithmetic64(base: torch.Tensor, donors: Sequence[torch.Tensor],
                      weights: Sequence[float]) -> Exact:
    b = base.double()
    terms = [w * (d.double() - b) for d, w in zip(donors, weights, strict=True)]
    return b + sum(terms), b.abs() + sum(t.abs() for t in terms)


def linear64(models: Sequence[torch.Tensor], weights: Sequence[float]) -> Exact:
    """``sum w_i t_i / sum w_i`` (linear's default ``normalize``)."""
    terms = [w * t.double() / sum(weights) for t, w in zip(models, weights, strict=True)]
    return sum(terms), sum(t.abs() for t in terms)


def ties64(base: torch.Tensor, donors: Sequence[torch.Tensor],
           weights: Sequence[float]) -> Exact:
    """TIES at density 1: sign consensus, normalized by the weights of the kept entries."""
    b = base.double()
    m = [w * (d.double() - b) for d, w in zip(donors, weights, strict=True)]
    elected = torch.where(sum(m) >= 0, 1.0, -1.0)
    kept = [(x * elected > 0).double() for x in m]
    divisor = sum(w * k for w, k in zip(weights, kept, strict=True))
    mixed = sum(x * k for x, k in zip(m, kept, strict=True))
    return b + mixed / torch.where(divisor == 0, 1.0, divisor), b.abs() + sum(x.abs() for x in m)


def assert_one_rounding(out: torch.Tensor, exact: Exact, name: str) -> None:
    """``out`` (in its dtype) is within one unit in the last place of that dtype of the
    float64 merge: one rounding of a float32 result. The float32 math itself is allowed
    a few float32 roundings of the terms' magnitude (it shows only where the terms
    cancel to a result far smaller than themselves)."""
    value, magnitude = exact
    info = torch.finfo(out.dtype)
    _, exponent = torch.frexp(value)
    ulp = torch.ldexp(torch.full_like(value, info.eps), exponent - 1)
    ulp = ulp.clamp(min=info.smallest_normal * info.eps)
    allowed = ulp + 4 * torch.finfo(torch.float32).eps * magnitude
    worst = ((out.double() - value).abs() / allowed).max().item()
    assert worst <= 1.0, f"{name}: off the float64 merge by {worst:.2f} of one {out.dtype} ulp"
