"""`repsr train CONFIG.yaml`: train a RepSR network and deliver the plain model.

Under `torchrun --nproc_per_node=N -m repsr train ...` the same command trains data-parallel.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from repsr.cli.args import add_named_folders, add_overrides, add_progress, show_progress


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train a multi-branch RepSR network (BN switch, merged phase 2), save the plain model.",
    )
    parser.add_argument("config", type=Path, help="YAML config, e.g. configs/quick.yaml")
    parser.add_argument("--data", type=Path, help="folder of HR training images (default: sample images)")
    add_named_folders(
        parser, "--val", "validation set (repeatable); default: the sample validation images", action="append"
    )
    parser.add_argument("--out", type=Path, help="run folder (default: runs/NAME)")
    add_overrides(parser, "override a config key, e.g. --set train.iterations=1000 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    parser.add_argument(
        "--init",
        metavar="MODEL",
        help="fine-tune: start from a shipped model (e.g. repsr-m4c16-x4) or a training-form model file; "
        "same as --set train.init=MODEL",
    )
    add_progress(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repsr.quality.evaluation import parse_named_folders
    from repsr.training import TrainingInterrupted, load_config, train
    from repsr.util.atomic import check_folder

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = [*args.overrides, *([f"train.init={args.init}"] if args.init else [])]
    config = load_config(args.config, overrides)
    check_folder(args.out if args.out is not None else Path("runs") / config.name, what="run folder")
    try:
        result = train(
            config,
            data=args.data,
            val=parse_named_folders(args.val, "--val") or None,
            out=args.out,
            resume=args.resume,
            progress=show_progress(args),
        )
    except TrainingInterrupted as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"repsr: {stop}", file=sys.stderr)
            print(f"resume with: {resume_command(args, config.name)}", file=sys.stderr)
        return 128 + int(stop.signum)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"deployed model: {result.model_path}")
    return 0


def resume_command(args: argparse.Namespace, name: str) -> str:
    """The exact `repsr train ... --resume` command that continues this run (same config, data, sets)."""
    words = ["repsr", "train", str(args.config)]
    if args.data is not None:
        words += ["--data", str(args.data)]
    for spec in args.val:
        words += ["--val", spec]
    words += ["--out", str(args.out if args.out is not None else Path("runs") / name)]
    for override in args.overrides:
        words += ["--set", override]
    if args.init:
        words += ["--init", args.init]  # the same config; a resumed run takes its weights from the checkpoint
    if args.no_progress:
        words.append("--no-progress")
    return shlex.join([*words, "--resume"])
