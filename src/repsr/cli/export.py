"""`repsr export MODEL --onnx OUT.onnx [--dynamic]`: ONNX export checked in ONNX Runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from repsr.cli.args import add_size
from repsr.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from repsr.export import ONNX_OPSET, ONNX_TOLERANCE

    parser = subparsers.add_parser(
        "export",
        help="export the plain network to ONNX",
        description="Export to ONNX (needs pip install 'repsr[onnx]'), run it in ONNX Runtime on a sample "
        "photograph and keep the file only if it matches PyTorch.",
    )
    parser.add_argument("model", type=Path, help="model file (a training form is re-parameterized first)")
    parser.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    add_size(parser, (256, 256), "static input")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=ONNX_TOLERANCE,
        help=f"max abs difference (default {ONNX_TOLERANCE:g})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repsr.export import export_onnx
    from repsr.serialization import load_model

    if args.opset < 17:
        raise ConfigError(f"--opset must be 17 or newer, got {args.opset}")
    width, height = args.size
    model = load_model(args.model)
    report = export_onnx(
        model,
        args.onnx,
        dynamic=args.dynamic,
        size=(height, width),
        opset=args.opset,
        tolerance=args.tolerance,
    )
    shape = "x".join(str(d) for d in report.input_shape)
    print(f"{model.spec.name}: ONNX opset {report.opset}, input {shape}, exporter {report.exporter}")
    check = "x".join(str(d) for d in report.check_shape)
    print(f"ONNX Runtime vs PyTorch on a {check} photo crop: max abs difference {report.max_abs_diff:.2e}")
    print(f"wrote {report.path}")
    return 0
