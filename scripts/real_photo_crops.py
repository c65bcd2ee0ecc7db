"""Before/after crops of degraded photographs for the README: LR, bicubic, clean model, general model.

    python scripts/real_photo_crops.py --photo corpus/holdout/chelsea.png --box 120,60,256 \
        --clean repsr-m4c16-x4 --general repsr-general-m4c16-x4 -o docs/results/real

Writes `OUT-CONDITION.png` for each condition of `--conditions` (default jpeg50 and noise6): the HR crop
(`--box LEFT,TOP,SIDE` in HR pixels) degraded by that `repsr.quality.degraded` condition, upscaled by nearest
(the LR as it is), bicubic, the clean model, the general model at its default denoise strength (and at
`--denoise` strengths), and the HR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from repsr.apps.visualize import side_by_side
from repsr.image.io import read_image
from repsr.image.resize import imresize
from repsr.models.blend import default_strength, load_blended
from repsr.models.files import load_model
from repsr.quality.degraded import CONDITIONS, degrade_lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, required=True)
    parser.add_argument("--box", required=True, help="LEFT,TOP,SIDE of the HR crop")
    parser.add_argument("--clean", required=True)
    parser.add_argument("--general", required=True)
    parser.add_argument("--denoise", type=float, nargs="*", default=[])
    parser.add_argument("--conditions", nargs="+", default=["jpeg50", "noise6"])
    parser.add_argument("-o", "--output", type=Path, required=True, help="path prefix of the PNG files")
    args = parser.parse_args()
    left, top, side = (int(v) for v in args.box.split(","))
    hr = read_image(args.photo).rgb[:, top : top + side, left : left + side].contiguous()
    clean = load_model(args.clean).eval()
    scale = clean.spec.scale
    strength = default_strength(args.general)
    models = {f"{args.clean}": clean}
    if strength is not None:
        models[f"general, denoise {strength:g}"] = load_blended(args.general, strength)
    for s in args.denoise:
        models[f"general, denoise {s:g}"] = load_blended(args.general, s)
    models["general, denoise 1"] = load_model(args.general).eval()
    for name in args.conditions:
        lr = degrade_lr(hr, scale, CONDITIONS[name], (0, 0))
        panels = {
            f"LR {name} (nearest)": lr.repeat_interleave(scale, 1).repeat_interleave(scale, 2),
            "bicubic": imresize(lr.double(), scale).float(),
        }
        with torch.no_grad():
            for label, model in models.items():
                panels[label] = model(lr[None])[0]
        panels["HR"] = hr
        path = side_by_side(panels, Path(f"{args.output}-{name}.png"))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
