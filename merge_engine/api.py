"""The engine's Python API: :func:`validate` a recipe, :func:`run_merge` it.

    result = run_merge("recipe.yml", "out/", device="auto")
    result.sources[1].revision   # the commit SHA each Hub source was pinned to

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from merge_engine.card import render_card
from merge_engine.check import (
    CheckOptions,
    CheckReport,
    behaviour_planned,
    run_checks,
)
from merge_engine.errors import MergeEngineError
from merge_engine.execute.executor import Executor, Progress, Timings, resolve_device
from merge_engine.io.checkpoint import TensorMeta
from merge_engine.io.headers import read_header
from merge_engine.io.hub import HubAccess
from merge_engine.io.sources import Source, open_source
from merge_engine.plan.build import Plan, build_plan
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
    """Parse, resolve and plan from headers only; raises the first problem found."""
    parsed = load(recipe)
    return build_plan(parsed, open_sources(parsed, access))


def run_merge(recipe: Recipe | str | os.PathLike, out_dir: str | os.PathLike, *,
              device: str = "auto", out_shard_size: int = DEFAULT_SHARD_BYTES,
              random_seed: int | None = None, copy_tokenizer: bool = True,
              progress: Progress | None = None, access: HubAccess | None = None,
              plan: Plan | None = None, card_options: dict | None = None,
              on_shard_done: Callable[[Path], None] | None = None,
              checks: CheckOptions | None = None) -> MergeResult:
    """Merge ``recipe`` into ``out_dir`` (which must not exist, or be empty).

    ``plan`` skips resolution when the caller already validated; ``card_options`` go to
    :func:`merge_engine.card.render_card` (``hub_url``, ``provenance``, ``repo_id``);
    ``on_shard_done(path)`` is called (from the writer thread) as each output shard is
    complete, e.g. to start uploading it while the merge goes on.
    ``checks``: run the check stage (:mod:`merge_engine.check`) on the output before it
    is renamed into place, and record it in the card; a fault raises ``CheckError`` and
    nothing is written. Shards handed to ``on_shard_done`` stay readable for the checks
    (hard links) when the behaviour checks will run; otherwise only their headers are
    checked.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeEngineError(f"output directory {out} already exists and is not empty")
    plan = plan or validate(recipe, access=access)
    resolved = time.perf_counter() - started
    seed = random_seed if random_seed is not None else secrets.randbits(31)
    dev = resolve_device(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    report = None
    try:
        shards = _ShardKeeper(work, on_shard_done, plan, checks, dev, copy_tokenizer)
        executor = Executor(plan, work, device=dev, max_shard_bytes=out_shard_size, seed=seed,
                            progress=progress, on_shard_done=shards.hook)
        files = executor.run()
        plan = dataclasses.replace(plan, warnings=[*plan.warnings, *executor.warnings])
        files += write_side_files(plan, work, copy_tokenizer)
        if checks is not None:
            shards.restore()
            report = run_checks(work, plan.sources, metas=shards.metas, finite_checked=True,
                                options=replace(checks, device=str(dev),
                                                side_files=copy_tokenizer))
        tokenizer = any(path.name in TOKENIZER_FILES for path in files)
        card = render_card(plan, seed=seed, checks=report, tokenizer=tokenizer,
                           **(card_options or {}))
        (work / "README.md").write_text(card)
        files.append(work / "README.md")
        if out.exists():
            out.rmdir()
        work.rename(out)
    except OSError as e:
        shutil.rmtree(work, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise MergeEngineError(f"disk full while writing the merge under {out.parent}") from e
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return MergeResult(
        out_dir=out, files=[out / f.name for f in files], method=plan.recipe.merge_method,
        models=model_rows(plan), formula=formula(plan), seed=seed, warnings=plan.warnings,
        output_bytes=plan.output_bytes, parameter_count=plan.parameter_count,
        device=str(dev), timings=executor.timings, resolve_seconds=resolved, checks=report,
    )


class _ShardKeeper:
    """Sees each finished shard before ``on_shard_done`` takes it away: keeps a hard link
    to it when the behaviour checks will need the weights, else records its header."""

    def __init__(self, work: Path, on_shard_done: Callable[[Path], None] | None, plan: Plan,
                 checks: CheckOptions | None, device, copy_tokenizer: bool):
        self.on_shard_done = on_shard_done
        self.kept = work / ".kept"
        self.metas: dict[str, TensorMeta] | None = None
        self.keep = False
        if checks is not None and on_shard_done is not None:
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

