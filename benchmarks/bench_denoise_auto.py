"""`repsr upscale`'s default (`--denoise auto`) against the clean and the general model, as files.

    PYTHONPATH=src python benchmarks/bench_denoise_auto.py --holdout corpus/holdout --out docs/results
        [--size m10c32 --scales 2 4]   # the photo-size models

The degraded benchmark's LR (`repsr eval --degrade`: the same pairs, conditions and seeds) is written as
the file a user would have: a JPEG (Pillow, the condition's quality) where the condition ends in JPEG,
else a PNG; the decoded file is checked equal to the benchmark's LR. Each folder is then upscaled by
`upscale_files`, as `repsr upscale` does, with three runners: the clean model (`--denoise 0`, the clean
partner), the general model (`--denoise 1`) and the default (`AutoDenoise`, measuring each file). Every
written output is scored: Y-PSNR against HR (border = scale) minus that of bicubic upscaling of the
same decoded LR. Writes `denoise-auto.json` and prints the markdown table of docs/results/denoise-auto.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from repsr.image.io import read_image
from repsr.image.metrics import psnr
from repsr.image.pixels import to_integers
from repsr.image.resize import imresize
from repsr.inference import AutoDenoise, Upscaler, upscale_files
from repsr.models.loader import load_model
from repsr.quality.degraded import CONDITIONS, Condition, degraded_file, degraded_sets
from repsr.quality.evaluation import open_datasets

RUNNERS = ("clean (S = 0)", "general (S = 1)", "default (auto)")


def write_lr(folder: Path, pair, scale: int, condition: Condition) -> Path:
    """The pair's LR as the file it would be (`degraded_file`: the condition's JPEG, or a PNG), checked
    to decode to the benchmark's LR exactly."""
    seed = (list(CONDITIONS).index(condition.name), zlib.crc32(pair.name.encode()))  # as degraded_sets
    data, suffix = degraded_file(pair.hr, scale, condition, seed)
    path = folder / f"{pair.name}{suffix}"
    path.write_bytes(data)
    if not np.array_equal(to_integers(read_image(path).rgb), to_integers(pair.lr)):
        raise SystemExit(f"{path}: the written file does not decode to the benchmark's LR")
    return path


def run_condition(runners: dict, pairs: list, scale: int, condition: Condition) -> dict:
    """Gains over bicubic per runner and photograph, and the strengths auto chose."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "lr"
        folder.mkdir()
        files = {pair.name: write_lr(folder, pair, scale, condition) for pair in pairs}
        bicubic = {
            p.name: psnr(imresize(read_image(files[p.name]).rgb, scale).clamp(0, 1), p.hr, scale)
            for p in pairs
        }
        row: dict = {"strengths": {}}
        for label, runner in runners.items():
            out = Path(tmp) / f"out{len(row)}"
            report = upscale_files(runner, [folder], out, progress=False)
            if report.failed:
                raise SystemExit(f"{label}: {report.failed}")
            row[label] = {
                p.name: psnr(read_image(out / files[p.name].name).rgb, p.hr, scale) - bicubic[p.name]
                for p in pairs
            }
            if report.denoise:
                row["strengths"] = {path.stem: choice.strength for path, choice in report.denoise.items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holdout", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    parser.add_argument(
        "--precision", default="auto", help="the runners' precision (default: as repsr upscale)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", default="m4c16", help="the general models' size: m4c16 or m10c32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict = {"precision": args.precision, "size": args.size, "scales": {}}
    for scale in args.scales:
        general = f"repsr-general-{args.size}-x{scale}"
        options = {"precision": args.precision, "tile": "auto"}
        runners = {
            RUNNERS[0]: Upscaler(load_model(general, denoise=0.0), **options),
            RUNNERS[1]: Upscaler(load_model(general, denoise=1.0), **options),
            RUNNERS[2]: AutoDenoise(general, **options),
        }
        for label, runner in runners.items():
            print(f"x{scale} {label}: precision {runner.precision}, {runner.backend}")
        datasets = open_datasets([f"holdout={args.holdout}"], scale)
        per_scale = results["scales"].setdefault(scale, {})
        for condition in CONDITIONS.values():
            started = time.time()
            pairs = degraded_sets(datasets, [condition], scale)[f"holdout/{condition.name}"]
            row = per_scale[condition.name] = run_condition(runners, pairs, scale, condition)
            means = "  ".join(f"{k.split()[0]} {np.mean(list(row[k].values())):+.3f}" for k in RUNNERS)
            print(
                f"x{scale} {condition.name}: {means}  S {row['strengths']}  ({time.time() - started:.0f} s)"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    name = "denoise-auto.json" if args.size == "m4c16" else f"denoise-auto-{args.size}.json"
    (args.out / name).write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: dict) -> str:
    """Markdown: per scale, gain over bicubic mean / worst photograph per condition and runner."""
    lines = []
    for scale, per_scale in results["scales"].items():
        names = list(per_scale)
        lines += [f"| x{scale} | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for label in RUNNERS:
            gains = [list(per_scale[n][label].values()) for n in names]
            cells = [f"{np.mean(g):+.2f} / {min(g):+.2f}" for g in gains]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        strengths = [", ".join(f"{s:g}" for s in per_scale[n]["strengths"].values()) for n in names]
        lines += ["| auto's strengths | " + " | ".join(strengths) + " |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
