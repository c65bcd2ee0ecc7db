"""Tiles that reproduce the untiled result exactly, and how large they may be on a device.

Each tile is cut with a margin of at least the network's receptive radius (one LR pixel per 3x3 conv:
`num_blocks + 2`), and only the tile's core is kept; all tiles of an image have one input shape (see
`tile_windows`). Every kept output pixel then saw exactly the input the untiled network would have
shown it, so the tiled result equals the untiled one up to float rounding.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from repsr.arch.network import ModelSpec, describe
from repsr.inference import devices

MIN_TILE = 16
MAX_TILE = 2048
# On CPU, tiles beyond a few hundred pixels buy nothing (measured: 192-384 px tiles ran 15-20% faster
# than one 768x512 piece for M4C16, activations staying in cache), so `auto` stops there.
CPU_MAX_TILE = 512
# Fraction of free memory a tile may use; the rest is left to the allocator, the OS and other programs.
MEMORY_FRACTION = 0.25


def model_scale(model: nn.Module) -> int:
    """Upscaling factor of any repsr form (its `descriptor()`)."""
    return describe(model).scale


def receptive_radius(model: nn.Module) -> int:
    """How many LR pixels away an output pixel can see: one per 3x3 conv, `num_blocks + 2` in all.

    Holds for the plain network and for the training form in eval mode (every block is equivalent to
    one 3x3 conv there); the nearest-upsampled skip and the pixel shuffle add nothing.
    """
    return describe(model).receptive_radius


def tile_windows(length: int, tile: int, pad: int) -> list[tuple[int, int, int, int]]:
    """Cover 0..length with cores of at most `tile` pixels, each inside an input window of ONE size.

    Returns (core_start, core_stop, window_start, window_stop). Every window is
    `min(tile + 2 * pad, length)` long, shifted inward at the image borders, so each core keeps at least
    `pad` pixels of real context on every side that is not an image border. One window size means one
    input shape for the whole image: convolution backends (oneDNN, cuDNN) plan their kernels once per
    image instead of once per edge-tile shape, and `torch.compile` does not recompile for edge tiles.
    """
    window = min(tile + 2 * pad, length)
    count = max(1, math.ceil(length / tile))
    bounds = [round(i * length / count) for i in range(count + 1)]
    spans = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        window_start = min(max(0, start - pad), length - window)
        spans.append((start, stop, window_start, window_start + window))
    return spans


def auto_tile_size(model: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32) -> int:
    """Largest square tile (LR pixels) whose activations fit in a quarter of the free memory (capped:
    2048 on CUDA, 512 on CPU where larger tiles are no faster).

    Per LR pixel the widest step holds a conv's input and output plus the scale^2-times larger output
    and skip; twice that covers convolution workspaces.
    """
    spec = describe(model)
    bytes_per_value = torch.finfo(dtype).bits // 8
    out_values = spec.in_channels * spec.scale**2
    values_per_pixel = 2 * max(spec.channels, out_values) + 2 * out_values
    bytes_per_pixel = 2 * values_per_pixel * bytes_per_value
    budget = devices.free_memory_bytes(device) * MEMORY_FRACTION
    side = int(math.sqrt(max(budget, 0) / bytes_per_pixel))
    cap = MAX_TILE if device.type == "cuda" else CPU_MAX_TILE
    return max(MIN_TILE, min(cap, side // 8 * 8))


# The fused kernel works in L2-sized tiles of its own; what grows with the window is only its float32
# input and output, so its windows can be far larger than torch's (and a video frame is one window).
FUSED_MAX_TILE = 2048


def fused_tile_size(spec: ModelSpec, device: torch.device) -> int:
    """Largest square window (LR pixels) whose float32 input, output and the output's working copies fit
    in `MEMORY_FRACTION` of the free memory now, capped at `FUSED_MAX_TILE`: the fused kernel's working
    memory is bounded by its window (a 10000x10000 x2 image in one piece would need 4.8 GB of output)."""
    # the input, the output and the two float copies the integer path makes of it (clamp, rounding)
    bytes_per_pixel = 4 * spec.in_channels * (1 + 3 * spec.scale**2)
    budget = devices.free_memory_bytes(device) * MEMORY_FRACTION
    side = int(math.sqrt(max(budget, 0) / bytes_per_pixel))
    return max(MIN_TILE, min(FUSED_MAX_TILE, side // 8 * 8))
