"""What the hardware offers, detected, never assumed: CPUs differ from machine to machine.

- `cpu_capabilities()` / `device_capabilities(device)`: native bf16 matrix units (AMX-BF16, AVX512-BF16,
  Arm BF16 on CPU; compute capability 8.0+ on CUDA), fp16 and int8 dot-product units, and the device's
  name, from torch's CPU feature detection (`torch.cpu.get_capabilities()`), falling back to
  /proc/cpuinfo flags.
- `cpu_flags()`: every feature flag either source reports (what the fused kernel's builds need).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch


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


def proc_cpuinfo(path: str | Path = "/proc/cpuinfo") -> tuple[set[str], str]:
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
    return detect_cpu(_torch_cpu_flags(), proc_cpuinfo())


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


def cpu_flags() -> set[str]:
    """This CPU's feature flags: torch's detection and /proc/cpuinfo together (either may be absent)."""
    flags = {key for key, value in (_torch_cpu_flags() or {}).items() if value is True}
    return flags | proc_cpuinfo()[0]


__all__ = [
    "Capabilities",
    "cpu_capabilities",
    "cpu_flags",
    "detect_cpu",
    "device_capabilities",
    "proc_cpuinfo",
]
