"""`repsr app`: a local web page to upscale, compare models and denoise strengths, and run batches."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from repsr.cli.args import add_device
    from repsr.inference import BACKENDS
    from repsr.util.precision import PRECISIONS

    parser = subparsers.add_parser(
        "app",
        help="a local web page to upscale, compare and choose",
        description="Start a local web server with one page: add images and videos (drop, file picker or "
        "a folder path), pick a model by what you upscale and the scale, see the denoise strength live on "
        "a crop, compare before/after, run the batch with progress and download the results. It runs the "
        "same code as repsr upscale. Listens on 127.0.0.1 only, unless --host says otherwise.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one, printed)")
    parser.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("repsr-output"),
        help="the output folder the page proposes (default ./repsr-output; the page can name another)",
    )
    parser.add_argument(
        "--allow",
        action="append",
        type=Path,
        metavar="FOLDER",
        help="a folder the page may read from and write into by path (repeatable; default: your home "
        "folder and the current folder)",
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=512, help="largest file the page may upload (default 512 MB)"
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="as for repsr upscale (default auto)"
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="as for repsr upscale (default auto)"
    )
    add_device(parser)  # as for repsr upscale: the same device runs the same code
    parser.add_argument("--verbose", action="store_true", help="log every request on stderr")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repsr.apps.app.server import App, serve
    from repsr.inference import resolve_device

    resolve_device(args.device)
    allow = args.allow or [Path.home(), Path.cwd()]
    output = args.output if args.output.is_absolute() else Path.cwd() / args.output
    app = App(
        allow=allow,
        output=output,
        max_upload_mb=args.max_upload_mb,
        precision=args.precision,
        backend=args.backend,
        device=args.device,
    )
    return serve(app, args.host, args.port, open_browser=not args.no_browser, verbose=args.verbose)
