"""Precision benchmark: fp32 / bf16 / int8 inference and fp32 / bf16 training, each against its own peak.

Speed (default): probes the fp32 and bf16 (and int8, where torch has an int8 matmul) 2048x2048 matmul
peaks, then times deployed M4C16, M10C32 and M16C64 x4 (random weights: speed only) on a 320x180 LR
frame: torch fp32 channels-last (what `repsr upscale` ran before precisions), torch bf16
(`repsr.inference.forms.Bf16PlainSR`), ONNX Runtime fp32 and int8 (`repsr.deploy.int8`), OpenVINO
fp32/bf16 when
installed, and the fused C kernel (`repsr.kernels`) in each precision this CPU runs. Each row gives its %
of the peak of ITS precision; rows of one model are timed in interleaved
rounds, so on a shared machine compare ratios, not absolute figures. Then what `auto` picks and why, and
training steps (phase 1 and merged phase 2) fp32 vs bf16 autocast. Then the shipped M4C16 x2 on a
960x540 frame (the 1080p real-time case) through torch and the fused kernel.

Quality (`--quality MODEL`): Y-PSNR against HR on held-out photographs (a folder; default the built-in
validation sample photographs) for fp32, bf16 (and with head/tail in float32) and int8, and the
difference to fp32.

Run: ``python benchmarks/bench_precision.py [--threads 2] [--rounds 5] [--no-train] [--no-int8]``
     ``python benchmarks/bench_precision.py --quality MODEL.safetensors [--holdout DIR] [--crop 192]``
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repsr.util.runtime import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()  # idle OpenMP threads sleep (see repsr.util.runtime); must precede torch

import numpy as np  # noqa: E402
import torch  # noqa: E402

from repsr import build_model, reparameterize_model  # noqa: E402
from repsr.inference import prepare_model  # noqa: E402
from repsr.inference.backends import decide  # noqa: E402
from repsr.inference.forms import Bf16PlainSR  # noqa: E402
from repsr.util.hardware import cpu_capabilities  # noqa: E402

SIZES = ((4, 16), (10, 32), (16, 64))
FRAME = (180, 320)  # LR height, width


def cpu_model_name() -> str:
    """`lscpu`'s model name (what the README tables name), else torch's detection."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return cpu_capabilities().name


# ------------------------------------------------------------------------------------------- peaks


def peak_probes(size: int = 2048) -> dict[str, Callable[[], object]]:
    """Square (size x size) matmuls in fp32, bf16 and, where torch has one, int8 (`torch._int_mm`)."""
    generator = torch.Generator().manual_seed(0)
    a32 = torch.randn(size, size, generator=generator)
    b32 = torch.randn(size, size, generator=generator)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    calls: dict[str, Callable[[], object]] = {
        "fp32": lambda: torch.mm(a32, b32),
        "bf16": lambda: torch.mm(a16, b16),
    }
    a8 = torch.randint(-127, 127, (size, size), dtype=torch.int8, generator=generator)
    b8 = torch.randint(-127, 127, (size, size), dtype=torch.int8, generator=generator)
    try:
        torch._int_mm(a8[:32, :32].contiguous(), b8[:32, :32].contiguous())
        calls["int8"] = lambda: torch._int_mm(a8, b8)
    except (RuntimeError, AttributeError):
        pass
    return calls


def peak_gflops(seconds: float, size: int = 2048) -> float:
    return 2 * size**3 / seconds / 1e9


def _timed(call: Callable[[], object]) -> float:
    begin = time.perf_counter()
    call()
    return time.perf_counter() - begin


# ------------------------------------------------------------------------------------------- inference


def _macs(spec) -> int:
    c, out = spec.channels, spec.in_channels * spec.scale**2
    return 9 * (spec.in_channels * c + spec.num_blocks * c * c + c * out) * FRAME[0] * FRAME[1]


def _openvino_rows(onnx_path: Path, x: np.ndarray, threads: int) -> dict[str, Callable[[], object]]:
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    rows = {}
    for hint, label in (("f32", "openvino fp32"), ("bf16", "openvino bf16")):
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads}
        try:
            compiled = core.compile_model(str(onnx_path), "CPU", config)
        except Exception as error:  # bf16 hint refused on CPUs without it
            print(f"  ({label} unavailable: {str(error).splitlines()[0][:100]})")
            continue
        request = compiled.create_infer_request()
        rows[label] = (lambda r: lambda: r.infer({0: x}))(request)
    return rows


def fused_rows(plain, x: torch.Tensor) -> dict[str, tuple[str, Callable]]:
    """The fused kernel (`repsr.kernels`) in each precision this CPU runs; none where it cannot build."""
    from repsr.kernels import FusedPlainSR, KernelUnavailable, runnable_variants

    try:
        precisions = runnable_variants()[0].precisions if runnable_variants() else ()
        modules = {p: FusedPlainSR(plain, p) for p in precisions}
    except KernelUnavailable as error:
        print(f"  (fused kernel unavailable: {error})")
        return {}
    return {f"fused {p}": (p, (lambda module: lambda: module(x))(m)) for p, m in modules.items()}


def frame_1080p(threads: int, rounds: int) -> None:
    """The shipped M4C16 x2 on a 960x540 frame (-> 1920x1080), model alone: torch and the fused kernel."""
    from repsr.inference import Upscaler
    from repsr.models.files import load_model
    from repsr.models.pretrained import resolve_model

    torch.set_num_threads(threads)
    plain = reparameterize_model(load_model(resolve_model("repsr-m4c16-x2"))).eval()
    x = torch.rand(1, 3, 540, 960, generator=torch.Generator().manual_seed(0))
    flop = 2 * 9 * (3 * 16 + 4 * 16 * 16 + 16 * 12) * 540 * 960
    rows: dict[str, tuple[str, Callable]] = {}
    for label, options in (
        ("torch fp32 untiled", {"tile": None, "precision": "fp32"}),
        ("torch fp32 tile auto", {"precision": "fp32"}),
        ("torch bf16 untiled", {"tile": None, "precision": "bf16", "backend": "channels-last"}),
        ("repsr upscale (auto)", {"precision": "auto"}),
    ):
        upscaler = Upscaler(plain, device="cpu", **options)
        rows[label] = ("fp32", (lambda u: lambda: u(x))(upscaler))
        if label.endswith("(auto)"):
            print(f"  auto -> {upscaler.precision} {upscaler.backend}: {upscaler.precision_reason}")
    rows.update(fused_rows(plain, x))
    times = time_rows(rows, rounds)
    print(f"960x540 -> 1920x1080, repsr-m4c16-x2 (shipped), model alone, {rounds} interleaved rounds")
    print(
        f"  {'row':<22} {'median ms':>10} {'min ms':>8} {'frames/s':>9} {'GFLOP/s':>8} {'vs torch fp32':>14}"
    )
    base = statistics.median(times["torch fp32 untiled"])
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"  {name:<22} {1000 * median:10.1f} {1000 * min(samples):8.1f} {1 / median:9.1f} "
            f"{flop / median / 1e9:8.0f} {base / median:13.2f}x"
        )


def inference_rows(model, threads: int, with_int8: bool, folder: Path) -> dict[str, tuple[str, Callable]]:
    """name -> (precision of its peak, zero-argument forward on the 320x180 frame)."""
    plain = reparameterize_model(model).eval()
    device = torch.device("cpu")
    x = torch.rand(1, 3, *FRAME, generator=torch.Generator().manual_seed(0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    fp32 = prepare_model(plain, "channels-last", device, torch.float32)
    bf16 = Bf16PlainSR(plain)

    def torch_call(module):
        def call():
            with torch.inference_mode():
                return module(x_cl)

        return call

    rows = {"torch fp32": ("fp32", torch_call(fp32)), "torch bf16": ("bf16", torch_call(bf16))}
    rows.update(fused_rows(plain, x))
    try:
        from repsr.deploy.onnx import export_onnx
        from repsr.models.onnx import onnx_session

        onnx_path = folder / f"{plain.spec.name}.onnx"
        export_onnx(plain, onnx_path, dynamic=True)
        session = onnx_session(onnx_path, threads=threads)
        feed = {"input": x.numpy()}
        rows["ORT fp32"] = ("fp32", lambda: session.run(["output"], feed))
        if with_int8:
            from repsr.deploy.int8 import export_int8_onnx

            int8_path = folder / f"{plain.spec.name}-int8.onnx"
            export_int8_onnx(plain, int8_path, min_psnr=0.0)  # random weights: speed only
            int8 = onnx_session(int8_path, threads=threads)
            rows["ORT int8"] = ("int8", lambda: int8.run(["output"], feed))
        for label, call in _openvino_rows(onnx_path, x.numpy(), threads).items():
            rows[label] = ("bf16" if "bf16" in label else "fp32", call)
    except Exception as error:
        print(f"  (ONNX rows unavailable: {str(error).splitlines()[0][:120]})")
    return rows


def time_rows(
    rows: dict[str, tuple[str, Callable]], rounds: int, *, inference: bool = True
) -> dict[str, list[float]]:
    """Seconds per call of each row, in interleaved rounds after one warm-up call each."""
    with torch.inference_mode(inference):
        for _, call in rows.values():
            call()
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(rounds):
            for name, (_, call) in rows.items():
                times[name].append(_timed(call))
    return times


def speed(threads: int, rounds: int, with_int8: bool) -> None:
    torch.set_num_threads(threads)
    caps = cpu_capabilities()
    print(f"CPU: {cpu_model_name()} -- {caps.describe()}; torch {torch.__version__}, {threads} threads")
    probes = peak_probes()
    print(
        f"inference, deployed x4, LR {FRAME[1]}x{FRAME[0]}, {rounds} interleaved rounds per model; each "
        "round also runs the 2048x2048 matmul peak probes (fp32, bf16, int8 GOP/s), so rows and peaks "
        "see the same machine load"
    )
    print(f"  {'model':<16} {'row':<16} {'median':>8} {'min':>8} {'vs fp32':>8} {'% of its peak':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for blocks, channels in SIZES:
            torch.manual_seed(0)
            model = build_model("repsr", scale=4, num_blocks=blocks, channels=channels).eval()
            rows = inference_rows(model, threads, with_int8, Path(tmp))
            rows.update({f"peak {name}": (name, call) for name, call in probes.items()})
            times = time_rows(rows, rounds)
            peaks = {name: peak_gflops(min(times.pop(f"peak {name}"))) for name in probes}
            print(f"  {model.spec.name}: matmul peaks " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
            base = min(times["torch fp32"])
            for name, samples in times.items():
                best = min(samples)
                peak = peaks.get(rows[name][0])
                fraction = f"{100 * 2 * _macs(model.spec) / best / 1e9 / peak:13.0f}%" if peak else " " * 14
                print(
                    f"  {model.spec.name:<16} {name:<16} {1000 * statistics.median(samples):8.1f} "
                    f"{1000 * best:8.1f} {base / best:7.2f}x {fraction}"
                )
            started = time.perf_counter()
            chosen = decide(model, torch.device("cpu"), "auto")
            print(
                f"  auto -> {chosen.backend} {chosen.precision} ({time.perf_counter() - started:.2f} s): "
                f"{chosen.reason}"
            )


# ------------------------------------------------------------------------------------------- training


def train_step(blocks: int, channels: int, batch: int, patch: int, amp: bool, phase: int, folder: Path):
    """bench_train's step (the trainer's real one) for RepSR x4 in fp32 or under bf16 autocast."""
    from bench_train import make_step

    return make_step("repsr", (blocks, channels), 4, batch, patch, phase=phase, amp=amp, folder=folder)


def training(threads: int, rounds: int) -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("repsr").setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    print(
        f"\ntraining step (forward, L1, backward, Adam), x4, {threads} threads, {rounds} interleaved rounds"
    )
    print(f"  {'model':<26} {'phase':<10} {'fp32 ms':>8} {'bf16 ms':>8} {'fp32/bf16 (min)':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for blocks, channels, batch in ((4, 16, 16), (16, 64, 8)):
            for phase in (1, 2):
                steps = {
                    amp: train_step(blocks, channels, batch, 48, amp, phase, Path(tmp))
                    for amp in (False, True)
                }
                times = time_rows({str(k): ("", v) for k, v in steps.items()}, rounds, inference=False)
                fp32, bf16 = min(times["False"]), min(times["True"])
                label = f"M{blocks}C{channels} batch {batch} x 48x48"
                name = "1" if phase == 1 else "2 merged"
                print(f"  {label:<26} {name:<10} {1000 * fp32:8.1f} {1000 * bf16:8.1f} {fp32 / bf16:15.2f}x")


# ------------------------------------------------------------------------------------------- quality


def quality(model_path: Path, holdout: Path | None, crop: int, with_int8: bool) -> None:
    from repsr.data.datasets import make_lr
    from repsr.data.samples import sample_images
    from repsr.image.io import list_images, read_pixels
    from repsr.image.metrics import psnr
    from repsr.models.files import load_model

    plain = reparameterize_model(load_model(model_path)).eval()
    scale = plain.spec.scale
    paths = list_images(holdout) if holdout is not None else sample_images()["val"]
    pairs = []
    for path in paths:
        pixels = read_pixels(path)
        array = (
            pixels.array[..., :3] if pixels.array.shape[2] >= 3 else np.repeat(pixels.array[..., :1], 3, 2)
        )
        height, width = array.shape[:2]
        side = min(crop, height, width) // scale * scale
        top, left = (height - side) // 2, (width - side) // 2
        hr = np.ascontiguousarray(array[top : top + side, left : left + side])
        top_value = float(np.iinfo(hr.dtype).max)
        lr = torch.from_numpy(make_lr(hr, scale).astype(np.float32) / top_value).permute(2, 0, 1)[None]
        pairs.append((lr.contiguous(), torch.from_numpy(hr.astype(np.float32) / top_value).permute(2, 0, 1)))
    if plain.spec.in_channels == 1:
        raise SystemExit("--quality measures RGB models")
    from repsr.kernels import FusedPlainSR, availability, runnable_variants

    variants: dict[str, Callable] = {
        "fp32": plain,
        "bf16": Bf16PlainSR(plain),
        "bf16, head fp32": Bf16PlainSR(plain, float_head=1),
        "bf16, tail fp32": Bf16PlainSR(plain, float_tail=1),
        "bf16, head+tail fp32": Bf16PlainSR(plain, float_head=1, float_tail=1),
    }
    if availability() is None:
        for precision in runnable_variants()[0].precisions:
            variants[f"fused {precision}"] = FusedPlainSR(plain, precision)
    with tempfile.TemporaryDirectory() as tmp:
        if with_int8:
            from repsr.deploy.int8 import export_int8_onnx
            from repsr.models.onnx import OnnxRunner

            for float_tail in (True, False):
                path = Path(tmp) / f"int8-{float_tail}.onnx"
                report = export_int8_onnx(plain, path, float_tail=float_tail, min_psnr=0.0)
                label = "int8 (tail fp32)" if float_tail else "int8 (all)"
                print(f"{label}: {report.psnr:.1f} dB from fp32 on the verification crops")
                variants[label] = OnnxRunner(path)
        print(f"\n{plain.spec.name} ({model_path}), {len(pairs)} held-out photos, {crop}px HR centre crops")
        print(f"  {'precision':<22} {'Y-PSNR':>8} {'vs fp32':>9} {'worst':>8} {'PSNR to fp32 out':>17}")
        with torch.inference_mode():
            outputs = {
                name: [module(lr)[0].clamp(0, 1) for lr, _ in pairs] for name, module in variants.items()
            }
        reference = [psnr(out, hr, scale) for out, (_, hr) in zip(outputs["fp32"], pairs, strict=True)]
        for name, outs in outputs.items():
            scores = [psnr(out, hr, scale) for out, (_, hr) in zip(outs, pairs, strict=True)]
            deltas = [a - b for a, b in zip(scores, reference, strict=True)]
            to_fp32 = [psnr(out, ref, scale) for out, ref in zip(outs, outputs["fp32"], strict=True)]
            close = "" if name == "fp32" else f"{np.mean(to_fp32):16.1f}"
            print(
                f"  {name:<22} {np.mean(scores):8.3f} {np.mean(deltas):+9.4f} {min(deltas):+8.4f} {close:>17}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-train", action="store_true", help="skip the training rows")
    parser.add_argument("--no-int8", action="store_true", help="skip int8 (ONNX Runtime quantization)")
    parser.add_argument("--quality", type=Path, metavar="MODEL", help="measure quality with a trained model")
    parser.add_argument("--holdout", type=Path, help="folder of held-out photos (default: sample val photos)")
    parser.add_argument("--crop", type=int, default=192, help="HR centre crop side for --quality")
    args = parser.parse_args(argv)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    if args.quality is not None:
        torch.set_num_threads(args.threads)
        quality(args.quality, args.holdout, args.crop, not args.no_int8)
        return
    speed(args.threads, args.rounds, not args.no_int8)
    frame_1080p(args.threads, args.rounds)
    if not args.no_train:
        training(args.threads, args.rounds)


if __name__ == "__main__":
    main()
