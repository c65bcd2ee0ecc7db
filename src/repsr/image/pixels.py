"""The one float-to-integer pixel rule of repsr: clamp to [0, 1], scale to the integer levels, round half up.

Half up (`floor(v * levels + 0.5)`), because that is what the files users compare against do: MATLAB's
`im2uint8` (the SR literature's LR and metrics) and Pillow round half up (away from zero for the
non-negative values of pixels). NaN becomes 0.

The arithmetic is in the input's own float type: a float32 model output is scaled in float32 (one
rounding, `v * levels`), and the `+ 0.5` and floor are exact there (levels < 2^22). The fused C kernel's
8-bit output does the same float32 operations, so an image file, a video frame and the kernel's pixels of
one model output are identical (tests/test_pixels.py). float64 input (LR made by MATLAB bicubic in
float64) is rounded in float64.

`to_levels` works on torch tensors and numpy arrays alike; `quantize` keeps the float scale ([0, 1]) for
"what saving and reloading would give".
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", torch.Tensor, np.ndarray)


def levels_of(bit_depth: int) -> int:
    """255 for 8 bits, 65535 for 16; `ValueError` for any other depth."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    return 2**bit_depth - 1


def to_levels(values: Array, bit_depth: int = 8) -> Array:
    """Float pixels in [0, 1] -> integer levels 0..2**bit_depth-1, still as floats of the input's type
    (numpy float16/32 stays float32; integers are taken as float32)."""
    levels = levels_of(bit_depth)
    if isinstance(values, torch.Tensor):
        x = values if values.dtype in (torch.float32, torch.float64) else values.float()
        # floor(clamp(v L, 0, L) + 0.5) in one new tensor: v L is the only rounding (+ 0.5 is exact)
        out = x.mul(levels).add_(0.5).clamp_(0.5, levels + 0.5)
        return torch.nan_to_num_(out, nan=0.0).floor_()
    x = np.asarray(values)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    levels_t = x.dtype.type(levels)
    return np.floor(np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0) * levels_t + x.dtype.type(0.5))


def to_integers(values: Array, bit_depth: int = 8) -> np.ndarray:
    """`to_levels` as a uint8 / uint16 numpy array (same shape, on the CPU)."""
    ints = to_levels(values, bit_depth)
    if isinstance(ints, torch.Tensor):
        ints = ints.detach().cpu().numpy()
    return ints.astype(np.uint8 if bit_depth == 8 else np.uint16)


def quantize(values: Array, bit_depth: int = 8) -> Array:
    """Round float pixels in [0, 1] to the nearest of 2**bit_depth levels, back on the [0, 1] scale:
    what saving the image and reading it back would give."""
    return to_levels(values, bit_depth) / levels_of(bit_depth)


def round_levels(values: Array, top: float = 255.0) -> Array:
    """Values already on the integer scale (0..`top`, e.g. Y of 8-bit images or LR in levels) rounded
    half up and clamped: the same rule for data that was scaled before it was rounded."""
    if isinstance(values, torch.Tensor):
        return values.clamp(0.0, top).add(0.5).floor_()
    return np.floor(np.clip(values, 0.0, top) + 0.5)


__all__ = ["levels_of", "quantize", "round_levels", "to_integers", "to_levels"]
