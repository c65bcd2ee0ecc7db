"""`repsr corpus OUT_DIR`: build the training corpus of the shipped models from Debian packages."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "corpus",
        help="build the shipped models' training corpus (Debian wallpaper photographs)",
        description="Download three Debian wallpaper packages (apt-get download), pick their photographs, "
        "clean JPEG blocking by a MATLAB-bicubic x1/2 where it shows, and write OUT/train and OUT/holdout "
        "as PNG. Any folder of HR photographs works for training instead.",
    )
    parser.add_argument("output", type=Path, help="output folder (train/, holdout/, corpus.tsv)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repsr.data.corpus import build_corpus

    written = build_corpus(args.output)
    train, holdout = len(written["train"]), len(written["holdout"])
    print(f"{train} training and {holdout} held-out photographs in {args.output}")
    return 0
