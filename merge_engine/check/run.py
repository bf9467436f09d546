"""The check stage in order: structure, then behaviour where it can run; see the package
docstring. Sources are the merge's inputs (base first), for the chat template, the
generation config and the reference perplexities."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from merge_engine.check import behaviour, cache, structure
from merge_engine.check.report import CheckOptions, CheckReport, SourceFigure
from merge_engine.errors import CheckError
from merge_engine.io.checkpoint import TensorMeta
from merge_engine.io.sources import Source


def behaviour_planned(config: dict, parameters: int, has_tokenizer: bool,
                      options: CheckOptions, *, architecture: bool = True) -> str | None:
    """Why the behaviour checks will not run on such a model (None: they will);
    ``architecture=False`` leaves out whether transformers knows it (no import)."""
    if not options.behaviour:
        return "turned off"
    if not has_tokenizer:
        return "the model has no tokenizer.json"
    if config.get("auto_map"):
        return "the architecture needs remote code, which is never run"
    return ((behaviour.unsupported(config) if architecture else None)
            or behaviour.too_large(parameters, options.device))


def run_checks(directory: str | Path, sources: Sequence[Source] = (), *,
               options: CheckOptions | None = None,
               metas: dict[str, TensorMeta] | None = None,
               finite_checked: bool = False) -> CheckReport:
    """Check the model in ``directory``; raises ``CheckError`` (one line, the report so
    far attached) on the first fault or on a perplexity above the limit.

    ``metas``: the tensors' metadata when the weight files are no longer in ``directory``
    (streamed out while merging; then only the structural checks run).
    ``finite_checked``: the writer already refused NaN and infinite values.
    """
    started = time.perf_counter()
    options = options or CheckOptions()
    directory = Path(directory)
    report = CheckReport()
    try:
        _structure(directory, sources, options, metas, finite_checked, report)
        if metas is not None:
            report.skipped.append("behaviour checks: the weights were streamed out")
        else:
            _behaviour(directory, sources, options, report)
    except CheckError as e:
        e.report = report
        raise
    finally:
        report.seconds = time.perf_counter() - started
    return report


def _structure(directory: Path, sources: Sequence[Source], options: CheckOptions,
               metas: dict[str, TensorMeta] | None, finite_checked: bool,
               report: CheckReport) -> None:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckError(f"{directory} has no config.json")
    config = structure.read_json(config_path)
    on_disk = metas if metas is not None else structure.disk_tensors(directory)
    passed = report.structure
    passed.append(structure.check_config_weights(config, on_disk))
    rows = on_disk[structure.find(on_disk, structure.EMBEDDINGS)].shape[0]
    for line in (structure.check_tied(config, on_disk),
                 structure.check_tokenizer(directory, config, rows)):
        if line:
            passed.append(line)
    if options.side_files and sources:
        for line in (structure.check_chat_template(directory, sources),
                     structure.check_generation_config(directory, sources[0])):
            if line:
                passed.append(line)
    if finite_checked:
        passed.append("no NaN or infinite values (checked as each tensor was written)")
    elif metas is None:
        passed.append(structure.check_finite(directory, on_disk))


def _behaviour(directory: Path, sources: Sequence[Source], options: CheckOptions,
               report: CheckReport) -> None:
    config = structure.read_json(directory / "config.json")
    metas = structure.disk_tensors(directory)
    skip = behaviour_planned(config, sum(m.numel for m in metas.values()),
                             (directory / "tokenizer.json").is_file(), options)
    if skip:
        report.skipped.append(f"behaviour checks: {skip}")
        return
    report.structure.append(behaviour.check_shapes(config, metas))
    _measure_all(directory, sources, options, report,
                 max([sum(m.numel for m in metas.values())]
                     + [sum(m.numel for m in s.tensors.values()) for s in sources]))
    measured = [s for s in report.sources if s.perplexity is not None]
    if not measured:
        report.skipped.append("perplexity limit: no source could be measured")
        return
    worst = max(measured, key=lambda s: s.perplexity)
    report.limit = options.perplexity_factor * worst.perplexity
    if report.perplexity > report.limit:
        if not options.allow_high_perplexity:
            raise CheckError(
                f"the merge's perplexity {report.perplexity:.2f} is above "
                f"{options.perplexity_factor:g}x the worst source's ({worst.perplexity:.2f}, "
                f"{worst.name}); greedy generation: {report.generation!r}; nothing was "
                "published (a submission may allow a high perplexity)")
        report.allowed_high = True


def _measure_all(directory: Path, sources: Sequence[Source], options: CheckOptions,
                 report: CheckReport, parameters: int) -> None:
    """The merge's perplexity and generation, and each source's figure: as many models at
    once as :func:`behaviour.parallel_models` allows (the sources' perplexities overlap the
    merge's), reported in order; the first failure cancels what has not started."""
    jobs = behaviour.parallel_models(1 + len(sources), parameters, options.device)
    with behaviour.cpu_threads(jobs), ThreadPoolExecutor(jobs, "check") as pool:
        try:
            merged = pool.submit(behaviour.measure, directory, options.device, generate=True)
            figures = [pool.submit(_source_figure, s, options) for s in sources]
            report.perplexity, report.generation = merged.result()
            report.prompt = behaviour.PROMPT
            report.sources = [f.result() for f in figures]
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _source_figure(source: Source, options: CheckOptions) -> SourceFigure:
    """A source's perplexity, from the cache (:mod:`.cache`: a Hub source by commit SHA, a
    local one by its files) or measured from its own files and tokenizer."""
    entry = cache.key(source, options.device) if options.cache_dir is not None else None
    if entry is not None:
        value = cache.read(options.cache_dir, entry)
        if value is not None:
            return SourceFigure(source.name, value)
    figure = _measure_source(source, options)
    if entry is not None and figure.perplexity is not None:
        cache.write(options.cache_dir, entry, source.pinned, figure.perplexity)
    return figure


def _measure_source(source: Source, options: CheckOptions) -> SourceFigure:
    if source.adapter is not None:
        return SourceFigure(source.name, None, "not measured (LoRA source)")
    if "tokenizer.json" not in source.files:
        return SourceFigure(source.name, None, "not measured (no tokenizer.json)")
    skip = (behaviour.unsupported(source.config)
            or behaviour.too_large(sum(m.numel for m in source.tensors.values()),
                                   options.device))
    if skip:
        return SourceFigure(source.name, None, f"not measured ({skip})")
    with source.model_files() as directory:
        value, _ = behaviour.measure(directory, options.device, generate=False)
    return SourceFigure(source.name, value)
