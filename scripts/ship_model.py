"""Turn a finished `repsr train` run into a shipped model of `repsr.models.pretrained` (a maintainer's
tool).

    python scripts/ship_model.py RUN_DIR NAME --holdout CORPUS/holdout [--reference RUN_DIR] [--note FILE]
    python scripts/ship_model.py RUN_DIR NAME --holdout CORPUS/holdout --gan --checkpoint CKPT   # sharp

Nothing is written unless the model passes the artifact gate (`repsr.quality.gate`: flat colours, ramps,
saturated photographs). Then writes into src/repsr/models/pretrained/: NAME.safetensors (deployed, verified
against the training form), NAME.train.safetensors (training form, no optimizer state), NAME.md (model
card: recipe, gate figures, held-out scores, the degraded benchmark) and NAME's entry in scores.json
(held-out Y-PSNR/SSIM per image, model and bicubic, and the degraded benchmark's means). `--reference`
adds another run's deployed model to the card's table; `--note` adds a Markdown file's text to the card
(why the recipe is what it is). A GAN-trained (sharp) model ships through the GAN gate instead
(`--gan`: `repsr.quality.gan_gate`, which does not ask a sharp model to beat bicubic in PSNR), its card
listing the loss terms, the discriminator and the gate's look figures; `--checkpoint` ships the EMA of a
checkpoint of the run (the last one that passed the gate) instead of its final model.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import subprocess
from pathlib import Path

import torch
import yaml

import repsr
from repsr.data.datasets import EvalSet
from repsr.models.blend import blend_weights
from repsr.models.files import load_model as load_torch_model
from repsr.models.files import read_model_file
from repsr.models.pretrained import FOLDER, resolve_model
from repsr.quality.degraded import degraded_sets, format_gains, select_conditions
from repsr.quality.evaluation import evaluate
from repsr.quality.gan_gate import run_gan_gate
from repsr.quality.gate import run_gate

TOLERANCE = 1e-4  # float32 deviation allowed between the training form and the deployed network


def cpu_name() -> str:
    """The CPU's model name from lscpu (what every published figure names)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def read_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(iteration, held-out PSNR) of every validation in the run's metrics.csv; [] for a run folder kept in
    `training-runs/` (config and newest checkpoint only: the logs stayed on the machine that wrote them)."""
    if not (run_dir / "metrics.csv").is_file():
        return []
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    column = next((k for k in rows[0] if k.endswith("/psnr")), None) if rows else None
    return [(int(r["iteration"]), float(r[column])) for r in rows if column and r.get(column)]


def history_curve(extras: dict) -> list[tuple[int, float]]:
    """The same from a checkpoint's own log (`history`), for a run whose metrics.csv was not kept."""
    rows = extras.get("history") or []
    key = next((k for row in rows for k in row if k.endswith("/psnr")), None)
    return [(int(row["iteration"]), float(row[key])) for row in rows if key and key in row]


def flatness(curve: list[tuple[int, float]]) -> float:
    """PSNR gained over the last fifth of the run (the stop criterion: below 0.02 dB means flat)."""
    last = curve[-1][0]
    before = [psnr for it, psnr in curve if it <= 0.8 * last]
    return curve[-1][1] - before[-1] if before else float("nan")


def lr_making(config: dict) -> str:
    """How the run made its training LR, in words."""
    preset = (config.get("degradation") or {}).get("preset", "none")
    if preset == "none":
        return "made by MATLAB bicubic"
    return (
        f"made on the fly by the `{preset}` real-world degradation preset (`repsr.data.degradations`: blur, "
        "resize, noise and JPEG in two passes; a share of patches keeps the MATLAB-bicubic LR)"
    )


def losses_text(config: dict) -> str:
    """The loss of the recipe: `L1`, or the weighted terms and the discriminator of a GAN run."""
    terms = config["train"].get("losses") or []
    if not terms:
        return str(config["train"].get("loss", "l1")).upper()
    parts = []
    for term in terms:
        options = ", ".join(f"{k} {v}" for k, v in (term.get("options") or {}).items())
        parts.append(f"{term['type']} {term.get('weight', 1.0):g}" + (f" ({options})" if options else ""))
    text = "losses " + " + ".join(parts)
    disc = config.get("discriminator") or {}
    if disc.get("type", "none") != "none":
        sn = ", spectral norm" if disc.get("spectral_norm") else ""
        kind = f"{disc['type']} {disc.get('channels')}{sn}"
        text += f"; discriminator {kind}, {disc.get('loss')}, LR {disc.get('lr'):g}"
    if config["data"].get("smooth_share"):
        text += f"; {config['data']['smooth_share']:g} of the patches synthetic flats and ramps"
    return text


def look_lines(gate) -> list[str]:
    """The GAN gate's look figures per condition (model vs bicubic), for the card."""
    lines = [
        "Means over the gate photographs (`look_figures`): sharpness at true edges (1 = the original's), "
        "flat noise (levels left on flat areas, minus the original's), JPEG block grid, NIQE fitted on the "
        "corpus (lower is more natural), Y-PSNR:",
        "",
        "| condition | sharpness | flat noise | blockiness | NIQE | Y-PSNR (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for f in gate.figures:
        m, b = f.model, f.bicubic
        lines.append(
            f"| {f.condition} | {m['sharpness']:.3f} (bicubic {b['sharpness']:.3f}) | {m['flat noise']:+.2f} "
            f"({b['flat noise']:+.2f}) | {m['blockiness']:+.3f} ({b['blockiness']:+.3f}) | {m['niqe']:.2f} "
            f"({b['niqe']:.2f}) | {m['psnr']:.2f} ({m['psnr'] - b['psnr']:+.2f}) |"
        )
    return [*lines, ""]


def max_deviation(training: torch.nn.Module, plain: torch.nn.Module) -> float:
    x = torch.rand(2, training.spec.in_channels, 37, 41, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (training(x) - plain(x)).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name")
    parser.add_argument("--holdout", type=Path, required=True)
    parser.add_argument("--reference", type=Path, help="another run whose model.safetensors to compare")
    parser.add_argument("--note", type=Path, help="a Markdown file whose text goes into the card")
    parser.add_argument(
        "--blend-with",
        metavar="NAME",
        help="ship the training form blended with this shipped model's training form (same network) ...",
    )
    parser.add_argument("--strength", type=float, default=1.0, help="... at this weight of the run's own")
    parser.add_argument("--gan", action="store_true", help="a GAN-trained model: the GAN gate decides")
    parser.add_argument("--checkpoint", type=Path, help="ship this checkpoint's EMA instead of final.pt")
    parser.add_argument(
        "--trained-on", help="the CPU the run trained on, for the card (default: this machine's, lscpu)"
    )
    args = parser.parse_args()

    run_dir: Path = args.run_dir
    stopped_at: tuple[int, float] | None = None  # (iteration, seconds) of a shipped checkpoint
    extras: dict = {}
    if args.checkpoint is not None:
        training, extras = read_model_file(args.checkpoint)
        if extras.get("ema") is not None:
            training.load_state_dict(extras["ema"])
        training.eval()
        stopped_at = (int(extras["iteration"]), float(extras["seconds"]))
    else:
        training = load_torch_model(run_dir / "final.pt").eval()
    if args.blend_with:
        partner = load_torch_model(resolve_model(args.blend_with, training_form=True)).eval()
        training = blend_weights(partner, training, args.strength)
    has_metrics = (run_dir / "metrics.csv").is_file()
    if stopped_at is None and not has_metrics:  # before anything is written
        raise SystemExit(f"{run_dir}: no metrics.csv; name the checkpoint to ship with --checkpoint")
    plain = repsr.reparameterize_model(training)
    deviation = max_deviation(training, plain)
    if deviation > TOLERANCE:
        raise SystemExit(f"{run_dir}: deployed form deviates by {deviation:.2e} from the training form")
    gate = run_gan_gate(plain) if args.gan else run_gate(plain)
    print(gate.summary())
    if not gate.passed:
        raise SystemExit(f"{run_dir}: not shipped, the {'GAN' if args.gan else 'artifact'} gate failed")
    repsr.save_model(training, FOLDER / f"{args.name}.train.safetensors")
    repsr.save_model(plain, FOLDER / f"{args.name}.safetensors")

    scale = training.spec.scale
    holdout = EvalSet(args.holdout, scale, name="holdout")
    results = evaluate(plain, {"holdout": holdout}, device="cpu")
    scores = results.datasets[0]
    entry = {k: scores.mean(k) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
    entry["images"] = {i.name: [i.psnr, i.ssim, i.bicubic_psnr, i.bicubic_ssim] for i in scores.images}
    reference = None
    if args.reference is not None:
        ref_model = repsr.load_model(args.reference / "model.safetensors")
        reference = evaluate(ref_model, {"holdout": holdout}, device="cpu", baseline=False).datasets[0]
        entry["reference_psnr"] = reference.mean("psnr")
        entry["reference_ssim"] = reference.mean("ssim")
    with torch.no_grad():
        degraded = evaluate(
            plain,
            degraded_sets({"holdout": holdout}, select_conditions(None), scale),
            device="cpu",
            tile=None,
        )
    entry["degraded"] = {
        d.name.split("/", 1)[1]: {
            "psnr": d.mean("psnr"),
            "bicubic_psnr": d.mean("bicubic_psnr"),
            "worst_gain": min(i.psnr - i.bicubic_psnr for i in d.images),
        }
        for d in degraded.datasets
    }
    all_scores_path = FOLDER / "scores.json"
    all_scores = json.loads(all_scores_path.read_text()) if all_scores_path.is_file() else {}
    all_scores[args.name] = entry
    all_scores_path.write_text(json.dumps(all_scores, indent=2, sort_keys=True) + "\n")

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    curve = read_curve(run_dir) or history_curve(extras)
    if has_metrics:
        with open(run_dir / "metrics.csv") as handle:
            last_row = list(csv.DictReader(handle))[-1]
    if stopped_at is not None:
        last_row = {"iteration": str(stopped_at[0]), "seconds": str(stopped_at[1])}
        curve = [(it, value) for it, value in curve if it <= stopped_at[0]]
    gained = flatness(curve) if stopped_at is None else math.nan  # a checkpoint's curve may be empty
    params = sum(p.numel() for p in plain.parameters())
    train_params = sum(p.numel() for p in training.parameters())
    t, b, m = config["train"], config["bn"], config["model"]
    lines = [
        f"# {args.name}",
        "",
        f"RGB RepSR {m['block']} M{m['num_blocks']}C{m['channels']} x{scale}: {params:,} parameters deployed "
        f"(plain 3x3 conv stack, `SRVGGNetCompact` layout), {train_params:,} in the training form.",
        "",
        "| file | what |",
        "|---|---|",
        f"| `{args.name}.safetensors` | deployed plain network (`repsr upscale -m {args.name}`) |",
        f"| `{args.name}.train.safetensors` | training form after the BN switch, no optimizer state "
        f"(`repsr train CONFIG --init {args.name}`) |",
        "",
        "## Training",
        "",
        "- Data: the `repsr corpus` photographs (Debian wallpaper packages; JPEG blocking cleaned by a "
        f"MATLAB-bicubic x1/2), LR {lr_making(config)}, flips and 90-degree rotations"
        + (", random R/G/B channel order" if config["data"].get("channel_shuffle") else "")
        + ".",
        f"- Recipe: {losses_text(config)}, Adam (betas {t['betas']}), LR {t['lr']:g} with {t['scheduler']} "
        "decay to "
        f"{t['min_lr']:g}, batch {t['batch_size']}, LR patch {config['data']['patch_size']}, "
        f"BN switch at {b['switch_at']:g} of training (precise statistics over {b['precise_batches']} "
        "batches), "
        f"merged-form phase 2, bf16 autocast: {t['amp']}, seed {config['seed']}"
        + (f", fine-tuned from `{t['init']}`" if t.get("init") else "")
        + ".",
        f"- {int(last_row['iteration']):,} iterations in {float(last_row['seconds']) / 60:.0f} min "
        f"(validation included) on one thread of a {args.trained_on or cpu_name()}, "
        f"torch {torch.__version__}, while other runs shared the 2-core machine.",
        (
            f"- Shipped at the end of its schedule, from its last checkpoint (iteration {stopped_at[0]:,})."
            if stopped_at is not None and stopped_at[0] >= int(t["iterations"])
            else "- Shipped at a checkpoint of the schedule (picked by the gate, not by the PSNR curve)."
            if stopped_at is not None
            else f"- Held-out PSNR gained over the last fifth of the run: {gained:+.3f} dB "
            "(the project stops a run once this is below 0.02 dB)."
            if math.isfinite(gained)
            else f"- Validated {len(curve)} time(s): too few points to judge the curve (a short fine-tune)."
        ),
        f"- Merge check: deployed vs training form, max deviation {deviation:.1e} (float32).",
        "",
        "## GAN gate (`repsr.quality.gan_gate`)" if args.gan else "## Artifact gate (`repsr.quality.gate`)",
        "",
        "Worst input of each check (levels of 255 for flat colours, phase bias and ringing; dB over bicubic "
        "for the photographs):",
        "",
        *(f"- {gate.worst(kind).describe()}" for kind in dict.fromkeys(c.kind for c in gate.checks)),
        "",
        *(look_lines(gate) if args.gan else []),
        "## Held-out scores",
        "",
        f"Y channel, border {scale} cropped, 8-bit output, LR by MATLAB bicubic. "
        "Photographs never trained on.",
        "",
        "| image | this model | bicubic |" + (" demo recipe, 22k it. |" if reference else ""),
        "|---|---|---|" + ("---|" if reference else ""),
    ]
    ref_by_name = {i.name: i for i in reference.images} if reference else {}
    for image in scores.images:
        row = (
            f"| {image.name} | {image.psnr:.2f} / {image.ssim:.4f} "
            f"| {image.bicubic_psnr:.2f} / {image.bicubic_ssim:.4f} |"
        )
        if reference:
            r = ref_by_name[image.name]
            row += f" {r.psnr:.2f} / {r.ssim:.4f} |"
        lines.append(row)
    mean = (
        f"| **mean** | **{entry['psnr']:.2f} / {entry['ssim']:.4f}** | "
        f"{entry['bicubic_psnr']:.2f} / {entry['bicubic_ssim']:.4f} |"
    )
    if reference:
        mean += f" {entry['reference_psnr']:.2f} / {entry['reference_ssim']:.4f} |"
    lines += [mean, ""]
    lines += [
        "## Degraded benchmark (`repsr eval MODEL --degrade`)",
        "",
        "The same photographs, LR degraded by fixed, seeded conditions; bicubic upscales the same LR.",
        "",
        "```",
        format_gains(degraded),
        "```",
        "",
    ]
    if args.note is not None:
        lines += [args.note.read_text().strip(), ""]
    if curve:
        lines += ["Validation curve (iteration: held-out PSNR):", ""]
        lines += ["    " + ", ".join(f"{it}: {psnr:.2f}" for it, psnr in curve), ""]
    else:
        lines += ["Validation curve: not kept (no metrics.csv, and the checkpoint logged none).", ""]
    (FOLDER / f"{args.name}.md").write_text("\n".join(lines))
    print(f"shipped {args.name}: {entry['psnr']:.3f} dB (bicubic {entry['bicubic_psnr']:.3f})")


if __name__ == "__main__":
    main()
