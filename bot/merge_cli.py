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

from merge_engine import AdapterOptions, CheckOptions, InputError, MergeEngineError

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
    except InputError as e:
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
        publish=args.publish, adapter=adapter)
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
