"""RGB <-> YCbCr with MATLAB's ITU-R BT.601 coefficients (``rgb2ycbcr`` / ``ycbcr2rgb``).

All functions take float images in [0, 1] with the channel axis at dim -3, as torch tensors or numpy
arrays, and return the same type. Y comes out in MATLAB's studio range: 16/255 .. 235/255 for inputs in
[0, 1]. These are the coefficients the SR literature's Y-channel PSNR/SSIM is defined with.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = ["rgb_to_ycbcr", "rgb_to_y", "ycbcr_to_rgb", "RGB_TO_YCBCR", "YCBCR_OFFSET", "YCBCR_TO_RGB"]

Image = TypeVar("Image", torch.Tensor, np.ndarray)

# Rows: Y, Cb, Cr; columns: R, G, B (R, G, B in [0, 1], result in 0..255 before the offset).
RGB_TO_YCBCR = np.array(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ]
)
YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])
YCBCR_TO_RGB = np.linalg.inv(RGB_TO_YCBCR)


def _channels(img: Image) -> tuple[Image, Image, Image]:
    if img.ndim < 3 or img.shape[-3] != 3:
        raise ValueError(f"expected 3 channels at dim -3, got shape {tuple(img.shape)}")
    if isinstance(img, torch.Tensor) and not img.is_floating_point():
        raise TypeError("color conversion needs a floating tensor in [0, 1]")
    return img[..., 0, :, :], img[..., 1, :, :], img[..., 2, :, :]


def _stack(planes: list, like: Image) -> Image:
    if isinstance(like, torch.Tensor):
        return torch.stack(planes, dim=-3)
    return np.stack(planes, axis=-3)


def _mix(matrix: np.ndarray, offset: np.ndarray, img: Image, rows: range) -> Image:
    a, b, c = _channels(img)
    planes = [
        (float(matrix[r, 0]) * a + float(matrix[r, 1]) * b + float(matrix[r, 2]) * c + float(offset[r]))
        for r in rows
    ]
    return _stack(planes, img)


def rgb_to_ycbcr(rgb: Image) -> Image:
    """RGB in [0, 1] -> YCbCr in [0, 1] (MATLAB ``rgb2ycbcr`` on double input)."""
    return _mix(RGB_TO_YCBCR / 255.0, YCBCR_OFFSET / 255.0, rgb, range(3))


def rgb_to_y(rgb: Image) -> Image:
    """Y channel only, shape (..., 1, H, W): 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255."""
    return _mix(RGB_TO_YCBCR / 255.0, YCBCR_OFFSET / 255.0, rgb, range(1))


def ycbcr_to_rgb(ycc: Image) -> Image:
    """YCbCr in [0, 1] -> RGB in [0, 1] (MATLAB ``ycbcr2rgb``; not clamped)."""
    # rgb = M^-1 (ycc * 255 - offset), R, G, B in [0, 1].
    matrix = YCBCR_TO_RGB * 255.0
    offset = -YCBCR_TO_RGB @ YCBCR_OFFSET
    return _mix(matrix, offset, ycc, range(3))
