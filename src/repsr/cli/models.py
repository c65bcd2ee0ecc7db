"""`repsr models`: the shipped pretrained models, with scale, size and held-out scores."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the shipped pretrained models",
        description="The models that ship with repsr. Their names work wherever a model file is accepted "
        "(upscale -m NAME, eval, export, bench, deploy, train --init).",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repsr.models.files import load_model
    from repsr.models.pretrained import DEFAULT_MODEL, shipped

    rows = [("name", "scale", "params", "file", "held-out Y-PSNR / SSIM", "bicubic")]
    for entry in shipped():
        model = load_model(entry.deployed)
        params = sum(p.numel() for p in model.parameters())
        scores = entry.scores()
        ours = f"{scores['psnr']:.2f} / {scores['ssim']:.4f}" if scores else "-"
        bicubic = f"{scores['bicubic_psnr']:.2f} / {scores['bicubic_ssim']:.4f}" if scores else "-"
        name = entry.name + (" (default)" if entry.name == DEFAULT_MODEL else "")
        size = f"{entry.deployed.stat().st_size / 1024:.0f} KiB"
        rows.append((name, f"x{entry.scale}", f"{params / 1000:.1f}k", size, ours, bicubic))
    if len(rows) == 1:
        print("no shipped models in this installation")
        return 1
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print("held-out: the corpus photographs never trained on (see each model card: repsr/pretrained/NAME.md)")
    return 0
