"""A/B timing of the fused kernel: this tree's `fused.c` against another `fused.c` (e.g. main's), same input.

Both builds run the same packed model (the packing is Python, shared). A runs twice: with its weights 16
bytes past a cache line (where main's numpy arrays could lie) and aligned (as this tree packs them). All
are forced to one kernel variant (`--variant`, default avx2: on an AVX-512 machine it runs as a proxy for
AVX2-only CPUs) and interleaved in one process (A, B, A, B, ... after one warm-up each), so a busy
machine slows them alike; the ratio of the medians is the figure to read. fused fp32 (same variant) and
torch fp32 channels-last run in the same rounds for reference. The input is a photograph crop
(`verification_image`): int8's outlier path depends on content. Outputs are checked bit-equal first.

Run: ``python benchmarks/bench_kernel_ab.py --baseline /path/to/old/fused.c [--scale 2] [--rounds 9]``
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repsr.util.runtime import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from repsr import load_model, reparameterize_model  # noqa: E402
from repsr.data.samples import verification_image  # noqa: E402
from repsr.inference import prepare_model  # noqa: E402
from repsr.kernels import FusedPlainSR  # noqa: E402
from repsr.kernels import build as kbuild  # noqa: E402

FRAMES = {2: (540, 960), 3: (360, 640), 4: (180, 320)}


def baseline_library(source: Path, variant: str, folder: Path) -> ctypes.CDLL:
    """`source` compiled as kbuild compiles `variant`, loaded and declared."""
    flags = next(v for v in kbuild.VARIANTS if v.name == variant).cflags
    target = folder / f"baseline-{variant}.so"
    subprocess.run([kbuild.compiler(), *kbuild.CFLAGS, *flags, "-o", str(target), str(source)], check=True)
    library = ctypes.CDLL(str(target))
    kbuild._declare(library)
    return library


def placed(array: np.ndarray, offset: int) -> np.ndarray:
    """A copy of `array` starting `offset` bytes past a 64-byte boundary (main packed the weights wherever
    numpy put them: 16-byte aligned, so 0, 16, 32 or 48 mod 64, and 16 / 48 split 32-byte loads)."""
    raw = np.empty(array.nbytes + 128, dtype=np.uint8)
    start = -raw.ctypes.data % 64 + offset
    out = raw[start : start + array.nbytes].view(array.dtype)
    out[:] = array
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other fused.c (A)")
    parser.add_argument("--scale", type=int, default=2, choices=sorted(FRAMES))
    parser.add_argument("--variant", default="avx2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--tile", type=int, nargs=2, default=None, help="rows columns (default: the kernel's)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip fused fp32 and torch fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    plain = reparameterize_model(load_model(f"repsr-m4c16-x{args.scale}")).eval()
    x = verification_image(3, FRAMES[args.scale])
    new = FusedPlainSR(plain, "int8", variant=args.variant, threads=args.threads, tile=args.tile)
    with tempfile.TemporaryDirectory() as folder:
        library = baseline_library(args.baseline, args.variant, Path(folder))
        candidates = {}
        for offset in (16, 0):
            old = copy.copy(new)
            old._lib = library
            old._weights, old._scalars = placed(new._weights, offset), placed(new._scalars, offset)
            candidates[f"int8 A, weights +{offset}"] = old
        candidates["int8 B (this tree)"] = new
        with torch.inference_mode():
            b = new(x)
            for name, module in list(candidates.items())[:2]:
                a = module(x)
                same = torch.equal(a, b)
                diff = "" if same else f" (max diff {(a - b).abs().max():.3g})"
                print(f"{name} and B outputs bit-equal: {same}{diff}")
        if not args.no_reference:
            candidates["fused fp32"] = FusedPlainSR(plain, "fp32", variant=args.variant, threads=args.threads)
            torch_fp32 = prepare_model(plain, "channels-last", torch.device("cpu"), torch.float32)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            candidates["torch fp32 channels-last"] = lambda _x: torch_fp32(x_cl)
        wall: dict[str, list[float]] = {name: [] for name in candidates}
        cpu: dict[str, list[float]] = {name: [] for name in candidates}
        with torch.inference_mode():
            for module in candidates.values():  # warm-up
                module(x)
            for _ in range(args.rounds):
                for name, module in candidates.items():
                    w0, c0 = time.perf_counter(), time.process_time()
                    module(x)
                    wall[name].append(time.perf_counter() - w0)
                    cpu[name].append(time.process_time() - c0)
    h, w = FRAMES[args.scale]
    print(
        f"x{args.scale} {w}x{h}, variant {args.variant}, {args.threads} threads, tile {new.tile}, "
        f"{args.rounds} rounds (medians; CPU = process time, all threads)"
    )
    first = next(iter(candidates))
    base, base_cpu = statistics.median(wall[first]), statistics.median(cpu[first])
    for name in candidates:
        med, med_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        ratios = [a / b for a, b in zip(wall[first], wall[name], strict=True)]
        print(
            f"  {name:<26} wall {1000 * med:7.1f} ms (min {1000 * min(wall[name]):6.1f}, {1 / med:5.1f} f/s)"
            f"  CPU {1000 * med_cpu:7.1f} ms  A+16/this wall {base / med:5.2f}x (per-round median "
            f"{statistics.median(ratios):5.2f}x)  CPU {base_cpu / med_cpu:5.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
