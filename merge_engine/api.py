"""The engine's Python API: :func:`validate` a recipe, :func:`run_merge` it (optionally
extracting a LoRA adapter of the merge against its base as the shards are written).

    result = run_merge("recipe.yml", "out/", device="auto")
    result.sources[1].revision   # the commit SHA each Hub source was pinned to
    result = run_merge("recipe.yml", "out/", adapter=AdapterOptions(max_rank=64),
                       adapter_dir="adapter/")
    result.adapter.modules       # rank and relative error of every module

The output directory appears whole or not at all: everything is written to a hidden
sibling directory that is renamed into place at the end and removed on any failure.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from merge_engine.card import card_license, render_card
from merge_engine.check import (
    CheckOptions,
    CheckReport,
    behaviour_planned,
    run_checks,
)
from merge_engine.errors import InputError, MergeEngineError
from merge_engine.evaluate import (
    EvalRow,
    EvalSet,
    EvalTable,
    evaluate_sources,
    parse_eval_sets,
    read_sets,
    score_model,
)
from merge_engine.execute.executor import Executor, Progress, Timings, resolve_device
from merge_engine.execute.gates import fill_gates
from merge_engine.extract import AdapterOptions, Extraction, LoraExtractor, render_adapter_card
from merge_engine.io.checkpoint import TensorMeta
from merge_engine.io.headers import read_header
from merge_engine.io.hub import HubAccess
from merge_engine.io.sources import Source, open_source
from merge_engine.plan.build import Plan, build_plan
from merge_engine.plan.moe import MoePlan, build_moe_plan
from merge_engine.plan.summary import ModelRow, formula, model_rows
from merge_engine.recipe import Recipe, load_recipe, parse_recipe
from merge_engine.tokenizer.vocab import TOKENIZER_FILES, write_tokenizer

DEFAULT_SHARD_BYTES = 5_000_000_000
RECIPE_NAME = "mergekit_config.yml"


@dataclass
class MergeResult:
    """What a merge produced and from exactly what."""

    out_dir: Path
    files: list[Path]
    method: str
    models: list[ModelRow]
    """Base first (if any), each with its resolved revision and parameters."""
    formula: str
    seed: int
    warnings: list[str]
    output_bytes: int
    parameter_count: int
    device: str
    timings: Timings = field(default_factory=Timings)
    resolve_seconds: float = 0.0
    checks: CheckReport | None = None
    """What the check stage found (None: the merge ran without checks)."""
    evaluation: EvalTable | None = None
    """The merge's and each source's scores (None: no evaluation was asked for)."""
    adapter: Extraction | None = None
    """The LoRA adapter extracted from the merge (None: none was asked for)."""


def load(recipe: Recipe | str | os.PathLike) -> Recipe:
    """A parsed recipe from a Recipe, a path, or YAML text (a string with a newline)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str) and "\n" in recipe:
        return parse_recipe(recipe)
    return load_recipe(recipe)


def open_sources(recipe: Recipe, access: HubAccess | None = None) -> list[Source]:
    """Every input of the recipe, resolved and pinned, metadata only (base first)."""
    return [open_source(m.ref, access) for m in recipe.inputs()]


def validate(recipe: Recipe | str | os.PathLike, *, access: HubAccess | None = None) -> Plan:
    """Parse, resolve and plan from headers only; raises the first problem found. An MoE
    recipe gives a :class:`~merge_engine.plan.moe.MoePlan` (its routers not yet computed)."""
    parsed = load(recipe)
    plan = build_moe_plan if parsed.moe is not None else build_plan
    return plan(parsed, open_sources(parsed, access))


def check_adapter_base(recipe: Recipe) -> None:
    """Raise ``InputError`` (one sentence) unless a LoRA adapter of the merge can be
    extracted: the method takes the recipe's ``base_model``, a plain model (no
    ``+adapter``), and no slice names another base."""
    base = recipe.base_model
    if base is None or not recipe.has_base_role:
        raise InputError(f"merge_method {recipe.merge_method} has no base_model to extract a "
                         "LoRA adapter against; publish the full weights instead")
    if base.lora is not None:
        raise InputError(f"base_model {base} carries a LoRA adapter; an adapter can only be "
                         "extracted against a plain model")
    if any(s.base_model is not None and s.base_model != base for s in recipe.slices or ()):
        raise InputError("slices name different base models; an adapter needs one base_model")


def _adapter_base(plan: Plan) -> Source:
    """The plan's base for the extraction; a streamed base gets its own stream directory
    (the merge deletes its copies of the files as it goes)."""
    check_adapter_base(plan.recipe)
    base = plan.sources[0]
    if not base.streams_files:
        return base
    access = replace(base.access, stream_dir=base.access.stream_dir / ".adapter-base")
    return replace(base, access=access, _lock=threading.Lock())


def run_merge(recipe: Recipe | str | os.PathLike, out_dir: str | os.PathLike, *,
              device: str = "auto", out_shard_size: int = DEFAULT_SHARD_BYTES,
              random_seed: int | None = None, copy_tokenizer: bool = True,
              progress: Progress | None = None, access: HubAccess | None = None,
              plan: Plan | None = None, card_options: dict | None = None,
              on_shard_done: Callable[[Path], None] | None = None,
              checks: CheckOptions | None = None, evaluate: list[EvalSet] | None = None,
              eval_cache_dir: Path | None = None, adapter: AdapterOptions | None = None,
              adapter_dir: str | os.PathLike | None = None) -> MergeResult:
    """Merge ``recipe`` into ``out_dir`` (which must not exist, or be empty).

    ``plan`` skips resolution when the caller already validated; ``card_options`` go to
    :func:`merge_engine.card.render_card` (``hub_url``, ``provenance``, ``repo_id``,
    ``stages``, and ``evaluation``: a table to show when ``evaluate`` makes none, e.g. a
    sweep's);
    ``on_shard_done(path)`` is called (from the writer thread) as each output shard is
    complete, e.g. to start uploading it while the merge goes on.
    ``checks``: run the check stage (:mod:`merge_engine.check`) on the output before it
    is renamed into place, and record it in the card; a fault raises ``CheckError`` and
    nothing is written. Shards handed to ``on_shard_done`` stay readable for the checks
    (hard links) when the behaviour checks will run; otherwise only their headers are
    checked.
    ``evaluate``: score the output and each source on these sets
    (:mod:`merge_engine.evaluate`; dataset texts are read before merging) into
    ``result.evaluation``, shown in the card; ``eval_cache_dir`` keeps the scores of Hub
    sources by repo, commit SHA and set, so they are computed once.
    ``adapter``: also write a PEFT LoRA adapter of (merge - base_model) into
    ``adapter_dir``, each output shard factorized as it is finished (before
    ``on_shard_done`` takes it); both directories appear, or neither.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    for directory in (out, Path(adapter_dir) if adapter_dir is not None else None):
        if directory is not None and directory.exists() and (
                not directory.is_dir() or any(directory.iterdir())):
            raise MergeEngineError(f"output directory {directory} already exists and is "
                                   "not empty")
    if adapter is not None and adapter_dir is None:
        raise MergeEngineError("an adapter was asked for without a directory to write it to")
    plan = plan or validate(recipe, access=access)
    texts = _eval_texts(plan, evaluate, copy_tokenizer, access)
    extractor = None
    resolved = time.perf_counter() - started
    seed = random_seed if random_seed is not None else secrets.randbits(31)
    dev = resolve_device(device)
    if isinstance(plan, MoePlan):
        plan = fill_gates(plan, dev, seed)  # before the checks' warm-up imports transformers
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    report = table = None
    written_adapter = None
    try:
        shards = _ShardKeeper(work, on_shard_done, plan, checks, dev, copy_tokenizer,
                              keep=bool(texts))
        hook = shards.hook
        if adapter is not None:
            extractor = LoraExtractor(_adapter_base(plan), adapter, device=str(dev),
                                      model=(card_options or {}).get("repo_id") or "the merge",
                                      expected={t.out.name for t in plan.tasks})
            hook = _then(extractor.add_file, shards.hook)
        executor = Executor(plan, work, device=dev, max_shard_bytes=out_shard_size, seed=seed,
                            progress=progress, on_shard_done=hook)
        files = executor.run()
        plan = dataclasses.replace(plan, warnings=[*plan.warnings, *executor.warnings])
        files += write_side_files(plan, work, copy_tokenizer)
        if checks is not None:
            shards.restore()
            report = run_checks(work, plan.sources, metas=shards.metas, finite_checked=True,
                                options=replace(checks, device=str(dev),
                                                side_files=copy_tokenizer))
        if texts:
            shards.restore()
            table = EvalTable(sets=[t.set for t in texts], rows=[EvalRow("merge", "merge", scores={
                s.set: s for s in score_model(work, texts, device=str(dev))})])
            table.rows += evaluate_sources(plan.sources, texts, device=str(dev),
                                           cache_dir=eval_cache_dir)
        tokenizer = any(path.name in TOKENIZER_FILES for path in files)
        options = dict(card_options or {})  # a caller's table (a sweep's) when none here
        evaluation = table if table is not None else options.pop("evaluation", None)
        card = render_card(plan, seed=seed, checks=report, tokenizer=tokenizer,
                           evaluation=evaluation, **options)
        (work / "README.md").write_text(card)
        files.append(work / "README.md")
        extraction = None
        if extractor is not None:
            extraction = extractor.write(adapter_dir, render_adapter_card(
                extractor.result, recipe=plan.recipe.text, license=card_license(plan),
                provenance=(card_options or {}).get("provenance")))
            written_adapter = extraction.out_dir
        if out.exists():
            out.rmdir()
        work.rename(out)
    except OSError as e:
        shutil.rmtree(work, ignore_errors=True)
        if written_adapter is not None:
            shutil.rmtree(written_adapter, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise MergeEngineError(f"disk full while writing the merge under {out.parent}") from e
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if written_adapter is not None:
            shutil.rmtree(written_adapter, ignore_errors=True)
        raise
    finally:
        if extractor is not None:
            extractor.close()
    return MergeResult(
        out_dir=out, files=[out / f.name for f in files], method=plan.recipe.merge_method,
        models=model_rows(plan), formula=formula(plan), seed=seed, warnings=plan.warnings,
        output_bytes=plan.output_bytes, parameter_count=plan.parameter_count,
        device=str(dev), timings=executor.timings, resolve_seconds=resolved, checks=report,
        evaluation=table, adapter=extraction,
    )


def _eval_texts(plan: Plan, sets: list[EvalSet] | None, copy_tokenizer: bool,
                access: HubAccess | None):
    """The evaluation sets' texts, read before merging (a missing dataset fails early);
    the output must get a tokenizer to be scored with."""
    if not sets:
        return []
    sets = parse_eval_sets(list(sets), "evaluate")
    if not copy_tokenizer:
        raise InputError("evaluation needs the tokenizer files in the output, and copying "
                         "them was turned off")
    if "tokenizer.json" not in plan.sources[0].files:
        raise InputError(f"evaluation needs a tokenizer.json, and {plan.sources[0].name} has "
                         "none")
    return read_sets(sets, access)


def _then(first: Callable[[Path], None],
          second: Callable[[Path], None] | None) -> Callable[[Path], None]:
    def both(path: Path) -> None:
        first(path)
        if second is not None:
            second(path)
    return both


class _ShardKeeper:
    """Sees each finished shard before ``on_shard_done`` takes it away: keeps a hard link
    to it when the evaluation (``keep``) or the behaviour checks will need the weights, else
    records its header."""

    def __init__(self, work: Path, on_shard_done: Callable[[Path], None] | None, plan: Plan,
                 checks: CheckOptions | None, device, copy_tokenizer: bool, keep: bool):
        self.on_shard_done = on_shard_done
        self.kept = work / ".kept"
        self.metas: dict[str, TensorMeta] | None = None
        self.keep = keep and on_shard_done is not None
        if checks is not None and on_shard_done is not None and not self.keep:
            has_tokenizer = copy_tokenizer and any(
                "tokenizer.json" in s.files for s in plan.sources)
            config = plan.out_config if plan.out_config is not None else plan.sources[0].config
            self.keep = behaviour_planned(config, plan.parameter_count, has_tokenizer,
                                          replace(checks, device=str(device)),
                                          architecture=False) is None
            self.metas = None if self.keep else {}
        self.hook = self._hook if on_shard_done is not None else None

    def _hook(self, path: Path) -> None:
        if self.keep:
            self.kept.mkdir(exist_ok=True)
            os.link(path, self.kept / path.name)
        elif self.metas is not None:
            self.metas.update(read_header(path))
        self.on_shard_done(path)

    def restore(self) -> None:
        """Put the kept shards back in the output directory, for the checks."""
        if self.kept.is_dir():
            for path in self.kept.iterdir():
                path.rename(self.kept.parent / path.name)
            self.kept.rmdir()


def write_side_files(plan: Plan, directory: Path, copy_tokenizer: bool) -> list[Path]:
    """``config.json`` (dtype updated; the plan's own config when slices changed the layers
    or a tokenizer merge the vocabulary), generation files (the first source's), tokenizer
    files (the first source's, or the merged tokenizer: :func:`merge_engine.tokenizer.vocab.
    write_tokenizer`) with the chat template, and the recipe."""
    reference = plan.sources[0]
    written = []
    config = dict(plan.out_config if plan.out_config is not None else reference.config)
    dtype_name = str(plan.out_dtype).removeprefix("torch.")
    keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
    for key in keys:
        config[key] = dtype_name
    if config:
        path = directory / "config.json"
        path.write_text(json.dumps(config, indent=2) + "\n")
        written.append(path)
    if copy_tokenizer:
        for name in reference.side_files():
            if name != "config.json" and name not in TOKENIZER_FILES:
                path = directory / name
                shutil.copyfile(reference.fetch(name), path)
                written.append(path)
        written += write_tokenizer(directory, plan.vocab, plan.chat_template, plan.sources)
    path = directory / RECIPE_NAME
    path.write_text(plan.recipe.text)
    written.append(path)
    return written

