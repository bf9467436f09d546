"""``mergebot merge RECIPE --repo OWNER/NAME [--private] [--publish full|adapter|both
--max-rank N [--sv-cutoff X]]``: merge, check and publish, once.

Reads ``HF_TOKEN`` (writes the target repo and reads the sources) and ``HF_ENDPOINT``
(default: the Hugging Face Hub). Prints the repo URL and the commit SHA. Exit codes:
0 done, 2 a mistake in the recipe or its sources, 1 any other failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from merge_engine import (
    AdapterOptions,
    CheckOptions,
    InputError,
    MergeEngineError,
    parse_eval_sets,
)

from .errors import BotError
from .publish import PUBLISH_MODES, PublishRequest, merge_and_publish


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    """``--publish``, ``--max-rank``, ``--sv-cutoff`` (see :mod:`bot.publish`)."""
    parser.add_argument("--publish", choices=PUBLISH_MODES, default="full",
                        help="the full weights (default), only a LoRA adapter of the merge "
                             "against its base_model, or both (the adapter in <repo>-lora)")
    parser.add_argument("--max-rank", type=int, default=None,
                        help="with --publish adapter|both: the adapter's largest rank per module")
    parser.add_argument("--sv-cutoff", type=float, default=0.0,
                        help="with --publish adapter|both: drop singular values below this "
                             "fraction of each matrix's largest")


def adapter_options(args: argparse.Namespace) -> AdapterOptions | None:
    """The adapter ``--publish`` asks for; ``InputError`` (one sentence) for a bad one."""
    if args.publish == "full":
        if args.max_rank is not None or args.sv_cutoff:
            raise InputError("--max-rank and --sv-cutoff are for an adapter; add --publish "
                             "adapter or --publish both")
        return None
    if args.max_rank is None:
        raise InputError(f"--publish {args.publish} needs --max-rank N, the adapter's "
                         "largest rank per module")
    return AdapterOptions(args.max_rank, args.sv_cutoff)


def eval_set_items(args: argparse.Namespace) -> list[dict]:
    """``--eval-texts [NAME=]FILE`` (one text a line) and ``--eval-dataset
    REPO[,name=N,config=C,split=S,column=C,samples=N,revision=R]`` -> the API's sets."""
    sets = []
    for spec in args.eval_texts:
        name, sep, path = spec.partition("=")
        path = Path(path if sep else spec)
        try:
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--eval-texts: cannot read {path}: {exc}") from None
        sets.append({"name": name if sep else path.stem, "texts": [t for t in texts if t]})
    for spec in args.eval_dataset:
        repo, *options = [part.strip() for part in spec.split(",")]
        item: dict = {"name": repo.rsplit("/", 1)[-1], "dataset": repo}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in ("name", "config", "split", "column", "samples",
                                      "revision"):
                raise ValueError(f"--eval-dataset {spec!r}: {option!r} is not one of name=, "
                                 "config=, split=, column=, samples=, revision=")
            item[key] = int(value) if key == "samples" and value.isdigit() else value
        sets.append(item)
    return sets


def add_eval_arguments(parser) -> None:
    """``--eval-texts`` and ``--eval-dataset`` (read by :func:`eval_set_items`)."""
    parser.add_argument("--eval-texts", action="append", default=[], metavar="[NAME=]FILE",
                        help="an evaluation set: a text file, one text a line (the merge and "
                             "its sources are scored, the card gets the table)")
    parser.add_argument("--eval-dataset", action="append", default=[],
                        metavar="REPO[,name=,config=,split=,column=,samples=,revision=]",
                        help="an evaluation set: a Hub dataset's text column")


def add_merge_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge", help="merge a recipe from Hub models and publish it as one commit",
        description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--repo", required=True, metavar="OWNER/NAME", help="target repo")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--random-seed", type=int, default=None)
    parser.add_argument("--perplexity-factor", type=float, default=3.0,
                        help="refuse a merge whose perplexity exceeds this many times the "
                             "worst source's (default 3)")
    parser.add_argument("--allow-high-perplexity", action="store_true",
                        help="publish even above that limit")
    add_publish_arguments(parser)
    add_eval_arguments(parser)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="scratch space for shards in flight (default: a temp dir)")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    parser.set_defaults(run=run_merge_command)


def run_merge_command(args: argparse.Namespace) -> int:
    token = os.environ.get("HF_TOKEN")
    if not token:
        print("error: set HF_TOKEN to a token that can write " + args.repo, file=sys.stderr)
        return 2
    try:
        text = args.recipe.read_text()
    except OSError as e:
        print(f"error: cannot read the recipe {args.recipe}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        adapter = adapter_options(args)
        items = eval_set_items(args)
        sets = tuple(parse_eval_sets(items, "evaluation")) if items else ()
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="mergebot-", dir=args.work_dir))
    request = PublishRequest(
        recipe_text=text, repo_id=args.repo, token=token, work_dir=work,
        endpoint=os.environ.get("HF_ENDPOINT") or None, private=args.private,
        trigger=f"Merge {args.recipe.name} with mergebot",
        provenance="Merged and published with `mergebot merge`.",
        device=args.device, random_seed=args.random_seed,
        checks=CheckOptions(perplexity_factor=args.perplexity_factor,
                            allow_high_perplexity=args.allow_high_perplexity),
        publish=args.publish, adapter=adapter, evaluate=sets)
    try:
        result = merge_and_publish(request, _progress if sys.stderr.isatty() else None)
    except (MergeEngineError, BotError) as e:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, InputError) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for line in result.checks.lines() if result.checks else ():
        print(line, file=sys.stderr)
    for row in result.evaluation.rows if result.evaluation else ():
        model = "the merge" if row.kind == "merge" else row.label
        for name, score in row.scores.items():
            print(f"evaluated {model} on {name}: NLL {score.nll:.4f}, perplexity "
                  f"{score.perplexity:.4g}", file=sys.stderr)
    if result.adapter_summary:
        print(result.adapter_summary, file=sys.stderr)
    if result.adapter_repo not in (None, result.repo_id):
        print(f"adapter: {result.adapter_repo} at {result.adapter_commit}", file=sys.stderr)
    print(result.url)
    print(result.commit_sha)
    return 0


def _progress(stage: str, fraction: float) -> None:
    print(f"\r{stage:>10} {fraction:6.1%}", end="" if fraction < 1 else "\n",
          file=sys.stderr, flush=True)
