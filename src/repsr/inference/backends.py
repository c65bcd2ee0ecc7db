"""The backends a model can run on, in one registry, and preparing a model (and its input) for one.

- `eager`: the model's own `forward`, NCHW (the reference).
- `channels-last`: NHWC activations, and for a plain network a fused tail that writes pixel shuffle and
  nearest-upsampled skip in one strided add (the eager tail spends as long as the convs on a small net).
  Same arithmetic as `eager`, about 1.5-2x faster on CPU; `auto` picks it (see `repsr bench`).
- `compile`: `torch.compile` of the channels-last network; as fast as `channels-last` on CPU in our
  measurements but pays a compile (tens of seconds) per process, so it is opt-in.
- `fused`: the plain network in the fused C kernel (`repsr.kernels`: depth-first L2 tiles, fp32 or
  bf16, CPU only); `Upscaler` with `precision="auto"` picks it where its probe finds it the fastest.
- `onnxruntime`: the plain network exported to ONNX and run by ONNX Runtime; timed by `repsr bench`
  only (`repsr export` writes such files for other programs to run).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from repsr.errors import ConfigError
from repsr.network import FusedTailPlainSR, PlainSR, RepNet, shuffle_add_skip


@dataclass(frozen=True)
class Backend:
    """One way of running a network: whether `Upscaler` runs it (else only `repsr bench` times it)
    and whether it wants NHWC (channels-last) input."""

    name: str
    upscale: bool
    channels_last: bool


REGISTRY: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("eager", upscale=True, channels_last=False),
        Backend("channels-last", upscale=True, channels_last=True),
        Backend("compile", upscale=True, channels_last=True),
        Backend("fused", upscale=True, channels_last=False),
        Backend("onnxruntime", upscale=False, channels_last=False),
    )
}
# What `auto` runs: on CPU the fastest path `repsr bench` finds that needs no warm-up (compile matches it
# at 1 thread but costs 5-20 s of compiling per process and input shape); on CUDA NHWC is also the
# layout cuDNN's fp16 tensor-core kernels want.
AUTO_BACKEND = "channels-last"
UPSCALE_BACKENDS = tuple(name for name, backend in REGISTRY.items() if backend.upscale)
BACKENDS = ("auto", *UPSCALE_BACKENDS)  # what `Upscaler(backend=...)` and `repsr upscale` accept
BENCH_BACKENDS = tuple(REGISTRY)  # what `repsr bench` times


def resolve_backend(backend: str) -> str:
    """`auto` -> `AUTO_BACKEND`; any other name must be a backend `Upscaler` runs."""
    if backend == "auto":
        return AUTO_BACKEND
    if backend not in UPSCALE_BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def prepare_model(model: nn.Module, backend: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The module that computes `model` on `device` in `dtype` with PyTorch `backend` (`model` untouched).

    Feed it `prepare_input(x, backend)`.
    """
    if backend not in UPSCALE_BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(UPSCALE_BACKENDS)}, got {backend!r}")
    if not isinstance(model, RepNet | PlainSR):
        raise TypeError(f"expected a RepNet or PlainSR, got {type(model).__name__}")
    if backend == "fused":
        from repsr.kernels.fused import fused_module

        return fused_module(model, device, dtype)
    module = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    if backend == "eager":
        return module
    if isinstance(module, PlainSR):
        module = FusedTailPlainSR(module)
    module = module.to(memory_format=torch.channels_last)
    if backend == "compile":
        return torch.compile(module, dynamic=None)
    return module


def prepare_input(x: Tensor, backend: str) -> Tensor:
    """`x` in the memory layout `backend` runs on (NHWC for the channels-last ones)."""
    if REGISTRY[backend].channels_last:
        return x.contiguous(memory_format=torch.channels_last)
    return x


__all__ = [
    "AUTO_BACKEND",
    "BACKENDS",
    "BENCH_BACKENDS",
    "REGISTRY",
    "UPSCALE_BACKENDS",
    "Backend",
    "FusedTailPlainSR",  # defined with the network (`repsr.network`), the form `channels-last` runs
    "prepare_input",
    "prepare_model",
    "resolve_backend",
    "shuffle_add_skip",
]
