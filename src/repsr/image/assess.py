"""How degraded an image is, measured from its file and its pixels: what `--denoise auto` decides on.

Three measures, each cheap (well under a second for a 12-megapixel photograph) and each read from what
a user's file really holds:

- `jpeg_quality`: a JPEG's quantization tables give the quality its encoder was set to. The luminance
  table is compared with the IJG (libjpeg, Pillow, most software) table of every quality 1..100; other
  encoders' tables (cameras, Photoshop) land on the nearest IJG quality.
- `noise_sigma`: Immerkaer's fast noise estimate (1996), made robust to texture: each colour channel
  (0..255) is convolved with a mask that cancels any locally linear signal, and sigma is read from the
  quietest 16x16 blocks (the 10th percentile of the per-block estimates), since noise is everywhere and
  texture is not; the channels' mean is the image's noise, so colour noise of sigma 6 per channel and
  gray noise of sigma 6 both read about 6. Blocks with clipped pixels (blown highlights and crushed
  shadows carry no noise) are left out. An image over 4 megapixels is measured on evenly spaced bands of
  rows (the estimate is a percentile over blocks: a fraction of them gives the same figure).
- `blockiness`: the mean luma gradient across the 8x8 JPEG grid's lines over the mean gradient inside the
  blocks; 1 for a picture that was never block-coded, above 1.1 for visible JPEG blocks. It sees a JPEG
  that was saved again as PNG or at a higher quality, which the tables cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Assessment", "assess", "blockiness", "jpeg_quality", "luma", "noise_sigma"]

# The IJG luminance quantization table for quality 50 (JPEG standard, Annex K, Table K.1).
_IJG_LUMA = np.array(
    [
        16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
        14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
        18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
    ],
    dtype=np.int64,
)  # fmt: skip

_BLOCK = 16  # side of the blocks the noise estimate ranks
_QUIET = 10  # percentile of the per-block estimates that is read as the noise


def _ijg_table(quality: int) -> np.ndarray:
    """The luminance table libjpeg writes for `quality` (jpeg_quality_scaling, baseline-limited)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((_IJG_LUMA * scale + 50) // 100, 1, 255)


_IJG_SORTED = {q: np.sort(_ijg_table(q)) for q in range(1, 101)}


def jpeg_quality(tables: Mapping[int, Sequence[int]] | None) -> int | None:
    """The IJG quality (1..100) closest to a JPEG's luminance table (Pillow's `Image.quantization`), None
    without tables. Compared sorted, so the order the tables are stored in (zigzag or natural) is moot."""
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    table = np.sort(np.asarray(tables[0], dtype=np.int64))
    errors = {q: float(np.abs(np.log(table / ref)).sum()) for q, ref in _IJG_SORTED.items()}
    return min(errors, key=lambda q: (errors[q], -q))


def _levels(array: np.ndarray) -> np.ndarray:
    """(H, W, C) float32 on 0..255 of an (H, W[, C]) uint8/uint16 or [0, 1] float image, colour channels
    only (C = 1 or 3; alpha dropped)."""
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 257.0
    return arr.astype(np.float32) * 255.0


def luma(array: np.ndarray) -> np.ndarray:
    """(H, W) float32 BT.601 luma on 0..255 of an image as `assess` takes it."""
    values = _levels(array)
    if values.shape[2] == 3:
        return values[..., 0] * 0.299 + values[..., 1] * 0.587 + values[..., 2] * 0.114
    return values[..., 0]


def _bands(values: np.ndarray, limit: int = 4_000_000, band: int = 64) -> list[np.ndarray]:
    """`[values]`, or for more than `limit` pixels evenly spaced bands of `band` rows, each starting on the
    8x8 grid (so a band's block borders are the file's)."""
    height, width = values.shape[:2]
    if height * width <= limit or height <= 2 * band:
        return [values]
    count = max(2, limit // (band * width))
    starts = sorted({int(s) // 8 * 8 for s in np.linspace(0, height - band, count)})
    return [values[s : s + band] for s in starts]


def _block_sigmas(y: np.ndarray) -> np.ndarray:
    """Immerkaer's sigma estimate of each 16x16 block of channel `y` (H, W) without clipped pixels."""
    if min(y.shape) < _BLOCK + 2:
        return np.empty(0)
    # [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]: zero on any locally linear signal; 6 sigma on white noise.
    r = (
        y[:-2, :-2] - 2 * y[:-2, 1:-1] + y[:-2, 2:]
        - 2 * y[1:-1, :-2] + 4 * y[1:-1, 1:-1] - 2 * y[1:-1, 2:]
        + y[2:, :-2] - 2 * y[2:, 1:-1] + y[2:, 2:]
    )  # fmt: skip
    clipped = (y <= 0.5) | (y >= 254.5)
    height, width = r.shape
    near_clip = np.zeros(r.shape, dtype=bool)  # a clipped pixel anywhere in the mask's 3x3 window
    for dy in range(3):
        for dx in range(3):
            near_clip |= clipped[dy : dy + height, dx : dx + width]
    rows, cols = (side // _BLOCK for side in r.shape)
    blocks = np.abs(r[: rows * _BLOCK, : cols * _BLOCK]).reshape(rows, _BLOCK, cols, _BLOCK)
    bad = near_clip[: rows * _BLOCK, : cols * _BLOCK].reshape(rows, _BLOCK, cols, _BLOCK).any(axis=(1, 3))
    # E|N(0, 6 sigma)| = 6 sigma sqrt(2 / pi)
    return blocks.mean(axis=(1, 3))[~bad] * (np.sqrt(np.pi / 2) / 6.0)


def noise_sigma(pieces: list[np.ndarray]) -> float:
    """Gaussian noise sigma (0..255 levels) of one channel, given as one or more (H, W) pieces (bands of a
    large image): the 10th percentile of the blocks' estimates; 0 when no block qualifies."""
    sigmas = np.concatenate([_block_sigmas(piece) for piece in pieces])
    return float(np.percentile(sigmas, _QUIET)) if sigmas.size else 0.0


_MIN_GRID = 32  # pixels per side below which a grid ratio is noise (under 4 blocks each way): read as 1


def blockiness(pieces: list[np.ndarray]) -> float:
    """Mean absolute gradient across 8x8 JPEG block borders over the mean gradient elsewhere (1 = none),
    over one or more (H, W) luma pieces whose rows and columns start on the grid; 1 for an image under
    `_MIN_GRID` pixels on a side."""
    if any(min(piece.shape) < _MIN_GRID for piece in pieces):
        return 1.0
    across = across_n = inside = inside_n = 0.0
    for y in pieces:
        dx = np.abs(np.diff(y, axis=1))
        dy = np.abs(np.diff(y, axis=0))
        on_x = np.arange(dx.shape[1]) % 8 == 7
        on_y = np.arange(dy.shape[0]) % 8 == 7
        across += float(dx[:, on_x].sum() + dy[on_y].sum())
        across_n += dx[:, on_x].size + dy[on_y].size
        inside += float(dx[:, ~on_x].sum() + dy[~on_y].sum())
        inside_n += dx[:, ~on_x].size + dy[~on_y].size
    if not across_n or not inside_n or not inside:
        return 1.0
    return (across / across_n) / (inside / inside_n)


@dataclass(frozen=True)
class Assessment:
    """What was measured on one image: `jpeg_quality` from its tables (None: not a JPEG file), luma
    `noise` sigma in 0..255 levels, and `blockiness` (1 = no block grid)."""

    jpeg_quality: int | None
    noise: float
    blockiness: float

    def describe(self) -> str:
        """One line: 'JPEG quality 72, noise 1.4, blockiness 1.18'."""
        source = f"JPEG quality {self.jpeg_quality}" if self.jpeg_quality is not None else "not a JPEG"
        return f"{source}, noise {self.noise:.1f}, blockiness {self.blockiness:.2f}"


def assess(array: np.ndarray, jpeg_quality: int | None = None) -> Assessment:
    """The `Assessment` of an image's pixels ((H, W, C) integers or [0, 1] floats; see `luma`) and, for a
    JPEG file, the quality its tables give (`repsr.image.io.Pixels.jpeg_quality`)."""
    bands = _bands(_levels(array))
    channels = bands[0].shape[2]
    noise = float(np.mean([noise_sigma([band[..., c] for band in bands]) for c in range(channels)]))
    return Assessment(
        jpeg_quality=jpeg_quality, noise=noise, blockiness=blockiness([luma(band) for band in bands])
    )
