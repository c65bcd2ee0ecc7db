"""The loss-mix comparison of docs/results/gan-losses.md: score fine-tuned models on held-out photographs.

    python scripts/gan_losses.py --holdout corpus/holdout --out docs/results \\
        general=repsr-general-m4c16-x4 l1-gan=runs/cmp-l1-gan/model.safetensors ...

For each model (NAME=MODEL, anything `repsr.load_model` reads): the GAN gate's verdict (its failures),
and on the held-out photographs (grid-aligned centre crops, `quality.gan_gate.grid_crop`) under the
degraded benchmark's clean, JPEG 50 and colour-noise conditions: sharpness, flat noise, blockiness and
Y-PSNR against bicubic (`quality.gan_gate.look_figures`). Prints a Markdown table and writes crops of
one photograph per condition (`gan-losses-CONDITION.png`). One thread, as measured.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import torch

import repsr
from repsr.apps.visualize import side_by_side
from repsr.image import io as rio
from repsr.image.resize import imresize
from repsr.quality.degraded import CONDITIONS, degrade_lr
from repsr.quality.gan_gate import GAN_CONDITIONS, grid_crop, look_figures, run_gan_gate

CROP_SIDE = 512  # HR pixels of each held-out photograph (centre, grid-aligned)


def _busiest(hr: torch.Tensor, side: int = 128) -> tuple[int, int, int]:
    """The `side` x `side` window (on a 32-pixel grid) with the most edges (mean |gradient| of gray)."""
    gray = hr.mean(dim=0)
    grad = (gray[1:, :-1] - gray[:-1, :-1]).abs() + (gray[:-1, 1:] - gray[:-1, :-1]).abs()
    rows, cols = range(0, grad.shape[0] - side, 32), range(0, grad.shape[1] - side, 32)
    best = max((float(grad[t : t + side, x : x + side].mean()), t, x) for t in rows for x in cols)
    return best[1], best[2], side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=MODEL")
    parser.add_argument("--holdout", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="folder for the crops")
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
    print(
        "| model | gate | "
        + " | ".join(f"{c}: sharp / flat noise / blocks / dPSNR" for c in GAN_CONDITIONS)
        + " |"
    )
    print("|---|---|" + "---|" * len(GAN_CONDITIONS))
    bicubic_row = None
    for name, model in models.items():
        model.eval()
        report = run_gan_gate(model)
        verdict = "pass" if report.passed else "fail: " + ", ".join(sorted({c.kind for c in report.failures}))
        figures = look_figures(model, GAN_CONDITIONS, photos)
        cells = []
        for f in figures:
            m, b = f.model, f.bicubic
            cells.append(
                f"{m['sharpness']:.3f} / {m['flat noise']:+.2f} / "
                + (f"{m['blockiness']:+.3f}" if CONDITIONS[f.condition].jpeg else "-")
                + f" / {m['psnr'] - b['psnr']:+.2f}"
            )
        if bicubic_row is None:
            bicubic_row = [
                f"{f.bicubic['sharpness']:.3f} / {f.bicubic['flat noise']:+.2f} / "
                + (f"{f.bicubic['blockiness']:+.3f}" if CONDITIONS[f.condition].jpeg else "-")
                + f" / 0 ({f.bicubic['psnr']:.2f} dB)"
                for f in figures
            ]
            print("| bicubic | - | " + " | ".join(bicubic_row) + " |")
        print(f"| {name} | {verdict} | " + " | ".join(cells) + " |", flush=True)
    if args.out is None:
        return
    hr = dict(photos)[args.crop_photo]
    top, left, side = _busiest(hr) if args.crop == "auto" else (int(v) for v in args.crop.split(","))
    for condition in ("jpeg50", "noise6"):
        index = list(CONDITIONS).index(condition)
        lr = degrade_lr(hr, scale, CONDITIONS[condition], (index, zlib.crc32(args.crop_photo.encode())))
        window = (slice(None), slice(top, top + side), slice(left, left + side))
        panels = {"bicubic": imresize(lr.double(), scale).clamp(0, 1)[window]}
        with torch.no_grad():
            for name, model in models.items():
                panels[name] = model(lr[None])[0].clamp(0, 1)[window]
        panels["HR"] = hr[window]
        big = {
            k: torch.nn.functional.interpolate(v[None].float(), scale_factor=2, mode="nearest")[0]
            for k, v in panels.items()
        }
        print(side_by_side(big, args.out / f"gan-losses-{condition}.png"))


if __name__ == "__main__":
    main()
