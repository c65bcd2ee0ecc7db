"""`FusedPlainSR`: a plain network run by the fused C kernel (fp32, or bf16 with `vdpbf16ps`).

Called like the torch network: float32 (N, C, H, W) on the CPU in, float32 (N, C, H*s, W*s) out. The
kernel cuts the image into tiles itself (`tile`, LR pixels: height x width); every tile carries the
receptive-field halo and the image border is zero-padded per layer as the torch convolutions do, so the
result does not depend on the tile size (fp32: the same sums per pixel; bf16: the same roundings).
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch
from torch import Tensor, nn

from repsr.kernels.build import KernelUnavailable, load

PRECISIONS = ("fp32", "bf16")
# Tile (LR rows, columns) per kernel call: with C = 16 channels two 32x96 (+ halo) fp32 NHWC buffers are
# about 0.6 MB, inside a 1-2 MB L2 per core; measured on the Xeon in README's speed section.
DEFAULT_TILE = (32, 96)


def _bf16_bits(array: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounded to nearest even as torch does."""
    values = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return values.bfloat16().view(torch.int16).numpy()


def pack_layers(plain: nn.Module, lanes: int, precision: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dims int32, weights, bias+alpha float32) in the layout `repsr_fused_run` reads (see fused.c)."""
    from repsr.network import PlainSR

    if not isinstance(plain, PlainSR):
        raise TypeError(f"expected a PlainSR, got {type(plain).__name__}")
    layers = list(plain.body)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    prelus = [m for m in layers if isinstance(m, nn.PReLU)]
    spec = plain.spec
    dims = [len(convs), spec.in_channels, spec.scale]
    weights, scalars = [], []
    for index, conv in enumerate(convs):
        w = conv.weight.detach().float().cpu().numpy()  # (cout, cin, 3, 3)
        cout, cin = w.shape[:2]
        cpad = -(-cout // lanes) * lanes
        dims += [cin, cout]
        packed = np.zeros((3, 3, cin, cpad), dtype=np.float32)
        packed[..., :cout] = w.transpose(2, 3, 1, 0)
        if precision == "bf16":
            pairs = -(-cin // 2)
            even = np.zeros((3, 3, pairs * 2, cpad), dtype=np.float32)
            even[:, :, :cin] = packed
            # [9][pairs][cpad][2]: channel pair (2k, 2k+1) of one output channel side by side
            interleaved = even.reshape(3, 3, pairs, 2, cpad).transpose(0, 1, 2, 4, 3)
            weights.append(_bf16_bits(interleaved).reshape(-1).view(np.uint16))
        else:
            weights.append(packed.reshape(-1))
        bias = np.zeros(cpad, dtype=np.float32)
        bias[:cout] = conv.bias.detach().float().cpu().numpy() if conv.bias is not None else 0.0
        alpha = np.zeros(cpad, dtype=np.float32)
        if index < len(prelus):
            a = prelus[index].weight.detach().float().cpu().numpy()
            alpha[:cout] = a if a.size == cout else a[0]
        scalars += [bias, alpha]
    blob = np.concatenate(weights)
    return np.asarray(dims, dtype=np.int32), np.ascontiguousarray(blob), np.concatenate(scalars)


class FusedPlainSR(nn.Module):
    """A `PlainSR` run by the fused kernel in `precision` (`fp32` or `bf16`), on `threads` threads (default
    torch's thread count), with the kernel variant `variant` (default the best this CPU runs)."""

    def __init__(
        self,
        plain: nn.Module,
        precision: str = "fp32",
        *,
        variant: str | None = None,
        threads: int | None = None,
        tile: tuple[int, int] = DEFAULT_TILE,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise KernelUnavailable(f"the fused kernel runs {' or '.join(PRECISIONS)}, not {precision}")
        self.kernel_variant, self._lib = load(variant)
        if precision not in self.kernel_variant.precisions:
            raise KernelUnavailable(f"the {self.kernel_variant.name} fused kernel has no {precision} path")
        self.spec = plain.spec
        self.precision = precision
        self.threads = threads
        self.tile = tile
        lanes = int(self._lib.repsr_fused_lanes())
        self._dims, self._weights, self._scalars = pack_layers(plain, lanes, precision)

    @property
    def description(self) -> str:
        return f"fused kernel {self.kernel_variant.name} {self.precision}"

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.ndim != 4 or x.shape[1] != self.spec.in_channels:
            raise ValueError(f"expected (N, {self.spec.in_channels}, H, W) on the CPU, got {tuple(x.shape)}")
        x = x.detach().float().contiguous()
        n, c, h, w = x.shape
        s = self.spec.scale
        out = torch.empty((n, c, h * s, w * s), dtype=torch.float32)
        threads = self.threads or torch.get_num_threads()
        code = self._lib.repsr_fused_run(
            1 if self.precision == "bf16" else 0,
            self._dims.ctypes.data_as(ctypes.c_void_p),
            self._weights.ctypes.data_as(ctypes.c_void_p),
            self._scalars.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_void_p(x.data_ptr()),
            n,
            h,
            w,
            ctypes.c_void_p(out.data_ptr()),
            self.tile[0],
            self.tile[1],
            threads,
        )
        if code == -2:
            raise MemoryError("the fused kernel could not allocate its tile buffers")
        if code != 0:
            raise RuntimeError(f"the fused kernel refused its arguments (code {code})")
        return out


def fused_module(model: nn.Module, device: torch.device, dtype: torch.dtype) -> FusedPlainSR:
    """`model` (plain, or a training form re-parameterized first) in the fused kernel: fp32 for float32,
    bf16 for bfloat16, on the CPU; `KernelUnavailable` otherwise (what `prepare_model("fused")` calls)."""
    from repsr.network import reparameterize_model

    if torch.device(device).type != "cpu":
        raise KernelUnavailable("the fused kernel runs on the CPU only")
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype)
    if precision is None:
        raise KernelUnavailable(f"the fused kernel runs float32 or bfloat16, not {dtype}")
    return FusedPlainSR(reparameterize_model(model).float(), precision)
