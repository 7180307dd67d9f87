"""Command line: parse arguments, call the API, print. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from searchcomp.errors import SearchcompError


def _add_space(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="the space file (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the space file, e.g. --set data.train_size=2000 "
                        "(repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """The ``searchcomp`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="searchcomp",
        description="Multi-objective compression search for PyTorch CNNs.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="show blocks, choices, space size and base metrics "
                                       "(trains nothing)")
    _add_space(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="apply the space's quick: overrides")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"searchcomp {version('searchcomp')}"
    except PackageNotFoundError:
        return "searchcomp (not installed)"


def _cmd_inspect(args: argparse.Namespace) -> int:
    from searchcomp.overview import inspect_space
    from searchcomp.space import load_space

    space = load_space(args.space, args.overrides, quick=args.quick)
    report = inspect_space(space, progress=None if args.json else _stderr)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.to_text())
    return 0


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


COMMANDS = {"inspect": _cmd_inspect}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``searchcomp`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SearchcompError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
