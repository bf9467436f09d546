"""``mergebot run-job``: what a Hugging Face Job runs: one merge, published as one commit.

The token and the recipe come as Job secrets (``HF_TOKEN``, ``MERGEBOT_RECIPE``), never
as arguments or plain env (those are shown to anyone who can inspect the Job); so do the
evaluation sets, when the merge is to be scored (``MERGEBOT_EVALUATION``: the API's JSON
list; they may hold pasted texts); the Hub is ``HF_ENDPOINT``. The Job's log (stdout)
carries, one line each:

    mergebot-stage: STAGE FRACTION     as the merge goes (on a new stage or every 1 %)
    mergebot-result: {"commit": ..., "repo_id": ..., "revisions": {...}, "reused_commit": ...,
                      "created_repo": ..., "adapter_repo": ..., "adapter_commit": ...,
                      "adapter_summary": ..., "evaluation": the table's JSON or null}
    mergebot-error: KIND: MESSAGE      KIND: input, source (a mistake in the recipe or a
                                       source: fail the job), transient (retry), fatal

Exit status: 0 done, 2 a mistake in the input, 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from merge_engine import CheckOptions, InputError, SourceError, parse_eval_sets

from ..errors import is_transient
from ..merge_cli import adapter_options, add_publish_arguments
from ..publish import PublishRequest, merge_and_publish

STAGE, RESULT, ERROR = "mergebot-stage: ", "mergebot-result: ", "mergebot-error: "


def add_job_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run-job", help="(inside a Hugging Face Job) merge MERGEBOT_RECIPE and publish it",
        description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, metavar="OWNER/NAME")
    parser.add_argument("--job-key", required=True, help="the commit marker of the bot's job")
    parser.add_argument("--trigger", default="Merge submitted", help="the commit's title")
    parser.add_argument("--provenance", default=None, help="the card's Provenance section")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--repo-created-earlier", action="store_true",
                        help="an earlier attempt of this job created the repo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--perplexity-factor", type=float, default=CheckOptions.perplexity_factor,
                        help="the check stage's limit: times the worst source's perplexity")
    parser.add_argument("--allow-high-perplexity", action="store_true")
    add_publish_arguments(parser)
    parser.add_argument("--publish-intermediates", action="store_true")
    parser.set_defaults(run=run_job_command)


class _Stages:
    """Prints a stage line on a new stage or each 1 % of progress."""

    def __init__(self) -> None:
        self.last: tuple[str, int] | None = None

    def __call__(self, stage: str, fraction: float) -> None:
        key = (stage, int(fraction * 100))
        if key != self.last:
            self.last = key
            print(f"{STAGE}{stage} {fraction:.3f}", flush=True)


def run_job_command(args: argparse.Namespace) -> int:
    token, recipe = os.environ.get("HF_TOKEN"), os.environ.get("MERGEBOT_RECIPE")
    if not token or not recipe:
        print(f"{ERROR}fatal: the Job has no HF_TOKEN or MERGEBOT_RECIPE secret", flush=True)
        return 1
    try:
        adapter = adapter_options(args)
        sets = _evaluation(os.environ.get("MERGEBOT_EVALUATION"))
    except InputError as exc:
        print(f"{ERROR}input: {_line(exc)}", flush=True)
        return 2
    work = Path(tempfile.mkdtemp(prefix="mergebot-job-"))
    request = PublishRequest(
        recipe_text=recipe, repo_id=args.repo, token=token, work_dir=work,
        endpoint=os.environ.get("HF_ENDPOINT") or None, private=args.private,
        trigger=args.trigger, provenance=args.provenance, job_key=args.job_key,
        repo_created_earlier=args.repo_created_earlier, device=args.device,
        publish_intermediates=args.publish_intermediates,
        checks=CheckOptions(perplexity_factor=args.perplexity_factor,
                            allow_high_perplexity=args.allow_high_perplexity),
        publish=args.publish, adapter=adapter, evaluate=sets)
    try:
        result = merge_and_publish(request, _Stages())
    except InputError as exc:
        kind = "source" if isinstance(exc, SourceError) else "input"
        print(f"{ERROR}{kind}: {_line(exc)}", flush=True)
        return 2
    except Exception as exc:  # one line for the bot; the traceback stays in the log
        kind = "transient" if is_transient(exc) else "fatal"
        print(f"{ERROR}{kind}: {_line(exc)}", flush=True)
        if kind == "fatal":
            traceback.print_exc(file=sys.stdout)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(RESULT + json.dumps({
        "commit": result.commit_sha, "repo_id": result.repo_id, "revisions": result.revisions,
        "reused_commit": result.reused_commit, "created_repo": result.created_repo,
        "adapter_repo": result.adapter_repo, "adapter_commit": result.adapter_commit,
        "adapter_summary": result.adapter_summary,
        "evaluation": result.evaluation.to_json() if result.evaluation else None,
    }, sort_keys=True), flush=True)
    return 0


def _evaluation(text: str | None) -> tuple:
    """The sets of the ``MERGEBOT_EVALUATION`` secret (none when it is unset)."""
    if not text:
        return ()
    try:
        data = json.loads(text)
    except ValueError:
        raise InputError("the MERGEBOT_EVALUATION secret is not a JSON list of "
                         "evaluation sets") from None
    return tuple(parse_eval_sets(data, "evaluation"))


def _line(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())
