"""`mergebot` command line: one subcommand per service entry point.

Each subcommand registers itself with `add_<name>_parser` and runs through its `run`
callable, so new subcommands (the bot server, workers...) plug in without touching others.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .merge_cli import add_merge_parser

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergebot", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_localhub_parser(subparsers)
    add_merge_parser(subparsers)
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
