"""`mergebot` command line: one subcommand per service entry point.

Each subcommand registers itself with `add_<name>_parser` and runs through its `run`
callable, so new subcommands (the bot server, workers...) plug in without touching others.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from .backends.job_main import add_job_parser
from .merge_cli import add_merge_parser, add_publish_arguments, eval_set_items

Runner = Callable[[argparse.Namespace], int]


def _run_localhub(args: argparse.Namespace) -> int:
    from .localhub.auth import parse_user
    from .localhub.server import serve

    try:
        users = [parse_user(spec) for spec in args.user]
    except ValueError as exc:
        print(f"mergebot localhub: --user {exc}", file=sys.stderr)
        return 2
    print(
        f"localhub serving {args.data} on http://{args.host}:{args.port} "
        f"for {', '.join(u.name for u in users) or 'no users'}",
        file=sys.stderr,
    )
    serve(
        args.data,
        users,
        host=args.host,
        port=args.port,
        bandwidth_mbps=args.bandwidth,
        test_hooks=args.test_hooks,
        log_level=args.log_level,
    )
    return 0


def add_localhub_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "localhub",
        help="serve a Hugging Face Hub-compatible API from a local directory",
        description="A Hub-compatible server for offline use and tests. Point the client at "
        "it with HF_ENDPOINT=http://HOST:PORT and HF_HUB_DISABLE_XET=1.",
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data", required=True, help="directory holding repos (created)")
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:TOKEN",
        help="a user and their token (repeatable)",
    )
    parser.add_argument(
        "--bandwidth", type=float, metavar="MBPS", help="throttle transfers to MB/s"
    )
    parser.add_argument(
        "--test-hooks", action="store_true", help="open /_localhub/* (stats, faults) without auth"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.set_defaults(run=_run_localhub)


def _configure_logging(level: str) -> None:
    """The bot's own log lines to stderr; the Hub client's request lines only when debugging."""
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s: %(message)s")
    if level != "debug":
        logging.getLogger("httpx2").setLevel(logging.WARNING)


def _settings_or_exit(command: str):
    from .settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"mergebot {command}: {exc}", file=sys.stderr)
        return None


def _run_serve(args: argparse.Namespace) -> int:
    from .server import serve

    settings = _settings_or_exit("serve")
    if settings is None:
        return 2
    print(
        f"mergebot serving on http://{args.host}:{args.port} with {args.workers} worker(s), "
        f"state in {settings.home}",
        file=sys.stderr,
    )
    _configure_logging(args.log_level)
    ui = _ui_plugin() if args.ui else None
    serve(settings, host=args.host, port=args.port, workers=args.workers,
          log_level=args.log_level, ui=ui)
    return 0


def _ui_plugin():
    """The web UI registered under the ``mergebot.ui`` entry point (``spaces_app``), so the
    bot never imports the layer above it; None, with a note, when it cannot be loaded."""
    for entry in entry_points(group="mergebot.ui"):
        try:
            return entry.load()
        except ImportError as exc:
            print(f"mergebot serve: serving without the UI ({exc})", file=sys.stderr)
            return None
    print("mergebot serve: no UI installed; serving the API only", file=sys.stderr)
    return None


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the bot: REST API, Hub webhook and workers in one process",
        description="Configuration comes from the environment: HF_ENDPOINT, HF_TOKEN, "
        "WEBHOOK_SECRET, MERGEBOT_HOME, MERGEBOT_PUBLIC_URL, MERGEBOT_NAMESPACE (see "
        "bot/settings.py for the limits).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--workers", type=int, default=1, help="in-process workers (0: none)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--no-ui", dest="ui", action="store_false",
                        help="serve without the web UI at /")
    parser.set_defaults(run=_run_serve)


def _run_space(args: argparse.Namespace) -> int:
    import os

    from .server import serve
    from .settings import Settings, SettingsError
    from .space import space_environment

    env, notices = space_environment(os.environ, args.data)
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"mergebot space: {exc}", file=sys.stderr)
        return 2
    print(
        f"mergebot Space serving on http://{args.host}:{args.port} with {args.workers} "
        f"worker(s), state in {settings.home}, public URL {settings.public_url or 'not set'}",
        file=sys.stderr,
    )
    _configure_logging(args.log_level)
    serve(settings, host=args.host, port=args.port, workers=args.workers,
          log_level=args.log_level, ui=_ui_plugin(), notices=notices)
    return 0


def add_space_parser(subparsers: argparse._SubParsersAction) -> None:
    from pathlib import Path

    from .space import DATA

    parser = subparsers.add_parser(
        "space",
        help="run the bot as a Hugging Face Space: `mergebot serve` with the Space's "
        "environment mapped onto the bot's (see bot/space.py)",
        description="The start command of the bot Space's Dockerfile. State goes to the "
        "persistent storage (/data/mergebot) when the Space has it, the public URL is "
        "https://$SPACE_HOST, HF_TOKEN and WEBHOOK_SECRET are the Space's secrets.",
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=7860, help="the README's app_port")
    parser.add_argument("--workers", type=int, default=1, help="in-process workers (0: none)")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="where the persistent storage is mounted (default /data)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.set_defaults(run=_run_space)


def _run_worker(args: argparse.Namespace) -> int:
    from .server import run_worker_process

    settings = _settings_or_exit("worker")
    if settings is None:
        return 2
    _configure_logging("info")
    run_worker_process(settings, args.workers)
    return 0


def add_worker_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run extra workers against the state of a running `mergebot serve`",
        description="Uses the same environment as `mergebot serve` (MERGEBOT_HOME above all).",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker threads")
    parser.set_defaults(run=_run_worker)


def _call_api(method: str, url: str, token: str | None, body: dict | None = None):
    """(status, JSON answer) of one request to a running `mergebot serve`."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": f"HTTP {exc.code}"}


def _print_api_error(command: str, status: int, answer: dict) -> int:
    for item in answer.get("errors") or []:
        where = f"{item.get('loc')}: " if item.get("loc") else ""
        print(f"mergebot {command}: {where}{item.get('msg')}", file=sys.stderr)
    if answer.get("error"):
        print(f"mergebot {command}: {answer['error']} (HTTP {status})", file=sys.stderr)
    return 2 if status in (400, 413, 422) else 1


def _default_repo(text: str, path) -> str | None:
    """None when the recipe has a ``name`` (the bot uses it), else a repo name from the
    file's name (``my recipe.yml`` -> ``my-recipe``); the bot puts it in its namespace."""
    import re

    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None  # the bot answers with the error's place
    if isinstance(data, dict) and data.get("name"):
        return None
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.") or "merged-model"
    return re.sub(r"-{2,}|\.{2,}", "-", name)[:96]


def _sweep_axes(specs: list[str]) -> dict[str, list]:
    """``--sweep 'models[1].parameters.weight=0.1,0.2'`` (repeatable) -> the API's axes;
    each value is read as YAML (numbers, names). ValueError: one sentence."""
    import yaml

    axes: dict[str, list] = {}
    for spec in specs:
        path, sep, values = spec.partition("=")
        if not sep or not path.strip() or not values.strip():
            raise ValueError(f"--sweep {spec!r} must look like 'models[1].parameters.weight="
                             "0.1,0.2,0.3'")
        try:
            axes[path.strip()] = [yaml.safe_load(v.strip()) for v in values.split(",")]
        except yaml.YAMLError:
            raise ValueError(f"--sweep {spec!r}: the values must be numbers or names") from None
    return axes


def _run_submit(args: argparse.Namespace) -> int:
    import time

    settings = _settings_or_exit("submit")
    if settings is None:
        return 2
    try:
        text = args.recipe.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"mergebot submit: cannot read {args.recipe}: {exc}", file=sys.stderr)
        return 2
    url = (args.url or settings.server_url).rstrip("/")
    repo = args.repo or _default_repo(text, args.recipe)
    body = {
        "recipe": text,
        "repo_id": repo,
        "private": args.private,
        "watch": args.watch,
        "force": args.force,
        "allow_high_perplexity": args.allow_high_perplexity,
        "publish": args.publish,
        "publish_intermediates": args.publish_intermediates,
    }
    if args.publish != "full" or args.max_rank is not None:
        body["max_rank"] = args.max_rank
    if args.sv_cutoff:
        body["sv_cutoff"] = args.sv_cutoff
    if args.sweep or args.metric or args.sweep_publish:
        return _submit_sweep(args, settings, url, body)
    if args.eval_texts or args.eval_dataset:  # a single merge, scored on these sets
        try:
            body["evaluation"] = eval_set_items(args)
        except ValueError as exc:
            print(f"mergebot submit: {exc}", file=sys.stderr)
            return 2
    try:
        status, answer = _call_api("POST", f"{url}/api/recipes", settings.token, body)
        if status != 201:
            return _print_api_error("submit", status, answer)
        print(answer["job_id"])
        print(f"recipe {answer['recipe_id']} -> {answer['repo_id']}", file=sys.stderr)
        while args.wait:
            status, job = _call_api("GET", f"{url}/api/jobs/{answer['job_id']}", settings.token)
            if status == 200 and job["status"] in ("succeeded", "failed", "skipped"):
                note = " (unchanged since this commit; --force merges anyway)" * (
                    job["status"] == "skipped" and bool(job.get("commit"))
                )
                print(
                    f"{job['status']}: {job.get('commit') or job.get('error') or ''}{note}",
                    file=sys.stderr,
                )
                return 0 if job["status"] != "failed" else 1
            time.sleep(1)
    except OSError as exc:
        print(f"mergebot submit: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    return 0


def _submit_sweep(args: argparse.Namespace, settings, url: str, body: dict) -> int:
    """``submit --sweep``: POST /api/sweeps; prints the sweep id (and waits for it)."""
    import time

    try:
        if not args.sweep:
            raise ValueError("--metric and --sweep-publish go with --sweep")
        if args.publish != "full" or args.publish_intermediates:
            raise ValueError("a sweep publishes full weights of a single-stage recipe; "
                             "leave out --publish and --publish-intermediates")
        for field in ("publish", "publish_intermediates", "max_rank", "sv_cutoff"):
            body.pop(field, None)
        body.update(sweep=_sweep_axes(args.sweep), evaluation=eval_set_items(args),
                    publish=args.sweep_publish or "best")
    except ValueError as exc:
        print(f"mergebot submit: {exc}", file=sys.stderr)
        return 2
    body.pop("force")
    if args.metric:
        body["metric"] = args.metric
    try:
        status, answer = _call_api("POST", f"{url}/api/sweeps", settings.token, body)
        if status != 201:
            return _print_api_error("submit", status, answer)
        print(answer["sweep_id"])
        print(f"sweep {answer['sweep_id']}: {len(answer['variants'])} variants -> "
              f"{answer['repo_id']}", file=sys.stderr)
        while args.wait:
            status, sweep = _call_api("GET", f"{url}/api/sweeps/{answer['sweep_id']}",
                                      settings.token)
            if status == 200 and sweep["status"] in ("succeeded", "failed"):
                print(f"{sweep['status']}: {sweep.get('best') or ''} "
                      f"{sweep.get('commit') or sweep.get('error') or ''}".rstrip(),
                      file=sys.stderr)
                return 0 if sweep["status"] == "succeeded" else 1
            time.sleep(1)
    except OSError as exc:
        print(f"mergebot submit: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    return 0


def add_submit_parser(subparsers: argparse._SubParsersAction) -> None:
    from pathlib import Path

    parser = subparsers.add_parser(
        "submit",
        help="submit a recipe to a running `mergebot serve`; prints the job id",
        description="The token is HF_TOKEN; the server is --url or MERGEBOT_URL.",
    )
    parser.add_argument("recipe", type=Path)
    parser.add_argument(
        "--repo",
        metavar="OWNER/NAME",
        help="target repo (default: in the bot's namespace, the recipe's `name`, else the "
        "recipe file's name)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="merge even when the recipe and its sources are unchanged since the last merge",
    )
    parser.add_argument("--watch", action="store_true", help="remerge when a source changes")
    parser.add_argument("--private", action="store_true", help="make the merged repo private")
    parser.add_argument("--allow-high-perplexity", action="store_true",
                        help="publish even when the checks find the merge's perplexity far "
                             "above its sources'")
    add_publish_arguments(parser)
    parser.add_argument("--publish-intermediates", action="store_true",
                        help="multi-stage recipe: publish each earlier stage's output on a "
                             "branch stage-<name> of the repo too")
    parser.add_argument("--wait", action="store_true", help="wait until the job ends")
    parser.add_argument("--url", help="the server (default MERGEBOT_URL or :7860)")
    sweep = parser.add_argument_group(
        "sweeps", "merge the recipe at several values of one or two of its parameters, "
        "evaluate each variant and publish the best (prints the sweep id)")
    sweep.add_argument("--sweep", action="append", default=[], metavar="PATH=V1,V2,...",
                       help="a YAML path of the recipe and its values, e.g. "
                            "'models[1].parameters.weight=0.1,0.2,0.3' (at most two)")
    sweep.add_argument("--eval-texts", action="append", default=[], metavar="[NAME=]FILE",
                       help="an evaluation set: a text file, one text a line (without "
                            "--sweep: the single merge is scored, its card gets the table)")
    sweep.add_argument("--eval-dataset", action="append", default=[],
                       metavar="REPO[,name=,config=,split=,column=,samples=,revision=]",
                       help="an evaluation set: a Hub dataset's text column")
    sweep.add_argument("--metric", help="the set whose perplexity picks the best variant "
                                        "(default: the first)")
    sweep.add_argument("--sweep-publish", choices=["best", "branches"],
                       help="best (default): publish the best variant; branches: every "
                            "variant on its own branch, the best on main")
    parser.set_defaults(run=_run_submit)


def _run_status(args: argparse.Namespace) -> int:
    import json

    settings = _settings_or_exit("status")
    if settings is None:
        return 2
    url = (args.url or settings.server_url).rstrip("/")
    try:
        status, job = _call_api("GET", f"{url}/api/jobs/{args.job}", settings.token)
    except OSError as exc:
        print(f"mergebot status: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        return _print_api_error("status", status, job)
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    progress = f" {job['progress']:.0%}" if job.get("progress") is not None else ""
    print(
        f"job {job['id']} ({job['repo_id']}): {job['status']}"
        f" [{job.get('stage') or '-'}{progress}], attempt {job['attempts']}"
    )
    for key in ("trigger", "commit", "error"):
        if job.get(key):
            print(f"  {key}: {job[key]}")
    for repo, sha in (job.get("source_shas") or {}).items():
        print(f"  source {repo}@{sha}")
    for line in job.get("log") or []:
        print(f"  | {line}")
    return 0


def add_status_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show a job of a running `mergebot serve`")
    parser.add_argument("job", type=int)
    parser.add_argument("--url", help="the server (default MERGEBOT_URL or :7860)")
    parser.add_argument("--json", action="store_true", help="print the job as JSON")
    parser.set_defaults(run=_run_status)


def _run_sweep(args: argparse.Namespace) -> int:
    import json

    settings = _settings_or_exit("sweep")
    if settings is None:
        return 2
    url = (args.url or settings.server_url).rstrip("/")
    try:
        status, sweep = _call_api("GET", f"{url}/api/sweeps/{args.sweep}", settings.token)
    except OSError as exc:
        print(f"mergebot sweep: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        return _print_api_error("sweep", status, sweep)
    if args.json:
        print(json.dumps(sweep, indent=2))
        return 0
    print(format_sweep(sweep))
    return 0


def format_sweep(sweep: dict) -> str:
    """A sweep as text: its state, then a row per variant and per source with the
    perplexity on each set (``*`` marks the published variant)."""
    sets = [s["name"] for s in sweep["table"]["sets"]]
    lines = [f"sweep {sweep['id']} ({sweep['repo_id']}): {sweep['status']}, publish "
             f"{sweep['publish']}, best by perplexity on {sweep['metric']}"]
    for key in ("best", "commit", "error"):
        if sweep.get(key):
            lines.append(f"  {key}: {sweep[key]}")
    width = max([len(r["label"]) for r in sweep["table"]["rows"]] + [8])
    lines.append("    " + "".ljust(width) + "".join(f"  {n[:14]:>14}" for n in sets))
    status = {v["label"]: v["status"] for v in sweep["variants"]}
    for row in sweep["table"]["rows"]:
        mark = "*" if row["label"] == sweep.get("best") else " "
        cells = "".join(
            f"  {row['scores'][n]['perplexity']:>14.4g}" if n in row["scores"] else
            f"  {'-':>14}" for n in sets)
        note = status.get(row["label"], row["kind"])
        lines.append(f"  {mark} {row['label'].ljust(width)}{cells}  {note}")
    return "\n".join(lines)


def add_sweep_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sweep", help="show a sweep of a running `mergebot serve`")
    parser.add_argument("sweep", type=int)
    parser.add_argument("--url", help="the server (default MERGEBOT_URL or :7860)")
    parser.add_argument("--json", action="store_true", help="print the sweep as JSON")
    parser.set_defaults(run=_run_sweep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergebot", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_localhub_parser(subparsers)
    add_merge_parser(subparsers)
    add_job_parser(subparsers)
    add_serve_parser(subparsers)
    add_space_parser(subparsers)
    add_worker_parser(subparsers)
    add_submit_parser(subparsers)
    add_status_parser(subparsers)
    add_sweep_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runner: Runner = args.run
    try:
        return runner(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
