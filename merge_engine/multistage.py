"""Multi-stage recipes run: every stage merged in document order, each intermediate
written to a hidden directory that later stages read as a local model.

    result = run_stages("multi.yml", "out/")           # out/ holds the final stage's model
    [(run.name, run.reused) for run in result.stages]

Contracts:
- Intermediates go to ``.<out>.stages-<pid>/<stage>`` in ``workspace`` (default: the
  output's parent); ``keep_intermediates=DIR`` moves them to ``DIR/<stage>`` at the end.
  On any failure the intermediates are removed and ``out`` is not written (``run_merge``
  renames the final output into place only when it is whole).
- Each stage is planned just before it runs, from the real output of the stages it reads;
  :func:`validate_stages` plans every stage without merging, a later stage from a
  *skeleton* of the earlier one's planned output (its config, tokenizer and recipe files,
  and safetensors headers over sparse, unallocated data).
- ``cache`` (:class:`StageCache`) keeps intermediates by :func:`stage_key`: the stage's
  text, its sources' pinned revisions and the keys of the stages it reads. A stage whose
  key is cached is not merged again; so when one source moves, only the stages that read
  it, directly or through other stages, are merged again.
- The final model's card records every stage (:class:`merge_engine.card.StageCard`), and
  its ``mergekit_config.yml`` is the whole multi-stage recipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from merge_engine.api import DEFAULT_SHARD_BYTES, MergeResult, run_merge, validate, write_side_files
from merge_engine.card import StageCard
from merge_engine.check import CheckOptions
from merge_engine.errors import MergeEngineError, RecipeError
from merge_engine.execute.executor import Progress
from merge_engine.io.checkpoint import SINGLE_NAME, encode_header
from merge_engine.io.hub import HubAccess
from merge_engine.io.sources import Source
from merge_engine.plan.build import Plan
from merge_engine.recipe import Stage, StagedRecipe, parse_stages
from merge_engine.recipe.locations import RecipeLimits, size_message
from merge_engine.recipe.refs import ModelRef
from merge_engine.recipe.stages import prefixed
from merge_engine.version import __version__


class StageCache(Protocol):
    """Intermediate outputs kept between runs, by :func:`stage_key`."""

    def fetch(self, key: str, dest: Path) -> bool:
        """Put the output cached under ``key`` at ``dest`` (absent); False when none is."""

    def store(self, key: str, src: Path) -> None:
        """Keep a copy of the output at ``src`` under ``key`` (best effort)."""


@dataclass
class StageRun:
    """What became of one stage."""

    name: str
    document: int
    key: str
    plan: Plan
    reused: bool
    """Taken from the cache, not merged."""
    result: MergeResult | None
    """The merge's result (None when reused)."""
    kept: Path | None = None
    """Where ``keep_intermediates`` put its output."""

    def inputs(self, made: dict[str, str]) -> list[Source]:
        """Its sources that no stage made (``made``: stage name -> output directory)."""
        dirs = {os.path.realpath(d) for d in made.values()}
        return [s for s in self.plan.sources
                if not (s.ref.is_local and os.path.realpath(s.ref.path) in dirs)]


@dataclass
class StagedResult:
    final: MergeResult
    stages: list[StageRun] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    """Every source no stage made, over all stages, each once (first stage first)."""


def load_stages(recipe: StagedRecipe | str | os.PathLike,
                limits: RecipeLimits | None = None) -> StagedRecipe:
    """A parsed recipe of one or more stages from a StagedRecipe, a path, or YAML text (a
    string with a newline)."""
    if isinstance(recipe, StagedRecipe):
        return recipe
    if isinstance(recipe, str) and "\n" in recipe:
        return parse_stages(recipe, limits)
    limits = limits or RecipeLimits()
    try:
        with open(recipe, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limits.max_bytes:
                raise RecipeError("", size_message(size, limits.max_bytes))
            text = f.read(limits.max_bytes + 1).decode("utf-8")
    except FileNotFoundError:
        raise RecipeError("", f"recipe file {os.fspath(recipe)!r} not found") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name, not UTF-8
        raise RecipeError("", f"cannot read recipe file {os.fspath(recipe)!r}: {e}") from None
    return parse_stages(text, limits)


def stage_key(stage: Stage, plan: Plan, dirs: dict[str, str], keys: dict[str, str],
              seed: int | None) -> str:
    """sha256 of what a stage's output depends on: the engine version, the stage's text,
    its sources' pinned references (a Hub repo at its commit SHA; a local directory by its
    path only), the keys of the earlier stages it reads (``dirs``/``keys``: by name, their
    output directories and keys) and the seed."""
    made = {os.path.realpath(path): f"stage {name}" for name, path in dirs.items()}
    inputs = [made.get(os.path.realpath(s.ref.path), s.pinned) if s.ref.is_local else s.pinned
              for s in plan.sources]
    stage_keys = {n: keys[n] for n in stage.uses}
    body = json.dumps({"engine": __version__, "text": stage.source.text, "inputs": inputs,
                       "stages": stage_keys, "seed": seed}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def validate_stages(recipe: StagedRecipe | str | os.PathLike, *,
                    access: HubAccess | None = None,
                    workspace: str | os.PathLike | None = None) -> list[Plan]:
    """Plan every stage from headers only, a later stage against a skeleton of the
    earlier stages' planned outputs (see the module docstring); raises the first problem.
    The skeletons are removed on return: the plans are for reading, not for merging."""
    staged = load_stages(recipe)
    if len(staged.stages) == 1:
        return [validate(staged.final.recipe, access=access)]
    needed = {name for stage in staged.stages for name in stage.uses}
    plans: list[Plan] = []
    with tempfile.TemporaryDirectory(prefix=".stages-check-", dir=workspace) as tmp:
        dirs: dict[str, str] = {}
        for stage in staged.stages:
            plan = _named(_plan(stage, dirs, access), dirs)
            plans.append(plan)
            if stage.name in needed:
                skeleton = Path(tmp) / stage.name
                write_skeleton(plan, skeleton)
                dirs[stage.name] = str(skeleton)
    return plans


def _plan(stage: Stage, dirs: dict[str, str], access: HubAccess | None,
          text: str | None = None) -> Plan:
    """The plan of one stage reading earlier stages from ``dirs``; its errors name it."""
    recipe = stage.bind(dirs, text)
    with _naming(stage, dirs):
        return validate(recipe, access=access)


@contextmanager
def _naming(stage: Stage, dirs: dict[str, str]) -> Iterator[None]:
    """Errors within say which stage failed, and name an earlier stage's directory by the
    stage's name."""
    try:
        yield
    except RecipeError as e:
        if e.loc.startswith(stage.label):
            raise
        raise prefixed(e, stage.label) from None
    except MergeEngineError as e:
        message = str(e)
        for name, path in dirs.items():
            message = message.replace(path, f"stage {name!r}")
        raise _same_kind(e, f"{stage.label}: {message}") from e


def _same_kind(err: MergeEngineError, message: str) -> MergeEngineError:
    """An error of ``err``'s class (its exit code) saying ``message``."""
    copy = MergeEngineError.__new__(type(err))
    MergeEngineError.__init__(copy, message)
    copy.__dict__.update(err.__dict__)
    return copy


def _named(plan: Plan, dirs: dict[str, str]) -> Plan:
    """``plan`` with each source read from a stage's directory named as that stage."""
    names = {path: name for name, path in dirs.items()}
    sources = tuple(dataclasses.replace(s, ref=ModelRef(names[s.ref.path], local=True))
                    if s.ref.is_local and s.ref.path in names else s for s in plan.sources)
    return dataclasses.replace(plan, sources=sources)


def write_skeleton(plan: Plan, directory: Path) -> None:
    """What a merge by ``plan`` would write, without the weights: side files, and one
    safetensors file whose header is real and whose data is a hole of the right size."""
    directory.mkdir(parents=True)
    write_side_files(plan, directory, copy_tokenizer=True)
    tensors = [task.out for task in plan.tasks]
    header = encode_header(tensors)
    with open(directory / SINGLE_NAME, "wb") as f:
        f.write(header)
        f.truncate(len(header) + sum(t.nbytes for t in tensors))


def run_stages(recipe: StagedRecipe | str | os.PathLike, out_dir: str | os.PathLike, *,
               keep_intermediates: str | os.PathLike | None = None,
               workspace: str | os.PathLike | None = None,
               cache: StageCache | None = None,
               on_stage: Callable[[StageRun, int, int], None] | None = None,
               device: str = "auto", out_shard_size: int = DEFAULT_SHARD_BYTES,
               random_seed: int | None = None, copy_tokenizer: bool = True,
               progress: Progress | None = None, access: HubAccess | None = None,
               card_options: dict | None = None,
               on_shard_done: Callable[[Path], None] | None = None,
               checks: CheckOptions | None = None,
               outputs: dict[str, str] | None = None,
               final_options: dict | None = None) -> StagedResult:
    """Merge every stage of ``recipe`` in order, the last into ``out_dir``; see the module
    docstring. ``on_stage(run, i, n)`` is called as stage ``i`` of ``n`` (from 1) is done;
    ``progress(done, total)`` spans all stages; ``outputs``: what becomes of an
    intermediate, by stage name, for the final card (default ``intermediate``); the other
    options are :func:`merge_engine.api.run_merge`'s (``checks``, ``on_shard_done`` and
    ``card_options`` apply to the final stage; an intermediate's card gets ``hub_url``);
    ``final_options``: more of run_merge's options for the final stage only (``evaluate``,
    ``eval_cache_dir``, ``adapter``, ``adapter_dir``)."""
    staged = load_stages(recipe)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeEngineError(f"output directory {out} already exists and is not empty")
    keep = Path(keep_intermediates) if keep_intermediates is not None else None
    if keep is not None:
        taken = [s.name for s in staged.stages[:-1] if (keep / str(s.name)).exists()]
        if taken:
            raise MergeEngineError(f"{keep / taken[0]} already exists; choose another "
                                   "directory for the intermediates")
    root = Path(workspace) if workspace is not None else (keep or out.parent)
    made_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    work = root / f".{out.name}.stages-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    count = len(staged.stages)
    done = False
    try:
        runs, dirs, keys = [], {}, {}
        for i, stage in enumerate(staged.stages, 1):
            final = i == count
            plan = _plan(stage, dirs, access, staged.text if final else None)
            key = stage_key(stage, plan, dirs, keys, random_seed)
            step = _scaled(progress, i - 1, count)
            cards = [_card(run, dirs, outputs or {}) for run in runs]
            if final:
                with _naming(stage, dirs):
                    merged = run_merge(
                        plan.recipe, out, device=device, out_shard_size=out_shard_size,
                        random_seed=random_seed, copy_tokenizer=copy_tokenizer,
                        progress=step, access=access, plan=plan, on_shard_done=on_shard_done,
                        checks=checks, card_options={**(card_options or {}), "stages": [
                            *cards, StageCard(stage.name or "", stage.document, plan, None,
                                              "this model", stage.source.text)]},
                        **(final_options or {}))
                run = StageRun(stage.name or "", stage.document, key, plan, False, merged)
            else:
                own = StageCard(stage.name or "", stage.document, plan, None,
                                "this model (an intermediate)", stage.source.text)
                hub = {"hub_url": (card_options or {}).get("hub_url"), "stages": [*cards, own]}
                with _naming(stage, dirs):
                    run = _intermediate(stage, plan, key, work / str(stage.name), cache,
                                        device=device, out_shard_size=out_shard_size,
                                        random_seed=random_seed, progress=step, access=access,
                                        card_options=hub)
                dirs[run.name], keys[run.name] = str(work / run.name), key
            runs.append(run)
            if on_stage is not None:
                on_stage(run, i, count)
        if keep is not None:
            for run in runs[:-1]:
                run.kept = keep / run.name
                shutil.move(work / run.name, run.kept)
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not done and made_root:
            shutil.rmtree(root, ignore_errors=True)
    sources: dict[str, Source] = {}
    for run in runs:
        for source in run.inputs(dirs):
            sources.setdefault(source.pinned, source)
    return StagedResult(runs[-1].result, runs, list(sources.values()))


def _intermediate(stage: Stage, plan: Plan, key: str, where: Path,
                  cache: StageCache | None, **options) -> StageRun:
    """Merge one intermediate stage into ``where`` (or take it from the cache)."""
    run = StageRun(stage.name or "", stage.document, key, plan, False, None)
    if cache is not None and cache.fetch(key, where):
        run.reused = True
        return run
    run.result = run_merge(plan.recipe, where, plan=plan, **options)
    if cache is not None:
        cache.store(key, where)
    return run


def _card(run: StageRun, dirs: dict[str, str], outputs: dict[str, str]) -> StageCard:
    """A later card's row of an intermediate stage."""
    output = outputs.get(run.name, "intermediate")
    if run.reused:
        output += ", reused from an earlier run"
    seed = run.result.seed if run.result is not None else None
    return StageCard(run.name, run.document, run.plan, dirs[run.name], output,
                     run.plan.recipe.text, seed)


def _scaled(progress: Progress | None, done_stages: int, count: int) -> Progress | None:
    """``progress`` of one stage as a fraction of all of them."""
    if progress is None:
        return None
    return lambda done, total: progress(done_stages * total + done, count * total)
