"""Real-world degradations: HR patch -> LR as photographs are degraded, applied on the fly in training.

Real inputs are JPEGs with camera noise, some blur and whatever resampler made them smaller; a model
trained on clean MATLAB-bicubic LR sharpens all of that along with the picture. This module synthesizes
such LR from clean HR with a second-order model in the manner of Real-ESRGAN (Wang et al., ICCVW 2021):
two passes of blur -> random resize -> noise -> JPEG, then a resize to the LR size with a sinc filter and
a last JPEG in random order, the result rounded to 8-bit as a real file would be.

Everything is plain numpy/torch on one (H, W, 3) float32 image in [0, 1] on the CPU: per-sample work for
DataLoader workers. Each op takes its random choices from a `numpy.random.Generator`, and `degrade` gives
every stage its own generator seeded from the sample's key and the stage's name (`stage_rng`), so a
sample is a pure function of its key (what keeps `--resume` exact) and a new draw in one stage leaves
every other stage's choices as they were. Ops: `blur_kernel` / `sinc_kernel` (kernels that
sum to 1), `blur`, `resize`, `add_gaussian_noise`, `add_poisson_noise`, `jpeg`. The recipe is a
`Degradation`: named presets (`PRESETS`: `none` is today's MATLAB bicubic, `general` the shipped general
models' recipe, `realesrgan` the reference ranges) and any field overridden from the training config's
`degradation:` section.

JPEG goes through Pillow (libjpeg-turbo in its wheels): already a dependency, 0.1-0.3 ms for a training
patch, and the same encoder that writes most JPEGs users feed in; a differentiable JPEG is only worth it
for GPU batches.
"""

from __future__ import annotations

import dataclasses
import io
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import signal, special

from repsr.image.pixels import to_integers
from repsr.util.errors import ConfigError

__all__ = [
    "KERNEL_TYPES",
    "PRESETS",
    "Degradation",
    "add_gaussian_noise",
    "add_poisson_noise",
    "blur",
    "blur_kernel",
    "degrade",
    "jpeg",
    "random_kernel",
    "resize",
    "sinc_kernel",
]

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
MAX_KERNEL_SIZE = 63  # blur kernel side; Real-ESRGAN draws up to 21
MAX_RESIZE = 4.0  # resize factor of one pass; Real-ESRGAN draws up to 1.5

Range = list[float]


@dataclass
class Degradation:
    """One degradation recipe. In a config every field but `preset` may be left out (None): the
    preset's value is used. Ranges are [low, high], drawn uniformly; `*_probs` are probabilities that
    sum to 1. Sigmas and noise are in 0..255 levels where noted, blur sigmas in pixels of the image the
    pass works on (HR for the first pass)."""

    preset: str = "none"  # none | general | realesrgan
    clean_prob: float | None = None  # share of patches given the plain MATLAB-bicubic LR
    kernel_size: Range | None = None  # odd kernel sides drawn from [low, high]
    kernel_probs: Range | None = None  # probabilities of KERNEL_TYPES, in that order
    sinc_prob: float | None = None  # a blur uses a sinc (ringing) kernel instead, with this probability
    beta_generalized: Range | None = None  # shape of the generalized Gaussian kernels
    beta_plateau: Range | None = None  # shape of the plateau kernels
    # first pass
    blur_prob: float | None = None
    blur_sigma: Range | None = None
    resize_probs: Range | None = None  # up, down, keep
    resize_range: Range | None = None  # scale factor [low, high]; up draws from [1, high], down [low, 1]
    noise_prob: float | None = None
    gaussian_noise_prob: float | None = None  # Gaussian noise, else Poisson
    noise_sigma: Range | None = None  # Gaussian sigma, 0..255 levels
    poisson_scale: Range | None = None
    gray_noise_prob: float | None = None  # the same noise on all channels (luminance noise)
    jpeg_prob: float | None = None
    jpeg_quality: Range | None = None
    # second pass, applied with `second_prob`
    second_prob: float | None = None
    blur2_prob: float | None = None
    blur2_sigma: Range | None = None
    resize2_probs: Range | None = None
    resize2_range: Range | None = None
    noise2_prob: float | None = None
    noise2_sigma: Range | None = None
    poisson2_scale: Range | None = None
    # final: resize to the LR size (+ sinc) and JPEG, in random order
    final_sinc_prob: float | None = None
    final_jpeg_prob: float | None = None
    final_jpeg_quality: Range | None = None

    def resolved(self) -> Degradation:
        """A copy with every None replaced by the preset's value; ConfigError for an unknown preset or a
        value out of its range (naming the `degradation.` key)."""
        if self.preset not in PRESETS:
            raise ConfigError(
                f"degradation.preset: unknown preset '{self.preset}'; known: {', '.join(sorted(PRESETS))}"
            )
        base = PRESETS[self.preset]
        values = {
            f.name: getattr(self, f.name) if getattr(self, f.name) is not None else base.get(f.name)
            for f in dataclasses.fields(self)
            if f.name != "preset"
        }
        out = Degradation(preset=self.preset, **values)
        out.check()
        return out

    @property
    def is_clean(self) -> bool:
        """True when every patch gets the plain MATLAB-bicubic LR (the `none` preset)."""
        return self.resolved().clean_prob >= 1.0

    def check(self) -> None:
        """Finite numbers, probabilities in [0, 1], ranges ordered, probability lists summing to 1, blur
        sigmas > 0, kernel sides that include an odd one up to `MAX_KERNEL_SIZE`, resize factors up to
        `MAX_RESIZE` (a larger one only costs memory)."""
        for f in dataclasses.fields(self):
            value, key = getattr(self, f.name), f"degradation.{f.name}"
            if value is None or f.name == "preset":
                continue
            numbers = value if isinstance(value, list) else [value]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
                raise ConfigError(f"{key}: expected numbers, got {value!r}"[:200])
            if not all(math.isfinite(v) for v in numbers):
                raise ConfigError(f"{key}: values must be finite numbers, got {value}")
            if f.name.endswith("_probs"):
                if any(p < 0 for p in value) or abs(sum(value) - 1.0) > 1e-6:
                    raise ConfigError(f"{key}: probabilities must be >= 0 and sum to 1, got {value}")
            elif isinstance(value, list):
                if len(value) != 2 or value[0] > value[1] or value[0] < 0:
                    raise ConfigError(f"{key}: expected [low, high] with 0 <= low <= high, got {value}")
            elif f.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key}: a probability must be in [0, 1], got {value}")
        if self.kernel_probs is not None and len(self.kernel_probs) != len(KERNEL_TYPES):
            raise ConfigError(
                f"degradation.kernel_probs: expected {len(KERNEL_TYPES)} values ({KERNEL_TYPES})"
            )
        for key in ("resize_probs", "resize2_probs"):
            if getattr(self, key) is not None and len(getattr(self, key)) != 3:
                raise ConfigError(f"degradation.{key}: expected 3 values (up, down, keep)")
        if self.kernel_size is not None:
            low, high = math.ceil(self.kernel_size[0]), math.floor(self.kernel_size[1])
            if not (low | 1) <= high <= MAX_KERNEL_SIZE:
                raise ConfigError(
                    f"degradation.kernel_size: needs an odd side between low and high, at most "
                    f"{MAX_KERNEL_SIZE}, got {self.kernel_size}"
                )
        for key in ("blur_sigma", "blur2_sigma"):
            value = getattr(self, key)
            if value is not None and value[0] <= 0:
                raise ConfigError(f"degradation.{key}: blur sigmas must be > 0, got {value}")
        for key in ("resize_range", "resize2_range"):
            value = getattr(self, key)
            if value is not None and value[1] > MAX_RESIZE:
                raise ConfigError(
                    f"degradation.{key}: resize factors must be at most {MAX_RESIZE}, got {value}"
                )
        for key in ("jpeg_quality", "final_jpeg_quality"):
            value = getattr(self, key)
            if value is not None and not 1 <= value[0] <= value[1] <= 100:
                raise ConfigError(f"degradation.{key}: qualities must lie in 1..100, got {value}")


# Real-ESRGAN's published x4 ranges (train_realesrnet_x4plus.yml), for reference and experiments.
_REALESRGAN: dict[str, Any] = {
    "clean_prob": 0.0,
    "kernel_size": [7, 21],
    "kernel_probs": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "sinc_prob": 0.1,
    "beta_generalized": [0.5, 4.0],
    "beta_plateau": [1.0, 2.0],
    "blur_prob": 1.0,
    "blur_sigma": [0.2, 3.0],
    "resize_probs": [0.2, 0.7, 0.1],
    "resize_range": [0.15, 1.5],
    "noise_prob": 1.0,
    "gaussian_noise_prob": 0.5,
    "noise_sigma": [1.0, 30.0],
    "poisson_scale": [0.05, 3.0],
    "gray_noise_prob": 0.4,
    "jpeg_prob": 1.0,
    "jpeg_quality": [30.0, 95.0],
    "second_prob": 1.0,
    "blur2_prob": 0.8,
    "blur2_sigma": [0.2, 1.5],
    "resize2_probs": [0.3, 0.4, 0.3],
    "resize2_range": [0.3, 1.2],
    "noise2_prob": 1.0,
    "noise2_sigma": [1.0, 25.0],
    "poisson2_scale": [0.05, 2.5],
    "final_sinc_prob": 0.8,
    "final_jpeg_prob": 1.0,
    "final_jpeg_quality": [30.0, 95.0],
}

# The shipped general models' recipe: the same stages at the strength of ordinary photographs (camera
# noise up to sigma 15, JPEG 40-95, mild blur and resampling) so that a 16-channel network spends its
# capacity on what users feed it, and 15% clean patches so that clean inputs keep most of their gain.
_GENERAL: dict[str, Any] = {
    **_REALESRGAN,
    "clean_prob": 0.15,
    "kernel_size": [7, 15],
    "sinc_prob": 0.05,
    "blur_prob": 0.6,
    "blur_sigma": [0.2, 1.5],
    "resize_probs": [0.2, 0.4, 0.4],
    "resize_range": [0.5, 1.5],
    "noise_prob": 0.7,
    "noise_sigma": [1.0, 15.0],
    "poisson_scale": [0.05, 1.5],
    "jpeg_prob": 0.5,
    "jpeg_quality": [40.0, 95.0],
    "second_prob": 0.3,
    "blur2_prob": 0.5,
    "blur2_sigma": [0.2, 1.0],
    "resize2_probs": [0.2, 0.3, 0.5],
    "resize2_range": [0.7, 1.2],
    "noise2_prob": 0.5,
    "noise2_sigma": [1.0, 8.0],
    "poisson2_scale": [0.05, 0.8],
    "final_sinc_prob": 0.3,
    "final_jpeg_prob": 0.8,
    "final_jpeg_quality": [40.0, 95.0],
}

PRESETS: dict[str, dict[str, Any]] = {
    "none": {**_REALESRGAN, "clean_prob": 1.0},
    "general": _GENERAL,
    "realesrgan": _REALESRGAN,
}


# ------------------------------------------------------------------------------------------------ kernels


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    return np.meshgrid(r, r, indexing="xy")


def blur_kernel(
    size: int,
    sigma_x: float,
    sigma_y: float,
    theta: float = 0.0,
    *,
    kind: str = "gaussian",
    beta: float = 1.0,
) -> np.ndarray:
    """A (size, size) float32 kernel summing to 1: an anisotropic Gaussian rotated by `theta`
    (`kind="gaussian"`), its generalized form exp(-q^beta / 2) (`"generalized"`, beta 1 = Gaussian) or
    the plateau 1 / (1 + q^beta) (`"plateau"`), with q the squared Mahalanobis distance."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {size}")
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"sigmas must be positive, got {sigma_x}, {sigma_y}")
    x, y = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * x + s * y, -s * x + c * y  # coordinates along the rotated axes
    q = (u / sigma_x) ** 2 + (v / sigma_y) ** 2
    if kind == "gaussian":
        k = np.exp(-0.5 * q)
    elif kind == "generalized":
        k = np.exp(-0.5 * q**beta)
    elif kind == "plateau":
        k = 1.0 / (1.0 + q**beta)
    else:
        raise ValueError(f"unknown kernel kind '{kind}'")
    return (k / k.sum()).astype(np.float32)


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """A (size, size) float32 circular low-pass (2-D sinc, the ringing of sharp resampling filters) with
    the cutoff frequency `cutoff` in radians per pixel (pi = no filtering), summing to 1."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {size}")
    x, y = _grid(size)
    r = np.hypot(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
    k[r == 0] = cutoff**2 / (4 * np.pi)
    return (k / k.sum()).astype(np.float32)


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def random_kernel(rng: np.random.Generator, recipe: Degradation, sigma: Range) -> np.ndarray:
    """One random blur kernel of the recipe: sinc with `sinc_prob`, else a kernel type by `kernel_probs`."""
    low, high = (int(v) for v in recipe.kernel_size)
    size = int(rng.choice(np.arange(low | 1, high + 1, 2)))
    if rng.random() < recipe.sinc_prob:
        cutoff = rng.uniform(np.pi / 3, np.pi) if size < 13 else rng.uniform(np.pi / 5, np.pi)
        return sinc_kernel(size, float(cutoff))
    kind = KERNEL_TYPES[int(rng.choice(len(KERNEL_TYPES), p=recipe.kernel_probs))]
    sx = _uniform(rng, sigma)
    if kind.endswith("_iso"):
        sy, theta = sx, 0.0
    else:
        sy, theta = _uniform(rng, sigma), float(rng.uniform(-np.pi, np.pi))
    if kind.startswith("generalized"):
        return blur_kernel(
            size, sx, sy, theta, kind="generalized", beta=_uniform(rng, recipe.beta_generalized)
        )
    if kind.startswith("plateau"):
        return blur_kernel(size, sx, sy, theta, kind="plateau", beta=_uniform(rng, recipe.beta_plateau))
    return blur_kernel(size, sx, sy, theta)


# ---------------------------------------------------------------------------------------------------- ops


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel of (H, W, C) with `kernel`, borders reflected; same size (FFT, a few ms)."""
    pad = kernel.shape[0] // 2
    mode = "reflect" if min(img.shape[:2]) > pad else "edge"
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
    out = signal.fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1))
    return out.astype(np.float32)


def resize(img: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """(H, W, C) to (height, width, C) with torch's `area`, `bilinear` or `bicubic` (no antialias: the
    aliasing of quick downscalers is part of what real inputs show)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode '{mode}'; known: {', '.join(RESIZE_MODES)}")
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    kwargs = {} if mode == "area" else {"align_corners": False}
    y = F.interpolate(x, size=(max(1, height), max(1, width)), mode=mode, **kwargs)
    return y[0].numpy().transpose(1, 2, 0)


def add_gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator, *, gray: bool) -> np.ndarray:
    """Add N(0, sigma/255) noise, independent per channel or (`gray`) the same on all channels."""
    shape = (*img.shape[:2], 1) if gray else img.shape
    noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return img + noise


def add_poisson_noise(img: np.ndarray, scale: float, rng: np.random.Generator, *, gray: bool) -> np.ndarray:
    """Add shot noise: photon counts of 255 at full scale (std sqrt(x/255) at level x), times `scale`;
    `gray` draws it on the luminance and adds it to all channels. Drawn as a Gaussian with the Poisson's
    variance (numpy's Poisson sampler costs 10x more; the two differ only below a few photons)."""
    base = img.clip(0, 1)
    if gray:
        base = (base @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
    std = np.sqrt(base / np.float32(255.0))
    return img + rng.standard_normal(base.shape, dtype=np.float32) * std * np.float32(scale)


def jpeg_bytes(img: np.ndarray, quality: int) -> bytes:
    """Round to 8-bit and encode as JPEG at `quality` (Pillow, 4:2:0 chroma as most encoders): the file."""
    buffer = io.BytesIO()
    Image.fromarray(to_integers(img, 8)).save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """`jpeg_bytes` decoded: the image as a JPEG file at `quality` holds it."""
    with Image.open(io.BytesIO(jpeg_bytes(img, quality))) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class _Pass:
    blur_prob: float
    blur_sigma: Range
    resize_probs: Range
    resize_range: Range
    noise_prob: float
    noise_sigma: Range
    poisson_scale: Range
    jpeg_prob: float
    jpeg_quality: Range = field(default_factory=lambda: [95.0, 95.0])


def _passes(recipe: Degradation) -> tuple[_Pass, _Pass]:
    first = _Pass(
        recipe.blur_prob,
        recipe.blur_sigma,
        recipe.resize_probs,
        recipe.resize_range,
        recipe.noise_prob,
        recipe.noise_sigma,
        recipe.poisson_scale,
        recipe.jpeg_prob,
        recipe.jpeg_quality,
    )
    # the second pass's JPEG is the final stage's (Real-ESRGAN has no separate one)
    second = _Pass(
        recipe.blur2_prob,
        recipe.blur2_sigma,
        recipe.resize2_probs,
        recipe.resize2_range,
        recipe.noise2_prob,
        recipe.noise2_sigma,
        recipe.poisson2_scale,
        0.0,
    )
    return first, second


def stage_rng(seed: Sequence[int], stage: str) -> np.random.Generator:
    """The generator of one stage of one sample: seeded from the sample's `seed` and the stage's name, so
    a draw added to or removed from one stage changes that stage's choices only, never the others'."""
    return np.random.default_rng([*(int(s) for s in seed), zlib.crc32(stage.encode())])


def _noise(img: np.ndarray, rng: np.random.Generator, recipe: Degradation, stage: _Pass) -> np.ndarray:
    gaussian = rng.random() < recipe.gaussian_noise_prob
    gray = bool(rng.random() < recipe.gray_noise_prob)
    if gaussian:
        return add_gaussian_noise(img, _uniform(rng, stage.noise_sigma), rng, gray=gray)
    return add_poisson_noise(img, _uniform(rng, stage.poisson_scale), rng, gray=gray)


def _apply_pass(
    img: np.ndarray,
    seed: Sequence[int],
    name: str,
    recipe: Degradation,
    stage: _Pass,
    target: tuple[int, int],
) -> np.ndarray:
    rng = stage_rng(seed, f"{name}.blur")
    if rng.random() < stage.blur_prob:
        img = blur(img, random_kernel(rng, recipe, stage.blur_sigma))
    rng = stage_rng(seed, f"{name}.resize")
    direction = int(rng.choice(3, p=stage.resize_probs))  # up, down, keep
    low, high = stage.resize_range
    factor = (rng.uniform(1.0, max(1.0, high)), rng.uniform(min(1.0, low), 1.0), 1.0)[direction]
    mode = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]
    if factor != 1.0:
        # sizes relative to the target keep the last resize's factor within the asked range
        height = max(target[0] // 4, round(img.shape[0] * factor))
        width = max(target[1] // 4, round(img.shape[1] * factor))
        img = resize(img, height, width, mode)
    rng = stage_rng(seed, f"{name}.noise")
    if rng.random() < stage.noise_prob:
        img = _noise(img, rng, recipe, stage)
    img = img.clip(0.0, 1.0)
    rng = stage_rng(seed, f"{name}.jpeg")
    if rng.random() < stage.jpeg_prob:
        img = jpeg(img, int(round(_uniform(rng, stage.jpeg_quality))))
    return img


def degrade(hr: np.ndarray, scale: int, recipe: Degradation, seed: Sequence[int]) -> np.ndarray:
    """The degraded LR (H/scale, W/scale, 3) uint8 of an HR (H, W, 3) uint8/uint16 patch: a pure function
    of the patch, the recipe and `seed` (the patch's key).

    Each stage (`first.blur`, `first.resize`, `first.noise`, `first.jpeg`, `second`, the same four of
    the second pass, `final.resize`, `final.sinc`, `final.jpeg`, `final.order`) draws from its own
    generator (`stage_rng`). H and W must be multiples of `scale`. `recipe` must be resolved; its
    `clean_prob` is the caller's business (the clean LR is the cached MATLAB bicubic one, see
    `repsr.data.datasets.TrainPatches`).
    """
    target = (hr.shape[0] // scale, hr.shape[1] // scale)
    img = hr.astype(np.float32) / np.float32(np.iinfo(hr.dtype).max)
    first, second = _passes(recipe)
    img = _apply_pass(img, seed, "first", recipe, first, target)
    if stage_rng(seed, "second").random() < recipe.second_prob:
        img = _apply_pass(img, seed, "second", recipe, second, target)
    mode = RESIZE_MODES[int(stage_rng(seed, "final.resize").integers(len(RESIZE_MODES)))]
    rng = stage_rng(seed, "final.sinc")
    sinc = sinc_kernel(int(rng.choice([7, 9, 11, 13])), float(rng.uniform(np.pi / 3, np.pi)))
    use_sinc = rng.random() < recipe.final_sinc_prob
    rng = stage_rng(seed, "final.jpeg")
    use_jpeg = rng.random() < recipe.final_jpeg_prob
    quality = int(round(_uniform(rng, recipe.final_jpeg_quality)))
    jpeg_first = stage_rng(seed, "final.order").random() < 0.5

    def to_target(x: np.ndarray) -> np.ndarray:
        x = resize(x, target[0], target[1], mode) if x.shape[:2] != target else x
        return blur(x, sinc) if use_sinc else x

    if jpeg_first and use_jpeg:
        img = to_target(jpeg(img.clip(0.0, 1.0), quality))
    else:
        img = to_target(img)
        if use_jpeg:
            img = jpeg(img.clip(0.0, 1.0), quality)
    return to_integers(img, 8)
