"""The plan of a mixture-of-experts recipe (:mod:`merge_engine.recipe.moe`), from headers
and configs alone.

Every tensor of the base outside its MLPs is copied as it is (attention, norms,
embeddings, head). Layer ``N``'s MLP ``model.layers.N.mlp.{gate,up,down}_proj.weight``
is replaced by one copy per expert, read from that expert's model, and a router:

    mixtral    model.layers.N.block_sparse_moe.gate.weight            [experts, hidden]
               model.layers.N.block_sparse_moe.experts.E.w1/w3/w2.weight (gate/up/down)
    qwen2_moe  model.layers.N.mlp.gate.weight, mlp.experts.E.{gate,up,down}_proj.weight,
               mlp.shared_expert.{gate,up,down}_proj.weight, mlp.shared_expert_gate.weight
    qwen3_moe  model.layers.N.mlp.gate.weight, mlp.experts.E.{gate,up,down}_proj.weight

(the per-expert names transformers loads for these classes). The routers' values are
computed before the merge (:mod:`merge_engine.execute.gates`); here they are tasks with
no inputs. The output's config.json is the base's, turned into the MoE architecture's.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from merge_engine.errors import PlanError
from merge_engine.io.checkpoint import OutTensor, TensorMeta
from merge_engine.io.sources import Source
from merge_engine.plan.build import (
    FLOAT_DTYPES,
    Plan,
    TensorInput,
    TensorTask,
    _is_buffer,
    _ordered_names,
    _out_dtype,
)
from merge_engine.recipe import Recipe, ref_key
from merge_engine.recipe.moe import PROMPT_MODES, Expert, MoeSpec

MLP_RE = re.compile(r"^(?P<layer>(?:.*\.)?layers\.(?P<n>\d+)\.)mlp\.(?P<proj>\w+)\.(?P<kind>\w+)$")
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
MIXTRAL_NAMES = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
ARCHITECTURE_CLASSES = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                        "qwen3_moe": "Qwen3MoeForCausalLM"}


@dataclass(frozen=True)
class Router:
    """One router tensor to compute: its layer and the experts whose rows it holds."""

    name: str
    layer: int
    experts: tuple[Expert, ...]


@dataclass
class MoePlan(Plan):
    """A :class:`Plan` whose router tasks (``value`` None until
    :func:`merge_engine.execute.gates.fill_gates`) are listed in :attr:`routers`."""

    architecture: str = "mixtral"
    routers: list[Router] = field(default_factory=list)
    hidden_size: int = 0


def build_moe_plan(recipe: Recipe, sources: Sequence[Source]) -> MoePlan:
    """Check that the experts fit the base and lay out every output tensor (see the module
    docstring); PlanError naming the recipe place of a misfit."""
    spec = recipe.moe
    assert spec is not None
    base = sources[0]
    index = {ref_key(m.ref): i for i, m in enumerate(recipe.inputs())}
    where = recipe.where
    layers = _mlp_layers(base, where("base_model"))
    hidden = _hidden_size(base, where("base_model"))
    architecture = spec.architecture or _default_architecture(base, spec)
    _check_attention(base, architecture, where("base_model"))
    if architecture == "qwen2_moe" and not spec.shared_experts:
        raise PlanError(f"{where('shared_experts')}: the qwen2_moe architecture runs a shared "
                        "expert for every token; give one under shared_experts")
    if spec.gate_mode in PROMPT_MODES and "tokenizer.json" not in base.files:
        raise PlanError(f"{where('gate_mode')}: gate_mode {spec.gate_mode} tokenizes the prompts "
                        f"with the base model's tokenizer.json, which {base.name} lacks")
    expert_sources = [sources[index[ref_key(e.ref)]] for e in spec.all_experts]
    for expert, source in zip(spec.all_experts, expert_sources, strict=True):
        _check_expert(expert, source, base, hidden, layers, where)
    out_dtype = _out_dtype(recipe, base)
    sizes = {_intermediate(spec.experts[0], expert_sources[0], where)}
    for expert, source in zip(spec.experts, expert_sources[:len(spec.experts)], strict=True):
        size = _intermediate(expert, source, where)
        if size not in sizes:
            raise PlanError(f"{where(expert.loc + '.source_model')}: {source.name}'s MLP is "
                            f"{size} wide but {expert_sources[0].name}'s is {min(sizes)}; the "
                            "experts of one MoE share one intermediate size")
    tasks: list[TensorTask] = []
    routers: list[Router] = []
    done: set[int] = set()
    for name in _ordered_names(base):
        meta = base.tensors[name]
        found = MLP_RE.match(name)
        if found is None:
            tasks.append(_copy_task(name, name, 0, meta, out_dtype))
            continue
        n = int(found["n"])
        if n in done:
            continue
        done.add(n)
        prefix = found["layer"]
        moe = f"{prefix}block_sparse_moe." if architecture == "mixtral" else f"{prefix}mlp."
        router = Router(f"{moe}gate.weight", n, spec.experts)
        routers.append(router)
        tasks.append(_router_task(router.name, len(spec.experts), hidden, out_dtype))
        for e, expert in enumerate(spec.experts):
            i = index[ref_key(expert.ref)]
            for proj in PROJECTIONS:
                out = (f"{moe}experts.{e}.{MIXTRAL_NAMES[proj]}.weight"
                       if architecture == "mixtral" else f"{moe}experts.{e}.{proj}.weight")
                src = f"{prefix}mlp.{proj}.weight"
                tasks.append(_copy_task(out, src, i, sources[i].tensors[src], out_dtype,
                                        noise_scale=expert.noise_scale))
        for expert in spec.shared_experts:
            i = index[ref_key(expert.ref)]
            for proj in PROJECTIONS:
                src = f"{prefix}mlp.{proj}.weight"
                scale = expert.residual_scale if proj == "down_proj" else 1.0
                tasks.append(_copy_task(f"{moe}shared_expert.{proj}.weight", src, i,
                                        sources[i].tensors[src], out_dtype, scale=scale))
            router = Router(f"{moe}shared_expert_gate.weight", n, (expert,))
            routers.append(router)
            tasks.append(_router_task(router.name, 1, hidden, out_dtype))
    config = _config(base, architecture, spec, sizes.pop(), expert_sources)
    warnings = list(recipe.warnings)
    if not base.config:
        warnings.append(f"{base.name} has no config.json; the output's config is incomplete")
    return MoePlan(recipe, recipe.spec, recipe.inputs(), tuple(sources), tasks, out_dtype, None,
                   warnings, config, architecture=architecture, routers=routers,
                   hidden_size=hidden)


def _mlp_layers(base: Source, loc: str) -> list[int]:
    """The layer numbers whose MLP the experts replace; PlanError when the base's MLPs
    are not llama-style (gate/up/down projections without biases)."""
    layers: dict[int, set[str]] = {}
    for name in base.tensors:
        found = MLP_RE.match(name)
        if found is None:
            continue
        if found["proj"] not in PROJECTIONS or found["kind"] != "weight":
            raise PlanError(f"{loc}: {base.name} has tensor {name}; an MoE expert is a "
                            "llama-style MLP of gate_proj, up_proj and down_proj weights only")
        layers.setdefault(int(found["n"]), set()).add(found["proj"])
    if not layers:
        raise PlanError(f"{loc}: {base.name} has no llama-style MLPs (model.layers.N.mlp."
                        "gate_proj/up_proj/down_proj); MoE recipes take llama-family models "
                        "(llama, mistral, qwen2, qwen3)")
    for n, found in sorted(layers.items()):
        if len(found) != len(PROJECTIONS):
            missing = sorted(set(PROJECTIONS) - found)
            raise PlanError(f"{loc}: layer {n} of {base.name} lacks mlp.{missing[0]}.weight")
    return sorted(layers)


def _hidden_size(base: Source, loc: str) -> int:
    gate = next(n for n in base.tensors if MLP_RE.match(n) and ".gate_proj." in n)
    size = base.tensors[gate].shape[1]
    declared = base.config.get("hidden_size")
    if declared is not None and declared != size:
        raise PlanError(f"{loc}: {base.name}'s config.json says hidden_size {declared} but "
                        f"its {gate} is {list(base.tensors[gate].shape)}")
    return size


def _default_architecture(base: Source, spec: MoeSpec) -> str:
    """qwen2_moe for a recipe with a shared expert or a qwen2 base, qwen3_moe for a qwen3
    base, else mixtral."""
    model_type = base.config.get("model_type")
    if spec.shared_experts or model_type == "qwen2":
        return "qwen2_moe"
    return "qwen3_moe" if model_type == "qwen3" else "mixtral"


def _check_attention(base: Source, architecture: str, loc: str) -> None:
    """The base's attention must be the output architecture's: Mixtral has no biases and
    no q/k norms, Qwen2-MoE may have q/k/v biases, Qwen3-MoE has q/k norms."""
    names = base.tensors
    biased = any(re.search(r"self_attn\.[qkv]_proj\.bias$", n) for n in names)
    normed = any(re.search(r"self_attn\.[qk]_norm\.weight$", n) for n in names)
    o_bias = any(n.endswith("self_attn.o_proj.bias") for n in names)
    problem = None
    if architecture == "mixtral" and (biased or normed or o_bias):
        problem = ("attention biases or q/k norms, which Mixtral has not; use architecture: "
                   "qwen2_moe (biases, with a shared expert) or qwen3_moe (q/k norms)")
    elif architecture == "qwen2_moe" and (normed or o_bias):
        problem = "q/k norms or an o_proj bias, which Qwen2-MoE has not"
    elif architecture == "qwen3_moe" and not normed:
        problem = "no q/k norms, which Qwen3-MoE needs (its base must be a qwen3 model)"
    if problem:
        raise PlanError(f"{loc}: {base.name}'s attention has {problem}")


def _check_expert(expert: Expert, source: Source, base: Source, hidden: int,
                  layers: list[int], where: Callable[[str], str]) -> None:
    """The expert's model has the base's hidden size and layer count, and its MLP tensors
    under the base's names."""
    loc = where(expert.loc + ".source_model")
    declared = source.config.get("hidden_size")
    if declared is not None and declared != hidden:
        raise PlanError(f"{loc}: {source.name} has hidden size {declared} but the base "
                        f"{base.name} has {hidden}; an expert's MLP must fit the base's layers")
    for name, want in base.tensors.items():
        found = MLP_RE.match(name)
        if found is None:
            continue
        meta = source.tensors.get(name)
        if meta is None:
            raise PlanError(f"{loc}: {source.name} has no {name} (the base {base.name} has "
                            f"{len(layers)} layers; an expert needs an MLP in each)")
        axis = 0 if found["proj"] == "down_proj" else 1
        if len(meta.shape) != 2 or meta.shape[axis] != want.shape[axis]:
            raise PlanError(f"{loc}: {name} is {list(meta.shape)} in {source.name} but the "
                            f"base {base.name} has hidden size {hidden}; an expert's MLP must "
                            "fit the base's layers")
    extra = [n for n in source.tensors if (f := MLP_RE.match(n)) and int(f["n"]) not in layers]
    if extra:
        raise PlanError(f"{loc}: {source.name} has {extra[0]} but the base {base.name} has "
                        f"{len(layers)} layers; an expert must have the base's layer count")


def _intermediate(expert: Expert, source: Source, where: Callable[[str], str]) -> int:
    """The expert's MLP width (the same in every layer)."""
    widths = {source.tensors[n].shape[0] for n in source.tensors
              if (f := MLP_RE.match(n)) and f["proj"] == "gate_proj"}
    if len(widths) != 1:
        raise PlanError(f"{where(expert.loc + '.source_model')}: {source.name}'s MLP widths "
                        f"differ between layers ({sorted(widths)})")
    return widths.pop()


def _copy_task(out_name: str, name: str, model: int, meta: TensorMeta, out_dtype,
               *, noise_scale: float = 0.0, scale: float = 1.0) -> TensorTask:
    """Tensor ``name`` of model ``model`` as output ``out_name`` (in the output dtype when
    it is floating point; a buffer or an integer tensor is copied as it is)."""
    floating = meta.torch_dtype in FLOAT_DTYPES and not _is_buffer(name, meta)
    dtype = out_dtype if floating else meta.torch_dtype
    inp = TensorInput(model, name, meta, meta.shape[0] if meta.shape else 1)
    return TensorTask(OutTensor(out_name, dtype, meta.shape), (inp,), {},
                      ({"noise_scale": noise_scale, "scale": scale},),
                      chunkable=floating and len(meta.shape) >= 2, copy=not floating)


def _router_task(name: str, rows: int, hidden: int, out_dtype) -> TensorTask:
    return TensorTask(OutTensor(name, out_dtype, (rows, hidden)), (), {}, (), chunkable=False,
                      copy=True)


def _config(base: Source, architecture: str, spec: MoeSpec, width: int,
            expert_sources: Sequence[Source]) -> dict:
    """The base's config.json as the MoE architecture's."""
    config = copy.deepcopy(dict(base.config))
    config["architectures"] = [ARCHITECTURE_CLASSES[architecture]]
    config["model_type"] = architecture
    config["num_experts_per_tok"] = spec.experts_per_token
    config["intermediate_size"] = width
    names = base.tensors
    if architecture == "mixtral":
        config["num_local_experts"] = len(spec.experts)
        for key in ("attention_bias", "mlp_bias"):
            config.pop(key, None)
        return config
    config["num_experts"] = len(spec.experts)
    config["moe_intermediate_size"] = width
    config["decoder_sparse_step"] = 1
    config["mlp_only_layers"] = []
    config["norm_topk_prob"] = False
    if architecture == "qwen2_moe":
        config["qkv_bias"] = any(n.endswith("self_attn.q_proj.bias") for n in names)
        shared = expert_sources[len(spec.experts)]
        config["shared_expert_intermediate_size"] = next(
            shared.tensors[n].shape[0] for n in shared.tensors
            if (f := MLP_RE.match(n)) and f["proj"] == "gate_proj")
    else:
        config["attention_bias"] = any(n.endswith("self_attn.q_proj.bias") for n in names)
    return config
