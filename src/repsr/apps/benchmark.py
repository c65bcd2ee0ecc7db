"""What a model costs where it runs: parameters, MACs, latency, throughput, and how close to the device's
peak it gets. Behind `repsr bench` and `benchmarks/bench_deploy.py`.

Every figure in one report comes from one process and one thread setting, so ratios between rows
(training vs plain form, backend vs backend, model vs the peak probe) are meaningful even on a noisy,
shared machine; absolute numbers are not.

- MACs: multiply-accumulates of the convolutions (and linear layers) for one LR input of the given
  size, i.e. per output frame; counted by forward hooks, so the training form's extra branches count.
  Element-wise work (BN, PReLU, pixel shuffle, skip) is not counted. FLOP = 2 x MAC.
- Latency: median wall time of many runs after warm-up runs (CUDA synchronized).
- Peak: a large fp32 matmul on the same device with the same thread count, the best a dense kernel gets,
  timed alternately with each row's runs so that both see the same machine load.

On a CPU shared with other processes, run with `OMP_WAIT_POLICY=PASSIVE` (it must be in the environment
before torch is imported): OpenMP's spinning idle threads otherwise take the cores the working threads
need, and small convolutions slow down 3-6x (M4C16 x4 at 320x180, 2 shared cores: channels-last 25-37 ms
passive, 97-160 ms default). The report's header says which policy was in force.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from repsr.arch.equivalence import BACKEND_TOLERANCE, check_deviation, deviation
from repsr.arch.network import RepNet, build_model, reparameterize_model
from repsr.inference import BENCH_BACKENDS, REGISTRY, Candidate, candidates, prepare_input, resolve_device
from repsr.util.errors import ConfigError, EquivalenceError, RepsrError, first_line
from repsr.util.precision import Precision
from repsr.util.timing import time_interleaved, time_runs

STANDARD_SIZES = ((4, 16), (10, 32), (16, 64))  # (num_blocks, channels): M4C16, M10C32, M16C64
DEFAULT_SIZE = (320, 180)  # (width, height) of the LR input: a 1280x720 output frame at x4
CONFIG_SUFFIXES = (".yaml", ".yml")


# ------------------------------------------------------------------------------------------- counting


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters (BN running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, height: int, width: int) -> int:
    """Multiply-accumulates of all convolutions and linear layers for one (1, C, height, width) input."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: Any, output: Tensor) -> None:
        nonlocal total
        kernel = math.prod(module.kernel_size) * module.in_channels // module.groups
        total += output.numel() * kernel

    def linear_hook(module: nn.Linear, _inputs: Any, output: Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    parameter = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, model.spec.in_channels, height, width, device=parameter.device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


# ------------------------------------------------------------------------------------------- timing


class PeakProbe:
    """A square fp32 matmul on `device`: the best rate a dense kernel reaches there, per call."""

    def __init__(self, device: torch.device, size: int = 1024) -> None:
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(size, size, generator=generator).to(device)
        self.b = torch.randn(size, size, generator=generator).to(device)
        self.out = torch.empty(size, size, device=device)
        self.flop = 2 * size**3

    def __call__(self) -> None:
        with torch.inference_mode():
            torch.matmul(self.a, self.b, out=self.out)


def measure_peak_gflops(
    device: str | torch.device = "cpu", *, size: int = 1024, budget_s: float = 2.0
) -> float:
    """fp32 GFLOP/s of a (size x size) @ (size x size) matmul: the practical peak of this device now."""
    device = resolve_device(device)
    probe = PeakProbe(device, size)
    return probe.flop / statistics.median(time_runs(probe, device=device, budget_s=budget_s)) / 1e9


# ------------------------------------------------------------------------------------------- backends


class BackendUnavailable(Exception):
    """A backend that cannot run here (missing package or compiler); the reason goes in the report."""


@dataclass
class Runner:
    """A ready-to-time forward pass: `call()` runs it on the prepared input; `setup_s` it took to build."""

    call: Callable[[], Any]
    setup_s: float
    output: Callable[[], Tensor]


def make_runner(
    model: nn.Module, backend: str, x: Tensor, *, threads: int, precision: Precision = Precision.FP32
) -> Runner:
    """Build `backend` in `precision` for `model` on `x`'s device (`repsr.inference.backends`' own
    `build`, what `Upscaler` runs); raise `BackendUnavailable` if it cannot run here."""
    device = x.device
    if backend not in BENCH_BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BENCH_BACKENDS)}, got {backend!r}")
    chosen = REGISTRY[backend]
    problem = chosen.unavailable(device)
    if problem is None and precision not in chosen.precisions(device):
        problem = f"no {precision} here"
    if problem is not None:
        raise BackendUnavailable(problem)
    started = time.perf_counter()
    try:
        module = chosen.build(reparameterize_model(model), device, precision)
    except RepsrError as error:  # the fused C kernel without a compiler, ONNX without its packages
        raise BackendUnavailable(str(error)) from None
    inp = prepare_input(x, backend)
    if precision is Precision.FP16:
        inp = inp.half()

    def call() -> Tensor:
        with torch.inference_mode():
            return module(inp)

    if backend == "compile":
        try:
            call()  # compiling happens on the first call; it belongs to setup, not to latency
        except Exception as error:  # no C++ compiler, unsupported platform, ...
            raise BackendUnavailable(f"torch.compile failed: {first_line(error)}") from None
    return Runner(call=call, setup_s=time.perf_counter() - started, output=lambda: call().float())


def median_latency(
    model: nn.Module, height: int, width: int, *, backend: str = "eager", budget_s: float = 2.0
) -> float:
    """Median seconds of one forward of `model` on a (1, C, height, width) CPU frame through `backend`."""
    x = torch.rand(1, model.spec.in_channels, height, width)
    runner = make_runner(model, backend, x, threads=torch.get_num_threads())
    return statistics.median(time_runs(runner.call, budget_s=budget_s))


# ------------------------------------------------------------------------------------------- models


def standard_models(scale: int = 4, seed: int = 0) -> list[tuple[str, nn.Module]]:
    """The paper's sizes M4C16, M10C32, M16C64 with the repsr block, randomly initialised (timing only)."""
    torch.manual_seed(seed)
    models = []
    for num_blocks, channels in STANDARD_SIZES:
        model = build_model("repsr", scale=scale, num_blocks=num_blocks, channels=channels)
        models.append((model.spec.name, model.eval()))
    return models


def model_from_config(path: str | Path) -> nn.Module:
    """The training-form network a `repsr train` YAML config describes (randomly initialised), built by
    the trainer's own `build_network` so bench times exactly what training would train."""
    from repsr.training.builders import build_network
    from repsr.training.config import load_config

    return build_network(load_config(path)).eval()


def load_target(target: str | Path) -> tuple[str, nn.Module]:
    """A bench argument: a YAML config (training form from its model section), a model file or a shipped
    model's name; an `.onnx` file is refused in one line (it runs on one backend only)."""
    from repsr.models.files import load_model

    path = Path(target)
    if path.suffix.lower() in CONFIG_SUFFIXES:
        model = model_from_config(path)
    elif path.suffix.lower() == ".onnx":  # one fixed form: nothing to compare it against here
        raise ConfigError(
            f"{path}: repsr bench times a torch model on every backend (its onnxruntime row exports it); "
            "give the model the ONNX file was exported from, or time the file with repsr upscale"
        )
    else:
        model = load_model(path)
    return f"{path.stem} ({model.spec.name})", model


# ------------------------------------------------------------------------------------------- running


@dataclass
class BenchRow:
    """One model form on one backend."""

    model: str
    form: str  # "train" or "plain"
    backend: str
    params: int
    macs: int  # per output frame (one LR input of the report's size)
    latency_ms: float | None = None
    runs: int = 0
    fps: float | None = None
    mpix_s: float | None = None  # output megapixels per second
    gflops: float | None = None  # achieved, 2 x MACs / latency
    peak_fraction: float | None = None
    peak_gflops: float | None = None  # the matmul probe, timed interleaved with this row
    speedup: float | None = None  # training-form latency / this latency
    setup_s: float | None = None
    note: str = ""
    precision: str = "fp32"
    in_auto: bool = False  # one of the candidates `precision="auto"` weighs (repsr.inference.candidates)

    @property
    def runs_as(self) -> str:
        """`fused int8*`: the backend, its precision unless fp32, a star where `auto` weighs it."""
        name = self.backend if self.precision == "fp32" else f"{self.backend} {self.precision}"
        return name + ("*" if self.in_auto else "")


@dataclass
class BenchReport:
    """Everything `repsr bench` prints, measured in one process."""

    device: str
    threads: int
    size: tuple[int, int]  # (width, height) of the LR input
    peak_gflops: float
    rows: list[BenchRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fastest_plain(self, model: str) -> BenchRow | None:
        """The plain-form row of `model` with the lowest latency."""
        timed = [r for r in self.rows if r.model == model and r.form == "plain" and r.latency_ms is not None]
        return min(timed, key=lambda r: r.latency_ms, default=None)


def _measure(row: BenchRow, fn: Callable[[], Any], probe: PeakProbe, out_pixels: int, **timing: Any) -> None:
    seconds, probe_seconds = time_interleaved(fn, probe, **timing)
    latency = statistics.median(seconds)
    row.latency_ms = latency * 1e3
    row.runs = len(seconds)
    row.fps = 1.0 / latency
    row.mpix_s = out_pixels / latency / 1e6
    row.gflops = 2 * row.macs / latency / 1e9
    row.peak_gflops = probe.flop / statistics.median(probe_seconds) / 1e9
    row.peak_fraction = row.gflops / row.peak_gflops


def benchmark(
    models: Sequence[tuple[str, nn.Module]],
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    device: str | torch.device = "auto",
    backends: Sequence[str] = BENCH_BACKENDS,
    threads: int | None = None,
    budget_s: float = 3.0,
    train_form: bool = True,
    verify: bool = True,
    peak_size: int = 1024,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure each model's training form (eager) and plain form on each backend, against the peak.

    `size` is (width, height) of the LR input. Each row's timed runs alternate with runs of a
    `peak_size` fp32 matmul probe, and its `% peak` is relative to that probe (see `time_interleaved`).
    A backend that cannot run here is reported with the reason instead of a time. With `verify`, every
    backend's output is compared with eager PyTorch and a difference above `BACKEND_TOLERANCE` (see
    `repsr.arch.equivalence`) is noted on its row.
    """
    device = resolve_device(device)
    unknown = [b for b in backends if b not in BENCH_BACKENDS]
    if unknown:
        raise ConfigError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BENCH_BACKENDS)}")
    width, height = size
    if width < 1 or height < 1:
        raise ConfigError(f"size must be positive, got {width}x{height}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    say = progress or (lambda _message: None)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        threads_used = torch.get_num_threads()
        say("peak probe (fp32 matmul)")
        probe = PeakProbe(device, peak_size)
        peak = (
            probe.flop / statistics.median(time_runs(probe, device=device, budget_s=min(1.0, budget_s))) / 1e9
        )
        report = BenchReport(str(device), threads_used if device.type == "cpu" else 0, (width, height), peak)
        timing = {"device": device, "budget_s": budget_s}
        for label, model in models:
            model = model.to(device).eval()
            x = torch.rand(
                1, model.spec.in_channels, height, width, generator=torch.Generator().manual_seed(0)
            )
            x = x.to(device)
            if train_form and isinstance(model, RepNet):
                say(f"{label}: training form")
                report.rows.append(_bench_training_form(label, model, x, probe, timing))
            report.rows += _bench_plain_form(
                label, model, x, probe, timing, backends, threads_used, verify, say
            )
            train_rows = [r for r in report.rows if r.model == label and r.form == "train"]
            if train_rows and train_rows[0].latency_ms:
                for row in report.rows:
                    if row.model == label and row.latency_ms:
                        row.speedup = train_rows[0].latency_ms / row.latency_ms
        return report
    finally:
        torch.set_num_threads(previous_threads)


def _output_pixels(model: nn.Module, x: Tensor) -> int:
    return x.shape[-2] * x.shape[-1] * model.spec.scale**2


def _bench_training_form(
    label: str, model: nn.Module, x: Tensor, probe: PeakProbe, timing: dict[str, Any]
) -> BenchRow:
    height, width = x.shape[-2:]
    row = BenchRow(label, "train", "eager", count_parameters(model), count_macs(model, height, width))

    def forward() -> Tensor:
        with torch.inference_mode():
            return model(x)

    _measure(row, forward, probe, _output_pixels(model, x), **timing)
    return row


def _bench_plain_form(
    label: str,
    model: nn.Module,
    x: Tensor,
    probe: PeakProbe,
    timing: dict[str, Any],
    backends: Sequence[str],
    threads: int,
    verify: bool,
    say: Callable[[str], None],
) -> list[BenchRow]:
    height, width = x.shape[-2:]
    plain = reparameterize_model(model)
    params, macs = count_parameters(plain), count_macs(plain, height, width)
    with torch.inference_mode():
        reference = plain(x) if verify else None
    weighed = candidates(x.device)
    pairs = [(b, Precision.FP32) for b in backends]  # every backend in fp32, then auto's other candidates
    pairs += [
        (c.backend, c.precision)
        for c in weighed
        if c.backend in backends and c.precision is not Precision.FP32
    ]
    rows = []
    for backend, precision in pairs:
        say(f"{label}: plain form, {backend} {precision}")
        row = BenchRow(label, "plain", backend, params, macs, precision=precision.value)
        row.in_auto = Candidate(backend, precision) in weighed
        rows.append(row)
        try:
            runner = make_runner(plain, backend, x, threads=threads, precision=precision)
        except BackendUnavailable as error:
            row.note = f"unavailable: {error}"
            continue
        row.setup_s = runner.setup_s
        _measure(row, runner.call, probe, _output_pixels(plain, x), **timing)
        if reference is not None:
            error = deviation(reference, runner.output())
            if precision is Precision.FP32:
                try:
                    check_deviation(error, BACKEND_TOLERANCE, "output differs from eager")
                except EquivalenceError as mismatch:
                    row.note = str(mismatch)
            else:  # reduced precision: its own tolerances are tested (tests/test_kernels.py)
                row.note = f"max |{precision} - fp32| {error:.2g}"
    return rows


# ------------------------------------------------------------------------------------------- printing


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _peak_range(report: BenchReport) -> str:
    peaks = [row.peak_gflops for row in report.rows if row.peak_gflops is not None]
    return f"{min(peaks):.0f}-{max(peaks):.0f} GFLOP/s" if peaks else "none timed"


def format_report(report: BenchReport) -> str:
    """The report as an aligned text table, with the device line on top and notes at the bottom."""
    width, height = report.size
    threads = f", {report.threads} threads" if report.threads else ""
    if report.threads:
        threads += f" (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})"
    lines = [
        f"device {report.device}{threads}; LR input {width}x{height}; "
        f"peak (fp32 matmul) {report.peak_gflops:.1f} GFLOP/s at start; "
        f"% peak is against the probe timed alternately with each row ({_peak_range(report)})",
    ]
    header = (
        "model",
        "form",
        "backend",
        "params",
        "GMAC/frame",
        "latency ms",
        "frames/s",
        "MP/s",
        "GFLOP/s",
        "% peak",
        "vs train",
    )
    table = [header]
    notes = []
    for row in report.rows:
        table.append(
            (
                row.model,
                row.form,
                row.runs_as,
                f"{row.params:,}",
                f"{row.macs / 1e9:.3f}",
                _fmt(row.latency_ms, ".2f"),
                _fmt(row.fps, ".1f"),
                _fmt(row.mpix_s, ".1f"),
                _fmt(row.gflops, ".1f"),
                _fmt(None if row.peak_fraction is None else 100 * row.peak_fraction, ".0f"),
                _fmt(row.speedup, ".2f") + ("x" if row.speedup is not None else ""),
            )
        )
        if row.note:
            notes.append(f"{row.model} {row.form} {row.runs_as}: {row.note}")
        if row.backend == "compile" and row.setup_s is not None:
            notes.append(f"{row.model} compile: {row.setup_s:.1f} s to compile (not in the latency)")
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for index, cells in enumerate(table):
        text = "  ".join(
            str(c).ljust(w) if i < 3 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        lines.append(text)
        if index == 0:
            lines.append("-" * len(text))
    if any(row.in_auto for row in report.rows):
        notes.insert(
            0, '* a candidate precision="auto" weighs: the fastest runs (int8/bf16 only within 16 levels)'
        )
    lines += notes
    return "\n".join(lines)
