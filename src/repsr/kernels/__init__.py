"""The fused CPU inference kernel for the plain network (C, built on first use; see `build` and
`fused.c`): `FusedPlainSR` runs a `PlainSR` depth first in L2-sized tiles, fp32 (AVX2/AVX-512) or bf16
(AVX512-BF16), chosen at run time from the CPU's flags."""

from repsr.kernels.build import KernelUnavailable, availability, runnable_variants
from repsr.kernels.fused import FusedPlainSR

__all__ = ["FusedPlainSR", "KernelUnavailable", "availability", "runnable_variants"]
