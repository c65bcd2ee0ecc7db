"""Argument declarations shared by the sub-commands: one spelling, parser and help text for each."""

from __future__ import annotations

import argparse
from typing import Any


def size_type(text: str) -> tuple[int, int]:
    """`WxH` -> (width, height)."""
    width, sep, height = text.lower().partition("x")
    try:
        if not sep or int(width) < 1 or int(height) < 1:
            raise ValueError
        return int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 320x180, got {text!r}") from None


def tile_type(text: str) -> int | str | None:
    """`auto`, `none` (no tiling) or a tile side of at least `MIN_TILE` LR pixels (the one rule,
    `repsr.inference.upscaler.check_tile`); 0 is refused with a pointer to `none`."""
    from repsr.inference.tiling import MIN_TILE

    if text == "auto":
        return "auto"
    if text == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, none or a number of pixels, got {text!r}") from None
    if value < MIN_TILE:
        hint = " (use --tile none for no tiling)" if value <= 0 else ""
        raise argparse.ArgumentTypeError(
            f"tile must be auto, none or >= {MIN_TILE} pixels, got {value}{hint}"
        )
    return value


def add_size(parser: argparse.ArgumentParser, default: tuple[int, int], what: str) -> None:
    """`--size WxH` (width, height)."""
    width, height = default
    text = f"{what} WxH (default {width}x{height})"
    parser.add_argument("--size", type=size_type, default=default, help=text)


def add_device(parser: argparse.ArgumentParser, default: str = "auto", what: str = "") -> None:
    """`--device auto|cpu|cuda[:N]`."""
    text = f"where to run{what} (default {default}" + (": cuda if available)" if default == "auto" else ")")
    parser.add_argument("--device", default=default, help=f"{text}; auto, cpu or cuda")


def add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    """`--overwrite`: replace an existing output file; without it the command refuses before any work."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} if it exists already (without it the command refuses before any work); "
        "the input is never replaced",
    )


def add_progress(parser: argparse.ArgumentParser) -> None:
    """`--no-progress` (sets `args.no_progress`)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal and without `--no-progress`: in a log file or a pipe a bar's
    carriage-return updates run into the lines that follow (an error among them)."""
    import sys

    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """`--set KEY=VALUE`, repeatable, collected in `args.overrides`."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def add_named_folders(parser: argparse.ArgumentParser, flag: str, help: str, **how: Any) -> None:
    """`FLAG NAME=DIR ...` (parsed later by `repsr.quality.evaluation.parse_named_folders`); `how` says
    whether it repeats (`action="append"`) or takes several values (`nargs`); the default is an empty list."""
    parser.add_argument(flag, default=[], metavar="NAME=DIR", help=help, **how)
