"""The `repsr` command: a thin argparse layer over the Python API.

Each sub-command lives in its own module with `add_parser(subparsers)` and `run(args) -> int`.
Errors the user can fix (`RepsrError`) are printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from repsr.errors import RepsrError

# name -> module; each module defines add_parser() and run().
COMMANDS: dict[str, str] = {
    name: f"repsr.cli.{name}"
    for name in ("train", "deploy", "upscale", "eval", "export", "bench", "demo", "study")
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repsr", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS.values():
        if importlib.util.find_spec(module_name) is not None:  # tests check that all of them exist
            importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RepsrError as error:
        print(f"repsr: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("repsr: interrupted", file=sys.stderr)
        return 130
