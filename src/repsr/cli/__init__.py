"""The `repsr` command: a thin argparse layer over the Python API.

Each sub-command lives in its own module with `add_parser(subparsers)` and `run(args) -> int`.
Errors the user can fix (`RepsrError`) are printed as one line, never as a traceback.

Process settings: `main` calls `repsr.util.runtime.use_passive_omp_wait()` before any command module (and so
torch) is imported. That works for the console script and `python -m repsr` because neither `repsr`
nor `repsr.cli` imports torch at import time (the package's names load lazily); when a program imports
torch before calling `main`, OpenMP keeps the policy it started with.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from repsr.util.errors import RepsrError
from repsr.util.runtime import use_passive_omp_wait

# name -> module; each module defines add_parser() and run().
COMMANDS: dict[str, str] = {
    name: f"repsr.cli.{name}"
    for name in (
        "train",
        "deploy",
        "upscale",
        "eval",
        "export",
        "bench",
        "demo",
        "study",
        "models",
        "corpus",
        "app",
    )
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
    use_passive_omp_wait()  # before build_parser: command modules import torch
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RepsrError as error:
        print(f"repsr: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("repsr: interrupted", file=sys.stderr)
        return 130
