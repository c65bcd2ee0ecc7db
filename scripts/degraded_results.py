"""The degraded benchmark of every shipped model, as a Markdown page (docs/results/degraded.md).

    python scripts/degraded_results.py --holdout CORPUS/holdout -o docs/results/degraded.md

Each model (and each general model at a few denoise strengths) on the held-out photographs under every
condition of `repsr.quality.degraded`: Y-PSNR gain over bicubic of the same degraded LR, mean and worst photo.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from repsr.data.datasets import EvalSet
from repsr.models.blend import load_blended
from repsr.models.files import load_model
from repsr.models.pretrained import PRETRAINED, shipped
from repsr.quality.degraded import CONDITIONS, degraded_sets, select_conditions
from repsr.quality.evaluation import EvalResults, evaluate

STRENGTHS = (0.5,)  # besides 0 (the clean partner's own row), 1 (the model) and the default


def gains(results: EvalResults) -> dict[str, tuple[float, float]]:
    """condition -> (mean gain over bicubic, worst photo's gain) in dB."""
    out = {}
    for d in results.datasets:
        per_image = [i.psnr - i.bicubic_psnr for i in d.images]
        out[d.name.split("/", 1)[1]] = (sum(per_image) / len(per_image), min(per_image))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holdout", type=Path, required=True)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[tuple[str, dict[str, tuple[float, float]]]] = []
    sets: dict[int, dict] = {}
    for entry in shipped():
        scale = entry.scale
        if scale not in sets:
            sets[scale] = degraded_sets(
                {"holdout": EvalSet(args.holdout, scale)}, select_conditions(None), scale
            )
        variants = [(entry.name, lambda e=entry: load_model(e.name))]
        if entry.denoise_partner:
            strengths = sorted({*STRENGTHS, entry.denoise_default} - {1.0})
            variants = [
                (f"{entry.name} --denoise {s:g}", lambda e=entry, s=s: load_blended(e.name, s))
                for s in strengths
            ] + [(f"{entry.name} --denoise 1", variants[0][1])]
        for label, load in variants:
            with torch.no_grad():
                rows.append((label, gains(evaluate(load(), sets[scale], device="cpu", tile=None))))
            print(label, {k: round(v[0], 2) for k, v in rows[-1][1].items()}, flush=True)
    names = list(CONDITIONS)
    lines = [
        "# The degraded benchmark: every shipped model",
        "",
        "Held-out photographs (the `repsr corpus` hold-out: ColorfulCups, EveningGlow, Kleiber,",
        "picosdeeuropa, chelsea, rocket), LR made by each fixed, seeded condition of "
        "`repsr.quality.degraded`;",
        "Y-PSNR gain in dB over bicubic upscaling of the same degraded LR, mean over the photographs /",
        "worst photograph. Reproduce: `python scripts/degraded_results.py --holdout corpus/holdout",
        "-o docs/results/degraded.md` (one model: `repsr eval MODEL --data holdout=DIR --degrade`).",
        "",
        "Conditions: " + "; ".join(f"`{c.name}`: {c.description}" for c in CONDITIONS.values()) + ".",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, by_condition in rows:
        cells = [f"{by_condition[n][0]:+.2f} / {by_condition[n][1]:+.2f}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    general = [m for m in PRETRAINED.values() if m.denoise_partner]
    if general:
        lines += [
            "",
            "`--denoise S` blends a general model (S = 1) with the clean model of the same size it was",
            "fine-tuned from (S = 0, that clean model's own row). Defaults: "
            + ", ".join(f"{m.name} {m.denoise_default:g}" for m in general)
            + ".",
        ]
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
