"""NIQE, the natural image quality evaluator (Mittal, Soundararajan and Bovik, IEEE SPL 2013), with its
pristine statistics fitted on the corpus instead of downloaded: a no-reference measure of how far an
image's local statistics are from those of real photographs (lower is more natural).

The method, as the authors' MATLAB code computes it:
- luminance in 0..255; MSCN coefficients (I - mu) / (sigma + 1) with a 7x7 Gaussian window (sigma 7/6,
  borders replicated);
- 96x96 patches (48x48 at the second scale, the image halved by MATLAB bicubic); per patch and scale 18
  features: the generalized Gaussian fit (shape, variance) of the MSCN coefficients and, for the products
  of neighbours in 4 directions, the asymmetric generalized Gaussian fit (shape, mean, left and right
  variance), all by moment matching;
- the pristine model: mean and covariance of the features of the sharpest patches (local sigma above
  0.75 of the image's sharpest) of pristine photographs; an image's score: the Mahalanobis-like distance
  between that and the mean and covariance of all its own patches.

`PRISTINE` is fitted on the training photographs of `repsr corpus` (`scripts/fit_niqe.py`, stored in
`niqe_pristine.json` beside this module), not on the held-out ones the benchmarks score. The absolute
values therefore differ from NIQE figures published with the original pristine set; comparisons between
models on the same images are what it is for.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage, special

from repsr.image.resize import imresize

__all__ = ["PATCH", "NiqeModel", "fit_pristine", "luminance", "niqe", "niqe_features", "niqe_rgb", "pristine"]

PATCH = 96  # patch side at full scale (the authors' 96x96)
SHARPNESS_FRACTION = 0.75  # pristine patches: local sigma above this share of the image's sharpest
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical, both diagonals
_SHAPES = np.arange(0.2, 10.0005, 0.001)
_GGD_RATIO = special.gamma(1 / _SHAPES) * special.gamma(3 / _SHAPES) / special.gamma(2 / _SHAPES) ** 2
_AGGD_RATIO = special.gamma(2 / _SHAPES) ** 2 / (special.gamma(1 / _SHAPES) * special.gamma(3 / _SHAPES))
_PRISTINE_FILE = Path(__file__).with_name("niqe_pristine.json")


def _gaussian_window() -> np.ndarray:
    x = np.arange(7) - 3.0
    g = np.exp(-(x**2) / (2 * (7 / 6) ** 2))
    window = np.outer(g, g)
    return window / window.sum()


_WINDOW = _gaussian_window()


def _mscn(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MSCN coefficients and the local sigma of a luminance image in 0..255."""
    mu = ndimage.correlate(y, _WINDOW, mode="nearest")
    sigma = np.sqrt(np.abs(ndimage.correlate(y * y, _WINDOW, mode="nearest") - mu * mu))
    return (y - mu) / (sigma + 1.0), sigma


def _ggd(x: np.ndarray) -> tuple[float, float]:
    """Shape and variance of a zero-mean generalized Gaussian, by moment matching."""
    variance = float(np.mean(x * x))
    mean_abs = float(np.mean(np.abs(x)))
    rho = variance / max(mean_abs * mean_abs, 1e-12)
    return float(_SHAPES[np.argmin(np.abs(rho - _GGD_RATIO))]), variance


def _aggd(x: np.ndarray) -> tuple[float, float, float, float]:
    """Shape, mean, left and right variance of an asymmetric generalized Gaussian."""
    left, right = x[x < 0], x[x > 0]
    left_std = math.sqrt(float(np.mean(left * left))) if left.size else 0.0
    right_std = math.sqrt(float(np.mean(right * right))) if right.size else 0.0
    ratio = left_std / right_std if right_std > 0 else 1.0
    r_hat = float(np.mean(np.abs(x))) ** 2 / max(float(np.mean(x * x)), 1e-12)
    r_norm = r_hat * (ratio**3 + 1) * (ratio + 1) / (ratio**2 + 1) ** 2
    shape = float(_SHAPES[np.argmin((_AGGD_RATIO - r_norm) ** 2)])
    scale = math.sqrt(special.gamma(1 / shape) / special.gamma(3 / shape))
    mean = (right_std - left_std) * special.gamma(2 / shape) / special.gamma(1 / shape) * scale
    return shape, float(mean), left_std**2, right_std**2


def _patch_features(mscn: np.ndarray) -> list[float]:
    features = list(_ggd(mscn))
    for dy, dx in _SHIFTS:
        shifted = np.roll(mscn, shift=(-dy, -dx), axis=(0, 1))  # MATLAB's circshift within the patch
        features.extend(_aggd(mscn * shifted))
    return features


def niqe_features(y: np.ndarray, patch: int = PATCH) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 36), sharpness (n,)) of the `patch`-sided patches of luminance `y` (H, W) in 0..255,
    cropped to whole patches; ValueError if not one patch fits."""
    y = np.asarray(y, dtype=np.float64)
    rows, cols = y.shape[0] // patch, y.shape[1] // patch
    if rows < 1 or cols < 1:
        raise ValueError(f"NIQE needs at least {patch}x{patch} pixels, got {y.shape[1]}x{y.shape[0]}")
    y = y[: rows * patch, : cols * patch]
    per_scale = []
    sharpness = None
    for level in range(2):
        side = patch // (2**level)
        mscn, sigma = _mscn(y)
        cells = [
            (slice(r * side, (r + 1) * side), slice(c * side, (c + 1) * side))
            for r in range(rows)
            for c in range(cols)
        ]
        blocks = [(mscn[cell], sigma[cell]) for cell in cells]
        per_scale.append(np.array([_patch_features(m) for m, _ in blocks]))
        if level == 0:
            sharpness = np.array([float(s.mean()) for _, s in blocks])
            y = imresize(torch.from_numpy(y)[None], 0.5)[0].numpy()
    assert sharpness is not None
    return np.concatenate(per_scale, axis=1), sharpness


@dataclass(frozen=True)
class NiqeModel:
    """The pristine statistics: the mean (36,) and covariance (36, 36) of pristine patches' features."""

    mean: np.ndarray
    cov: np.ndarray
    patches: int = 0  # how many patches were fitted (a record, not used in the score)

    def to_json(self) -> str:
        return json.dumps({"mean": self.mean.tolist(), "cov": self.cov.tolist(), "patches": self.patches})

    @classmethod
    def from_json(cls, text: str) -> NiqeModel:
        data = json.loads(text)
        return cls(np.array(data["mean"]), np.array(data["cov"]), int(data.get("patches", 0)))


def fit_pristine(images: Iterable[np.ndarray], patch: int = PATCH) -> NiqeModel:
    """The pristine model of luminance images (H, W) in 0..255: the sharpest patches of each."""
    chosen = []
    for y in images:
        features, sharpness = niqe_features(y, patch)
        keep = sharpness > SHARPNESS_FRACTION * sharpness.max()
        chosen.append(features[keep])
    features = np.concatenate(chosen)
    if len(features) < 2:
        raise ValueError(f"NIQE's pristine model needs at least 2 sharp patches, got {len(features)}")
    return NiqeModel(features.mean(axis=0), np.cov(features, rowvar=False), len(features))


@functools.lru_cache(maxsize=1)
def pristine() -> NiqeModel:
    """The corpus-fitted pristine model shipped with repsr."""
    return NiqeModel.from_json(_PRISTINE_FILE.read_text())


def niqe(y: np.ndarray, model: NiqeModel | None = None, patch: int = PATCH) -> float:
    """NIQE of luminance `y` (H, W) in 0..255 against `model` (default: `pristine()`); lower is better.
    Needs at least two patches (192x96 pixels at the default patch size) for a covariance."""
    model = pristine() if model is None else model
    features, _ = niqe_features(y, patch)
    if len(features) < 2:
        raise ValueError(f"NIQE needs at least 2 patches of {patch}x{patch}, got {y.shape[1]}x{y.shape[0]}")
    diff = model.mean - features.mean(axis=0)
    cov = (model.cov + np.cov(features, rowvar=False)) / 2
    return float(math.sqrt(max(float(diff @ np.linalg.pinv(cov) @ diff), 0.0)))


def luminance(rgb: torch.Tensor) -> np.ndarray:
    """(H, W) luminance in 0..255 of an RGB image (3, H, W) in 0..1, with MATLAB's `rgb2gray` weights
    (what the authors' code scores); a 1-channel image is taken as it is."""
    img = rgb.detach().double().cpu() * 255.0
    if img.shape[0] == 1:
        return img[0].numpy()
    weights = torch.tensor([0.298936, 0.587043, 0.114021], dtype=torch.float64)
    return torch.einsum("c,chw->hw", weights, img[:3]).numpy()


def niqe_rgb(rgb: torch.Tensor, model: NiqeModel | None = None) -> float:
    """NIQE of an RGB image (3, H, W) in 0..1 (rounded to 8-bit levels first, as a saved file would be)."""
    return niqe(luminance(torch.round(rgb.clamp(0, 1) * 255) / 255), model)
