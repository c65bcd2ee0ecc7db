"""`repsr export MODEL --onnx OUT.onnx [--dynamic] [--int8 [--calibration DIR]]` / `--ncnn DIR`: exports
checked in their runtime (int8: statically quantized and checked against the fp32 network)."""

from __future__ import annotations

import argparse
from pathlib import Path

from repsr.cli.args import add_overwrite, add_size
from repsr.util.errors import ConfigError, ModelFileError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from repsr.deploy.int8 import CALIBRATION_METHODS, MIN_INT8_PSNR
    from repsr.deploy.onnx import ONNX_OPSET, ONNX_TOLERANCE

    parser = subparsers.add_parser(
        "export",
        help="export the plain network to ONNX or ncnn",
        description="Export to ONNX (needs pip install 'repsr[onnx]') or ncnn (needs pip install "
        "'repsr[ncnn]' and pip install --no-deps pnnx), run it in ONNX Runtime / ncnn on a sample "
        "photograph and keep the files only if they match PyTorch.",
    )
    parser.add_argument("model", type=Path, help="model file (a training form is re-parameterized first)")
    parser.add_argument("--onnx", type=Path, help="ONNX file to write")
    parser.add_argument(
        "--ncnn",
        type=Path,
        metavar="DIR",
        help="folder for the ncnn NAME.param/NAME.bin (blobs data, output)",
    )
    parser.add_argument("--ncnn-name", help="ncnn file name without extension (default: the size name)")
    parser.add_argument(
        "--ncnn-fp16", action="store_true", help="store ncnn weights as fp16 (half the size, ~2e-4 off)"
    )
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="int8 static quantization of the ONNX file (QDQ, per-channel weights; always dynamic), kept "
        f"only if within {MIN_INT8_PSNR:g} dB PSNR of the fp32 network on held-out photos",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="photos to calibrate int8 activation ranges on (default: the built-in sample photographs)",
    )
    parser.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        default="minmax",
        help="int8 activation-range calibration (default minmax)",
    )
    add_size(parser, (256, 256), "static input")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=ONNX_TOLERANCE,
        help=f"max abs difference (default {ONNX_TOLERANCE:g})",
    )
    add_overwrite(parser, "the ONNX file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repsr.deploy.onnx import export_onnx
    from repsr.models.files import load_model

    if args.opset < 17:
        raise ConfigError(f"--opset must be 17 or newer, got {args.opset}")
    if args.onnx is None and args.ncnn is None:
        raise ConfigError("say what to export: --onnx FILE and/or --ncnn DIR")
    if args.int8 and args.onnx is None:
        raise ConfigError("--int8 quantizes the ONNX export: give --onnx FILE")
    if args.calibration is not None and not args.int8:
        raise ConfigError("--calibration applies to --int8 only")
    model = load_model(args.model)
    if args.ncnn is not None:
        from repsr.deploy.ncnn import export_ncnn

        ncnn = export_ncnn(model, args.ncnn, name=args.ncnn_name, fp16_weights=args.ncnn_fp16)
        check = "x".join(str(d) for d in ncnn.check_shape)
        weights = "fp16" if ncnn.fp16_weights else "fp32"
        print(
            f"{model.spec.name}: ncnn ({weights} weights), blobs {ncnn.input_blob} -> {ncnn.output_blob}, "
            f"any input size; ncnn vs PyTorch on a {check} photo crop: max abs difference "
            f"{ncnn.max_abs_diff:.2e} (fp16 storage on: {ncnn.max_abs_diff_fp16:.2e}; "
            f"fp16 activations as on ARM/Vulkan, estimated: {ncnn.fp16_storage_estimate:.2e})"
        )
        print(f"wrote {ncnn.param} and {ncnn.bin}")
        if args.onnx is None:
            return 0
    if args.int8:
        return run_int8(model, args)
    width, height = args.size
    report = export_onnx(
        model,
        args.onnx,
        dynamic=args.dynamic,
        size=(height, width),
        opset=args.opset,
        tolerance=args.tolerance,
        overwrite=args.overwrite,
    )
    shape = "x".join(str(d) for d in report.input_shape)
    print(f"{model.spec.name}: ONNX opset {report.opset}, input {shape}, exporter {report.exporter}")
    check = "x".join(str(d) for d in report.check_shape)
    print(f"ONNX Runtime vs PyTorch on a {check} photo crop: max abs difference {report.max_abs_diff:.2e}")
    print(f"wrote {report.path}")
    return 0


def fused_int8_here() -> bool:
    """Whether `repsr upscale --precision int8` runs the fused kernel here (not ONNX Runtime)."""
    import torch

    from repsr.inference.backends import REGISTRY
    from repsr.util.precision import Precision

    return Precision.INT8 in REGISTRY["fused"].precisions(torch.device("cpu"))


def run_int8(model, args: argparse.Namespace) -> int:
    from repsr.deploy.int8 import MAX_INT8_PIXEL_LEVELS, export_int8_onnx

    try:
        report = export_int8_onnx(
            model, args.onnx, args.calibration, method=args.calibration_method, overwrite=args.overwrite
        )
    except ModelFileError as refusal:
        if not fused_int8_here():
            raise
        raise ModelFileError(
            f"{refusal}; this CPU's fused kernel has an int8 path that holds such ranges: "
            "repsr upscale --precision int8 with the model itself"
        ) from None
    saturated = " (and as many with more saturated colours)" if report.saturated_crops else ""
    print(
        f"{model.spec.name}: int8 QDQ (per-channel weights), calibrated ({report.method}) on "
        f"{report.calibration_crops} crops of {report.calibration}{saturated}"
    )
    kept = ", ".join(report.float_nodes) if report.float_nodes else "none"
    print(f"kept in float32: {kept}")
    print(
        f"int8 vs fp32 on {report.verify_images} photographs (held-out and harsh; ONNX Runtime here): lowest "
        f"PSNR {report.psnr:.1f} dB (minimum {report.min_psnr:g}), worst pixel {report.worst_levels} levels "
        f"on {report.worst_image} (limit {MAX_INT8_PIXEL_LEVELS}); synthetic graphics "
        f"{report.graphics_levels} "
        "levels (int8 is for photographs)"
    )
    print(f"wrote {report.path}")
    return 0
