"""Training-speed benchmark: phase 1, phase 2 merged/unmerged and the plain network, and each speed trick.

Every row times the trainer's real step (`Trainer.train_step`: forward, L1 loss, backward, Adam, LR
schedule) on random patches. The variants are timed in interleaved rounds (A B C ... A B C ...), so on a
shared machine each sees the same load; the table gives the median and the minimum per iteration, and
ratios against the plain network with the same trick (the minimum is the least load-dependent figure).

Run: ``python benchmarks/bench_train.py [--model M4C16] [--scale 4] [--batch 16] [--patch 48]
[--rounds 5] [--no-compile]`` (or through ``benchmarks/run.py``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repsr.util.runtime import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()  # as the `repsr` CLI does; must precede torch

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from repsr.arch.blocks import RepSRBlock  # noqa: E402
from repsr.training.config import TrainConfig  # noqa: E402
from repsr.training.trainer import Trainer  # noqa: E402

TARGET_RATIO = 2.5  # RepSR M4C16 phase-1 iteration vs the plain network of the same size, CPU


class RandomPatches(torch.utils.data.Dataset):
    """Stands in for the data (never read: the benchmark feeds fixed random batches)."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, key: int):
        raise RuntimeError("not used")


def _separate_paths(self: RepSRBlock, x: torch.Tensor) -> torch.Tensor:
    """Reference: the same block with each expand-and-squeeze path as its own conv/BN/conv (no fusion)."""
    bn, y = self.expand_bn, x if self.identity else 0
    for p in range(self.paths):
        part = slice(p * self.mid, (p + 1) * self.mid)
        h = F.conv2d(x, self.expand.weight[part], self.expand.bias[part], padding=1)
        if bn is not None:
            h = F.batch_norm(
                h, bn.running_mean[part], bn.running_var[part], bn.weight[part], bn.bias[part],
                self.training, bn.momentum, bn.eps,
            )  # fmt: skip
        y = y + F.conv2d(h, self.squeeze.weight[:, part], self.squeeze.bias if p == 0 else None)
    return y


def make_step(
    block: str,
    size: tuple[int, int],
    scale: int,
    batch: int,
    patch: int,
    *,
    phase: int = 1,
    merged: bool = True,
    channels_last: bool = True,
    compile_model: bool = False,
    separate_paths: bool = False,
    amp: bool = False,
    folder: Path,
) -> Callable[[], None]:
    """One training iteration of the configured network as a zero-argument callable (fp32 unless `amp`:
    pinned, so rows do not change with the CPU's `train.amp: auto` choice)."""
    blocks, channels = size
    config = TrainConfig().with_overrides(
        [
            f"model.block={block}",
            f"model.scale={scale}",
            f"model.num_blocks={blocks}",
            f"model.channels={channels}",
            f"train.batch_size={batch}",
            f"data.patch_size={patch}",
            "data.workers=0",
            "device=cpu",
            f"bn.merged_training={merged}",
            "bn.precise_batches=0",
            f"train.channels_last={channels_last}",
            f"train.compile={compile_model}",
            f"train.amp={amp}",
            "val.sample=false",
            "log.tensorboard=false",
        ]
    )
    trainer = Trainer(
        config, data=RandomPatches(), val={}, out=folder / f"{block}-{time.time_ns()}", progress=False
    )
    if separate_paths:
        for module in trainer.model.modules():
            if isinstance(module, RepSRBlock):
                module.forward_branches = types.MethodType(_separate_paths, module)
    if phase == 2 and trainer.phase == "batch_stats":
        trainer.switch_bn()
    trainer.model.train()
    generator = torch.Generator().manual_seed(0)
    lr = trainer.step.to_device(torch.rand(batch, 3, patch, patch, generator=generator))
    hr = trainer.step.to_device(torch.rand(batch, 3, patch * scale, patch * scale, generator=generator))
    return lambda: trainer.train_step(lr, hr)


def time_interleaved(
    steps: dict[str, Callable[[], None]], rounds: int, per_round: int
) -> dict[str, list[float]]:
    """Seconds per iteration of each step, timed in interleaved rounds after one warm-up call each."""
    for step in steps.values():
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(per_round):
                begin = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - begin)
    return times


def _row(name: str, times: list[float], base: list[float] | None) -> str:
    median, best = statistics.median(times), min(times)
    ratio = ""
    if base is not None:
        ratio = f"{median / statistics.median(base):5.2f}x  {best / min(base):5.2f}x"
    return f"  {name:<44} {1000 * median:8.1f} {1000 * best:8.1f}   {ratio}"


def run(
    size: tuple[int, int] = (4, 16),
    scale: int = 4,
    batch: int = 16,
    patch: int = 48,
    rounds: int = 5,
    per_round: int = 2,
    compile_model: bool = True,
) -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # graph-break notices (measured below)
    name = f"M{size[0]}C{size[1]} x{scale}"
    print(
        f"training iteration time, {name}, batch {batch} x {patch}x{patch} LR patches, "
        f"{torch.get_num_threads()} threads, {rounds}x{per_round} interleaved iterations per row"
    )
    print(f"  {'variant':<44} {'median':>8} {'min':>8}   vs plain (median, min)   [ms]")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def step(block: str, **options) -> Callable[[], None]:
            return make_step(block, size, scale, batch, patch, folder=folder, **options)

        groups: list[tuple[str, dict[str, Callable[[], None]], str]] = [
            (
                "phases (the trainer's CPU defaults: eager, channels-last)",
                {
                    "plain network": step("plain"),
                    "repsr phase 1 (batch BN, fused paths)": step("repsr"),
                    "repsr phase 1, paths as separate convs": step("repsr", separate_paths=True),
                    "repsr phase 2 merged (frozen BN, one 3x3/block)": step("repsr", phase=2),
                    "repsr phase 2 unmerged (frozen BN, branches)": step("repsr", phase=2, merged=False),
                },
                "plain network",
            ),
            (
                "contiguous memory format (channels-last off)",
                {
                    "plain network, contiguous": step("plain", channels_last=False),
                    "repsr phase 1, contiguous": step("repsr", channels_last=False),
                    "repsr phase 2 merged, contiguous": step("repsr", phase=2, channels_last=False),
                },
                "plain network, contiguous",
            ),
        ]
        if compile_model:
            compiled = {  # RepBN keeps its mode in a Python attribute: no graph break at any BN
                "plain network, torch.compile": step("plain", compile_model=True),
                "repsr phase 1, torch.compile": step("repsr", compile_model=True),
                "repsr phase 2 merged, torch.compile": step("repsr", phase=2, compile_model=True),
            }
            groups.append(("torch.compile (inductor)", compiled, "plain network, torch.compile"))
        for title, steps, base in groups:
            print(f" {title}")
            times = time_interleaved(steps, rounds, per_round)
            for row, values in times.items():
                print(_row(row, values, times[base] if row != base else None))
            if title.startswith("phases"):
                plain_min = min(times["plain network"])
                phase1 = min(times["repsr phase 1 (batch BN, fused paths)"]) / plain_min
                verdict = "met" if phase1 <= TARGET_RATIO else "NOT met"
                print(f"  target: phase 1 <= {TARGET_RATIO}x plain (min times): {phase1:.2f}x -> {verdict}")

        print(" threads")
        before = torch.get_num_threads()
        for threads in sorted({1, before}):
            torch.set_num_threads(threads)
            times = time_interleaved({"plain": step("plain"), "phase 1": step("repsr")}, rounds, per_round)
            print(_row(f"{threads} thread(s): plain network", times["plain"], None))
            print(_row(f"{threads} thread(s): repsr phase 1", times["phase 1"], times["plain"]))
        torch.set_num_threads(before)

        print(" batch and patch shapes (same LR pixels per batch)")
        for shape_batch, shape_patch in (
            (batch * 4, patch // 2),
            (batch, patch),
            (max(1, batch // 4), patch * 2),
        ):
            times = time_interleaved(
                {
                    "plain": make_step("plain", size, scale, shape_batch, shape_patch, folder=folder),
                    "phase 1": make_step("repsr", size, scale, shape_batch, shape_patch, folder=folder),
                },
                rounds,
                per_round,
            )
            label = f"batch {shape_batch} x {shape_patch}x{shape_patch}"
            print(_row(f"{label}: plain network", times["plain"], None))
            print(_row(f"{label}: repsr phase 1", times["phase 1"], times["plain"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="M4C16", help="size as M{blocks}C{channels}")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=48, help="LR patch side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = parser.parse_args([] if argv is None and __name__ != "__main__" else argv)
    blocks, channels = (int(v) for v in args.model.upper().lstrip("M").split("C"))
    run(
        (blocks, channels), args.scale, args.batch, args.patch, args.rounds, compile_model=not args.no_compile
    )


if __name__ == "__main__":
    main()
