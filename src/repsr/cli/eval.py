"""`repsr eval MODEL --data NAME=DIR ...`: PSNR/SSIM per dataset, beside the bicubic baseline."""

from __future__ import annotations

import argparse
from pathlib import Path

from repsr.cli.args import add_device, add_named_folders, add_overwrite, add_progress, show_progress


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="PSNR/SSIM of a model on datasets, with the bicubic baseline",
        description="Evaluate with the standard protocol (Y channel, border cropped by the scale, 8-bit "
        "rounding). Without --data, the built-in sample validation photographs are used.",
    )
    parser.add_argument("model", type=Path, help="model file (.safetensors, .pth, or a checkpoint)")
    add_named_folders(
        parser, "--data", "datasets: folders of HR images, or HR/ + LR_bicubic/X{scale}/ layouts", nargs="+"
    )
    parser.add_argument(
        "--degrade",
        nargs="*",
        metavar="CONDITION",
        help="the degraded benchmark: score each dataset under fixed, seeded degradations (JPEG, noise, "
        "blur, another downscaler) against bicubic of the same LR; all conditions when none is named "
        "(see repsr.quality.degraded.CONDITIONS)",
    )
    parser.add_argument("--json", type=Path, help="also write means and per-image values here")
    add_device(parser)
    parser.add_argument("--rgb", action="store_true", help="measure on RGB instead of Y (not comparable)")
    add_progress(parser)
    add_overwrite(parser, "the --json file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repsr.arch.network import describe
    from repsr.inference import resolve_device
    from repsr.models.loader import load_model
    from repsr.quality.degraded import degraded_sets, format_gains, select_conditions
    from repsr.quality.evaluation import evaluate, format_table, open_datasets
    from repsr.util.atomic import check_target

    resolve_device(args.device)  # a device this machine lacks: one line before any work
    if args.json is not None:
        check_target(args.json, what="JSON results", inputs=[args.model], overwrite=args.overwrite)
    conditions = select_conditions(args.degrade) if args.degrade is not None else None
    model = load_model(args.model)
    scale = describe(model).scale
    datasets = open_datasets(args.data, scale)
    if conditions is not None:
        datasets = degraded_sets(datasets, conditions, scale)
    results = evaluate(
        model, datasets, device=args.device, y_channel=not args.rgb, progress=show_progress(args)
    )
    print(format_table(results) if conditions is None else format_gains(results))
    if args.json is not None:
        results.write_json(args.json)
        print(f"wrote {args.json}")
    return 0
