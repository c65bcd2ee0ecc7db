"""Where inference runs: picking a device and asking it how much memory is free."""

from __future__ import annotations

import os

import torch

from repsr.util.errors import ConfigError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else is checked to be usable here."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a device name (use auto, cpu or cuda)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(
            f"device {device!r}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})"
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} requested but MPS (Apple GPU) is not available on this machine")
    if resolved.type == "meta":
        raise ConfigError(f"device {device!r} holds no data; use auto, cpu or cuda")
    if resolved.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(1, device=resolved)
        except Exception:  # xla, xpu, meta, ... without their backend: RuntimeError and others
            raise ConfigError(
                f"device {device!r} is not available on this machine (use auto, cpu or cuda)"
            ) from None
    return resolved


def free_memory_bytes(device: torch.device) -> int:
    """Free memory on `device` now: CUDA's free memory, or for the CPU the OS's available RAM, less where
    the process's own address-space limit (`ulimit -v`) leaves less."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return min(_available_ram(), _address_space_left())


def _address_space_left() -> int:
    """Bytes the process may still map under RLIMIT_AS (`ulimit -v`); a large number without a limit."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return 1 << 62
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return max(0, limit - int(line.split()[1]) * 1024)
    except (ImportError, OSError, ValueError):
        pass
    return 1 << 62


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30  # no way to ask: assume a modest machine
