"""Numeric precision for inference: what the hardware offers, what `auto` picks, and a bf16 network.

- `cpu_capabilities()` / `device_capabilities(device)`: native bf16 matrix units (AMX-BF16, AVX512-BF16,
  Arm BF16 on CPU; compute capability 8.0+ on CUDA), fp16 and int8 dot-product units, and the
  device's name, from torch's CPU feature detection (`torch.cpu.get_capabilities()`), falling back
  to /proc/cpuinfo flags. Detected, never assumed: CPUs differ from machine to machine.
- `Precision`: `auto`, `fp32`, `bf16`, `fp16` (CUDA only), `int8` (ONNX Runtime on CPU, see
  `repsr.quantize`).
- `choose_precision(model, device, requested)`: the precision to run and a one-line reason. For
  `auto`: fp32 where bf16 is not native; where it is, a short timing of this model in fp32 and in bf16
  on a small input (well under a second, cached per model spec, device and thread count for the
  process) decides: bf16 only when it is at least `BF16_MIN_SPEEDUP` times faster. Small networks
  (M4C16) gain nothing from bf16 even on AMX; large ones gain 1.5-5x.
- `Bf16PlainSR`: a deployed network run in bf16 (channels-last), with the input, the global
  nearest-upsampled skip and the output in float32 (see its docstring for where error enters).
"""

from __future__ import annotations

import copy
import enum
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from repsr.errors import ConfigError
from repsr.network import (
    FusedTailPlainSR,
    ModelDescriptor,
    PlainSR,
    describe,
    reparameterize_model,
    shuffle_add_skip,
)
from repsr.timing import time_interleaved

# bf16 must beat fp32 by this factor in the probe to be chosen: it costs a little accuracy, so a gain
# inside the timing noise is not worth it.
BF16_MIN_SPEEDUP = 1.15
# The probe input holds about this many multiply-accumulates (side clamped to PROBE_SIDE), so the
# whole probe (2 precisions x (1 warm-up + >= 3 timed runs)) stays well under a second.
PROBE_MACS = 3e8
PROBE_SIDE = (32, 96)
PROBE_BUDGET_S = 0.3
PROBE_MIN_RUNS = 3


class Precision(str, enum.Enum):
    """The numeric precision an `Upscaler` runs in."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        """`Precision` from its name (`auto`, `fp32`, `bf16`, `fp16`, `int8`); `ConfigError` otherwise."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise ConfigError(f"precision must be one of {names}, got {value!r}") from None

    @property
    def dtype(self) -> torch.dtype | None:
        """The torch dtype of the network's arithmetic (None for `auto` and `int8`)."""
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(self.value)


PRECISIONS = tuple(p.value for p in Precision)


# ------------------------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Capabilities:
    """What one device offers for reduced precision. `bf16_units` names the native bf16 matrix
    instructions ("" when bf16 would be emulated); `int8_units` likewise for int8 dot products."""

    device: str
    name: str
    bf16_units: str
    fp16: bool
    int8_units: str
    source: str

    @property
    def bf16_native(self) -> bool:
        return bool(self.bf16_units)

    def describe(self) -> str:
        """One line: `AMD EPYC (cpu): bf16 AVX512-BF16, int8 AVX512-VNNI`."""
        bf16 = self.bf16_units or "emulated"
        int8 = self.int8_units or "no dot-product units"
        fp16 = ", fp16" if self.fp16 else ""
        return f"{self.name} ({self.device}): bf16 {bf16}, int8 {int8}{fp16}"


# x86 flag names in /proc/cpuinfo and in torch.cpu.get_capabilities() (the same spelling).
_BF16_UNITS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))
_INT8_UNITS = (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"))


def _torch_cpu_flags() -> dict[str, object] | None:
    """torch's own CPU feature detection (cpuinfo), or None if this torch lacks it."""
    getter = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if getter is not None:
        try:
            return dict(getter())
        except Exception:  # detection must never fail a run
            pass
    helpers = {
        "amx_bf16": "_is_amx_tile_supported",  # older torch: AMX tiles imply AMX-BF16 on every CPU so far
        "avx512_bf16": "_is_avx512_bf16_supported",
        "avx512_vnni": "_is_vnni_supported",
    }
    flags: dict[str, object] = {}
    for key, helper in helpers.items():
        function = getattr(getattr(torch, "cpu", None), helper, None)
        if function is None:
            return None
        try:
            flags[key] = bool(function())
        except Exception:
            return None
    return flags


def _proc_cpuinfo(path: str | Path = "/proc/cpuinfo") -> tuple[set[str], str]:
    """(flags, model name) from /proc/cpuinfo's first processor; empty when unreadable (not Linux)."""
    flags: set[str] = set()
    name = ""
    try:
        with open(path) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("flags", "features") and not flags:
                    flags = set(value.split())
                elif key == "model name" and not name:
                    name = value.strip()
                if not line.strip() and flags:
                    break
    except OSError:
        pass
    return flags, name


def detect_cpu(flags: dict[str, object] | None, cpuinfo: tuple[set[str], str]) -> Capabilities:
    """`Capabilities` of the CPU from torch's flags (preferred) or /proc/cpuinfo's (fallback)."""
    proc_flags, proc_name = cpuinfo
    if flags is not None:
        has, source = (lambda key: bool(flags.get(key, False))), "torch.cpu.get_capabilities"
        arm_bf16 = has("bf16") or has("sve_bf16")
    else:
        has, source = (lambda key: key in proc_flags), "/proc/cpuinfo"
        arm_bf16 = "bf16" in proc_flags  # aarch64 lists `bf16` in Features
    bf16 = next((label for key, label in _BF16_UNITS if has(key)), "")
    if not bf16 and arm_bf16:
        bf16 = "Arm BF16"
    int8 = next((label for key, label in _INT8_UNITS if has(key)), "")
    if not int8 and (has("i8mm") or "i8mm" in proc_flags):
        int8 = "Arm I8MM"
    name = str((flags or {}).get("cpu_name") or proc_name or platform.processor() or "unknown CPU").strip()
    return Capabilities("cpu", name, bf16, fp16=False, int8_units=int8, source=source)


@lru_cache(maxsize=1)
def cpu_capabilities() -> Capabilities:
    """What this machine's CPU offers (detected once per process)."""
    return detect_cpu(_torch_cpu_flags(), _proc_cpuinfo())


def device_capabilities(device: str | torch.device) -> Capabilities:
    """`cpu_capabilities()` for a CPU; for CUDA: bf16 on compute capability 8.0+ (Ampere), fp16."""
    device = torch.device(device)
    if device.type != "cuda":
        return cpu_capabilities()
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    bf16 = f"tensor cores (sm_{major}{minor})" if major >= 8 else ""
    int8 = f"tensor cores (sm_{major}{minor})" if (major, minor) >= (7, 5) else ""
    return Capabilities(str(device), name, bf16, fp16=True, int8_units=int8, source="torch.cuda")


def autocast_bf16_default(device: str | torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether training should run its forward under bf16 autocast when the config leaves it to us.

    On where the device has native bf16 units and the weights are float32 (a float64 run exists to be
    exact). Measured on an idle 2-core AMD EPYC (AVX512-BF16), RepSR x4 training step fp32 / bf16:
    M4C16 phase 1 1.22-1.57x, merged phase 2 0.97-1.20x; M16C64 1.87x / 1.57x (docs/results/precision.md).
    """
    return dtype == torch.float32 and device_capabilities(device).bf16_native


# ------------------------------------------------------------------------------------------- bf16 net


class Bf16PlainSR(nn.Module):
    """A `PlainSR` whose convs and PReLUs run in bf16 (channels-last); input, skip and output float32.

    Takes float32 (N, C, H, W) and returns float32. The residual network sees the input rounded to
    bf16, but the global nearest-upsampled skip adds the exact float32 input to the float32-converted
    residual, so bf16 rounding only touches the residual (a small correction on top of the skip) and
    never the bulk of each pixel value. `float_layers` keeps the first `head` and last `tail` convs
    (with their PReLUs) in float32 for networks where those dominate the error (see
    `benchmarks/bench_precision.py --quality`); by default everything but the skip runs in bf16.
    """

    def __init__(self, plain: nn.Module, *, float_head: int = 0, float_tail: int = 0) -> None:
        super().__init__()
        if not isinstance(plain, PlainSR):
            raise TypeError(f"expected a PlainSR, got {type(plain).__name__}")
        self.spec = plain.spec
        self.scale = plain.spec.scale
        body = copy.deepcopy(plain.body).eval()
        convs = [i for i, layer in enumerate(body) if isinstance(layer, nn.Conv2d)]
        first_bf16 = convs[float_head] if float_head < len(convs) else len(body)
        last_bf16 = convs[len(convs) - float_tail] if float_tail > 0 else len(body)
        self.dtypes: list[torch.dtype] = []
        for index, layer in enumerate(body):
            dtype = torch.bfloat16 if first_bf16 <= index < last_bf16 else torch.float32
            layer.to(dtype=dtype)
            for parameter in layer.parameters():
                parameter.requires_grad_(False)
            self.dtypes.append(dtype)
        self.body = body.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        y = x.contiguous(memory_format=torch.channels_last)
        for layer, dtype in zip(self.body, self.dtypes, strict=True):
            y = layer(y.to(dtype))
        return shuffle_add_skip(y, x.float(), self.scale, dtype=torch.float32)  # bf16 + fp32 -> fp32

    def descriptor(self) -> ModelDescriptor:
        return ModelDescriptor.of_spec(self.spec, "bf16", ("bf16",))


def bf16_module(model: nn.Module, device: str | torch.device = "cpu", **options: int) -> Bf16PlainSR:
    """`model` (plain, or training form re-parameterized first) made ready for bf16 inference on
    `device`; the argument itself is left untouched."""
    plain = reparameterize_model(model).float()
    return Bf16PlainSR(plain, **options).to(device).eval()


# ------------------------------------------------------------------------------------------- choice


def _spec_key(model: nn.Module) -> str:
    return json.dumps(describe(model).spec.to_dict(), sort_keys=True)


def probe_side(model: nn.Module) -> int:
    """Side of the square LR probe input: about `PROBE_MACS` multiply-accumulates, within `PROBE_SIDE`."""
    spec = describe(model).spec
    c, out = spec.channels, spec.in_channels * spec.scale**2
    macs_per_pixel = 9 * (spec.in_channels * c + spec.num_blocks * c * c + c * out)
    side = int((PROBE_MACS / macs_per_pixel) ** 0.5) // 8 * 8
    return max(PROBE_SIDE[0], min(PROBE_SIDE[1], side))


@dataclass(frozen=True)
class ProbeResult:
    """fp32 and bf16 seconds for one forward of the probe input, and its side."""

    fp32_s: float
    bf16_s: float
    side: int

    @property
    def speedup(self) -> float:
        return self.fp32_s / self.bf16_s if self.bf16_s > 0 else 0.0


_PROBES: dict[tuple[str, str, int], ProbeResult] = {}


def probe_bf16(model: nn.Module, device: torch.device, *, budget_s: float = PROBE_BUDGET_S) -> ProbeResult:
    """Time `model` in fp32 (channels-last, the default backend) and in bf16 on a small input;
    cached per (model spec, device, threads) for the process."""
    key = (_spec_key(model), str(device), torch.get_num_threads())
    if key in _PROBES:
        return _PROBES[key]
    plain = reparameterize_model(model).to(device).float().eval()
    for parameter in plain.parameters():
        parameter.requires_grad_(False)
    fp32 = FusedTailPlainSR(plain).to(memory_format=torch.channels_last)  # the `channels-last` backend
    bf16 = Bf16PlainSR(plain).to(device).eval()
    side = probe_side(model)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, plain.spec.in_channels, side, side, generator=generator).to(device)
    x = x.contiguous(memory_format=torch.channels_last)

    def run_fp32() -> object:
        with torch.inference_mode():
            return fp32(x)

    def run_bf16() -> object:
        with torch.inference_mode():
            return bf16(x)

    fp32_times, bf16_times = time_interleaved(
        run_fp32, run_bf16, device=device, warmup=1, min_runs=PROBE_MIN_RUNS, budget_s=budget_s
    )
    fp32_s, bf16_s = min(fp32_times), min(bf16_times)  # the best run: the least load-dependent figure
    result = ProbeResult(fp32_s, bf16_s, side)
    _PROBES[key] = result
    return result


def choose_precision(
    model: nn.Module,
    device: str | torch.device = "cpu",
    requested: str | Precision = Precision.AUTO,
    *,
    capabilities: Capabilities | None = None,
    probe: Callable[[nn.Module, torch.device], ProbeResult] | None = None,
) -> tuple[Precision, str]:
    """The precision to run `model` in on `device`, and why, in one line.

    An explicit request is checked (fp16 needs CUDA, int8 runs on CPU) and kept; `auto` gives bf16
    only where the device has native bf16 units and the probe (`probe_bf16`) finds bf16 at least
    `BF16_MIN_SPEEDUP` times faster for this model, fp32 otherwise.
    """
    precision = Precision.parse(requested)
    device = torch.device(device)
    caps = capabilities or device_capabilities(device)
    where = f"{caps.name} ({device.type})"
    if precision is Precision.FP16:
        if device.type != "cuda":
            raise ConfigError("fp16 needs a CUDA device; on CPU use --precision bf16 or fp32")
        return precision, f"fp16 as requested on {where}"
    if precision is Precision.INT8:
        if device.type != "cpu":
            raise ConfigError("int8 runs in ONNX Runtime on the CPU; use --device cpu (or bf16/fp16 on CUDA)")
        units = caps.int8_units or "no int8 dot-product units: expect it slow"
        return precision, f"int8 (ONNX Runtime) as requested on {where}, {units}"
    if precision is Precision.FP32:
        return precision, f"fp32 as requested on {where}"
    if precision is Precision.BF16:
        if caps.bf16_native:
            return precision, f"bf16 as requested on {where}, native {caps.bf16_units}"
        return precision, f"bf16 as requested on {where}, emulated (no native bf16 units): expect it slow"
    # auto
    if not caps.bf16_native:
        return Precision.FP32, f"fp32: {where} has no native bf16 units (AMX-BF16, AVX512-BF16)"
    result = (probe or probe_bf16)(model, device)
    name = model.spec.name
    timing = (
        f"{result.bf16_s * 1e3:.1f} vs {result.fp32_s * 1e3:.1f} ms fp32 on a "
        f"{result.side}x{result.side} probe, {torch.get_num_threads()} thread(s)"
    )
    if result.speedup >= BF16_MIN_SPEEDUP:
        return Precision.BF16, (
            f"bf16: {name} ran {result.speedup:.1f}x faster than fp32 on {where}, "
            f"{caps.bf16_units} ({timing})"
        )
    return Precision.FP32, (
        f"fp32: bf16 gains too little for {name} on {where} "
        f"({result.speedup:.2f}x < {BF16_MIN_SPEEDUP}x; {timing})"
    )


# ------------------------------------------------------------------------------------------- prepared


@dataclass
class PreparedNet:
    """A network made ready to run in one precision: the module to call, the dtype its input is cast
    to, whether it wants NHWC input, the backend that runs it, and the one-line reason for the choice."""

    module: nn.Module
    precision: Precision
    reason: str
    input_dtype: torch.dtype
    channels_last: bool
    backend: str


__all__ = [
    "BF16_MIN_SPEEDUP",
    "PRECISIONS",
    "Bf16PlainSR",
    "Capabilities",
    "Precision",
    "PreparedNet",
    "ProbeResult",
    "bf16_module",
    "choose_precision",
    "cpu_capabilities",
    "detect_cpu",
    "device_capabilities",
    "probe_bf16",
    "probe_side",
]
