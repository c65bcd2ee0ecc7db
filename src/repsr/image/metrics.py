"""PSNR and SSIM with the SR literature's protocol, so numbers compare with published tables.

The protocol (MATLAB evaluation scripts of EDSR/RCAN and BasicSR's ``calculate_psnr``/``calculate_ssim``
with ``test_y_channel=True``):

1. Both images as 8-bit RGB: a float output is rounded to uint8 levels first, as if saved to PNG.
2. ``crop_border`` pixels removed on every side (by convention equal to the scale).
3. Y channel of BT.601 with MATLAB's ``rgb2ycbcr`` coefficients, computed in float64 from the 8-bit RGB:
   Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B in 0..255, so Y is in 16..235 and not
   rounded. This is what RCAN's ``Evaluate_PSNR_SSIM.m`` does (``rgb2ycbcr(im2double(im))``) and what
   BasicSR does. ``round_y=True`` rounds Y to integers instead, as older scripts that call ``rgb2ycbcr``
   on uint8 images (VDSR-era ``compute_psnr``) do; the difference is a few hundredths of a dB.
4. PSNR = 10 log10(255^2 / MSE); SSIM as Wang et al.'s ``ssim_index.m``: 11x11 Gaussian window with
   sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, statistics over the valid region only, mean of the map.
   Without ``y_channel`` both are computed over all channels (SSIM: mean of per-channel SSIM).

Accepted inputs (numpy arrays or torch tensors):
- floating point: (C, H, W), (1, C, H, W) or (H, W), values in [0, 1], C = 3 (RGB) or 1 (gray); rounded
  half up to the 256 levels, clamped;
- uint8: (H, W, C) or (H, W), values 0..255, as numpy/PIL/OpenCV hold them (RGB order).
A 1-channel image is taken as it is with ``y_channel`` (it already is the luminance).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from repsr.image.color import rgb_to_y
from repsr.image.pixels import round_levels, to_levels

__all__ = ["gaussian_window", "psnr", "signal_psnr", "ssim", "to_uint8_levels"]

ArrayLike = np.ndarray | torch.Tensor

_SSIM_SIZE = 11
_SSIM_SIGMA = 1.5
_K1, _K2, _L = 0.01, 0.03, 255.0


def to_uint8_levels(img: ArrayLike) -> np.ndarray:
    """Image -> float64 array (C, H, W) of integer values 0..255 (see the module doc for accepted inputs)."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    img = np.asarray(img)
    if img.dtype == np.uint8:
        if img.ndim == 2:
            return img[None].astype(np.float64)
        if img.ndim == 3:
            return np.moveaxis(img, -1, 0).astype(np.float64)
        raise ValueError(f"a uint8 image must be (H, W, C) or (H, W), got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"images must be float in [0, 1] or uint8 in 0..255, got {img.dtype}")
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"a float image must be (C, H, W) with C = 1 or 3, got shape {img.shape}")
    return to_levels(img, 8).astype(np.float64)  # the pixels a file of this image holds


def _prepare(sr: ArrayLike, hr: ArrayLike, crop_border: int, y_channel: bool, round_y: bool) -> tuple:
    a, b = to_uint8_levels(sr), to_uint8_levels(hr)
    if a.shape != b.shape:
        raise ValueError(f"sr and hr differ in shape: {a.shape} vs {b.shape} (as (C, H, W))")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        a = a[:, crop_border:-crop_border, crop_border:-crop_border]
        b = b[:, crop_border:-crop_border, crop_border:-crop_border]
    if a.shape[1] == 0 or a.shape[2] == 0:
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {tuple(sr.shape)} image")
    if y_channel and a.shape[0] == 3:
        a, b = rgb_to_y(a / 255.0) * 255.0, rgb_to_y(b / 255.0) * 255.0
        if round_y:
            a, b = round_levels(a), round_levels(b)
    return a, b


def psnr(
    sr: ArrayLike, hr: ArrayLike, crop_border: int, y_channel: bool = True, *, round_y: bool = False
) -> float:
    """PSNR in dB on the 0..255 range after rounding, border crop and (by default) Y conversion.

    Returns ``inf`` for identical images.
    """
    a, b = _prepare(sr, hr, crop_border, y_channel, round_y)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def signal_psnr(a: ArrayLike, b: ArrayLike) -> float:
    """PSNR in dB of two network outputs as signals: float values clipped to [0, 1], every channel, no
    rounding, crop or Y conversion (how far one computation is from another, e.g. int8 from fp32)."""
    x, y = (np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0) * 255.0 for v in (a, b))
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def gaussian_window(size: int = _SSIM_SIZE, sigma: float = _SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian; its outer product is MATLAB's ``fspecial('gaussian', size, sigma)``."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a 2-D array (MATLAB ``filter2(window, x, 'valid')``)."""
    k = len(g)
    try:
        from scipy.ndimage import correlate1d
    except ImportError:  # pragma: no cover - scipy comes with scikit-image
        h, w = x.shape
        rows = sum(g[i] * x[i : h - k + 1 + i] for i in range(k))
        return sum(g[i] * rows[:, i : w - k + 1 + i] for i in range(k))
    half = k // 2
    out = correlate1d(correlate1d(x, g, axis=0, mode="constant"), g, axis=1, mode="constant")
    return out[half : x.shape[0] - half, half : x.shape[1] - half]


def _ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    g = gaussian_window()
    c1, c2 = (_K1 * _L) ** 2, (_K2 * _L) ** 2
    mu1, mu2 = _filter_valid(a, g), _filter_valid(b, g)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter_valid(a * a, g) - mu1_sq
    s2 = _filter_valid(b * b, g) - mu2_sq
    s12 = _filter_valid(a * b, g) - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return float(ssim_map.mean())


def min_image_side(crop_border: int) -> int:
    """The smallest HR side PSNR and SSIM can measure with `crop_border`: the SSIM window after the crop."""
    return _SSIM_SIZE + 2 * crop_border


def ssim(
    sr: ArrayLike, hr: ArrayLike, crop_border: int, y_channel: bool = True, *, round_y: bool = False
) -> float:
    """SSIM as MATLAB's ``ssim_index`` on the same prepared images as :func:`psnr` (mean over channels)."""
    a, b = _prepare(sr, hr, crop_border, y_channel, round_y)
    if a.shape[1] < _SSIM_SIZE or a.shape[2] < _SSIM_SIZE:
        size = f"{_SSIM_SIZE}x{_SSIM_SIZE}"
        raise ValueError(f"SSIM needs at least {size} pixels after the crop, got {a.shape[1:]}")
    return float(np.mean([_ssim_plane(a[c], b[c]) for c in range(a.shape[0])]))
