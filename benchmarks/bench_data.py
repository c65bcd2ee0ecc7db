"""Data-side benchmarks: imresize on a 2K image, loader patches/s, the cost of real-world degradations
against a training step, metric time on a 2K image.

Run: ``python benchmarks/bench_data.py`` (or through ``benchmarks/run.py``). Prints one line per figure.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repsr.data.datasets import TrainPatches, make_lr
from repsr.data.degradations import Degradation  # noqa: E402
from repsr.data.samples import sample_images  # noqa: E402
from repsr.image.io import read_image, read_pixels, write_image  # noqa: E402
from repsr.image.metrics import psnr, ssim  # noqa: E402
from repsr.image.resize import imresize  # noqa: E402
from repsr.training import TrainConfig, Trainer  # noqa: E402
from repsr.util.hardware import cpu_capabilities  # noqa: E402

W2K, H2K = 2040, 1356  # a DIV2K-sized image


def _time(fn: Callable[[], object], repeat: int = 5) -> float:
    fn()  # warm-up: caches, allocator
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _photo_2k() -> torch.Tensor:
    """A 2040x1356 image with photographic content: the astronaut enlarged, plus grain."""
    astro = read_image(sample_images()["train"][0]).rgb
    big = imresize(astro.double(), (H2K / 512, W2K / 512))[:, :H2K, :W2K]
    grain = 0.02 * torch.randn(big.shape, generator=torch.Generator().manual_seed(0), dtype=big.dtype)
    return (big + grain).clamp(0, 1).float()


def bench_imresize(img: torch.Tensor) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for dtype in (torch.float32, torch.float64):
            x = img.to(dtype)
            t = _time(lambda x=x: imresize(x, 1 / 4))
            print(f"imresize {W2K}x{H2K} RGB x1/4 down, {str(dtype)[6:]}, 1 thread: {t * 1e3:.0f} ms")
        small = imresize(img, 1 / 4)
        t = _time(lambda: imresize(small, 4))
        print(f"imresize {W2K // 4}x{H2K // 4} RGB x4 up, float32, 1 thread: {t * 1e3:.0f} ms")
    finally:
        torch.set_num_threads(threads)
    t = _time(lambda: imresize(img, 1 / 4))
    print(f"imresize {W2K}x{H2K} RGB x1/4 down, float32, {threads} threads: {t * 1e3:.0f} ms")


def bench_decode(img: torch.Tensor, folder: Path) -> None:
    path = folder / "2k.png"
    write_image(path, img)
    t_decode = _time(lambda: read_pixels(path), repeat=3)
    pixels = read_pixels(path).array
    t_lr = _time(lambda: make_lr(pixels, 4), repeat=3)
    print(
        f"decode 2K PNG: {t_decode * 1e3:.0f} ms; make LR x4 (float64): {t_lr * 1e3:.0f} ms "
        f"(paid once per image thanks to the cache; decoding per patch would cap a loader "
        f"at ~{1 / t_decode:.0f} patches/s per worker)"
    )


def bench_loader(folder: Path) -> None:
    train = sample_images()["train"]
    for scale, patch in ((4, 64), (2, 64)):
        cache = folder / f"cache-x{scale}"
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = TrainPatches(train, scale, patch, cache_dir=cache)
        build = time.perf_counter() - start
        start = time.perf_counter()
        ds = TrainPatches(train, scale, patch, cache_dir=cache)
        reopen = time.perf_counter() - start
        n = 2000
        start = time.perf_counter()
        for key in range(n):
            ds[key]
        single = n / (time.perf_counter() - start)
        batch, workers, batches = 32, 2, 60
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=batch,
            sampler=range(10_000, 10_000 + batch * batches),
            num_workers=workers,
            persistent_workers=False,
        )
        it = iter(loader)
        next(it)  # worker start-up excluded
        start = time.perf_counter()
        count = sum(lr.shape[0] for lr, _ in it)
        multi = count / (time.perf_counter() - start)
        print(
            f"loader x{scale} LR {patch}px / HR {patch * scale}px ({len(ds)} sample images): "
            f"cache build {build:.1f} s, cached reopen {reopen * 1e3:.0f} ms, "
            f"{single:.0f} patches/s in-process, {multi:.0f} patches/s DataLoader({workers} workers, "
            f"batch {batch}) = {multi / batch:.0f} batches/s"
        )


def _training_rate(folder: Path, scale: int, preset: str, workers: int, amp: bool) -> float:
    """Iterations per second of the real trainer (M4C16, batch 16, LR 32, 1 thread) on the sample
    photographs, between iterations 20 and 120 (start-up and the loader's first batches excluded)."""
    config = TrainConfig().with_overrides(
        [
            f"model.scale={scale}",
            "train.batch_size=16",
            "data.patch_size=32",
            f"data.workers={workers}",
            f"degradation.preset={preset}",
            "device=cpu",
            "train.threads=1",
            f"train.amp={amp}",
            "train.iterations=1000",
            "bn.precise_batches=0",
            "val.every=100000",
            "checkpoint.every=100000",
            "log.tensorboard=false",
        ]
    )
    data = TrainPatches(
        sample_images()["train"], scale, 32, cache_dir=folder / "cache", degradation=config.degradation
    )
    trainer = Trainer(config, data=data, val={}, out=folder / f"rate-{time.time_ns()}", progress=False)
    try:
        trainer.run(until=20)
        start = time.perf_counter()
        trainer.run(until=120)
        return 100 / (time.perf_counter() - start)
    finally:
        trainer.close()


def bench_degradations(folder: Path) -> None:
    """Per-patch cost of each degradation preset (one thread), and what the `general` preset does to the
    real trainer's speed (M4C16, batch 16, LR 32, one training thread) in-process and with a worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train, batch = sample_images()["train"], 16
    amp = cpu_capabilities().bf16_native
    try:
        for scale in (4, 2):
            cells = []
            for preset in ("general", "realesrgan"):
                ds = TrainPatches(
                    train, scale, 32, cache_dir=folder / "cache", degradation=Degradation(preset)
                )
                keys = iter(range(10**6))
                per_batch = _time(lambda ds=ds, keys=keys: [ds[next(keys)] for _ in range(batch)], repeat=10)
                cells.append(f"{preset} {per_batch / batch * 1e3:.2f} ms")
            print(f"degradation per patch, x{scale} HR {32 * scale}px, 1 thread: " + "; ".join(cells))
            rates = {
                (preset, workers): _training_rate(folder, scale, preset, workers, amp)
                for preset, workers in (("none", 0), ("general", 0), ("general", 1), ("none", 0))
            }
            base = rates[("none", 0)]
            print(
                f"training x{scale} M4C16 batch 16 LR 32, 1 thread ({'bf16' if amp else 'fp32'}): bicubic LR "
                f"{base:.1f} it/s; general in-process {rates[('general', 0)]:.1f} it/s "
                f"({base / rates[('general', 0)] - 1:+.0%} time), general with 1 loader worker "
                f"{rates[('general', 1)]:.1f} it/s ({base / rates[('general', 1)] - 1:+.0%} time)"
            )
    finally:
        torch.set_num_threads(threads)


def bench_metrics(img: torch.Tensor) -> None:
    degraded = imresize(imresize(img, 1 / 4), 4)
    t_psnr = _time(lambda: psnr(degraded, img, 4), repeat=3)
    t_ssim = _time(lambda: ssim(degraded, img, 4), repeat=3)
    print(f"metrics on {W2K}x{H2K} (Y, crop 4): psnr {t_psnr * 1e3:.0f} ms, ssim {t_ssim * 1e3:.0f} ms")


def main() -> None:
    img = _photo_2k()
    bench_imresize(img)
    with tempfile.TemporaryDirectory() as tmp:
        bench_decode(img, Path(tmp))
        bench_loader(Path(tmp))
        bench_degradations(Path(tmp))
    bench_metrics(img)


if __name__ == "__main__":
    main()
