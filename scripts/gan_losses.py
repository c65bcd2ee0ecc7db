"""The loss-mix comparison of docs/results/gan-losses.md: score fine-tuned models on held-out photographs.

    python scripts/gan_losses.py --holdout corpus/holdout \\
        general=repsr-general-m4c16-x4 l1-gan=runs/cmp-l1-gan/model.safetensors ...
    python scripts/gan_losses.py --holdout corpus/holdout --out docs/results --no-scores NAME=MODEL ...

For each model (NAME=MODEL, anything `repsr.load_model` reads): the GAN gate's verdict (its failures),
and on the held-out photographs (grid-aligned centre crops, `quality.gan_gate.grid_crop`) under the
degraded benchmark's clean, JPEG 50 and colour-noise conditions: sharpness, flat noise, blockiness and
Y-PSNR against bicubic (`quality.gan_gate.look_figures`), printed as a Markdown table. `--out` writes
crops of one photograph per condition (`gan-losses-CONDITION.png`). One thread, as measured.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

import repsr
from repsr.apps.visualize import side_by_side
from repsr.image import io as rio
from repsr.image.resize import imresize
from repsr.quality.degraded import CONDITIONS, degrade_lr
from repsr.quality.gan_gate import GAN_CONDITIONS, LookFigures, grid_crop, look_figures, run_gan_gate

CROP_SIDE = 512  # HR pixels of each held-out photograph (centre, grid-aligned)


def _busiest(hr: torch.Tensor, side: int = 96) -> tuple[int, int, int]:
    """The `side` x `side` window (on a 32-pixel grid) with the most edges (mean |gradient| of gray)."""
    gray = hr.mean(dim=0)
    grad = (gray[1:, :-1] - gray[:-1, :-1]).abs() + (gray[:-1, 1:] - gray[:-1, :-1]).abs()
    rows, cols = range(0, grad.shape[0] - side, 32), range(0, grad.shape[1] - side, 32)
    best = max((float(grad[t : t + side, x : x + side].mean()), t, x) for t in rows for x in cols)
    return best[1], best[2], side


def _cell(f: LookFigures, who: str) -> str:
    m = f.model if who == "model" else f.bicubic
    blocks = f"{m['blockiness']:+.3f}" if CONDITIONS[f.condition].jpeg else "-"
    gain = f"{f.model['psnr'] - f.bicubic['psnr']:+.2f}" if who == "model" else f"({m['psnr']:.2f} dB)"
    return f"{m['sharpness']:.3f} / {m['flat noise']:+.2f} / {blocks} / {gain}"


def scores(models: dict[str, torch.nn.Module], photos: list[tuple[str, torch.Tensor]]) -> None:
    """The Markdown table: the gate's verdict and the figures per condition, bicubic first."""
    heads = " | ".join(f"{c}: sharpness / flat noise / blockiness / dPSNR" for c in GAN_CONDITIONS)
    print(f"| model | GAN gate | {heads} |")
    print("|---|---|" + "---|" * len(GAN_CONDITIONS))
    first = True
    for name, model in models.items():
        model.eval()
        report = run_gan_gate(model)
        verdict = "pass" if report.passed else "fail: " + ", ".join(sorted({c.kind for c in report.failures}))
        figures = look_figures(model, GAN_CONDITIONS, photos)
        if first:
            print("| bicubic | - | " + " | ".join(_cell(f, "bicubic") for f in figures) + " |")
            first = False
        print(f"| {name} | {verdict} | " + " | ".join(_cell(f, "model") for f in figures) + " |", flush=True)


def crops(models: dict[str, torch.nn.Module], hr: torch.Tensor, photo: str, crop: str, out: Path) -> None:
    """`gan-losses-CONDITION.png`: bicubic, each model and HR on one crop, enlarged 2x (nearest)."""
    scale = next(iter(models.values())).spec.scale
    top, left, side = _busiest(hr) if crop == "auto" else (int(v) for v in crop.split(","))
    window = (slice(None), slice(top, top + side), slice(left, left + side))
    for condition in ("jpeg50", "noise6"):
        index = list(CONDITIONS).index(condition)
        lr = degrade_lr(hr, scale, CONDITIONS[condition], (index, zlib.crc32(photo.encode())))
        panels = {"bicubic": imresize(lr.double(), scale).clamp(0, 1)[window]}
        with torch.no_grad():
            for name, model in models.items():
                panels[name] = model.eval()(lr[None])[0].clamp(0, 1)[window]
        panels["HR"] = hr[window]
        big = {
            k: F.interpolate(v[None].float(), scale_factor=2, mode="nearest")[0] for k, v in panels.items()
        }
        print(side_by_side(big, out / f"gan-losses-{condition}.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=MODEL")
    parser.add_argument("--holdout", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="folder for the crops")
    parser.add_argument("--no-scores", action="store_true", help="only write the crops")
    parser.add_argument("--crop-photo", default="Kleiber", help="held-out photograph shown in the crops")
    parser.add_argument("--crop", default="auto", help="TOP,LEFT,SIDE of the shown crop (HR pixels), or auto")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {name: repsr.load_model(ref) for name, ref in (m.split("=", 1) for m in args.models)}
    scale = next(iter(models.values())).spec.scale
    photos = [
        (p.stem, grid_crop(rio.read_image(p).rgb.float(), scale, CROP_SIDE))
        for p in sorted(args.holdout.iterdir())
    ]
    if not args.no_scores:
        scores(models, photos)
    if args.out is not None:
        crops(models, dict(photos)[args.crop_photo], args.crop_photo, args.crop, args.out)


if __name__ == "__main__":
    main()
