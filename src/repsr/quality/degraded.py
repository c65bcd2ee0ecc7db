"""The degraded benchmark: fixed, seeded degradation conditions of evaluation images.

Clean MATLAB-bicubic LR is the literature's protocol, not what users feed in. Each `Condition` makes LR
from an evaluation set's HR the way a real input could have been made (JPEG, camera noise, slight blur,
another downscaler), with noise seeded by the condition and the image name, so figures compare across
models and runs. `evaluate` then scores the model and bicubic upscaling of the same degraded LR
(`repsr eval MODEL --degrade`); `format_gains` tabulates the gain over bicubic per condition, with the
worst image beside the mean.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from repsr.data import degradations as dg
from repsr.data.datasets import EvalPair
from repsr.image.pixels import quantize, to_integers
from repsr.image.resize import bicubic_lr
from repsr.quality.evaluation import EvalResults, table_lines
from repsr.util.errors import ConfigError

__all__ = [
    "CONDITIONS",
    "Condition",
    "degrade_lr",
    "degraded_file",
    "degraded_sets",
    "format_gains",
    "select_conditions",
]


@dataclass(frozen=True)
class Condition:
    """How one condition makes LR from HR: optional blur, a downscaler, noise, JPEG, in that order."""

    name: str
    description: str
    blur: float = 0.0  # Gaussian blur of the HR before downscaling, sigma in LR pixels (0 = none)
    downscaler: str = "matlab-bicubic"  # or one of repsr.data.degradations.RESIZE_MODES (no antialias)
    noise: float = 0.0  # Gaussian noise sigma in 0..255 levels
    gray: bool = False  # the same noise on all channels (luminance noise) instead of per channel
    jpeg: int | None = None  # JPEG quality, None = none


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("clean", "MATLAB bicubic (the literature's protocol)"),
        Condition("jpeg70", "MATLAB bicubic, JPEG quality 70", jpeg=70),
        Condition("jpeg50", "MATLAB bicubic, JPEG quality 50", jpeg=50),
        Condition("noise6", "MATLAB bicubic, colour Gaussian noise sigma 6", noise=6.0),
        Condition(
            "graynoise5-jpeg75", "MATLAB bicubic, gray noise sigma 5, JPEG 75", noise=5.0, gray=True, jpeg=75
        ),
        Condition("blur-jpeg75", "Gaussian blur sigma 0.6 LR px, MATLAB bicubic, JPEG 75", blur=0.6, jpeg=75),
        Condition(
            "bilinear-noise4-jpeg85",
            "bilinear downscale, gray noise sigma 4, JPEG 85",
            downscaler="bilinear",
            noise=4.0,
            gray=True,
            jpeg=85,
        ),
    )
}


def select_conditions(names: Sequence[str] | None) -> list[Condition]:
    """The named conditions (all of them for None or an empty list); ConfigError names an unknown one."""
    if not names:
        return list(CONDITIONS.values())
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise ConfigError(f"--degrade: unknown condition '{unknown[0]}'; known: {', '.join(CONDITIONS)}")
    return [CONDITIONS[n] for n in names]


def degraded_file(hr: Tensor, scale: int, condition: Condition, seed: Sequence[int]) -> tuple[bytes, str]:
    """(the bytes, the suffix) of the file whose decoded pixels are `degrade_lr`'s LR (RGB): the JPEG the
    condition's last stage writes, or a PNG; what `repsr upscale` is given in a benchmark of files."""
    img = _before_jpeg(hr, scale, condition, seed)
    if condition.jpeg is not None:
        return dg.jpeg_bytes(img, condition.jpeg), ".jpg"
    buffer = io.BytesIO()
    Image.fromarray(to_integers(np.asarray(img, dtype=np.float64), 8)).save(buffer, "PNG")
    return buffer.getvalue(), ".png"


def degrade_lr(hr: Tensor, scale: int, condition: Condition, seed: Sequence[int]) -> Tensor:
    """The condition's LR of `hr` (C, H, W) in [0, 1] with H, W multiples of `scale`: (C, H/s, W/s) float32
    on 8-bit levels, as a decoded file would be. Noise comes from `numpy.random.default_rng(seed)`."""
    img = _before_jpeg(hr, scale, condition, seed)
    if condition.jpeg is not None:
        img = dg.jpeg(img, condition.jpeg)
    lr = torch.from_numpy(quantize(np.asarray(img, dtype=np.float64), 8)).float()
    lr = lr.permute(2, 0, 1).contiguous()
    return lr[:1] if hr.shape[0] == 1 else lr


def _before_jpeg(hr: Tensor, scale: int, condition: Condition, seed: Sequence[int]) -> np.ndarray:
    """(H/s, W/s, 3) float32 in [0, 1]: blur, downscaler and noise of the condition, before its JPEG."""
    if hr.shape[0] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {hr.shape[0]}")
    rgb = hr.expand(3, -1, -1) if hr.shape[0] == 1 else hr
    height, width = rgb.shape[-2] // scale, rgb.shape[-1] // scale
    img = np.ascontiguousarray(rgb.permute(1, 2, 0).float().numpy())
    if condition.blur > 0:
        sigma = condition.blur * scale
        size = 2 * int(np.ceil(3 * sigma)) + 1
        img = dg.blur(img, dg.blur_kernel(size, sigma, sigma))
    if condition.downscaler == "matlab-bicubic":  # the 8-bit LR file the noise is added to
        img = bicubic_lr(torch.from_numpy(img).permute(2, 0, 1), scale, 8).permute(1, 2, 0).numpy()
    else:
        img = quantize(dg.resize(img, height, width, condition.downscaler), 8)
    if condition.noise > 0:
        img = dg.add_gaussian_noise(
            img.astype(np.float32), condition.noise, np.random.default_rng(seed), gray=condition.gray
        )
    return np.clip(img, 0, 1)


def degraded_sets(
    datasets: Mapping[str, Iterable[Any]], conditions: Sequence[Condition], scale: int
) -> dict[str, list[EvalPair]]:
    """`{"SET/CONDITION": pairs}` for every dataset and condition: the HR of each pair with the
    condition's LR (seeded by the condition's index and the image's name)."""
    out: dict[str, list[EvalPair]] = {}
    for set_name, pairs in datasets.items():
        hrs = [(p.name, p.hr) for p in pairs]
        for condition in conditions:
            index = list(CONDITIONS).index(condition.name)
            out[f"{set_name}/{condition.name}"] = [
                EvalPair(name, degrade_lr(hr, scale, condition, (index, zlib.crc32(name.encode()))), hr)
                for name, hr in hrs
            ]
    return out


def format_gains(results: EvalResults) -> str:
    """One row per dataset/condition: model and bicubic PSNR/SSIM, the mean gain and the worst image's."""
    header = ["set/condition", results.model, "bicubic", "gain (dB)", "worst image"]
    rows = [header]
    for d in results.datasets:
        gains = [(i.psnr - i.bicubic_psnr, i.name) for i in d.images]
        worst = min(gains)
        rows.append(
            [
                d.name,
                f"{d.mean('psnr'):.2f} / {d.mean('ssim'):.4f}",
                f"{d.mean('bicubic_psnr'):.2f} / {d.mean('bicubic_ssim'):.4f}",
                f"{d.mean('psnr') - d.mean('bicubic_psnr'):+.2f}",
                f"{worst[0]:+.2f} ({worst[1]})",
            ]
        )
    return "\n".join(table_lines(results, rows))
