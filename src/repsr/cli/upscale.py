"""`repsr upscale INPUT... -o OUT_DIR [-m MODEL]`: upscale image files, folders and globs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from repsr.cli.args import add_device, add_overwrite, add_progress, show_progress, tile_type

if TYPE_CHECKING:
    from repsr.inference import AutoDenoise, Upscaler
    from repsr.models.auto_denoise import DenoiseChoice


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from repsr.inference import BACKENDS, OUTPUT_FORMATS
    from repsr.models.pretrained import DEFAULT_MODEL, STYLES
    from repsr.util.precision import PRECISIONS

    parser = subparsers.add_parser(
        "upscale",
        help="upscale images with a model",
        description="Upscale images; gray, RGB, RGBA and 16-bit images come out in the same kind. Large "
        "images are tiled with overlap, so the result equals the untiled one. Videos (mp4, mkv, mov, "
        "webm, avi, ...; needs pip install 'repsr[video]') are streamed frame by frame, keeping time "
        "stamps and copying audio and subtitles.",
    )
    parser.add_argument(
        "-m",
        "--model",
        help=f"a shipped model's name (repsr models lists them; default {DEFAULT_MODEL}) or a model file "
        "(.safetensors, .pth, a checkpoint, or an .onnx file from repsr export, run by ONNX Runtime)",
    )
    parser.add_argument(
        "--style",
        choices=list(STYLES),
        help=f"the shipped model by look instead of -m: faithful ({STYLES['faithful']}, the default: the "
        f"most accurate restoration, for measurement and archives) or sharp ({STYLES['sharp']}: GAN-tuned, "
        "crisper edges and cleaner flat areas, lower PSNR)",
    )
    parser.add_argument(
        "--denoise",
        type=denoise_type,
        metavar="S",
        help="denoise strength 0..1 of a general model: 0 keeps the most detail (its clean partner), 1 "
        "removes the most noise and JPEG blocking; the weights are blended once at load time. auto (the "
        "default for a model with a partner): a strength per image from its JPEG quality, noise and block "
        "grid, printed per file",
    )
    parser.add_argument(
        "--denoise-from",
        metavar="MODEL",
        help="the detail end (strength 0) for --denoise with a model that has no shipped partner",
    )
    parser.add_argument(
        "inputs", nargs="+", help="image and video files, folders (recursive) or glob patterns"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output folder (or the output video file of one video); never read as input",
    )
    parser.add_argument(
        "--tile", type=tile_type, default="auto", help="tile side in LR pixels, auto (default) or none"
    )
    add_device(parser)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (default: every path that runs here is timed on a probe, the fused CPU kernel's int8 "
        "and bf16 included, and the fastest fp32 one runs unless a reduced precision is clearly faster "
        "and keeps the check photographs within 16 levels; the choice and why are printed), fp32, bf16, "
        "fp16 (CUDA), int8 (the fused kernel where it has an int8 path, else ONNX Runtime: an .onnx "
        "file from repsr export --int8, or the model quantized on the spot)",
    )
    parser.add_argument("--half", action="store_true", help="same as --precision fp16 (deprecated)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="execution path (default auto: channels-last, or on a CPU the fused C kernel where --precision "
        "auto finds it the fastest; fused: that kernel, fp32/bf16/int8 as the CPU allows)",
    )
    parser.add_argument(
        "--format", dest="fmt", choices=OUTPUT_FORMATS, help="output format (default: the input's, else png)"
    )
    parser.add_argument("--codec", default="libx264", help="video encoder (default libx264; ffv1: lossless)")
    parser.add_argument("--crf", type=int, default=18, help="video quality, lower is better (default 18)")
    parser.add_argument(
        "--preset",
        help="video encoder speed: libx264/libx265 ultrafast ... veryslow (default medium), libsvtav1 0-13; "
        "a faster preset keeps the encoder from slowing the pipeline, at a larger file",
    )
    add_overwrite(parser, "output files (e.g. an earlier run's results)")
    add_progress(parser)
    parser.set_defaults(func=run)


def denoise_type(value: str) -> str | float:
    """`--denoise`: "auto" or a number (argparse names the option when it is neither; the range is
    checked with the model, as the Python API checks it)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto or a strength between 0 and 1, got {value!r}"
        ) from None


def announced_upscaler(
    model: str, denoise: str | float | None, denoise_from: str | None, **options
) -> Upscaler | AutoDenoise:
    """`repsr.inference.make_upscaler`, saying which blend runs once it is loaded (not before a partner
    is refused)."""
    from repsr.inference import AutoDenoise, make_upscaler
    from repsr.models.blend import check_strength

    if denoise is not None and denoise != "auto":
        denoise = check_strength(denoise)
    runner = make_upscaler(model, denoise, denoise_from, **options)
    if isinstance(runner, AutoDenoise):
        print(f"denoise auto: {model} blended with its detail partner at a strength per image (from its "
              "JPEG quality, noise and block grid; --denoise S forces one)")  # fmt: skip
    elif denoise is not None:
        print(f"denoise strength {denoise:g}: {model} blended with its detail partner")
    return runner


def say(line: str, progress: bool) -> None:
    """Print `line` above the progress bar when there is one (tqdm.write), else plainly."""
    if progress:
        from tqdm import tqdm

        tqdm.write(line)
    else:
        print(line, flush=True)


def chosen_model(model: str | None, style: str | None) -> tuple[str, str]:
    """(for images, for videos): the model `-m` names, else the shipped model of `--style`, for both; with
    neither, the defaults: the photo-size general model for images and the fast one for videos (a photo
    is upscaled once, a video's frames must keep up). Both `-m` and `--style` is an error."""
    from repsr.models.pretrained import DEFAULT_VIDEO_MODEL, STYLES
    from repsr.util.errors import ConfigError

    if model is not None and style is not None:
        raise ConfigError(f"--style {style} picks {STYLES[style]}: give -m or --style, not both")
    if model is None and style is None:
        return STYLES["faithful"], DEFAULT_VIDEO_MODEL
    chosen = model if model is not None else STYLES[style]
    return chosen, chosen


def run(args: argparse.Namespace) -> int:
    """SIGTERM raises KeyboardInterrupt here (main thread), so the atomic writers remove their hidden
    temporary file as for Ctrl-C (Python's default for SIGTERM exits without any cleanup)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _run(args)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from repsr.inference import plan_outputs, resolve_device, upscale_files
    from repsr.inference.video import check_container, check_encoding, describe

    # Every option, output path and encoder setting is checked before the model loads and work starts.
    model, video_model = chosen_model(args.model, args.style)
    resolve_device(args.device)
    jobs, _missing = plan_outputs(args.inputs, args.output, fmt=args.fmt, overwrite=args.overwrite)
    videos = [job for job in jobs if job.video]
    if videos:
        check_encoding(args.codec, args.crf, args.preset)
        for target in {job.target.suffix.lower(): job.target for job in videos}.values():
            check_container(target, args.codec)
    precision = "fp16" if args.half else args.precision
    options = {"device": args.device, "precision": precision, "tile": args.tile, "backend": args.backend}
    upscaler = video_upscaler = None
    if any(not job.video for job in jobs) or video_model == model:
        upscaler = announced_upscaler(model, args.denoise, args.denoise_from, **options)
        print(f"precision {upscaler.precision}: {upscaler.precision_reason}")
    if videos and video_model != model:
        print(f"videos: {video_model} (fast enough for video; images get {model}; -m picks one for both)")
        video_upscaler = announced_upscaler(video_model, args.denoise, args.denoise_from, **options)
        print(f"precision {video_upscaler.precision}: {video_upscaler.precision_reason}")
    upscaler = upscaler if upscaler is not None else video_upscaler
    if upscaler.device.type == "cpu" and upscaler.backend != "fused":
        from repsr.kernels import availability

        missing = availability()
        if missing:
            print(f"fast kernel unavailable: {missing}")
    progress = show_progress(args)

    def chosen(source: Path, choice: DenoiseChoice) -> None:
        say(f"{source}: {choice.describe()}", progress)

    report = upscale_files(
        upscaler,
        args.inputs,
        args.output,
        fmt=args.fmt,
        progress=progress,
        overwrite=args.overwrite,
        video={"codec": args.codec, "crf": args.crf, "preset": args.preset},
        on_denoise=chosen,
        video_upscaler=video_upscaler,
    )
    for video in report.videos:
        print(describe(video))
    images = len(report.written) - len(report.videos)
    if images or not report.videos:
        print(f"{images} image(s) written to {args.output}")
    if report.failed:
        print(f"{len(report.failed)} input(s) failed:", file=sys.stderr)
        for path, reason in report.failed:
            line = reason if str(path) in reason else f"{path}: {reason}"
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
