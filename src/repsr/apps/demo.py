"""The quickstart: train, merge, verify, evaluate and show a RepSR model in a few CPU minutes.

`repsr demo` needs no data and no network: it trains an RGB RepSR M4C16 x4 model on the built-in
sample photographs with the BN switch, re-parameterizes it, checks the merge, evaluates it against
bicubic on the held-out sample photographs, and writes to `runs/demo/`: `model.safetensors`,
`comparison.png`, `curves.png` and `report.md`.

The budget is time, the quality needs iterations: the iteration count is fitted to `--minutes` from a
short timing at the start, re-fitted during the run from the pace measured since (`train_within`: a
machine that gets busy mid-run gets a shorter run, one that gets idle a longer one), and never goes
below `MIN_ITERATIONS`, the length below which the model is not reliably better than bicubic. The result
is checked against bicubic before it is reported (`DemoResult.verdict`).

x4 rather than x2: it is the scale mobile and batch-upscaling users ask for most, the LR patches are
cheap to train on (a 32 px LR patch covers 128 px of HR), and the difference to bicubic is visible at
a glance in the side-by-side picture.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from repsr.apps.recipes import DEMO_SETTINGS

if TYPE_CHECKING:
    from repsr.training import TrainResult

log = logging.getLogger("repsr.demo")

# Share of the budget spent on training steps; the rest is data caching, validation, the final
# evaluation and the speed measurement.
TRAIN_SHARE = 0.7
# The fewest iterations the demo runs whatever the budget: below them its model is not reliably better
# than bicubic (the nearest-neighbour start takes that long to leave). Measured on the sample validation
# photographs (bicubic 30.74 dB), AMD EPYC Zen 4, 2026-12-03: a 2400-iteration run of the demo recipe,
# fp32 and bf16 autocast alike, was at 29.6 dB after 100 iterations, 30.1 after 200, 30.67 after 300
# (still below), 30.92 after 400; whole runs ended at 30.83 dB (600 iterations, `repsr demo` on the
# machine with both cores busy) and 30.98 dB (800).
MIN_ITERATIONS = 800
# The pace is re-measured this many times during the run, and the run's length re-planned to the budget.
REPLAN_CHECKS = 8
REPLAN_THRESHOLD = 0.1  # re-plan when the fitted length differs by more than this share


@dataclass
class DemoResult:
    """Where the demo put its results, and the headline numbers of its report."""

    run_dir: Path
    model_path: Path
    report_path: Path
    comparison_path: Path
    curves_path: Path
    psnr: float
    bicubic_psnr: float
    merge_error: float
    minutes: float = 5.0  # the budget asked for
    planned_s_per_it: float = 0.0  # the pace the calibration at the start promised
    actual_s_per_it: float = 0.0  # what the run achieved (validation included)
    iterations: int = 0  # what the run trained in the end
    replans: list[str] = field(default_factory=list)  # each re-plan, as the log said it

    @property
    def beats_bicubic(self) -> bool:
        return self.psnr > self.bicubic_psnr

    def verdict(self) -> str:
        """One line: what the demo delivered, or, when the model is not better than bicubic, why and what
        to run instead (a demo never presents a worse-than-bicubic model as its result)."""
        gain = self.psnr - self.bicubic_psnr
        if self.beats_bicubic:
            return f"RepSR {self.psnr:.2f} dB vs bicubic {self.bicubic_psnr:.2f} dB ({gain:+.2f} dB)"
        slower = self.actual_s_per_it / self.planned_s_per_it if self.planned_s_per_it > 0 else 1.0
        why = (
            f"the machine ran {slower:.1f}x slower than measured at the start (other jobs?), so too few "
            "iterations fitted in the budget"
            if slower > 1.2
            else "the budget was too short for this machine"
        )
        return (
            f"the demo model is NOT better than bicubic on its validation photographs ({self.psnr:.2f} vs "
            f"{self.bicubic_psnr:.2f} dB, {gain:+.2f} dB): {why}; run `repsr demo --minutes "
            f"{max(10, round(2 * self.minutes))}` on an idle machine"
        )


def seconds_per_iteration(config, steps: int = 12) -> float:
    """Average time of a training step of `config` on this machine (the demo's calibration).

    Times the trainer's own `train_step` on random patches, in both phases as the run will take them
    (before the BN switch, and after `switch_bn` in the form the config trains phase 2 in), weighted
    by `bn.switch_at`. The trainer lives in a temporary folder and sees a one-patch in-memory dataset.
    """
    import tempfile

    from torch.utils.data import TensorDataset

    from repsr.training.trainer import Trainer

    size, scale, batch = config.data.patch_size, config.model.scale, config.train.batch_size
    channels = config.model.in_channels
    lr = torch.rand(batch, channels, size, size)
    hr = torch.rand(batch, channels, size * scale, size * scale)
    probe = config.with_overrides(["bn.precise_batches=0", "log.tensorboard=false", "val.sample=false"])
    data = TensorDataset(lr[:1], hr[:1])
    logger = logging.getLogger("repsr.training")
    level = logger.level
    with tempfile.TemporaryDirectory() as tmp:
        logger.setLevel(logging.WARNING)  # the probe's switch is no news for the user
        trainer = Trainer(probe, data=data, val={}, out=Path(tmp), progress=False)
        try:
            layout = torch.channels_last if trainer.channels_last else torch.contiguous_format
            lr_patch, hr_patch = (
                x.to(trainer.device, trainer.dtype).contiguous(memory_format=layout) for x in (lr, hr)
            )

            def timed() -> float:
                trainer.train_step(lr_patch, hr_patch)  # warm-up: the first steps create the
                trainer.train_step(lr_patch, hr_patch)  # convolution primitives
                started = time.perf_counter()
                for _ in range(steps):
                    trainer.train_step(lr_patch, hr_patch)
                return (time.perf_counter() - started) / steps

            phase1 = timed()
            if trainer.switch_at is None:
                return phase1
            trainer.switch_bn()
            phase2 = timed()
        finally:
            trainer.close()
            logger.setLevel(level)
    return config.bn.switch_at * phase1 + (1 - config.bn.switch_at) * phase2


def fitted_iterations(seconds_left: float, per_iteration: float, done: int = 0) -> int:
    """The run length that fills `seconds_left` of training at `per_iteration` after `done` iterations,
    never below `MIN_ITERATIONS` (nor below `done + 1`)."""
    fitted = done + int(max(0.0, seconds_left) / max(per_iteration, 1e-9))
    return max(MIN_ITERATIONS, done + 1, fitted)


def demo_config(minutes: float):
    """The demo's training config, with the iteration count fitted to `minutes` on this machine."""
    from repsr.training import TrainConfig

    config = TrainConfig().with_overrides([*DEMO_SETTINGS, "train.iterations=100", "device=cpu"])
    per_iteration = seconds_per_iteration(config)
    iterations = fitted_iterations(minutes * 60 * TRAIN_SHARE, per_iteration)
    if iterations * per_iteration > 1.05 * minutes * 60 * TRAIN_SHARE:
        log.warning(
            "the demo needs at least %d iterations to beat bicubic: about %.1f min of training at this "
            "machine's pace (%.3f s per iteration), more than --minutes %g asks",
            iterations, iterations * per_iteration / 60, per_iteration, minutes,
        )  # fmt: skip
    every = max(10, iterations // 8)
    return config.with_overrides(
        [
            f"train.iterations={iterations}",
            f"val.every={every}",
            f"log.every={max(5, iterations // 100)}",
            f"checkpoint.every={every * 2}",
        ]
    )


def train_within(
    config,
    out: Path,
    *,
    deadline: float,
    progress: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[TrainResult, list[str]]:
    """Train `config` to fit the time left until `deadline` (a `clock()` value).

    The run goes in `REPLAN_CHECKS` legs; after each, the pace of that leg (validation included) is
    measured and the run's length re-fitted to the time left (`Trainer.replan`), never below
    `MIN_ITERATIONS`. So a machine that slows down (another job starts) or speeds up after the
    calibration still gets a run that ends near the budget, and never one too short to beat bicubic.
    Returns the result (its `config` the one the run ended with) and the re-plans, as logged.
    """
    from repsr.training.trainer import Trainer

    trainer = Trainer(config, out=out, progress=progress)
    replans: list[str] = []
    leg = max(1, config.train.iterations // REPLAN_CHECKS)
    try:
        while True:
            begun, first = clock(), trainer.iteration
            result = trainer.run(until=first + leg)
            if result is not None:
                break
            now = clock()
            pace = (now - begun) / max(1, trainer.iteration - first)
            fitted = fitted_iterations(deadline - now, pace, trainer.iteration)
            if abs(fitted - trainer.total) > REPLAN_THRESHOLD * trainer.total:
                note = (
                    f"after {trainer.iteration} iterations the pace is {pace:.3f} s per iteration: "
                    f"the run re-planned from {trainer.total} to {fitted} iterations to fit the budget"
                )
                log.warning("repsr demo: %s", note)
                replans.append(note)
                trainer.replan(fitted)
    except BaseException:
        trainer.close()
        raise
    result.extra["config"] = trainer.config
    return result, replans


def _detailed_crop(hr: Tensor, size: int, scale: int) -> tuple[int, int]:
    """Top-left corner (multiple of `scale`) of the most textured `size`-square of `hr`."""
    gray = hr.mean(0, keepdim=True)[None]
    energy = (gray[..., 1:, :] - gray[..., :-1, :]).abs()[..., :, :-1] + (
        gray[..., :, 1:] - gray[..., :, :-1]
    ).abs()[..., :-1, :]
    pooled = nn.functional.avg_pool2d(energy, size, stride=scale)
    index = int(pooled.flatten().argmax())
    top, left = divmod(index, pooled.shape[-1])
    return top * scale, left * scale


def write_comparison(plain: nn.Module, pair, path: Path, *, crop: int = 128) -> Path:
    """Side by side: LR (nearest), bicubic, RepSR and HR crops of one validation image."""
    from repsr.apps.visualize import side_by_side
    from repsr.image.resize import imresize
    from repsr.inference import upscale_tensor

    scale = plain.spec.scale
    crop = min(crop, *pair.hr.shape[-2:]) // scale * scale
    top, left = _detailed_crop(pair.hr, crop, scale)
    lr = pair.lr[:, top // scale : (top + crop) // scale, left // scale : (left + crop) // scale]
    window = (slice(None), slice(top, top + crop), slice(left, left + crop))
    panels = {
        "LR (nearest)": nn.functional.interpolate(lr[None], scale_factor=scale, mode="nearest")[0],
        "bicubic": imresize(pair.lr, scale)[window],
        "RepSR": upscale_tensor(plain, pair.lr[None], tile=None)[0][window],
        "HR": pair.hr[window],
    }
    upscale = 2  # enlarge with nearest so pixels stay visible
    panels = {
        k: nn.functional.interpolate(v[None].clamp(0, 1), scale_factor=upscale)[0] for k, v in panels.items()
    }
    return side_by_side(panels, path)


def measure_speed(model: nn.Module, plain: nn.Module, size: tuple[int, int] = (180, 320)) -> dict[str, float]:
    """Parameters, GMACs and median CPU latency (ms) on one LR frame: training form, plain form, and the
    plain form through the backend `repsr upscale` uses."""
    from repsr.apps.benchmark import count_macs, count_parameters, median_latency

    speed: dict[str, float] = {}
    for name, network in (("train", model.eval()), ("plain", plain.eval())):
        speed[f"{name}_ms"] = 1000 * median_latency(network, *size)
        speed[f"{name}_params"] = count_parameters(network)
        speed[f"{name}_gmacs"] = count_macs(network, *size) / 1e9
    speed["deployed_ms"] = 1000 * median_latency(plain, *size, backend="channels-last")
    return speed


def run_demo(minutes: float = 5.0, out: Path | None = None, progress: bool = True) -> DemoResult:
    """Run the whole quickstart within about `minutes` of CPU time; see the module docstring."""
    from repsr.apps.visualize import plot_history
    from repsr.arch.equivalence import IMAGE_TOLERANCE, verify_equivalence
    from repsr.quality.evaluation import evaluate, sample_dataset

    started = time.perf_counter()
    out = Path(out or Path("runs") / "demo")
    config = demo_config(minutes)
    planned = minutes * 60 * TRAIN_SHARE / config.train.iterations  # the pace the calibration promised
    result, replans = train_within(
        config, out, deadline=started + minutes * 60 * TRAIN_SHARE, progress=progress
    )
    config = result.extra["config"]
    actual = result.train_seconds / max(1, config.train.iterations)

    validation = sample_dataset(config.model.scale)
    model = result.model.eval()
    plain = result.plain  # the network the trainer merged and saved: the one the check must cover
    merge_error = max(
        verify_equivalence(model, plain, pair.lr[None], tolerance=IMAGE_TOLERANCE) for pair in validation
    )
    scores = evaluate(plain, {"sample": validation}, device="cpu", tile=None)
    dataset = scores.datasets[0]
    comparison = write_comparison(plain, validation[0], result.run_dir / "comparison.png")
    curves = plot_history(
        result.history,
        result.run_dir / "curves.png",
        switch_iteration=config.switch_iteration,
        baselines={"bicubic": dataset.mean("bicubic_psnr")},
    )
    speed = measure_speed(model, plain)
    report = result.run_dir / "report.md"
    outcome = DemoResult(
        run_dir=result.run_dir,
        model_path=result.model_path,
        report_path=report,
        comparison_path=comparison,
        curves_path=curves,
        psnr=dataset.mean("psnr"),
        bicubic_psnr=dataset.mean("bicubic_psnr"),
        merge_error=merge_error,
        minutes=minutes,
        planned_s_per_it=planned,
        actual_s_per_it=actual,
        iterations=config.train.iterations,
        replans=replans,
    )
    text = _report_text(config, result, dataset, merge_error, speed, time.perf_counter() - started)
    headline = [f"**{outcome.verdict()}.**"]
    if replans:
        headline.append(
            "The run re-measured the machine's pace and re-planned its length: " + "; ".join(replans) + "."
        )
    report.write_text(text.replace("\n\n", "\n\n" + "\n\n".join(headline) + "\n\n", 1))
    return outcome


def _report_text(config, result, dataset, merge_error: float, speed: dict[str, float], seconds: float) -> str:
    def cells(psnr: float, ssim: float) -> str:  # "PSNR / SSIM" table cell
        return f"{psnr:.2f} / {ssim:.4f}"

    rows = "\n".join(
        f"| {image.name} | {cells(image.bicubic_psnr, image.bicubic_ssim)} | "
        f"{cells(image.psnr, image.ssim)} |"
        for image in dataset.images
    )
    mean_bicubic = cells(dataset.mean("bicubic_psnr"), dataset.mean("bicubic_ssim"))
    mean_model = cells(dataset.mean("psnr"), dataset.mean("ssim"))
    return f"""# repsr demo report

RGB RepSR M{config.model.num_blocks}C{config.model.channels} x{config.model.scale}, trained for
{config.train.iterations} iterations (batch {config.train.batch_size}, LR patch {config.data.patch_size})
on the built-in sample photographs, BN switch to population statistics at iteration
{config.switch_iteration}; {result.train_seconds / 60:.1f} min of training, {seconds / 60:.1f} min in all.

## Quality on the held-out sample photographs
PSNR (dB) / SSIM on the Y channel, {config.model.scale} pixels cropped at the borders, outputs rounded
to 8 bit.

| image | bicubic | RepSR (deployed) |
|---|---|---|
{rows}
| **mean** | **{mean_bicubic}** | **{mean_model}** |

This is a few-minute model on seven photographs: it shows the recipe working, not the quality of a
full DIV2K training (see the README for that recipe).

## Merge check
Largest absolute difference between the training form (eval mode) and the re-parameterized plain
network over the validation images: **{merge_error:.2e}** (float32).

## Training form vs deployed form (CPU, one 320x180 LR frame, median latency)

| form | parameters | GMACs | latency (ms) |
|---|---|---|---|
| training (multi-branch) | {speed["train_params"]:,} | {speed["train_gmacs"]:.2f} | {speed["train_ms"]:.1f} |
| deployed (plain 3x3) | {speed["plain_params"]:,} | {speed["plain_gmacs"]:.2f} | {speed["plain_ms"]:.1f} |
| deployed, channels-last (what `repsr upscale` runs) | | | {speed["deployed_ms"]:.1f} |

Files: `model.safetensors` (deployed, SRVGGNetCompact layout), `comparison.png` (LR nearest /
bicubic / RepSR / HR), `curves.png` (loss and validation PSNR; the dotted line is the BN switch),
`metrics.csv`, `tensorboard/`.
"""
