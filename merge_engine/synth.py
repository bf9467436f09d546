"""Generated llama-shaped model families, for the demo, the tests and the benchmarks.

A family is a base model and donors that look fine-tuned from it:
``donor_i = base + delta_scale * noise_i``. Every tensor is generated from a seed derived
from its name, so a model is written tensor by tensor (no whole model in memory) and the
same arguments always give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from merge_engine.io.checkpoint import BIN_INDEX_NAME, BIN_SINGLE_NAME, OutTensor, ShardedWriter


@dataclass(frozen=True)
class LlamaShape:
    """The sizes that fix a llama model's tensors."""

    hidden: int = 64
    intermediate: int = 128
    layers: int = 2
    vocab: int = 128
    heads: int = 4
    kv_heads: int = 2
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every tensor, in the order transformers lists them."""
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        out = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [
                (p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (i, h)),
                (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)),
            ]
        out.append(("model.norm.weight", (h,)))
        if not self.tie_embeddings:
            out.append(("lm_head.weight", (self.vocab, h)))
        return out

    def config(self, dtype: torch.dtype) -> dict:
        """A transformers ``LlamaConfig`` as JSON."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": str(dtype).removeprefix("torch."),
        }


BENCH_0_9B = LlamaShape(hidden=2048, intermediate=4864, layers=16, vocab=32000, heads=16,
                        kv_heads=16)
"""The benchmark family: about 0.88B parameters, 1.76 GB per model in bf16."""
BENCH_0_2B = replace(BENCH_0_9B, layers=2, intermediate=2048)
"""A smaller family of the same width, to show memory does not grow with model size."""


def _generator(*parts: object) -> torch.Generator:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def make_tensor(name: str, shape: tuple[int, ...], seed: int, donor: int | None,
                delta_scale: float) -> torch.Tensor:
    """The float32 value of one tensor of the base (``donor=None``) or of a donor."""
    if name.endswith("norm.weight"):
        value = 1.0 + 0.1 * torch.randn(shape, generator=_generator(seed, name))
    else:
        value = 0.02 * torch.randn(shape, generator=_generator(seed, name))
    if donor is not None:
        value += delta_scale * torch.randn(shape, generator=_generator(seed, name, donor))
    return value


def write_model(path: Path, shape: LlamaShape, *, seed: int = 0, donor: int | None = None,
                delta_scale: float = 0.002, dtype: torch.dtype = torch.bfloat16,
                shard_bytes: int = 5_000_000_000) -> Path:
    """Write one model (safetensors shards, index, config.json) into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    specs = shape.tensors()
    writer = ShardedWriter(path, [OutTensor(n, dtype, s) for n, s in specs], shard_bytes)
    for name, dims in specs:
        writer.write(name, make_tensor(name, dims, seed, donor, delta_scale).to(dtype))
    writer.close()
    (path / "config.json").write_text(json.dumps(shape.config(dtype), indent=2) + "\n")
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    return path


def write_family(root: Path, shape: LlamaShape, donors: int = 2, **options) -> list[Path]:
    """``root/base`` and ``root/donor-1`` ... ``root/donor-N``; returns their paths."""
    paths = [write_model(root / "base", shape, **options)]
    paths += [write_model(root / f"donor-{i}", shape, donor=i, **options)
              for i in range(1, donors + 1)]
    return paths


def save_as_bin(src: Path, dst: Path) -> Path:
    """Copy the model in ``src`` to ``dst`` as torch pickle checkpoints, laid out as
    transformers writes them: ``pytorch_model.bin``, or ``pytorch_model-0000i-of-0000N.bin``
    shards (one per safetensors shard, same tensors) and ``pytorch_model.bin.index.json``.
    Side files are copied. One shard is held in memory at a time."""
    dst.mkdir(parents=True, exist_ok=True)
    shards = sorted(src.glob("*.safetensors"))
    names = ([BIN_SINGLE_NAME] if len(shards) == 1 else
             [f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
              for i in range(1, len(shards) + 1)])
    weight_map = {}
    for shard, name in zip(shards, names, strict=True):
        tensors = load_file(shard)
        torch.save(tensors, dst / name)
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    if len(shards) > 1:
        total = sum((dst / n).stat().st_size for n in names)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dst / BIN_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    for side in src.iterdir():
        if side.is_file() and not side.name.startswith(("model", "pytorch_model")):
            shutil.copy(side, dst / side.name)
    return dst
