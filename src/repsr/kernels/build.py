"""Building and loading the fused C kernel (`fused.c`), one shared library per instruction set.

Why a small C library loaded with ctypes, compiled on first use into a user cache folder (and by
`make install` ahead of time, `python -m repsr.kernels`): the kernel is plain C with intrinsics and
needs no Python headers, no torch headers and no build backend, so it compiles in about a second with the
system's `cc` and keeps working across torch versions; an editable install and a wheel use the same
path; and a machine without a compiler simply gets `KernelUnavailable` (the PyTorch path runs) instead of
a failed install. `torch.utils.cpp_extension` would need a C++ compiler matching torch's ABI and tens of
seconds per build.

The library is built once per instruction-set variant (`VARIANTS`) and kept under
`$REPSR_KERNEL_CACHE`, else `$XDG_CACHE_HOME/repsr/kernels`, else `~/.cache/repsr/kernels`, named by a
hash of the source, the flags and the compiler, written by `repsr.util.atomic.atomic_write`, so concurrent
processes and upgrades never load a half-written or stale library.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from repsr.util.atomic import atomic_write
from repsr.util.errors import RepsrError, WriteError
from repsr.util.hardware import cpu_flags

SOURCE = Path(__file__).with_name("fused.c")


class KernelUnavailable(RepsrError):
    """The fused kernel cannot run here (no compiler, a failed build, or a CPU without AVX2/FMA)."""


@dataclass(frozen=True)
class Variant:
    """One build of the kernel: the CPU flags it needs (as `torch.cpu.get_capabilities()` and
    /proc/cpuinfo spell them), the compiler flags, and the precisions it runs."""

    name: str
    cpu_flags: tuple[tuple[str, ...], ...]  # each entry: alternative spellings of one required flag
    cflags: tuple[str, ...]
    precisions: tuple[str, ...]


_AVX512 = (("avx512f", "avx512_f"), ("avx512bw", "avx512_bw"), ("avx512vl", "avx512_vl"))
_AVX512_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma")
_AVX2 = (("avx2",), ("fma", "fma3"))
_AVX2_FLAGS = ("-mavx2", "-mfma")
VARIANTS: tuple[Variant, ...] = (
    Variant(
        "avx512-vnni-bf16",
        (*_AVX512, ("avx512_vnni",), ("avx512_bf16",)),
        (*_AVX512_FLAGS, "-mavx512vnni", "-mavx512bf16"),
        ("fp32", "bf16", "int8"),
    ),
    Variant("avx512-vnni", (*_AVX512, ("avx512_vnni",)), (*_AVX512_FLAGS, "-mavx512vnni"), ("fp32", "int8")),
    Variant("avx512", _AVX512, _AVX512_FLAGS, ("fp32",)),
    # VEX-encoded vpdpbusd on ymm (Alder Lake and later, Zen 5): int8 as AVX512-VNNI's, 8 lanes
    Variant("avx-vnni", (*_AVX2, ("avx_vnni",)), (*_AVX2_FLAGS, "-mavxvnni"), ("fp32", "int8")),
    # int8 by vpmaddubsw + vpmaddwd (no dot-product units): weight scales bounded so int16 never saturates
    Variant("avx2", _AVX2, _AVX2_FLAGS, ("fp32", "int8")),
)
CFLAGS = ("-O3", "-shared", "-fPIC", "-pthread", "-std=gnu11")


def runnable_variants(flags: set[str] | None = None) -> list[Variant]:
    """The variants this CPU can run, best first."""
    flags = cpu_flags() if flags is None else flags
    return [v for v in VARIANTS if all(any(f in flags for f in alts) for alts in v.cpu_flags)]


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    if os.environ.get("REPSR_KERNEL_CACHE"):
        return Path(os.environ["REPSR_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "repsr" / "kernels"


def compiler() -> str | None:
    """The C compiler: `$CC`, else `cc`, `gcc` or `clang` on the PATH; None when there is none."""
    candidates = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    return None


def _compiler_id(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return cc


def intact(path: Path) -> bool:
    """Whether `path` looks like a complete build of the kernel: an ELF file whose section header table
    (written last) lies within the file and that names the kernel's entry point. A truncated library
    crashed the process in `dlopen` (SIGBUS), and another library under the name failed on a symbol."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if b"repsr_fused_run\0" not in data:
        return False
    if data[:4] in (b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xcf"):  # Mach-O 64 (macOS): the name suffices
        return True
    if len(data) < 64 or data[:5] != b"\x7fELF\x02":  # 64-bit ELF
        return False
    order = "little" if data[5] == 1 else "big"
    table = int.from_bytes(data[0x28:0x30], order)
    size, count = int.from_bytes(data[0x3A:0x3C], order), int.from_bytes(data[0x3C:0x3E], order)
    return count > 0 and table + size * count <= len(data)


def library_path(variant: Variant, cc: str) -> Path:
    """Where the cache keeps `variant` built by `cc`: named by a hash of the source, flags and compiler."""
    key = SOURCE.read_bytes() + " ".join((*CFLAGS, *variant.cflags)).encode() + _compiler_id(cc).encode()
    return cache_dir() / f"repsr-fused-{variant.name}-{hashlib.sha256(key).hexdigest()[:16]}.so"


def build(variant: Variant, *, force: bool = False) -> Path:
    """The shared library of `variant`, compiled now unless the cache has it intact (a damaged one is
    rebuilt over); `KernelUnavailable` if it cannot be built."""
    cc = compiler()
    if cc is None:
        raise KernelUnavailable("no C compiler (cc, gcc or clang; or set CC) to build the fused kernel")
    folder, damaged = cache_dir(), ""
    if folder.exists() and not folder.is_dir():
        raise KernelUnavailable(f"the kernel cache {folder} (REPSR_KERNEL_CACHE) is a file, not a folder")
    flags = (*CFLAGS, *variant.cflags)
    target = library_path(variant, cc)
    if target.exists() and not force:
        if intact(target):
            return target
        damaged = f"the cached library {target} is damaged and rebuilding it failed: "

    def compile_into(temp: str) -> None:
        try:
            result = subprocess.run(
                [cc, *flags, "-o", temp, str(SOURCE)], capture_output=True, text=True, timeout=300
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise KernelUnavailable(f"building the fused kernel ({variant.name}) failed: {error}") from None
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no message"])[0]
            raise KernelUnavailable(f"building the fused kernel ({variant.name}) failed: {first}")

    try:
        atomic_write(target, compile_into)  # concurrent builds each rename a complete library
    except WriteError as error:
        raise KernelUnavailable(f"{damaged}cannot write the fused kernel to {folder}: {error}") from None
    except KernelUnavailable as error:
        raise KernelUnavailable(f"{damaged}{error}") from None
    return target


@cache
def load(name: str | None = None) -> tuple[Variant, ctypes.CDLL]:
    """(variant, library) for variant `name`, default the best this CPU runs; built on first use."""
    runnable = runnable_variants()
    if name is None:
        if not runnable:
            raise KernelUnavailable("this CPU has neither AVX2+FMA nor AVX-512: the fused kernel needs one")
        variant = runnable[0]
    else:
        variant = next((v for v in VARIANTS if v.name == name), None)
        if variant is None:
            raise KernelUnavailable(f"unknown kernel variant {name!r}; one of {[v.name for v in VARIANTS]}")
        if variant not in runnable:
            raise KernelUnavailable(f"this CPU cannot run the {name} kernel")
    path = build(variant)
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:
        raise KernelUnavailable(f"cannot load the fused kernel {path}: {error}") from None
    try:
        _declare(library)
    except AttributeError as error:  # a library under the kernel's name that is not the kernel
        raise KernelUnavailable(f"{path} is not the fused kernel ({error}); delete it") from None
    return variant, library


def _declare(library: ctypes.CDLL) -> None:
    """The C signatures of the kernel's entry points."""
    library.repsr_fused_run.restype = ctypes.c_int
    library.repsr_fused_run.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,  # out: float32 NCHW
        ctypes.c_void_p,  # out8: uint8 NHWC (exactly one of the two)
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
    ]
    library.repsr_fused_lanes.restype = ctypes.c_int
    library.repsr_fused_int8_lane_weights.restype = ctypes.c_int


def availability() -> str | None:
    """None when the best variant loads, else the one-line reason it does not."""
    try:
        load()
    except KernelUnavailable as error:
        return str(error)
    return None


def main() -> int:
    """`python -m repsr.kernels`: build every variant this CPU runs (what `make install` calls)."""
    runnable = runnable_variants()
    if not runnable:
        print("repsr fused kernel: this CPU has neither AVX2+FMA nor AVX-512; the PyTorch path runs")
        return 0
    for variant in runnable:
        try:
            print(f"repsr fused kernel {variant.name}: {build(variant)}")
        except KernelUnavailable as error:
            print(f"repsr fused kernel unavailable ({error}); the PyTorch path runs")
            return 0
    return 0
