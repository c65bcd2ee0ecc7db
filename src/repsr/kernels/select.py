"""When `Upscaler` runs the fused kernel: asked for (`backend="fused"`), or picked by `precision="auto"`.

`prepare_fused` returns a `repsr.precision.PreparedNet` for the kernel, or None to leave the model to
the PyTorch path (`repsr.precision.prepare_for_precision`). With `backend="auto"` and `precision="auto"`
on a CPU, a short interleaved timing of this model on a small input (`probe_fused`, cached per model spec
and thread count for the process) compares torch fp32 (channels-last) with the kernel's fp32 and, where
the CPU has AVX512-BF16, its bf16 (and torch bf16 where bf16 is native): the kernel runs when it is the
fastest; a bf16 candidate must beat the best fp32 by `BF16_MIN_SPEEDUP`, as for torch's own bf16. An
explicit fp32 (or the default `None`) never depends on a timing and stays on the PyTorch path unless
`backend="fused"`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from repsr.errors import ConfigError, RepsrError
from repsr.kernels.build import KernelUnavailable, load

PROBE_BUDGET_S = 0.4
# int8 (fused kernel) must beat the best fp32 by this factor for `auto` to take it: it costs more
# accuracy than bf16 (held-out photographs: up to 0.05 dB Y-PSNR, see tests/test_kernels.py).
INT8_MIN_SPEEDUP = 1.5
PROBE_MIN_RUNS = 3
PROBE_MAX_SIDE = 192


@dataclass(frozen=True)
class FusedProbe:
    """Best seconds per call of each candidate (`torch fp32`, `torch bf16`, `fused fp32`, `fused bf16`:
    those that run here) on a side x side probe, and the kernel variant."""

    seconds: dict[str, float]
    side: int
    variant: str

    def best(
        self, min_speedup: float, int8_min_speedup: float = INT8_MIN_SPEEDUP, *, fused_only: bool = False
    ) -> str:
        """The fastest fp32 candidate, or the fastest reduced-precision one that beats it by its factor
        (`min_speedup` for bf16, `int8_min_speedup` for int8); among the kernel's own with `fused_only`."""
        names = [k for k in self.seconds if k.startswith("fused") or not fused_only]
        fp32 = min((k for k in names if k.endswith("fp32")), key=self.seconds.__getitem__)
        needs = {"bf16": min_speedup, "int8": int8_min_speedup}
        good = [
            k
            for k in names
            if k.split()[-1] in needs and self.seconds[fp32] / self.seconds[k] >= needs[k.split()[-1]]
        ]
        return min(good, key=self.seconds.__getitem__) if good else fp32


_PROBES: dict[tuple[str, int], FusedProbe] = {}


def _time_all(calls: dict[str, Callable[[], object]], budget_s: float) -> dict[str, float]:
    """Best seconds per call of each function, timed in alternation after one warm-up each."""
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    started, runs = time.perf_counter(), 0
    while runs < PROBE_MIN_RUNS or (time.perf_counter() - started < budget_s and runs < 30):
        for name, call in calls.items():
            begin = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - begin)
        runs += 1
    return best


def probe_fused(plain: nn.Module, *, budget_s: float = PROBE_BUDGET_S) -> FusedProbe:
    """Time the candidates on this CPU (see the module docstring); cached per spec and thread count."""
    from repsr.inference.backends import prepare_model
    from repsr.kernels.fused import FusedPlainSR
    from repsr.precision import Bf16PlainSR, _spec_key, cpu_capabilities, probe_side

    key = (_spec_key(plain), torch.get_num_threads())
    if key in _PROBES:
        return _PROBES[key]
    variant, _ = load()
    # twice torch's probe side: the kernel's threads and tiles need a few tiles of work to show their speed
    # (on 96x96 its int8 and fp32 timed alike, on full frames int8 is 2-3x faster)
    side = min(PROBE_MAX_SIDE, 2 * probe_side(plain))
    x = torch.rand(1, plain.spec.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    x_last = x.contiguous(memory_format=torch.channels_last)
    modules: dict[str, tuple[nn.Module, torch.Tensor]] = {
        "torch fp32": (prepare_model(plain, "channels-last", torch.device("cpu"), torch.float32), x_last)
    }
    if cpu_capabilities().bf16_native:
        modules["torch bf16"] = (Bf16PlainSR(plain).eval(), x)
    for precision in variant.precisions:
        try:
            modules[f"fused {precision}"] = (FusedPlainSR(plain, precision), x)
        except RepsrError:  # int8 without its calibration photographs (scikit-image's samples)
            continue

    def runner(module: nn.Module, inp: torch.Tensor) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return module(inp)

        return call

    seconds = _time_all({name: runner(*pair) for name, pair in modules.items()}, budget_s)
    result = FusedProbe(seconds, side, variant.name)
    _PROBES[key] = result
    return result


def prepare_fused(model: nn.Module, device: torch.device, precision: str | None, backend: str):
    """A `PreparedNet` running `model` in the fused kernel, or None for the PyTorch path (see the module
    docstring). `backend="fused"` that cannot run raises `KernelUnavailable` / `ConfigError`."""
    from repsr.network import PlainSR
    from repsr.precision import BF16_MIN_SPEEDUP, Precision, PreparedNet, cpu_capabilities

    requested = Precision.parse(precision or "fp32")
    if backend != "fused":
        if backend != "auto" or device.type != "cpu" or not isinstance(model, PlainSR):
            return None
        if requested is Precision.INT8:  # int8 of a torch model: the kernel where it has int8 units
            try:
                variant, _ = load()
            except KernelUnavailable:
                return None  # ONNX Runtime quantizes it (repsr.precision)
            if "int8" not in variant.precisions:
                return None
            from repsr.kernels.fused import FusedPlainSR

            reason = f"int8 as requested: the fused kernel ({variant.name}, {cpu_capabilities().int8_units})"
            return PreparedNet(
                FusedPlainSR(model, "int8"), Precision.INT8, reason, torch.float32, False, "fused"
            )
        if requested is not Precision.AUTO:
            return None
        try:
            probe = probe_fused(model)
        except KernelUnavailable:
            return None  # `repsr upscale` says so in one line (`repsr.kernels.availability`)
        choice = probe.best(BF16_MIN_SPEEDUP)
        if not choice.startswith("fused"):
            return None
        kernel_precision = choice.split()[1]
        timing = ", ".join(f"{name} {s * 1e3:.1f} ms" for name, s in probe.seconds.items())
        reason = (
            f"{kernel_precision}: the fused kernel ({probe.variant}) was the fastest for "
            f"{model.spec.name} on "
            f"{cpu_capabilities().name} ({timing} on a {probe.side}x{probe.side} probe, "
            f"{torch.get_num_threads()} thread(s))"
        )
    else:
        if device.type != "cpu":
            raise ConfigError("the fused backend runs on the CPU; use --device cpu or another backend")
        if not isinstance(model, PlainSR):
            raise ConfigError(f"the fused backend runs repsr plain networks, not {type(model).__name__}")
        variant, _ = load()
        if requested is Precision.AUTO:
            kernel_precision = "fp32"
            if "bf16" in variant.precisions:
                kernel_precision = probe_fused(model).best(BF16_MIN_SPEEDUP, fused_only=True).split()[1]
        elif requested.value in variant.precisions:
            kernel_precision = requested.value
        else:
            raise ConfigError(
                f"the fused kernel ({variant.name}) runs {' or '.join(variant.precisions)}, not {requested}"
            )
        reason = f"{kernel_precision}: the fused kernel ({variant.name}) as requested"
    from repsr.kernels.fused import FusedPlainSR

    module = FusedPlainSR(model, kernel_precision)
    return PreparedNet(module, Precision(kernel_precision), reason, torch.float32, False, "fused")
