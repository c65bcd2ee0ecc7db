"""`FusedPlainSR`: a plain network run by the fused C kernel: fp32, bf16 (`vdpbf16ps`) or int8 (`vpdpbusd`).

Called like the torch network: float32 (N, C, H, W) on the CPU in, float32 (N, C, H*s, W*s) out. The
kernel cuts the image into tiles itself (`tile`, LR pixels: height x width, default `default_tile`);
every tile carries the receptive-field halo and the image border is zero-padded per layer as the torch
convolutions do, so the result does not depend on the tile size (fp32: the same sums per pixel; bf16,
int8: the same roundings).

int8: weights symmetric per output channel (max |w| -> 127), activations unsigned 8-bit with a zero point
per layer, their ranges calibrated (`CALIBRATION_PERCENTILE`) on the photographs `repsr export --int8`
calibrates on (`repsr.deploy.int8`); the input image is quantized to 8 bits (exact for 8-bit sources)
for the residual network only: the nearest skip adds the float32 input, and bias, PReLU and the output
stay float32. A value outside its layer's static range is an outlier: the integer sum takes it clamped
(0 or 255) and the next layer adds what the clamp cut off times its float weights (fused.c), so the
ranges set the step, not a limit (without this the worst pixel on plain photographs was 60-95 levels from
fp32; with it <= 12). The AVX2 kernel (no dot-product units: vpmaddubsw) sums 4 weights' products in one
int16 lane, so there an output channel's weight scale is also bounded until 255 x every such lane's
same-sign weights <= 32767 (`int8_weight_scales`; the alternatives measured in docs/results/avx2-int8.md).
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch
from torch import Tensor, nn

from repsr.data.samples import calibration_crops
from repsr.kernels.build import KernelUnavailable, load

PRECISIONS = ("fp32", "bf16", "int8")
# Tiles (LR rows x columns): wide rows (the halo costs less), as many rows as keep the two ping-pong
# buffers within L2_SHARE of the core's L2, but no fewer than the halo. Measured on the 2-core Xeon
# (2 MiB L2), M4C16 x2 960x540: fp32 64x128 / 128x128 / 32x240 within 3% of each other, 32x96 8%
# slower; int8 64x240 fastest.
TILE_WIDTH = {"fp32": 128, "bf16": 128, "int8": 240}
TILE_ROWS = (8, 64)
L2_SHARE = 0.75
DEFAULT_L2 = 1 << 20  # when the CPU does not say


def l2_bytes() -> int:
    """The L2 cache of one core as torch's cpuinfo reports it, else `DEFAULT_L2`."""
    try:
        size = int(torch.cpu.get_capabilities().get("l2_cache_size", 0))
    except Exception:  # detection must never fail a run
        size = 0
    return size if size > 0 else DEFAULT_L2


def default_tile(spec, precision: str, lanes: int = 16) -> tuple[int, int]:
    """(rows, columns) of the kernel's tiles for a model `spec` in `precision` (see `TILE_WIDTH`)."""
    width = TILE_WIDTH[precision]
    halo = 2 * (spec.num_blocks + 2)
    stride = -(-max(spec.channels, spec.in_channels) // lanes) * lanes  # channels per pixel in a buffer
    element = {"fp32": 4, "bf16": 2, "int8": 1}[precision]
    row_bytes = (width + halo + 16) * stride * element
    rows = int(L2_SHARE * l2_bytes() / (2 * row_bytes)) - halo
    # deep networks: at least as many rows as the halo (else recomputing it dominates; L3 backs L2)
    return max(TILE_ROWS[0], halo, min(TILE_ROWS[1], rows)), width


# int8 activation ranges cover this quantile on each side: finer steps for nearly all values beat covering
# the rare extremes (shipped x2 model, held-out photos: min/max ranges cost 0.19 dB Y-PSNR, 99.9% 0.02);
# the values outside go through the kernel's outlier path (float), not clamped away.
CALIBRATION_PERCENTILE = 0.999


def _bf16_bits(array: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounded to nearest even as torch does."""
    values = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return values.bfloat16().view(torch.int16).numpy()


def activation_ranges(
    plain: nn.Module, crops: list[Tensor], percentile: float = CALIBRATION_PERCENTILE
) -> list[tuple[float, float]]:
    """(low, high) `percentile` range of each conv's input over `crops` (0 always inside), the image's
    being (0, 1)."""
    convs = [m for m in plain.body if isinstance(m, nn.Conv2d)]
    values: list[list[Tensor]] = [[] for _ in convs]
    with torch.inference_mode():
        for crop in crops:
            y, index = crop, 0
            for layer in plain.body:
                if isinstance(layer, nn.Conv2d):
                    if index > 0:
                        values[index].append(y.flatten()[::7])  # a subsample keeps quantile() small
                    index += 1
                y = layer(y)
    ranges = [(0.0, 1.0)]
    for chunks in values[1:]:
        every = torch.cat(chunks).float() if chunks else torch.zeros(1)
        bounds = torch.quantile(every, torch.tensor([1.0 - percentile, percentile]))
        ranges.append((min(0.0, float(bounds[0])), max(0.0, float(bounds[1]))))
    return ranges


_CALIBRATIONS: dict[tuple[str, str], np.ndarray] = {}


def _calibrated(plain: nn.Module, calibration: list[Tensor] | None) -> np.ndarray:
    """`_quant_params` of `plain` on `calibration` (default crops: cached per weights for the process)."""
    if calibration is not None:
        return _quant_params(activation_ranges(plain.float().eval(), calibration))
    import hashlib

    digest = hashlib.sha256()
    for tensor in plain.state_dict().values():
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    key = (repr(plain.spec), digest.hexdigest())
    if key not in _CALIBRATIONS:
        crops = calibration_crops(plain.spec.in_channels)
        _CALIBRATIONS[key] = _quant_params(activation_ranges(plain.float().eval(), crops))
    return _CALIBRATIONS[key]


def _quant_params(ranges: list[tuple[float, float]]) -> np.ndarray:
    """Per conv input (qinv, qzero): q = round(x * qinv + qzero) in 0..255, zero exactly representable."""
    params = []
    for index, (lo, hi) in enumerate(ranges):
        if index == 0:
            params += [255.0, 0.0]  # the image: 8-bit levels
            continue
        scale = max(hi - lo, 1e-8) / 255.0
        zero = float(np.clip(np.round(-lo / scale), 0, 255))
        params += [1.0 / scale, zero]
    return np.asarray(params, dtype=np.float32)


INT16_MAX = 32767
ACTIVATION_MAX = 255  # u8 activations


def lane_sums(q: np.ndarray, lane_weights: int) -> np.ndarray:
    """Per output channel, the largest same-sign sum (positive or |negative|) of the `lane_weights` weights
    that share one int16 lane of the AVX2 kernel, for `q` (3, 3, cin, cout) with cin a multiple of 4: the
    channel pairs (2m, 2m+1) of `lane_weights / 2` consecutive quads (input channels 4k..4k+3) of one tap;
    a last quad short of a group goes alone."""
    quads_per = lane_weights // 2
    quads = q.shape[2] // 4
    groups = -(-quads // quads_per)
    wide = np.zeros((3, 3, groups * quads_per * 4, q.shape[3]), dtype=np.float64)
    wide[:, :, : q.shape[2]] = q
    v = wide.reshape(3, 3, groups, quads_per, 2, 2, q.shape[3])
    pos = np.clip(v, 0, None).sum(axis=(3, 5)).max(axis=(0, 1, 2, 3))
    neg = -np.clip(v, None, 0).sum(axis=(3, 5)).min(axis=(0, 1, 2, 3))
    return np.maximum(pos, neg)


def int8_weight_scales(wide: np.ndarray, lane_weights: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, per-output-channel scale) of float weights `wide` (3, 3, cin, cout): max |w| -> 127,
    and with `lane_weights` > 0 (the AVX2 kernel's int16 lanes) the scale raised where needed until every
    lane's sum fits int16 for any u8 activations: ACTIVATION_MAX x `lane_sums` <= INT16_MAX."""
    peak = np.abs(wide).max(axis=(0, 1, 2))
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    if lane_weights:
        limit = INT16_MAX // ACTIVATION_MAX
        scale = np.maximum(scale, lane_sums(wide, lane_weights) / limit)
        for _ in range(1000):  # rounding may add up to lane_weights / 2 levels: nudge those channels up
            bad = lane_sums(np.clip(np.round(wide / scale), -127, 127), lane_weights) > limit
            if not bad.any():
                break
            scale = np.where(bad, scale * (1.0 + 2.0**-10), scale)
    scale = scale.astype(np.float32)
    q = np.clip(np.round(wide / scale), -127, 127).astype(np.int8)
    if lane_weights:
        assert (lane_sums(q, lane_weights) <= INT16_MAX // ACTIVATION_MAX).all()
    return q, scale


ALIGNMENT = 64  # bytes: a cache line (and one AVX-512 vector)


def aligned(array: np.ndarray, alignment: int = ALIGNMENT) -> np.ndarray:
    """A contiguous copy of `array` whose data starts at a multiple of `alignment` bytes. The kernel's
    register tiles read each weight vector as a memory operand, and numpy only promises 16 bytes: 32-byte
    weight loads from a 16-byte boundary split cache lines half the time (AVX2 int8 x2 960x540 on an AMD
    EPYC, one thread: 18% slower with the blob at 16 mod 64 than at 0; docs/results/avx2-int8.md)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    raw = np.empty(flat.nbytes + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    out = raw[start : start + flat.nbytes].view(flat.dtype)
    out[:] = flat
    return out


def pack_layers(
    plain: nn.Module,
    lanes: int,
    precision: str,
    quant: np.ndarray | None = None,
    *,
    lane_weights: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dims int32, weights, per-layer float32 scalars) in the layout `repsr_fused_run` reads (fused.c);
    int8 needs `quant` (`_quant_params`) and the kernel's `lane_weights` (`int8_weight_scales`)."""
    from repsr.arch.network import PlainSR

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
        mul = None
        if precision == "int8":
            quads = -(-cin // 4)
            wide = np.zeros((3, 3, quads * 4, cpad), dtype=np.float32)
            wide[:, :, :cin] = packed
            q, w_scale = int8_weight_scales(wide, lane_weights)
            weights.append(
                q.reshape(3, 3, quads, 4, cpad).transpose(0, 1, 2, 4, 3).reshape(-1).view(np.uint8)
            )
            weights.append(packed.reshape(-1).view(np.uint8))  # float weights: the input's outliers
            qinv, qzero = quant[2 * index], quant[2 * index + 1]
            mul = (w_scale / qinv).astype(np.float32)  # input scale x weight scale
            zero_term = mul * qzero * q.astype(np.int64).sum(axis=(0, 1, 2))
        elif precision == "bf16":
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
        if mul is not None:
            bias = (bias - zero_term).astype(np.float32)  # the zero point folded into the bias
            scalars.append(mul)
        alpha = np.zeros(cpad, dtype=np.float32)
        if index < len(prelus):
            a = prelus[index].weight.detach().float().cpu().numpy()
            alpha[:cout] = a if a.size == cout else a[0]
        scalars += [bias, alpha]
    blob = np.concatenate(weights)
    return np.asarray(dims, dtype=np.int32), aligned(blob), aligned(np.concatenate(scalars))


class FusedPlainSR(nn.Module):
    """A `PlainSR` run by the fused kernel in `precision` (`fp32`, `bf16` or `int8`), on `threads` threads
    (default torch's thread count), with the kernel variant `variant` (default the best this CPU runs).
    int8 calibrates its activation ranges on `calibration` (LR crops; default `calibration_crops`)."""

    def __init__(
        self,
        plain: nn.Module,
        precision: str = "fp32",
        *,
        variant: str | None = None,
        threads: int | None = None,
        tile: tuple[int, int] | None = None,
        calibration: list[Tensor] | None = None,
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
        lanes = int(self._lib.repsr_fused_lanes())
        self.tile = tile or default_tile(plain.spec, precision, lanes)
        self._quant = None
        if precision == "int8":
            self._quant = _calibrated(plain, calibration)
        self._dims, self._weights, self._scalars = pack_layers(
            plain, lanes, precision, self._quant, lane_weights=int(self._lib.repsr_fused_int8_lane_weights())
        )

    @property
    def description(self) -> str:
        return f"fused kernel {self.kernel_variant.name} {self.precision}"

    def forward(self, x: Tensor) -> Tensor:
        """The network on `x` (N, C, H, W): float32 (N, C, H*s, W*s), not clamped."""
        n, c, h, w = self._check(x).shape
        s = self.spec.scale
        out = torch.empty((n, c, h * s, w * s), dtype=torch.float32)
        self._run(x, out, None)
        return out

    def pixels(self, x: Tensor) -> Tensor:
        """The network on `x` (N, C, H, W) as 8-bit pixels (N, H*s, W*s, C), uint8: what
        `repsr.image.pixels.to_integers(self(x))` gives (x 255, clamped, rounded half up), written by the
        kernel's last layer itself, so no float output is ever stored (the video path's frames)."""
        n, c, h, w = self._check(x).shape
        s = self.spec.scale
        out = torch.empty((n, h * s, w * s, c), dtype=torch.uint8)
        self._run(x, None, out)
        return out

    def _check(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.ndim != 4 or x.shape[1] != self.spec.in_channels:
            raise ValueError(f"expected (N, {self.spec.in_channels}, H, W) on the CPU, got {tuple(x.shape)}")
        return x

    def _run(self, x: Tensor, out: Tensor | None, out8: Tensor | None) -> None:
        x = x.detach().float().contiguous()
        n, c, h, w = x.shape
        threads = self.threads or torch.get_num_threads()
        code = self._lib.repsr_fused_run(
            PRECISIONS.index(self.precision),
            self._dims.ctypes.data_as(ctypes.c_void_p),
            self._weights.ctypes.data_as(ctypes.c_void_p),
            self._scalars.ctypes.data_as(ctypes.c_void_p),
            None if self._quant is None else self._quant.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_void_p(x.data_ptr()),
            n,
            h,
            w,
            None if out is None else ctypes.c_void_p(out.data_ptr()),
            None if out8 is None else ctypes.c_void_p(out8.data_ptr()),
            self.tile[0],
            self.tile[1],
            threads,
        )
        if code == -2:
            raise MemoryError("the fused kernel could not allocate its tile buffers")
        if code != 0:
            raise RuntimeError(f"the fused kernel refused its arguments (code {code})")


def fused_module(model: nn.Module, device: torch.device, dtype: torch.dtype) -> FusedPlainSR:
    """`model` (plain, or a training form re-parameterized first) in the fused kernel: fp32 for float32,
    bf16 for bfloat16, on the CPU; `KernelUnavailable` otherwise (what `prepare_model("fused")` calls)."""
    from repsr.arch.network import reparameterize_model

    if torch.device(device).type != "cpu":
        raise KernelUnavailable("the fused kernel runs on the CPU only")
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype)
    if precision is None:
        raise KernelUnavailable(f"the fused kernel runs float32 or bfloat16, not {dtype}")
    return FusedPlainSR(reparameterize_model(model).float(), precision)
