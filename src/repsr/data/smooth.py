"""Synthetic smooth training patches: flat colours and gentle ramps, the areas photographs are full of
(skies, walls, studio backdrops, blown highlights, shadows) and the ones a GAN-trained model paints
texture on (issue 30: the GAN gate's flat-colour and ramp checks).

Mixed into the batches by ``data.smooth_share``, they teach the generator that a flat input stays flat
even after noise and JPEG, and show the discriminator what real flat HR looks like. Each patch is an HR
image of random colours, then downscaled by the same MATLAB bicubic as every cached LR, with a margin
cut away so that the LR has no border effect.
"""

from __future__ import annotations

import numpy as np

from repsr.image.resize import make_lr

__all__ = ["KINDS", "smooth_pair", "smooth_hr"]

KINDS = ("flat", "ramp", "radial")
_MARGIN = 4  # LR pixels generated around the patch and cut away after the downscale
_MAX_LEVELS_PER_HR_PIXEL = 1.5  # a ramp this steep over 128 HR pixels spans 192 levels: a gradient, no edge


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour in 0..255; a third of the time one or more channels at 0 or 255 (saturated
    colours, black and blown highlights are where photographs clip)."""
    colour = rng.uniform(0.0, 255.0, 3)
    if rng.random() < 1 / 3:
        clipped = rng.random(3) < 0.5
        colour[clipped] = np.where(rng.random(3) < 0.5, 0.0, 255.0)[clipped]
    return colour


def smooth_hr(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (height, width, 3) uint8 image: a flat colour, a linear ramp in a random direction, or a radial
    ramp (vignetting, a light's falloff), each ramp at most ``_MAX_LEVELS_PER_HR_PIXEL`` levels a pixel."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    start = _colour(rng)
    if kind == "flat":
        return np.broadcast_to(np.round(start), (height, width, 3)).astype(np.uint8)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    if kind == "ramp":
        angle = rng.uniform(0.0, 2 * np.pi)
        t = x * np.cos(angle) + y * np.sin(angle)
    else:
        cy, cx = rng.uniform(-height, 2 * height), rng.uniform(-width, 2 * width)
        t = np.hypot(y - cy, x - cx)
    t = t - t.min()
    slope = rng.uniform(0.05, _MAX_LEVELS_PER_HR_PIXEL, 3) * rng.choice([-1.0, 1.0], 3)
    img = start[None, None, :] + t[..., None] * slope[None, None, :]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def smooth_pair(rng: np.random.Generator, patch_size: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR) uint8 patches of LR side `patch_size`: a smooth HR and its MATLAB-bicubic LR."""
    side = (patch_size + 2 * _MARGIN) * scale
    hr = smooth_hr(rng, side, side)
    lr = make_lr(hr, scale)
    m = _MARGIN
    return (
        np.ascontiguousarray(lr[m : m + patch_size, m : m + patch_size]),
        np.ascontiguousarray(hr[m * scale : (m + patch_size) * scale, m * scale : (m + patch_size) * scale]),
    )
