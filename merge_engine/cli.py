"""``merge-engine run RECIPE OUT``, ``merge-engine validate RECIPE``,
``merge-engine check DIR``, ``merge-engine evaluate DIR`` and
``merge-engine extract-lora MODEL BASE OUT``.

Exit codes: 0 done, 2 a mistake in the recipe or the input models, 1 a runtime failure,
130 interrupted. Errors are one line on stderr; ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import traceback
from pathlib import Path

from merge_engine.api import (
    DEFAULT_SHARD_BYTES,
    RECIPE_NAME,
    run_merge,
    validate,
)
from merge_engine.check import CheckOptions, run_checks
from merge_engine.errors import InputError, MergeEngineError
from merge_engine.evaluate import (
    EvalSet,
    evaluate_model,
    parse_eval_set,
    parse_eval_sets,
    run_tasks,
)
from merge_engine.execute import resolve_device
from merge_engine.extract import AdapterOptions, Extraction, extract_lora
from merge_engine.io.sources import open_source
from merge_engine.multistage import StageRun, load_stages, run_stages, validate_stages
from merge_engine.plan.summary import (
    ModelRow,
    fmt,
    formula,
    license_warning,
    licenses,
    model_rows,
    moe_summary,
    parts,
)
from merge_engine.version import __version__

UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
         "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
         "tib": 2**40}


def parse_size(text: str) -> int:
    """``5GB``, ``500M``, ``2GiB``, ``5e9`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size like 5GB, 500MB or 2GiB")
    size = int(float(match.group(1)) * UNITS[match.group(2).lower()])
    if size <= 0:
        raise argparse.ArgumentTypeError("the shard size must be positive")
    return size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merge-engine", description="Merge models with a mergekit recipe, streaming.")
    parser.add_argument("--version", action="version", version=f"merge-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="merge RECIPE into the directory OUT")
    run.add_argument("recipe")
    run.add_argument("out")
    run.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    run.add_argument("--out-shard-size", type=parse_size, default=DEFAULT_SHARD_BYTES,
                     help="largest output shard, e.g. 5GB (default) or 500MB")
    run.add_argument("--random-seed", type=int, default=None,
                     help="seed for random methods (dare, della); recorded in the card")
    run.add_argument("--no-copy-tokenizer", action="store_true",
                     help="do not copy the base model's tokenizer files")
    run.add_argument("--keep-intermediates", metavar="DIR", default=None,
                     help="multi-stage recipe: keep each earlier stage's output in DIR/<name>")
    run.add_argument("--check", action="store_true",
                     help="check the merged model before writing it (see 'check')")
    _check_options(run)
    _eval_options(run)
    run.add_argument("--eval-cache", type=Path, default=None,
                     help="directory keeping the Hub sources' scores by repo, SHA and set")
    run.add_argument("--adapter", metavar="DIR", default=None,
                     help="also write a PEFT LoRA adapter of (merge - base_model) into DIR")
    run.add_argument("--max-rank", type=int, default=None,
                     help="with --adapter: largest rank per module")
    run.add_argument("--sv-cutoff", type=float, default=0.0,
                     help="with --adapter: drop singular values below this fraction of each "
                          "matrix's largest")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    run.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    check = sub.add_parser("validate", help="check RECIPE from headers only and print the plan")
    check.add_argument("recipe")
    check.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    lora = sub.add_parser("extract-lora", help="write a PEFT LoRA adapter of MODEL - BASE "
                                               "into the directory OUT (truncated SVD)")
    lora.add_argument("model", help="the fine-tuned (or merged) model: a directory or org/name")
    lora.add_argument("base", help="the base model it was made from")
    lora.add_argument("out")
    lora.add_argument("--max-rank", type=int, required=True, help="largest rank per module")
    lora.add_argument("--sv-cutoff", type=float, default=0.0,
                      help="drop singular values below this fraction of each matrix's largest")
    lora.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    lora.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                      help="dtype of the adapter's factors")
    lora.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    inspect = sub.add_parser(
        "check", help="check a merged model directory: structure, then perplexity and a "
                      "generation against its sources (from its mergekit_config.yml)")
    inspect.add_argument("directory")
    inspect.add_argument("--no-sources", action="store_true",
                         help="do not open the sources named in the directory's recipe")
    inspect.add_argument("--device", default="cpu", help="cpu or cuda")
    _check_options(inspect)
    inspect.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    score = sub.add_parser(
        "evaluate", help="score the model in a directory: mean token NLL and perplexity on "
                         "texts or Hub datasets, and lm-eval tasks where lm_eval and a GPU are")
    score.add_argument("directory")
    _eval_options(score)
    score.add_argument("--tasks", default="",
                       help="comma-separated lm-eval task names (needs lm_eval and CUDA)")
    score.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    score.add_argument("--json", action="store_true", help="print the scores as JSON")
    score.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    return parser


def _eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-texts", action="append", default=[], metavar="FILE",
                        help="score on the texts of FILE, one per line (the set is named "
                             "after the file); repeatable")
    parser.add_argument("--eval-dataset", action="append", default=[], metavar="SPEC",
                        help="score on a Hub dataset: repo[:config]:split:column[:samples]"
                             "[@revision], e.g. org/wiki:en:test:text:64@main; repeatable")


def dataset_spec(spec: str) -> dict:
    """``repo[:config]:split:column[:samples][@revision]`` -> an evaluation set's fields
    (four parts: the last a number is ``samples``, else the second is ``config``)."""
    body, at, revision = spec.partition("@")
    parts = body.split(":")
    if len(parts) == 4:
        parts = ([*parts[:1], None, *parts[1:]] if parts[3].isdigit()
                 else [*parts, None])
    elif len(parts) == 3:
        parts = [parts[0], None, *parts[1:], None]
    if len(parts) != 5 or (at and not revision):
        raise InputError(f"--eval-dataset {spec!r} is not repo[:config]:split:column"
                         "[:samples][@revision]")
    item = dict(zip(("dataset", "config", "split", "column"), parts[:4], strict=True))
    if parts[4] is not None:
        if not parts[4].isdigit():
            raise InputError(f"--eval-dataset {spec!r}: samples must be a whole number, not "
                             f"{parts[4]!r}")
        item["samples"] = int(parts[4])
    if revision:
        item["revision"] = revision
    return {k: v for k, v in item.items() if v is not None}


def eval_sets(args: argparse.Namespace) -> list[EvalSet]:
    """The evaluation sets the command line names (none: an empty list)."""
    sets = []
    for name in args.eval_texts:
        path = Path(name)
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise InputError(f"--eval-texts {name}: cannot read the file ({e.strerror})") from None
        sets.append(parse_eval_set({"name": path.stem,
                                    "texts": [t for t in lines if t.strip()]},
                                   f"--eval-texts {name}"))
    for spec in args.eval_dataset:
        sets.append(parse_eval_set(dataset_spec(spec), f"--eval-dataset {spec}"))
    return parse_eval_sets(sets, "the evaluation sets") if sets else []


def _check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--perplexity-factor", type=float, default=3.0,
                        help="fail when the perplexity exceeds this many times the worst "
                             "source's (default 3)")
    parser.add_argument("--allow-high-perplexity", action="store_true",
                        help="report a perplexity above the limit instead of failing")
    parser.add_argument("--structure-only", action="store_true",
                        help="skip the behaviour checks (no transformers, no forward pass)")
    parser.add_argument("--perplexity-cache", type=Path, metavar="DIR",
                        help="keep the sources' perplexities in DIR, so that a remerge "
                             "measures only the sources that changed")


def _options(args: argparse.Namespace, device: str = "cpu") -> CheckOptions:
    return CheckOptions(perplexity_factor=args.perplexity_factor,
                        allow_high_perplexity=args.allow_high_perplexity,
                        behaviour=not args.structure_only, device=device,
                        cache_dir=args.perplexity_cache)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "validate":
            return _validate(args)
        if args.command == "extract-lora":
            return _extract_lora(args)
        if args.command == "check":
            return _check(args)
        if args.command == "evaluate":
            return _evaluate(args)
        return _run(args)
    except MergeEngineError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the edge: a bug must still be one line
        if args.verbose:
            traceback.print_exc()
        print(f"error: unexpected {type(e).__name__}: {e} (run with -v for details)",
              file=sys.stderr)
        return 1


def _validate(args: argparse.Namespace) -> int:
    staged = load_stages(args.recipe)
    if len(staged.stages) == 1:
        return _print_plan(validate(staged.final.recipe))
    plans = validate_stages(staged)
    for i, (stage, plan) in enumerate(zip(staged.stages, plans, strict=True)):
        print(f"{'' if i == 0 else chr(10)}{stage.label}, {i + 1} of {len(plans)}:")
        _print_plan(plan)
    return 0


def _print_plan(plan) -> int:
    """What ``validate`` prints of one plan."""
    print(formula(plan))
    print()
    found = licenses(plan)
    for row, source in zip(model_rows(plan), plan.sources, strict=True):
        used = f"modules {', '.join(row.modules)}" if plan.recipe.parts else _params(row)
        license_id = found[source.ref.path] or "license unknown"
        if source.adapter is not None:
            license_id += f"; LoRA {found[source.adapter.name] or 'license unknown'}"
        print(f"  {row.role:5}  {row.name}  @ {row.revision or 'local'}  {used}  "
              f"({license_id}, {_source_bytes(source) / 1e9:.2f} GB)")
    moe = moe_summary(plan)
    if moe is not None:
        print(f"  {moe['architecture']}, gate_mode {moe['gate_mode']}, "
              f"{moe['experts_per_token']} experts per token:")
        experts = [(str(i), e) for i, e in enumerate(moe["experts"])]
        for label, e in experts + [("shared", e) for e in moe["shared_experts"]]:
            prompts = "; ".join(f"+{p!r}" for p in e["positive_prompts"])
            prompts += "".join(f"; -{p!r}" for p in e["negative_prompts"])
            print(f"    expert {label}  {e['model']}  @ {e['revision'] or 'local'}  "
                  f"{prompts or '(no prompts)'}")
    globals_ = ", ".join(f"{k} {fmt(v)}" for k, v in plan.recipe.parameters.items()
                         if k not in plan.method.model_params)
    if globals_:
        print(f"  global parameters: {globals_}")
    for part in parts(plan):
        own = ", ".join(f"{k} {fmt(v)}" for k, v in part.plan.recipe.module_parameters.items())
        print(f"  module {part.name}" + (f" (parameters: {own})" if own else "") + ":")
        for row in model_rows(part.plan):
            print(f"    {row.role:5}  {row.name}  {_params(row)}")
    print()
    print(f"{len(plan.tasks)} tensors, {plan.parameter_count:,} parameters, output "
          f"{plan.output_bytes / 1e9:.2f} GB as {str(plan.out_dtype).removeprefix('torch.')}")
    for warning in plan.warnings:
        print(f"warning: {warning}")
    note = license_warning(plan)
    if note:
        print(f"warning: {note}")
    return 0


def _extract_lora(args: argparse.Namespace) -> int:
    result = extract_lora(args.model, args.base, args.out, max_rank=args.max_rank,
                          sv_cutoff=args.sv_cutoff, device=str(resolve_device(args.device)),
                          dtype=args.dtype)
    _print_extraction(result, sys.stdout)
    return 0


def _print_extraction(result: Extraction, file=None) -> None:
    file = file or sys.stderr
    worst = max((m.error for m in result.modules), default=0.0)
    print(f"{result.out_dir}: {len(result.modules)} modules, rank <= {result.rank}, "
          f"worst relative error {worst:.3g}", file=file)
    for name, change in sorted(result.not_captured.items()):
        print(f"warning: {name} differs but LoRA cannot carry it (relative change {change:.3g})",
              file=file)


def _params(row: ModelRow) -> str:
    """``weight 0.3, density 0.5`` of one model row."""
    return ", ".join([f"weight {row.weight}"] * bool(row.weight)
                     + [f"{k} {v}" for k, v in row.others.items()])


def _source_bytes(source) -> int:
    return sum(m.end - m.begin for m in source.tensors.values())


def _run(args: argparse.Namespace) -> int:
    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=0, unit="B", unit_scale=True, desc="merging", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    adapter = None
    if args.adapter is not None or args.max_rank is not None:
        if args.adapter is None or args.max_rank is None:
            raise InputError("--adapter DIR and --max-rank N go together")
        adapter = AdapterOptions(args.max_rank, args.sv_cutoff)

    def stage_done(run: StageRun, i: int, count: int) -> None:
        if not args.quiet:
            how = "reused" if run.reused else "merged"
            print(f"stage {run.name!r} ({i} of {count}): {how}", file=sys.stderr)

    staged = load_stages(args.recipe)
    options = dict(device=args.device, out_shard_size=args.out_shard_size,
                   random_seed=args.random_seed, copy_tokenizer=not args.no_copy_tokenizer,
                   progress=progress if bar else None,
                   checks=_options(args) if args.check else None)
    final = dict(adapter=adapter, adapter_dir=args.adapter,
                 evaluate=eval_sets(args) or None, eval_cache_dir=args.eval_cache)
    try:
        if len(staged.stages) > 1:
            result = run_stages(staged, args.out, keep_intermediates=args.keep_intermediates,
                                on_stage=stage_done, final_options=final, **options).final
        else:
            if args.keep_intermediates is not None:
                raise InputError("--keep-intermediates needs a multi-stage recipe "
                                 "(several YAML documents separated by ---)")
            result = run_merge(staged.final.recipe, args.out, **options, **final)
    finally:
        if bar:
            bar.close()
    if not args.quiet:
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(result.formula, file=sys.stderr)
        print(f"merged {result.parameter_count:,} parameters on {result.device} in "
              f"{result.timings.wall:.1f}s", file=sys.stderr)
        for line in result.checks.lines() if result.checks else ():
            print(line, file=sys.stderr)
        for row in result.evaluation.rows if result.evaluation else ():
            for score in row.scores.values():
                print(f"{row.label} on {score.set}: NLL {score.nll:.4f}, perplexity "
                      f"{score.perplexity:.3f}", file=sys.stderr)
        if result.adapter is not None:
            _print_extraction(result.adapter)
    print(result.out_dir)
    return 0


def _check(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        raise MergeEngineError(f"{directory} is not a directory")
    recipe = directory / RECIPE_NAME
    sources = []
    if not args.no_sources and recipe.is_file():  # a multi-stage recipe: the final's own
        final = load_stages(recipe).final
        sources = [open_source(m.ref) for m in final.own_inputs()]
    report = run_checks(directory, sources, options=_options(args, args.device))
    for line in report.lines():
        print(line)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory")
    sets = eval_sets(args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not sets and not tasks:
        raise InputError("name something to evaluate on: --eval-texts, --eval-dataset or "
                         "--tasks")
    scores = evaluate_model(directory, sets, device=args.device) if sets else []
    results = run_tasks(directory, tasks, device=args.device) if tasks else {}
    if args.json:
        print(json.dumps({"scores": [s.to_json() for s in scores], "tasks": results}, indent=2))
        return 0
    for s in scores:
        at = f" (dataset at {s.revision})" if s.revision else ""
        print(f"{s.set}: NLL {s.nll:.4f}, perplexity {s.perplexity:.3f} over {s.tokens} tokens "
              f"of {s.samples} texts{at}")
    for task, metrics in results.items():
        print(f"{task}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return 0
