"""The plan: for each output tensor, its inputs, method and resolved parameters.

Built from the recipe and the sources' metadata alone (safetensors headers and configs),
so every shape problem is found before a weight byte is read.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from merge_engine.errors import PlanError
from merge_engine.io.checkpoint import DTYPES, OutTensor, TensorMeta
from merge_engine.io.lora import Adapter, LoraDelta
from merge_engine.io.sources import Source
from merge_engine.methods import get_method
from merge_engine.methods.registry import MethodSpec
from merge_engine.plan.architecture import (
    EMBEDDING_SUFFIXES,
    LAYER_COUNT_KEYS,
    LAYER_RE,
    TIED_ALIASES,
    Layout,
    config_get,
    config_set,
    detect_layout,
    is_buffer,
    module_of,
)
from merge_engine.recipe import InputModel, OutputSlice, Recipe, SliceSource, ref_key
from merge_engine.recipe.params import layer_t
from merge_engine.tokenizer.vocab import RowRule, Vocab, build_vocab, resolve_chat_template

__all__ = [
    "EMBEDDING_SUFFIXES", "LAYER_COUNT_KEYS", "LAYER_RE", "TIED_ALIASES", "Plan", "TensorInput",
    "TensorTask", "build_plan",
]
PER_LAYER_KEYS = ("layer_types", "no_rope_layers")
"""Config lists with one entry per layer: they follow the slices' layers."""
LAYER_INDEX_KEYS = ("mlp_only_layers",)
"""Config lists of layer indices: they follow the slices' layers too."""

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DTYPES_BY_NAME = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TensorInput:
    """One input of an output tensor: which model, where it lives, how many rows to read."""

    model: int
    """Index into :attr:`Plan.sources`."""
    name: str
    """The tensor's name in that model (differs from the output's for tied embeddings)."""
    meta: TensorMeta
    rows: int
    """Rows read from the start of dim 0 (fewer than the tensor has when the vocab is cut)."""
    lora: LoraDelta | None = None
    """A LoRA update added to this input in float32 (``model+adapter`` sources); its A and
    B are read from file ``lora.a.file`` of fetch owner :meth:`Plan.adapter_index`."""
    row_map: torch.Tensor | None = field(default=None, compare=False)
    """Tokenizer merging: for each output row, this input's row for the same token, -1
    where the model lacks it (int64). The input is then read whole (``rows`` rows), once
    for all the task's chunks, and each chunk's rows gathered from it and filled by
    :func:`merge_engine.tokenizer.vocab.fill_rows` before the merge."""


@dataclass(frozen=True)
class TensorTask:
    """How to make one output tensor."""

    out: OutTensor
    inputs: tuple[TensorInput, ...]
    """The base's first when the method has a base."""
    global_params: dict
    model_params: tuple[dict, ...]
    """One per non-base input, in the order of :attr:`inputs`."""
    chunkable: bool
    copy: bool
    """Not floating point: copied from the first input, no math."""
    row_rules: tuple[RowRule, ...] = ()
    """Tokenizer merging: the ``tokenizer.tokens`` rules, ``model`` an index into
    :attr:`inputs` (see :func:`merge_engine.tokenizer.vocab.fill_rows`)."""
    value: torch.Tensor | None = field(default=None, compare=False)
    """A tensor computed before the merge (an MoE router: :mod:`merge_engine.execute.gates`),
    written as it is (rounded to the output dtype); such a task has no inputs."""

    @property
    def rows(self) -> int:
        return self.out.shape[0] if self.out.shape else 1


@dataclass
class Plan:
    """Everything the executor needs; built by :func:`build_plan`."""

    recipe: Recipe
    method: MethodSpec
    models: tuple[InputModel, ...]
    sources: tuple[Source, ...]
    tasks: list[TensorTask]
    out_dtype: torch.dtype
    read_dtype: torch.dtype | None
    warnings: list[str]
    out_config: dict | None = None
    """The output's config.json when it differs from the first source's (slices change the
    layer count); None: the first source's, as it is."""
    vocab: Vocab | None = None
    """The output vocabulary when tokens are mapped (see
    :func:`merge_engine.tokenizer.vocab.build_vocab`)."""
    chat_template: str | None = None
    """The chat template text to write (``chat_template``), resolved."""

    @property
    def has_base(self) -> bool:
        """Is the first input of every task the base (passed to the method as ``base``)?"""
        return self.recipe.has_base_role

    def adapter_index(self, model: int) -> int:
        """The fetch-owner index of source ``model``'s LoRA adapter (see :meth:`owner`)."""
        return len(self.sources) + model

    def owner(self, index: int) -> Source | Adapter:
        """What fetches the files of an input's ``model`` index: a source, or for indices
        from ``len(sources)`` on, the adapter of source ``index - len(sources)``."""
        if index < len(self.sources):
            return self.sources[index]
        return self.sources[index - len(self.sources)].adapter

    @property
    def base(self) -> Source | None:
        return self.sources[0] if self.has_base else None

    @property
    def output_bytes(self) -> int:
        return sum(t.out.nbytes for t in self.tasks)

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(t.out.shape) for t in self.tasks)


def build_plan(recipe: Recipe, sources: Sequence[Source]) -> Plan:
    """Check that the sources fit the recipe and lay out every output tensor.

    ``sources`` are aligned with ``recipe.inputs()`` (base first when the method has one).
    Without ``slices`` the output has the first source's tensors, each merged from the
    same-named tensor of every source. With ``slices`` see :func:`_slice_tasks`.
    """
    method = get_method(recipe.merge_method)
    models = recipe.inputs()
    if len(sources) != len(models):
        raise ValueError(f"{len(sources)} sources for {len(models)} recipe inputs")
    reference = sources[0]
    if not reference.tensors:
        raise PlanError(f"{reference.name} has no tensors")
    out_dtype = _out_dtype(recipe, reference)
    warnings = list(recipe.warnings)
    vocab = build_vocab(recipe, sources, warnings)
    plan_tasks = _part_tasks if recipe.parts else _tasks
    tasks, out_config, layout = plan_tasks(recipe, method, sources, out_dtype, warnings,
                                           vocab is not None)
    warnings += _architecture_warnings(sources, layout)
    if vocab is not None:
        tasks = [_map_rows(task, vocab, sources) for task in tasks]
        out_config = _vocab_config(out_config or reference.config, vocab)
    template = resolve_chat_template(recipe.chat_template, sources)
    if recipe.chat_template is not None and template is None:
        warnings.append("chat_template: auto found no chat template in the models; none set")
    if template is not None and "tokenizer.json" not in sources[
            vocab.files_from if vocab is not None else 0].files:
        warnings.append("chat_template: the output has no tokenizer.json to attach it to; "
                        "it was not written")
    return Plan(recipe, method, models, tuple(sources), tasks, out_dtype,
                DTYPES_BY_NAME.get(recipe.dtype), warnings, out_config, vocab, template)


def _tasks(recipe: Recipe, method: MethodSpec, sources: Sequence[Source],
           out_dtype: torch.dtype, warnings: list[str],
           any_vocab: bool) -> tuple[list[TensorTask], dict | None, Layout | None]:
    """(tasks, output config or None, layout or None) of a recipe with models or slices."""
    if recipe.slices is not None:
        tasks, config = _slice_tasks(recipe, method, sources, out_dtype, warnings, any_vocab)
        return tasks, config, None
    reference = sources[0]
    layout = detect_layout(reference.config, reference.tensors, reference.name)
    donors = recipe.inputs()[1:] if recipe.has_base_role else recipe.inputs()
    tasks = []
    every = range(len(sources))
    for name in _ordered_names(reference):
        if _is_buffer(name, reference.tensors[name]):
            tasks.append(_buffer_task(name, every, [name] * len(sources), sources, warnings))
            continue
        inputs = _merged_inputs(name, every, sources, reference, warnings, any_vocab)
        t = _gradient_t(layout, name)
        tasks.append(_task(recipe, method, name, reference.tensors[name], inputs, out_dtype,
                           global_params={p: recipe.global_param(p, name, t)
                                          for p in method.global_params},
                           model_params=tuple(
                               {p: recipe.model_param(m, p, name, t)
                                for p in method.model_params} for m in donors)))
    return tasks, None, layout


def _part_tasks(recipe: Recipe, method: MethodSpec, sources: Sequence[Source],
                out_dtype: torch.dtype, warnings: list[str],
                any_vocab: bool) -> tuple[list[TensorTask], dict | None, None]:
    """Multi-part ``modules``: each part's tensors (:func:`module_of`) planned with the
    part's own recipe (models or slices, parameters) over the sources seen through that
    part alone. Every part of the first source must have a module in the recipe."""
    index = {ref_key(m.ref): i for i, m in enumerate(recipe.inputs())}
    first = sources[0]
    have = list(dict.fromkeys(module_of(n) for n in _ordered_names(first)))
    named = [part.part for part in recipe.parts]
    for name in named:
        if name not in have:
            raise PlanError(f"{recipe.where('modules.' + name)}: {first.name} has no part "
                            f"{name!r} (its parts: {', '.join(have)})")
    missing = [name for name in have if name not in named]
    if missing:
        raise PlanError(f"{recipe.where('modules')}: {first.name} also has "
                        f"{', '.join(missing)}; add modules.{missing[0]} with its models or "
                        "slices, so that every part of the output is merged")
    tasks, configs = [], []
    for part in recipe.parts:
        idx = [index[ref_key(m.ref)] for m in part.inputs()]
        scoped = [_scoped(sources[i], part.part) for i in idx]
        for src in scoped:
            if not src.tensors:
                raise PlanError(f"{recipe.where(part.models_loc)}: {src.name} has no "
                                f"{part.part} tensors")
        sub, config, _ = _tasks(part, method, scoped, out_dtype, warnings, any_vocab)
        tasks += [_renumber(task, idx, len(sources)) for task in sub]
        if config is not None:
            configs.append((part, config))
    if len(configs) > 1:
        raise PlanError(f"{recipe.where(configs[1][0].models_loc)}: slices re-stack the "
                        f"layers of one module only (here also {configs[0][0].part})")
    return tasks, configs[0][1] if configs else None, None


def _scoped(source: Source, part: str) -> Source:
    """``source`` with only the tensors of one part (a shallow copy: files are shared)."""
    scoped = copy.copy(source)
    scoped.tensors = {n: m for n, m in source.tensors.items() if module_of(n) == part}
    return scoped


def _renumber(task: TensorTask, idx: Sequence[int], total: int) -> TensorTask:
    """A part's task with its inputs' model indices turned into the plan's: source ``k``
    of the part is ``idx[k]``; adapter indices (``len(idx) + k``) become ``total + idx[k]``."""
    def fix(inp: TensorInput) -> TensorInput:
        k = inp.model
        model = idx[k] if k < len(idx) else total + idx[k - len(idx)]
        return dataclasses.replace(inp, model=model)

    return dataclasses.replace(task, inputs=tuple(fix(inp) for inp in task.inputs))


def _map_rows(task: TensorTask, vocab: Vocab, sources: Sequence[Source]) -> TensorTask:
    """An embedding or output-head task re-laid onto the output vocabulary: each input
    read whole with its row map, the output ``vocab.size`` rows, chunked over them when
    the method is chunkable (the rows are gathered per chunk)."""
    if not task.out.name.endswith(EMBEDDING_SUFFIXES) or len(task.out.shape) != 2:
        return task
    inputs, position = [], {}
    for k, inp in enumerate(task.inputs):
        index = inp.model if inp.model < len(sources) else inp.model - len(sources)
        position.setdefault(index, k)
        rows = inp.meta.shape[0]
        row_map = vocab.maps[index]
        row_map = torch.where(row_map < rows, row_map, -1)
        inputs.append(dataclasses.replace(inp, rows=rows, row_map=row_map))
    rules = []
    for rule in vocab.rules:
        k = position.get(rule.model) if rule.model is not None else None
        if rule.model is not None and k is None:
            raise PlanError(f"{rule.loc}: {sources[rule.model].name} is not an input of "
                            f"{task.out.name}, so its row cannot be taken")
        if k is not None and rule.source_row >= inputs[k].rows:
            raise PlanError(f"{rule.loc}: row {rule.source_row} is past the "
                            f"{inputs[k].rows} rows of {task.out.name} in "
                            f"{sources[rule.model].name}")
        rules.append(dataclasses.replace(rule, model=k))
    out = OutTensor(task.out.name, task.out.dtype, (vocab.size, task.out.shape[1]))
    return dataclasses.replace(task, out=out, inputs=tuple(inputs), row_rules=tuple(rules))


def _vocab_config(config: dict, vocab: Vocab) -> dict:
    """``config`` with ``vocab_size`` (top level, else ``text_config``'s) the output's."""
    config = copy.deepcopy(dict(config))
    key = "vocab_size"
    if key not in config and isinstance(config.get("text_config"), dict) and (
            key in config["text_config"]):
        key = "text_config.vocab_size"
    config_set(config, key, vocab.size)
    return config


def _is_buffer(name: str, meta: TensorMeta) -> bool:
    return is_buffer(name, meta.shape, meta.torch_dtype.is_floating_point)


def _buffer_task(out_name: str, indices: Sequence[int], names: Sequence[str],
                 sources: Sequence[Source], warnings: list[str]) -> TensorTask:
    """A buffer (:func:`~merge_engine.plan.architecture.is_buffer`) is not merged: it is
    copied from the first of ``sources[indices]`` (the base, or the first model), which
    has it as ``names[0]``. The others that have it (as ``names[k]``) are inputs too, only
    to check at merge time that they hold the same values; one of another shape or dtype
    is left out with a warning, and a model without it is fine."""
    first, want = sources[indices[0]], sources[indices[0]].tensors[names[0]]
    inputs = [TensorInput(indices[0], names[0], want, want.shape[0] if want.shape else 1)]
    for i, name in zip(indices[1:], names[1:], strict=True):
        meta = sources[i].tensors.get(name)
        if meta is None:
            continue
        if (meta.dtype, meta.shape) != (want.dtype, want.shape):
            warnings.append(
                f"buffer {name} is {meta.dtype} {list(meta.shape)} in {sources[i].name} but "
                f"{want.dtype} {list(want.shape)} in {first.name}; it is not merged, "
                f"{first.name}'s is kept")
            continue
        inputs.append(TensorInput(i, name, meta, want.shape[0] if want.shape else 1))
    return TensorTask(OutTensor(out_name, want.torch_dtype, want.shape), tuple(inputs), {}, (),
                      chunkable=len(want.shape) >= 2, copy=True)


def _task(recipe: Recipe, method: MethodSpec, name: str, meta: TensorMeta,
          inputs: tuple[TensorInput, ...], out_dtype: torch.dtype, *, global_params: dict,
          model_params: tuple[dict, ...]) -> TensorTask:
    dtype = out_dtype if meta.torch_dtype in FLOAT_DTYPES else meta.torch_dtype
    return TensorTask(
        OutTensor(name, dtype, meta.shape), inputs, global_params, model_params,
        chunkable=len(meta.shape) >= 2 and method.chunkable(global_params, model_params),
        copy=dtype not in FLOAT_DTYPES,
    )


def _gradient_t(layout: Layout, name: str) -> float:
    """mergekit's ``t`` for a tensor of a whole-model merge: its layer over its stack's
    layers (the decoder's, or another stack's own, e.g. a vision tower's); 0 outside."""
    where, index, count = layout.position(name)
    if index is None:
        return layer_t(None, 1, "pre")
    return layer_t(index, max(count, index + 1))


# --- slices ------------------------------------------------------------------------------


def _slice_tasks(recipe: Recipe, method: MethodSpec, sources: Sequence[Source],
                 out_dtype: torch.dtype, warnings: list[str],
                 any_vocab: bool = False) -> tuple[list[TensorTask], dict]:
    """The tasks of a ``slices:`` merge, as mergekit plans them.

    Output layer ``k`` is the ``k``-th layer over the slices in order; within a slice, its
    ``offset``-th layer merges layer ``start + offset`` of every source (its tensors are
    renamed to layer ``k`` of the output), with gradients at ``t = offset / (length - 1)``
    (1 for a one-layer slice) and the slice's base and parameters. Tensors outside the
    layer stack come from the first slice's sources (embeddings and everything before the
    stack) or the last slice's (final norm, output head), at ``t = 0``. The output's names
    and config follow the first slice's reference (its base, else its first source).
    """
    index = {ref_key(m.ref): i for i, m in enumerate(recipe.inputs())}
    layouts: dict[int, Layout] = {}

    def layout_of(i: int) -> Layout:
        if i not in layouts:
            src = sources[i]
            layouts[i] = detect_layout(src.config, src.tensors, src.name, strict=True)
        return layouts[i]

    slices = recipe.slices or ()
    plans: list[tuple[OutputSlice, tuple[SliceSource, ...], list[int]]] = []
    for out_slice in slices:
        ins = recipe.slice_inputs(out_slice)
        idx = [index[ref_key(s.model.ref)] for s in ins]
        for src, i in zip(ins, idx, strict=True):
            count = layout_of(i).num_layers
            if src.layer_range[1] > count:
                raise PlanError(
                    f"{recipe.where(src.model.loc + '.layer_range')}: layers "
                    f"{list(src.layer_range)} are outside {sources[i].name}, which has {count} "
                    f"layers (0 to {count - 1}; the range's end is excluded)")
        plans.append((out_slice, ins, idx))
    ref_index = plans[0][2][0]
    reference, out_layout = sources[ref_index], layout_of(ref_index)
    outside = [n for n in _ordered_names(reference) if out_layout.layer_of(n) is None]
    post = [n for n in outside if out_layout.position(n)[0] == "post"]
    pre = [n for n in outside if n not in post]
    tasks = [_fixed_task(recipe, method, n, plans[0], sources, reference, out_dtype, warnings,
                         any_vocab) for n in pre]
    layer_map: list[tuple[int, int]] = []
    for out_slice, ins, idx in plans:
        for offset in range(out_slice.length):
            t = layer_t(offset, out_slice.length)
            layers = [s.layer_range[0] + offset for s in ins]
            k = len(layer_map)
            layer_map.append((idx[0], layers[0]))
            ref_src, ref_layout = sources[idx[0]], layout_of(idx[0])
            suffixes = [found[1] for n in _ordered_names(ref_src)
                        if (found := ref_layout.layer_of(n)) is not None and found[0] == layers[0]]
            for suffix in suffixes:
                out_name = out_layout.layer_name(k, suffix)
                names = [layout_of(i).layer_name(layer, suffix)
                         for i, layer in zip(idx, layers, strict=True)]
                want = ref_src.tensors[names[0]]
                if _is_buffer(names[0], want):
                    tasks.append(_buffer_task(out_name, idx, names, sources, warnings))
                    continue
                inputs = []
                for src, i, name in zip(ins, idx, names, strict=True):
                    meta = sources[i].tensors.get(name)
                    if meta is None:
                        raise PlanError(
                            f"tensor {name} is missing from {sources[i].name} (output layer {k} "
                            f"merges it with {names[0]} of {ref_src.name}; "
                            f"{recipe.where(src.model.loc)})")
                    if meta.shape != want.shape:
                        raise PlanError(
                            f"tensor {name} has shape {list(meta.shape)} in {sources[i].name} "
                            f"but {names[0]} has {list(want.shape)} in {ref_src.name} "
                            f"({recipe.where(out_slice.loc)})")
                    inputs.append(_adapted(
                        TensorInput(i, name, meta, meta.shape[0] if meta.shape else 1), sources))
                tasks.append(_slice_task(recipe, method, out_name, want, tuple(inputs), names,
                                         ins, out_slice, t, out_dtype))
    tasks += [_fixed_task(recipe, method, n, plans[-1], sources, reference, out_dtype, warnings,
                          any_vocab) for n in post]
    config = _slice_config(reference, out_layout, layer_map, sources, layouts, warnings)
    return tasks, config


def _slice_task(recipe: Recipe, method: MethodSpec, out_name: str, want: TensorMeta,
                inputs: tuple[TensorInput, ...], names: Sequence[str],
                ins: Sequence[SliceSource], out_slice: OutputSlice, t: float,
                out_dtype: torch.dtype) -> TensorTask:
    """One tensor of a slice. Like mergekit, global parameters are matched against the
    output name and each model's parameters against that model's input name."""
    skip = 1 if recipe.has_base_role else 0
    global_params = {p: recipe.global_param(p, out_name, t, out_slice)
                     for p in method.global_params}
    model_params = tuple(
        {p: recipe.model_param(src.model, p, name, t, out_slice) for p in method.model_params}
        for src, name in zip(ins[skip:], names[skip:], strict=True))
    return _task(recipe, method, out_name, want, inputs, out_dtype,
                 global_params=global_params, model_params=model_params)


def _fixed_task(recipe: Recipe, method: MethodSpec, name: str,
                plan: tuple[OutputSlice, tuple[SliceSource, ...], list[int]],
                sources: Sequence[Source], reference: Source, out_dtype: torch.dtype,
                warnings: list[str], any_vocab: bool = False) -> TensorTask:
    """A tensor outside the layer stack, merged from one slice's sources at ``t = 0``; a
    buffer is the output's reference's, compared with theirs."""
    out_slice, ins, idx = plan
    if _is_buffer(name, reference.tensors[name]):
        first = next(i for i, src in enumerate(sources) if src is reference)
        order = list(dict.fromkeys([first, *idx]))
        return _buffer_task(name, order, [name] * len(order), sources, warnings)
    inputs = _merged_inputs(name, idx, sources, reference, warnings, any_vocab)
    t = layer_t(None, 1, "pre")
    skip = 1 if recipe.has_base_role else 0
    global_params = {p: recipe.global_param(p, name, t, out_slice) for p in method.global_params}
    model_params = tuple(
        {p: recipe.model_param(src.model, p, name, t, out_slice) for p in method.model_params}
        for src in ins[skip:])
    return _task(recipe, method, name, reference.tensors[name], inputs, out_dtype,
                 global_params=global_params, model_params=model_params)


def _slice_config(reference: Source, layout: Layout, layer_map: list[tuple[int, int]],
                  sources: Sequence[Source], layouts: dict[int, Layout],
                  warnings: list[str]) -> dict | None:
    """The first slice's reference config with the layer count (and per-layer lists such
    as ``layer_types``) following the output's layers."""
    if not reference.config:
        return None
    config = copy.deepcopy(reference.config)
    config_set(config, layout.count_key, len(layer_map))
    for prefix in ("", "text_config."):
        for key in (*PER_LAYER_KEYS, *LAYER_INDEX_KEYS):
            path = prefix + key
            if not isinstance(config_get(config, path), list):
                continue
            values = []
            for i, layer in layer_map:
                found = config_get(sources[i].config, path)
                if not isinstance(found, list):
                    values = None
                    break
                if key in LAYER_INDEX_KEYS:
                    values.append(layer in found)
                elif len(found) == layouts[i].num_layers:
                    values.append(found[layer])
                else:
                    values = None
                    break
            if values is None:
                _config_drop(config, path)
                warnings.append(f"config.json: {path} could not follow the slices (a source "
                                "lacks it or has one of another length); it was left out")
            elif key in LAYER_INDEX_KEYS:
                config_set(config, path, [k for k, on in enumerate(values) if on])
            else:
                config_set(config, path, values)
    return config


def _config_drop(config: dict, path: str) -> None:
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    node.pop(last, None)


# --- checks and helpers --------------------------------------------------------------------


def _architecture_warnings(sources: Sequence[Source], layout: Layout | None) -> list[str]:
    """Sources whose config names another architecture, or a layout we did not read."""
    reference = sources[0]
    found = []
    if not reference.config:
        found.append(f"{reference.name} has no config.json; the output will have none")
    arch = reference.config.get("architectures")
    for source in sources[1:]:
        other = source.config.get("architectures")
        if arch and other and other != arch:
            found.append(f"{source.name} is a {', '.join(other)} but {reference.name} is a "
                         f"{', '.join(arch)}; the tensors fit, check that the merge makes sense")
    if layout is not None and layout.note:
        found.append(layout.note)
    if layout is not None and layout.prefix is None and layout.num_layers > 1:
        found.append(f"no layer stack found in {reference.name}'s tensor names; gradient "
                     "parameters use their first value everywhere")
    return found


def _ordered_names(source: Source) -> list[str]:
    """Tensor names in file order, so reads are sequential within each shard."""
    return sorted(source.tensors, key=lambda n: (source.tensors[n].file, source.tensors[n].begin))


def _adapted(inp: TensorInput, sources: Sequence[Source]) -> TensorInput:
    """``inp`` with its source's LoRA applied: a delta to add, or the adapter's tensor
    read instead of the base's (``modules_to_save``)."""
    adapter = sources[inp.model].adapter
    if adapter is None:
        return inp
    if inp.name in adapter.deltas:
        return dataclasses.replace(inp, lora=adapter.deltas[inp.name])
    if inp.name in adapter.replaced:
        name, meta = adapter.replaced[inp.name]
        return TensorInput(len(sources) + inp.model, name, meta, inp.rows)
    return inp


def _merged_inputs(name: str, indices: Sequence[int], sources: Sequence[Source],
                   reference: Source, warnings: list[str],
                   any_vocab: bool) -> tuple[TensorInput, ...]:
    """The inputs of weight ``name`` (in ``reference``) from each of ``sources[indices]``,
    LoRA applied; a PlanError naming every model that lacks it (a tied output head reads
    the model's input embedding, see :data:`TIED_ALIASES`)."""
    found = [_find_input(name, i, sources[i], reference, warnings, any_vocab) for i in indices]
    missing = [sources[i].name for i, inp in zip(indices, found, strict=True) if inp is None]
    if missing:
        raise PlanError(
            f"tensor {name} is missing from {', '.join(missing)} but {reference.name} has "
            "it; a weight is merged from every model of the recipe (only buffers and tied "
            "output heads may be absent)")
    return tuple(_adapted(inp, sources) for inp in found if inp is not None)


def _find_input(name: str, index: int, source: Source, reference: Source,
                warnings: list[str], any_vocab: bool = False) -> TensorInput | None:
    """``name``'s input from ``source``, None when it has none; with ``any_vocab``
    (tokenizer merging) an embedding may have any number of rows, since its rows are
    mapped by token."""
    want = reference.tensors[name]
    found = name if name in source.tensors else next(
        (a for a in TIED_ALIASES.get(name, ()) if a in source.tensors), None)
    if found is None:
        return None
    meta = source.tensors[found]
    if meta.shape == want.shape:
        return TensorInput(index, found, meta, meta.shape[0] if meta.shape else 1)
    if (any_vocab and name.endswith(EMBEDDING_SUFFIXES) and len(meta.shape) == 2
            and len(want.shape) == 2 and meta.shape[1] == want.shape[1]):
        return TensorInput(index, found, meta, meta.shape[0])
    if (name.endswith(EMBEDDING_SUFFIXES) and len(meta.shape) == 2 and len(want.shape) == 2
            and meta.shape[1] == want.shape[1] and meta.shape[0] > want.shape[0]):
        warnings.append(
            f"{name}: {source.name} has {meta.shape[0]} vocabulary rows, cut to the "
            f"{want.shape[0]} of {reference.name}")
        return TensorInput(index, found, meta, want.shape[0])
    raise PlanError(
        f"tensor {name} has shape {list(meta.shape)} in {source.name} but "
        f"{list(want.shape)} in {reference.name}")


def _out_dtype(recipe: Recipe, reference: Source) -> torch.dtype:
    """``out_dtype``, else ``dtype``, else the dtype the base (without a base role: the
    first model) stores most of its weights in, counted in elements: what its files
    hold, not what its config.json declares (the output's config is written to match).
    The donors' dtypes never decide: a float16 donor merged into a bfloat16 base gives
    bfloat16."""
    name = recipe.out_dtype or recipe.dtype
    if name:
        return DTYPES_BY_NAME[name]
    counts: Counter[str] = Counter()
    for tensor, meta in reference.tensors.items():
        if meta.torch_dtype in FLOAT_DTYPES and not _is_buffer(tensor, meta):
            counts[meta.dtype] += meta.numel
    return DTYPES[counts.most_common(1)[0][0]] if counts else torch.float32
