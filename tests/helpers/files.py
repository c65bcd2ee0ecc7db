"""Small models and image files for the file-fidelity tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from repsr import build_model, reparameterize_model
from repsr.inference import Upscaler
from tests.helpers import randomize


def tiny_plain(scale: int = 2):
    model = build_model("repsr", scale=scale, num_blocks=1, channels=4)
    return reparameterize_model(randomize(model, seed=1).eval())


def upscaler(scale: int = 2) -> Upscaler:
    return Upscaler(tiny_plain(scale), device="cpu", tile=None)


def noise(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def save(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path
