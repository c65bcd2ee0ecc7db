"""Every way repsr runs a network, and the one place that decides which runs.

A backend is one row of `REGISTRY`: where it runs and in which precisions (`precisions(device)`, empty
where it cannot run, `unavailable(device)` saying why), the input layout it wants, and how it builds the
runnable module (`build`). A new path (another kernel, ARM, a GPU engine) is one `Backend` subclass
and one row.

- `eager`: the model's own `forward`, NCHW (the reference); fp16 on CUDA.
- `channels-last`: NHWC activations and, for a plain network, a fused tail that writes pixel shuffle and
  nearest-upsampled skip in one strided add; bf16 as `forms.Bf16PlainSR` (float32 input, skip, output).
- `compile`: `torch.compile` of the channels-last forms; pays a compile (tens of seconds) per process
  and input shape, so it is opt-in and `auto` never weighs it.
- `fused`: the fused C kernel (`repsr.kernels`), fp32 and, where the CPU's kernel variant has them, bf16
  and int8; CPU only.
- `onnxruntime`: the network exported to ONNX (fp32: `repsr bench` only) or quantized to int8 (run when
  int8 is asked for and the fused kernel has no int8 path).

`decide(model, device, precision, backend)` is the one decider (`Upscaler` calls it):
- an ONNX file runs in ONNX Runtime, in the precision it was written in;
- an explicit precision never depends on a timing: the asked backend, or for `auto` the first backend of
  `PREFERRED[precision]` that runs it here;
- `precision="auto"` weighs every `candidates(...)` pair (backend, precision) that runs here by one
  interleaved timing on one input (`probe`, cached per model, device and thread count for the process),
  and runs the fastest fp32 one, or a reduced precision that beats it by `MIN_SPEEDUP` and keeps every
  harsh photograph within 16 levels of fp32 (`quality_problem`, checked for this model once). The
  reason names the measurement and any candidate passed over.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from repsr.arch.network import FusedTailPlainSR, PlainSR, RepNet, describe, reparameterize_model
from repsr.inference.forms import Bf16PlainSR
from repsr.util.errors import ConfigError, RepsrError
from repsr.util.hardware import device_capabilities
from repsr.util.precision import Precision

# A reduced precision must beat the fastest fp32 candidate by this factor for `auto` to take it: it costs
# a little accuracy, so a gain inside the timing noise is not worth it (int8 costs more than bf16).
MIN_SPEEDUP = {Precision.BF16: 1.15, Precision.INT8: 1.5}
# The probe input holds about this many multiply-accumulates, its side within PROBE_SIDE: a few of the
# kernel's tiles (its threads need several to show their speed; at 96x96 its int8 and fp32 timed alike).
PROBE_MACS = 4e8
PROBE_SIDE = (64, 192)
PROBE_BUDGET_S = 0.5
PROBE_MIN_RUNS = 3
PROBE_MAX_RUNS = 40


@dataclass
class PreparedNet:
    """A network made ready to run: the module to call, the precision and backend that run it, the dtype
    and layout its input wants, and the one-line reason for the choice."""

    module: nn.Module
    precision: Precision
    reason: str
    input_dtype: torch.dtype
    channels_last: bool
    backend: str


class Candidate(NamedTuple):
    """One (backend, precision) pair `auto` may run."""

    backend: str
    precision: Precision

    def __str__(self) -> str:
        return f"{self.backend} {self.precision}"


# ------------------------------------------------------------------------------------------- backends


class Backend:
    """One way of running a plain network. Subclasses say where they run and how they build it."""

    name = ""
    channels_last = False  # wants NHWC input
    in_auto = True  # weighed by `precision="auto"`
    upscales = True  # `Upscaler` runs it (else only `repsr bench` times it)

    def precisions(self, device: torch.device) -> tuple[Precision, ...]:
        """The precisions this backend runs on `device`, best first; () where it cannot run."""
        raise NotImplementedError

    def unavailable(self, device: torch.device) -> str | None:
        """Why this backend cannot run on `device` (one line), or None."""
        return None if self.precisions(device) else f"the {self.name} backend does not run on {device.type}"

    def build(self, plain: PlainSR, device: torch.device, precision: Precision) -> nn.Module:
        """The module computing `plain` (left untouched) on `device` in `precision`."""
        raise NotImplementedError

    def label(self, precision: Precision) -> str:
        """What runs, for reasons and benchmark rows (`fused kernel avx2 int8`)."""
        return f"torch {self.name} {precision}"


def _frozen_copy(plain: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    module = copy.deepcopy(plain).to(device=device, dtype=dtype).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def _torch_precisions(device: torch.device) -> tuple[Precision, ...]:
    if device.type == "cuda":
        return (Precision.FP32, Precision.BF16, Precision.FP16)
    return (Precision.FP32, Precision.BF16)  # bf16 is emulated where the CPU has no bf16 units


class EagerBackend(Backend):
    name = "eager"
    in_auto = False  # the reference; channels-last computes the same, faster

    def precisions(self, device: torch.device) -> tuple[Precision, ...]:
        return (Precision.FP32, Precision.FP16) if device.type == "cuda" else (Precision.FP32,)

    def build(self, plain: PlainSR, device: torch.device, precision: Precision) -> nn.Module:
        return _frozen_copy(plain, device, precision.dtype)


class ChannelsLastBackend(Backend):
    name = "channels-last"
    channels_last = True

    def precisions(self, device: torch.device) -> tuple[Precision, ...]:
        return _torch_precisions(device)

    def build(self, plain: PlainSR, device: torch.device, precision: Precision) -> nn.Module:
        if precision is Precision.BF16:
            return Bf16PlainSR(plain.float()).to(device).eval()
        module = _frozen_copy(plain, device, precision.dtype)
        if isinstance(module, PlainSR):
            module = FusedTailPlainSR(module)
        return module.to(memory_format=torch.channels_last)


class CompileBackend(ChannelsLastBackend):
    name = "compile"
    in_auto = False  # a compile per process and shape: opt-in

    def build(self, plain: PlainSR, device: torch.device, precision: Precision) -> nn.Module:
        return torch.compile(super().build(plain, device, precision), dynamic=None)


class FusedBackend(Backend):
    name = "fused"

    def _variant(self):
        from repsr.kernels.build import KernelUnavailable, load

        try:
            return load()[0]
        except KernelUnavailable:
            return None

    def precisions(self, device: torch.device) -> tuple[Precision, ...]:
        variant = self._variant() if device.type == "cpu" else None
        return tuple(Precision(p) for p in variant.precisions) if variant else ()

    def unavailable(self, device: torch.device) -> str | None:
        if device.type != "cpu":
            return "the fused kernel runs on the CPU; use --device cpu or another backend"
        from repsr.kernels.build import availability

        return availability()

    def build(self, plain: PlainSR, device: torch.device, precision: Precision) -> nn.Module:
        from repsr.kernels.fused import FusedPlainSR

        return FusedPlainSR(plain.float(), precision.value)

    def label(self, precision: Precision) -> str:
        variant = self._variant()
        return f"fused kernel {variant.name if variant else '?'} {precision}"


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    in_auto = False  # int8 quantizes on the spot, and its quality depends on the CPU (see repsr.deploy.int8)

    def precisions(self, device: torch.device) -> tuple[Precision, ...]:
        return (Precision.FP32, Precision.INT8) if device.type == "cpu" else ()

    def unavailable(self, device: torch.device) -> str | None:
        if device.type != "cpu":
            return "ONNX files run in ONNX Runtime on the CPU here; use --device cpu"
        try:
            from repsr.models.onnx import require_onnx

            require_onnx()
        except RepsrError as error:
            return str(error)
        return None

    def build(self, plain: PlainSR, device: torch.device, precision: Precision) -> nn.Module:
        from repsr.data.samples import verification_image
        from repsr.deploy.int8 import export_int8_onnx
        from repsr.deploy.onnx import write_onnx
        from repsr.models.onnx import OnnxRunner

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"model-{precision}.onnx"
            if precision is Precision.INT8:
                report = export_int8_onnx(plain, path)
                self.last_note = (
                    f"quantized now ({report.psnr:.1f} dB from fp32; repsr export --int8 saves this)"
                )
            else:
                example = verification_image(plain.spec.in_channels, (64, 64))
                write_onnx(plain.cpu().float(), path, example, dynamic=True, opset=18)
            return OnnxRunner(path)

    def label(self, precision: Precision) -> str:
        return f"ONNX Runtime {precision}"


REGISTRY: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        EagerBackend(),
        ChannelsLastBackend(),
        CompileBackend(),
        FusedBackend(),
        OnnxRuntimeBackend(),
    )
}
UPSCALE_BACKENDS = tuple(name for name, backend in REGISTRY.items() if backend.upscales)
BACKENDS = ("auto", *UPSCALE_BACKENDS)  # what `Upscaler(backend=...)` and `repsr upscale` accept
BENCH_BACKENDS = tuple(REGISTRY)  # what `repsr bench` can time
# An explicit precision with `backend="auto"`: the first of these that runs it here (no timing).
PREFERRED: dict[Precision, tuple[str, ...]] = {
    Precision.FP32: ("channels-last",),
    Precision.BF16: ("channels-last",),
    Precision.FP16: ("channels-last",),
    Precision.INT8: ("fused", "onnxruntime"),
}


def check_backend(backend: str) -> str:
    """`backend` if `Upscaler` runs it (or `auto`); `ConfigError` naming the choices otherwise."""
    if backend != "auto" and backend not in UPSCALE_BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def prepare_input(x: Tensor, backend: str) -> Tensor:
    """`x` in the memory layout `backend` runs on (NHWC for the channels-last ones)."""
    if REGISTRY[backend].channels_last:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_model(model: nn.Module, backend: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The module that computes `model` (plain or training form, untouched) on `device` in `dtype` with
    `backend`. Feed it `prepare_input(x, backend)`."""
    if backend not in REGISTRY:
        raise ConfigError(f"backend must be one of {', '.join(REGISTRY)}, got {backend!r}")
    precision = {torch.float32: Precision.FP32, torch.bfloat16: Precision.BF16, torch.float16: Precision.FP16}
    return REGISTRY[backend].build(_plain(model), device, precision[dtype])


def _plain(model: nn.Module) -> PlainSR:
    if not isinstance(model, RepNet | PlainSR):
        raise TypeError(f"expected a RepNet or PlainSR, got {type(model).__name__}")
    return reparameterize_model(model) if isinstance(model, RepNet) else model


# ------------------------------------------------------------------------------------------- candidates


def candidates(device: torch.device, backend: str = "auto") -> list[Candidate]:
    """The (backend, precision) pairs `precision="auto"` weighs on `device`: every precision of every
    backend in `auto` (or of `backend` alone) that runs here, bf16 only where the device has native bf16
    units (emulated bf16 is slower than fp32 by construction)."""
    native_bf16 = device_capabilities(device).bf16_native
    names = [name for name, b in REGISTRY.items() if b.in_auto] if backend == "auto" else [backend]
    found = []
    for name in names:
        for precision in REGISTRY[name].precisions(device):
            if precision is Precision.FP16 or (precision is Precision.BF16 and not native_bf16):
                continue
            found.append(Candidate(name, precision))
    return found


def probe_side(spec) -> int:
    """Side of the square LR probe input: about `PROBE_MACS` multiply-accumulates, within `PROBE_SIDE`."""
    c, out = spec.channels, spec.in_channels * spec.scale**2
    macs_per_pixel = 9 * (spec.in_channels * c + spec.num_blocks * c * c + c * out)
    side = int((PROBE_MACS / macs_per_pixel) ** 0.5) // 8 * 8
    return max(PROBE_SIDE[0], min(PROBE_SIDE[1], side))


@dataclass(frozen=True)
class Probe:
    """Best seconds per call of each candidate on one side x side input, timed in alternation."""

    seconds: dict[Candidate, float]
    side: int
    threads: int

    def fastest(self) -> Candidate:
        """The fastest fp32 candidate, or the fastest reduced-precision one beating it by `MIN_SPEEDUP`."""
        fp32 = [c for c in self.seconds if c.precision is Precision.FP32]
        base = min(fp32 or self.seconds, key=self.seconds.__getitem__)
        good = [
            c
            for c, s in self.seconds.items()
            if c.precision in MIN_SPEEDUP and self.seconds[base] / s >= MIN_SPEEDUP[c.precision]
        ]
        return min(good, key=self.seconds.__getitem__) if good else base

    def summary(self) -> str:
        """`fused fp32 8.1 ms, channels-last fp32 12.3 ms on a 192x192 probe, 2 thread(s)`."""
        timing = ", ".join(
            f"{c} {s * 1e3:.1f} ms" for c, s in sorted(self.seconds.items(), key=lambda i: i[1])
        )
        return f"{timing} on a {self.side}x{self.side} probe, {self.threads} thread(s)"


_PROBES: dict[tuple, Probe] = {}


def _time_alternating(
    calls: dict[Candidate, Callable[[], object]], budget_s: float
) -> dict[Candidate, float]:
    """Best seconds per call of each function, timed in turn (same machine load) after one warm-up each."""
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    started, runs = time.perf_counter(), 0
    while runs < PROBE_MIN_RUNS or (time.perf_counter() - started < budget_s and runs < PROBE_MAX_RUNS):
        for name, call in calls.items():
            begin = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - begin)
        runs += 1
    return best


def probe(
    plain: PlainSR, device: torch.device, pairs: list[Candidate], *, budget_s: float = PROBE_BUDGET_S
) -> Probe:
    """Time every pair in `pairs` on one photograph crop (cached per model spec, device, threads, pairs)."""
    threads = torch.get_num_threads()
    key = (json.dumps(plain.spec.to_dict(), sort_keys=True), str(device), threads, tuple(pairs))
    if key in _PROBES:
        return _PROBES[key]
    from repsr.data.samples import verification_image

    side = probe_side(plain.spec)
    # a photograph, not noise: the int8 kernel's outlier path costs time where values leave the ranges
    # calibrated on photographs, which uniform noise does everywhere and photographs rarely
    x = verification_image(plain.spec.in_channels, (side, side)).to(device)
    calls = {}
    for pair in pairs:
        try:
            module = REGISTRY[pair.backend].build(plain, device, pair.precision)
        except RepsrError:  # e.g. int8 without its calibration photographs: not a candidate here
            continue
        calls[pair] = _caller(module, prepare_input(x, pair.backend), device)
    result = Probe(_time_alternating(calls, budget_s), side, threads)
    _PROBES[key] = result
    return result


def _caller(module: nn.Module, x: Tensor, device: torch.device) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            out = module(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return call


# ------------------------------------------------------------------------------------------- quality

# The photographs a reduced precision must keep within MAX_PIXEL_LEVELS of fp32 before `auto` runs it,
# at this side (the gate's photographs, also dark and more saturated: repsr.data.samples.harsh_photos).
QUALITY_SIDE = 96
_QUALITY: dict[tuple, str | None] = {}


def quality_problem(plain: PlainSR, device: torch.device, candidate: Candidate) -> str | None:
    """None when `candidate` keeps every harsh photograph within `MAX_PIXEL_LEVELS` 8-bit levels of the
    fp32 network, else the one-line reason (cached per model spec, device and candidate). A mean over
    photographs hides a few broken pixels: this is the check that `auto` never trades them for speed."""
    from repsr.arch.equivalence import MAX_PIXEL_LEVELS, check_against_fp32
    from repsr.data.samples import harsh_photos

    key = (json.dumps(plain.spec.to_dict(), sort_keys=True), str(device), candidate)
    if key not in _QUALITY:
        module = REGISTRY[candidate.backend].build(plain, device, candidate.precision)
        reference = _frozen_copy(plain, torch.device("cpu"), torch.float32)

        def run(x: Tensor) -> Tensor:
            return module(prepare_input(x.to(device), candidate.backend)).float().cpu()

        images = harsh_photos(plain.spec.in_channels, QUALITY_SIDE)
        _, levels, where = check_against_fp32(run, reference, images)
        _QUALITY[key] = (
            None
            if levels <= MAX_PIXEL_LEVELS
            else f"{candidate} skipped: {levels} levels from fp32 on {where} (limit {MAX_PIXEL_LEVELS})"
        )
    return _QUALITY[key]


def _fastest_within_limits(
    plain: PlainSR, device: torch.device, measured: Probe
) -> tuple[Candidate, list[str]]:
    """`measured.fastest()`, passing over reduced precisions that fail `quality_problem` (and saying so)."""
    seconds, skipped = dict(measured.seconds), []
    while True:
        choice = Probe(seconds, measured.side, measured.threads).fastest()
        problem = quality_problem(plain, device, choice) if choice.precision in MIN_SPEEDUP else None
        if problem is None:
            return choice, skipped
        skipped.append(problem)
        del seconds[choice]


# ------------------------------------------------------------------------------------------- deciding


def decide(
    model: nn.Module,
    device: torch.device,
    precision: str | Precision = Precision.AUTO,
    backend: str = "auto",
) -> PreparedNet:
    """`model` (a repsr network, or an ONNX file's `OnnxRunner`) ready to run on `device`: the one
    decision of what runs (see the module docstring). `ConfigError` for a pair that cannot run here."""
    requested = Precision.parse(precision)
    check_backend(backend)
    caps = device_capabilities(device)
    where = f"{caps.name} ({device.type})"
    if describe(model).form == "onnx":
        return _onnx_file(model, device, requested, backend, where)
    plain = _plain(model)
    if requested is Precision.AUTO:
        pairs = candidates(device, backend)
        if not pairs:
            problem = REGISTRY[backend].unavailable(device) if backend in REGISTRY else None
            raise ConfigError(problem or f"no backend runs a repsr network on {where}")
        if len(pairs) == 1:
            choice, why = pairs[0], "the only candidate here"
        else:
            measured = probe(plain, device, pairs)
            choice, skipped = _fastest_within_limits(plain, device, measured)
            why = f"the fastest for {plain.spec.name} ({measured.summary()})" + "".join(
                f"; {s}" for s in skipped
            )
        label = REGISTRY[choice.backend].label(choice.precision)
        return _prepared(plain, device, choice, f"{choice.precision}: {label} on {where}, {why}")
    if requested is Precision.FP16 and device.type != "cuda":
        raise ConfigError("fp16 needs a CUDA device; on CPU use --precision bf16 or fp32")
    if requested is Precision.INT8 and device.type != "cpu":
        raise ConfigError("int8 runs on the CPU; use --device cpu (or bf16/fp16 on CUDA)")
    names = PREFERRED[requested] if backend == "auto" else (backend,)
    for name in names:
        if requested in REGISTRY[name].precisions(device) and (
            name != "onnxruntime" or not REGISTRY[name].unavailable(device)
        ):
            note = ""
            if requested is Precision.BF16 and not caps.bf16_native:
                note = ", emulated (no native bf16 units): expect it slow"
            elif requested is Precision.INT8 and name == "onnxruntime":
                note = f", {caps.int8_units or 'no int8 dot-product units: expect it slow'}"
            label = REGISTRY[name].label(requested)
            reason = f"{requested} as requested on {where} ({label}){note}"
            return _prepared(plain, device, Candidate(name, requested), reason)
    why = REGISTRY[names[-1]].unavailable(device) if len(names) == 1 else None
    runs = ", ".join(str(p) for p in REGISTRY[names[-1]].precisions(device)) or "nothing here"
    raise ConfigError(why or f"{requested} does not run on {where} with backend {backend} (it runs {runs})")


def _prepared(plain: PlainSR, device: torch.device, choice: Candidate, reason: str) -> PreparedNet:
    backend = REGISTRY[choice.backend]
    module = backend.build(plain, device, choice.precision)
    note = getattr(backend, "last_note", "")
    if choice.backend == "onnxruntime" and note:
        reason = f"{reason}; {note}"
    reduced = choice.precision in (Precision.BF16, Precision.INT8)
    dtype = torch.float32 if reduced else choice.precision.dtype
    return PreparedNet(module, choice.precision, reason, dtype, backend.channels_last, choice.backend)


def _onnx_file(
    model: nn.Module, device: torch.device, requested: Precision, backend: str, where: str
) -> PreparedNet:
    actual = Precision(describe(model).precisions[0])
    if requested not in (Precision.AUTO, actual):
        name = getattr(model, "path", "this ONNX file")
        raise ConfigError(f"{name} is {actual} (ONNX Runtime); it cannot run in {requested}")
    if backend not in ("auto", "onnxruntime"):
        raise ConfigError(
            f"{getattr(model, 'path', 'an ONNX file')} runs in ONNX Runtime, not the {backend} backend"
        )
    if device.type != "cpu":
        raise ConfigError("ONNX files run in ONNX Runtime on the CPU here; use --device cpu")
    shape = getattr(model, "input_shape", ())
    if any(d is not None for d in shape[2:]):  # images and tiles come in every size: refuse before any work
        model.check_shape((1, model.spec.in_channels, -1, -1))
    reason = f"{actual}: ONNX file run by ONNX Runtime on {where}"
    return PreparedNet(model, actual, reason, torch.float32, False, "onnxruntime")


__all__ = [
    "BACKENDS",
    "BENCH_BACKENDS",
    "MIN_SPEEDUP",
    "PREFERRED",
    "REGISTRY",
    "UPSCALE_BACKENDS",
    "Backend",
    "Candidate",
    "PreparedNet",
    "Probe",
    "candidates",
    "check_backend",
    "decide",
    "prepare_input",
    "prepare_model",
    "probe",
]
