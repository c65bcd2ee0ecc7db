"""`repsr bench [MODEL or CONFIG ...]`: parameters, MACs, latency, throughput and % of peak per backend."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from repsr.cli.args import add_device, add_size


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from repsr.inference import BENCH_BACKENDS

    parser = subparsers.add_parser(
        "bench",
        help="measure speed of the training and plain forms on each backend",
        description="Benchmark models (files or YAML training configs; default: M4C16, M10C32, M16C64 x4 "
        "repsr, randomly initialised). All figures come from one run: compare ratios, not absolutes.",
    )
    parser.add_argument("targets", nargs="*", type=Path, help="model files or YAML configs")
    add_size(parser, (320, 180), "LR input")
    add_device(parser)
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's default)")
    parser.add_argument(
        "--backend", dest="backends", action="append", choices=BENCH_BACKENDS, help="only these (repeatable)"
    )
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timed runs per row (default 3)")
    parser.add_argument("--no-train-form", action="store_true", help="skip the training-form rows")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repsr.apps.benchmark import benchmark, format_report, load_target, standard_models
    from repsr.inference import BENCH_BACKENDS

    models = [load_target(target) for target in args.targets] if args.targets else standard_models()
    report = benchmark(
        models,
        size=args.size,
        device=args.device,
        backends=args.backends or BENCH_BACKENDS,
        threads=args.threads,
        budget_s=args.budget,
        train_form=not args.no_train_form,
        progress=lambda message: print(f"... {message}", file=sys.stderr),
    )
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
        print(f"wrote {args.json}")
    return 0
