"""`repsr study NAME`: the paper's experiments at laptop scale (see `repsr.apps.studies`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from repsr.cli.args import add_named_folders, add_overrides, add_progress, show_progress


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from repsr.apps.studies import STUDIES

    parser = subparsers.add_parser(
        "study",
        help="train and compare variants of the recipe (blocks, bn, switch, design, speed)",
        description="Train the variants of one study with the same budget over several seeds, evaluate "
        "the deployed networks, and write results.md, results.json and plots to runs/study-NAME/.",
    )
    parser.add_argument("name", choices=sorted(STUDIES), help="which study")
    parser.add_argument(
        "--iterations", type=int, help="training iterations per variant (default: the study's)"
    )
    parser.add_argument("--seeds", type=int, help="seeds per variant (default: the study's)")
    add_named_folders(parser, "--data", "extra evaluation sets", nargs="*")
    parser.add_argument("--train-data", type=Path, help="folder of HR training images (default: built-in)")
    add_overrides(parser, "config override for every variant (e.g. train.batch_size=32)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="LABEL", help="run only this variant (repeatable)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: runs/study-NAME)")
    add_progress(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repsr.apps.studies import run_study
    from repsr.util.errors import ConfigError

    for flag in ("iterations", "seeds"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag} must be at least 1, got {value}")
    report = run_study(
        args.name,
        iterations=args.iterations,
        seeds=args.seeds,
        data=args.data,
        train_data=args.train_data,
        overrides=args.overrides,
        only=args.only,
        out=args.out,
        progress=show_progress(args),
    )
    print(f"\nresults: {report}")
    return 0
