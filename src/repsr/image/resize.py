"""MATLAB-compatible bicubic resize: ``imresize(img, scale)`` == MATLAB ``imresize(img, scale, 'bicubic')``.

Why not ``torch.nn.functional.interpolate`` or PIL: the SR literature's LR images (DIV2K's bicubic LR,
Set5/Set14/... baselines) are made with MATLAB's ``imresize``, which differs from both: it widens the
cubic kernel on downscaling (antialiasing), maps output to input coordinates with
``u = x / scale + 0.5 * (1 - 1 / scale)`` (1-based) and mirrors the border symmetrically (edge pixel
repeated). A model trained on other LR does not reproduce the published numbers.

How: for each of the two spatial dimensions a dense (out, in) weight matrix is built once (float64, with
the symmetric border folded in), cached, and applied with a matmul. The result is exact to float
rounding and vectorised on any device.

Differences from MATLAB, by design:
- Only float inputs are accepted and the output is neither rounded nor clamped (MATLAB rounds and clamps
  only for uint8 input; round yourself, e.g. ``repsr.image.io.quantize``, to reproduce that).
- The output size is ``ceil(in * scale)`` like MATLAB, except that a product within 1e-9 of an integer
  counts as that integer, so ``scale=1/3`` on 1356 rows gives 452 however 1/3 rounds.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from repsr.image.pixels import to_integers

__all__ = ["bicubic_lr", "imresize", "make_lr", "output_size", "resize_weights", "cubic"]

_KERNEL_WIDTH = 4.0  # support of the cubic kernel, [-2, 2]
_CACHE_SIZE = 64
_matrix_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_cache_lock = threading.Lock()


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


def output_size(in_size: int, scale: float) -> int:
    """MATLAB's output length ``ceil(in_size * scale)``; a product within 1e-9 of an integer counts as it."""
    product = in_size * scale
    nearest = round(product)
    if abs(product - nearest) <= 1e-9 * max(1.0, abs(product)):
        return max(1, int(nearest))
    return max(1, math.ceil(product))


def resize_weights(in_size: int, out_size: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """Dense (out_size, in_size) float64 matrix M such that ``out = M @ in`` along one dimension.

    Follows MATLAB's ``contributions``: kernel widened by 1/scale when downscaling with antialiasing,
    weights normalised to sum 1 per output, indices mirrored with ``[1..n, n..1]``.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in={in_size} out={out_size}")
    width = _KERNEL_WIDTH
    widen = scale < 1 and antialiasing
    if widen:
        width = _KERNEL_WIDTH / scale
    x = np.arange(1, out_size + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based, may be outside
    distance = u[:, None] - indices
    weights = scale * cubic(scale * distance) if widen else cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_size), np.arange(in_size)[::-1]])
    source = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_size)]
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_size)[:, None], source.shape)
    np.add.at(matrix, (rows, source), weights)
    return matrix


def _matrix(in_size: int, out_size: int, scale: float, antialiasing: bool, dtype, device) -> torch.Tensor:
    key = (in_size, out_size, float(scale), antialiasing, dtype, str(device))
    with _cache_lock:
        cached = _matrix_cache.get(key)
        if cached is not None:
            _matrix_cache.move_to_end(key)
            return cached
    weights = torch.from_numpy(resize_weights(in_size, out_size, scale, antialiasing))
    weights = weights.to(device=device, dtype=dtype)
    with _cache_lock:
        _matrix_cache[key] = weights
        if len(_matrix_cache) > _CACHE_SIZE:
            _matrix_cache.popitem(last=False)
    return weights


def _scales(scale: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(scale, Sequence):
        if len(scale) != 2:
            raise ValueError(f"scale must be a number or (scale_h, scale_w), got {scale!r}")
        sh, sw = float(scale[0]), float(scale[1])
    else:
        sh = sw = float(scale)
    for s in (sh, sw):
        if not math.isfinite(s) or s <= 0:
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return sh, sw


def imresize(img: torch.Tensor, scale: float | Sequence[float], *, antialiasing: bool = True) -> torch.Tensor:
    """Resize the last two dims of ``img`` like MATLAB ``imresize(img, scale, 'bicubic')``.

    ``img``: float tensor (C, H, W), (N, C, H, W) or any (..., H, W), on any device. ``scale``: a factor
    (< 1 shrinks: 1/2, 1/3, 1/4; > 1 enlarges) or a pair (scale_h, scale_w). Output size per dimension is
    ``ceil(size * scale)``. float16/bfloat16 are computed in float32 and cast back. Not clamped.
    """
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"imresize expects a torch.Tensor, got {type(img).__name__}")
    if not img.is_floating_point():
        raise TypeError(f"imresize expects a float tensor in [0, 1], got {img.dtype}; use img.float() / 255")
    if img.ndim < 2:
        raise ValueError(f"imresize needs at least 2 dims (..., H, W), got shape {tuple(img.shape)}")
    sh, sw = _scales(scale)
    in_h, in_w = img.shape[-2], img.shape[-1]
    out_h, out_w = output_size(in_h, sh), output_size(in_w, sw)
    work_dtype = img.dtype if img.dtype in (torch.float32, torch.float64) else torch.float32
    x = img.to(work_dtype)
    mh = _matrix(in_h, out_h, sh, antialiasing, work_dtype, img.device)
    mw = _matrix(in_w, out_w, sw, antialiasing, work_dtype, img.device)
    # Both orders give the same result; pick the one with fewer multiply-adds.
    rows_first = out_h * in_h * in_w + out_h * in_w * out_w
    cols_first = in_h * in_w * out_w + out_h * in_h * out_w
    if rows_first <= cols_first:
        out = torch.matmul(torch.matmul(mh, x), mw.T)
    else:
        out = torch.matmul(mh, torch.matmul(x, mw.T))
    return out.to(img.dtype)


def bicubic_lr(hr: torch.Tensor, scale: int, bit_depth: int | None = 8) -> torch.Tensor:
    """The SR literature's LR of `hr` ((C, H, W) or (N, C, H, W) in [0, 1]), the one way repsr makes it:
    cropped to a multiple of `scale` (MATLAB's `modcrop`), MATLAB bicubic 1/`scale` in float64, rounded
    to `bit_depth` levels by `repsr.image.pixels` like the LR file it stands for (`None`: unrounded).
    Returns float64 in [0, 1]; training patches, evaluation sets, the degraded benchmark's clean
    condition and the gate all take their LR from here."""
    from repsr.image.pixels import quantize

    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = hr.shape[-2], hr.shape[-1]
    small = imresize(hr[..., : h - h % scale, : w - w % scale].double(), 1.0 / scale)
    return small if bit_depth is None else quantize(small, bit_depth)


def make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """LR from integer HR pixels (H, W, C) uint8/uint16 by :func:`bicubic_lr`, as the
    same integer type (what MATLAB's imresize gives on uint8 images)."""
    depth = 8 if hr.dtype == np.uint8 else 16
    x = torch.from_numpy(np.array(hr, dtype=np.float64) / np.iinfo(hr.dtype).max).permute(2, 0, 1)
    return to_integers(bicubic_lr(x, scale, depth).permute(1, 2, 0), depth)
