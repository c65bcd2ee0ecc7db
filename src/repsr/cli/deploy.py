"""`repsr deploy CHECKPOINT -o model.safetensors`: merge a training-form model into the plain network."""

from __future__ import annotations

import argparse
from pathlib import Path

from repsr.cli.args import add_device, add_overwrite
from repsr.deploy.checkpoint import DEPLOY_TOLERANCE, WEIGHTS_CHOICES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="re-parameterize a checkpoint into the plain network",
        description="Merge every block into one 3x3 conv, check the plain network against the training "
        "form on a sample photograph, and save it (.safetensors, or .pth in Real-ESRGAN's layout).",
    )
    parser.add_argument("checkpoint", type=Path, help="training checkpoint (.pt) or any saved model")
    parser.add_argument("-o", "--output", type=Path, required=True, help="plain model to write")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEPLOY_TOLERANCE,
        help=f"largest max-abs difference accepted (default {DEPLOY_TOLERANCE:g})",
    )
    parser.add_argument(
        "--weights",
        choices=WEIGHTS_CHOICES,
        default="auto",
        help="a checkpoint's EMA or raw weights (default auto: EMA when the checkpoint has it)",
    )
    add_device(parser, "cpu", " the check")
    add_overwrite(parser, "the output model")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repsr.deploy.checkpoint import deploy
    from repsr.inference import resolve_device

    report = deploy(
        args.checkpoint,
        args.output,
        tolerance=args.tolerance,
        device=resolve_device(args.device),
        weights=args.weights,
        overwrite=args.overwrite,
    )
    origin = "already plain" if report.was_plain else f"re-parameterized ({report.weights} weights)"
    print(f"{report.spec.name}: {origin}; max abs difference to the training form {report.max_abs_diff:.2e}")
    print(f"wrote {report.target}")
    return 0
