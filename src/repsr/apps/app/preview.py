"""The live preview: a crop of the user's picture through a model (at a denoise strength) or bicubic.

The crop runs through the same `Upscaler` and `upscale_pixels` as a batch run, so what the page shows
at 1:1 is what the run writes, except within the model's receptive radius of the crop's edge, where the
crop has no context. Upscalers are kept for the last few (model, strength) pairs.

Precision: the first preview of a model decides as the run does (`auto` times the candidates, a second
or two); a new denoise strength of that model then reuses that decision explicitly, so moving the slider
costs one blend (milliseconds) and the crop. One exception: where `auto` picked int8, previews run in
fp32 on the same backend, because int8 calibrates every new blend (1-2 s on 2 cores); the int8 run is
within the 16 levels of fp32 that `auto` checks before it picks int8 (`Preview.precision` says which ran).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import torch

from repsr.image.io import Pixels, to_pixels
from repsr.image.resize import imresize
from repsr.inference.upscaler import Upscaler, upscale_pixels
from repsr.models.loader import load_model
from repsr.util.errors import ConfigError

BICUBIC = "bicubic"
DEFAULT_CROP = 256  # LR pixels per side: a 256x256 crop of the picture, 1024x1024 out at x4
MAX_CROP = 512


class PreviewAbandoned(Exception):
    """The page no longer waits for this preview (it aborted the request): nothing was computed."""


@dataclass
class Preview:
    """A PNG of the upscaled crop, where the crop lies in the picture (LR pixels) and how long it took."""

    png: bytes
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the source picture
    scale: int
    seconds: float
    precision: str = ""  # what the crop ran in (fp32, bf16, int8, or "bicubic")


def crop_box(width: int, height: int, cx: float, cy: float, size: int) -> tuple[int, int, int, int]:
    """A `size` x `size` box centred at (cx, cy) (fractions of the picture), moved inside it."""
    size = int(size)
    if not 16 <= size <= MAX_CROP:
        raise ConfigError(f"crop size must be between 16 and {MAX_CROP} pixels, got {size}")
    if math.isnan(cx) or math.isnan(cy):  # NaN passes min/max and failed only in round(): a 500
        raise ConfigError(f"the crop centre must be fractions of the picture, got {cx}, {cy}")
    w, h = min(size, width), min(size, height)
    x0 = int(round(min(max(float(cx), 0.0), 1.0) * width - w / 2))
    y0 = int(round(min(max(float(cy), 0.0), 1.0) * height - h / 2))
    x0, y0 = min(max(x0, 0), width - w), min(max(y0, 0), height - h)
    return x0, y0, x0 + w, y0 + h


def png_bytes(array: np.ndarray, bit_depth: int) -> bytes:
    """An 8-bit PNG of an (H, W, C) integer array (16-bit shown in its top 8 bits), fast to encode."""
    from PIL import Image

    if bit_depth == 16:
        array = (array >> 8).astype(np.uint8)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[2]]
    image = Image.fromarray(np.ascontiguousarray(array if array.shape[2] > 1 else array[..., 0]), mode)
    buffer = BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def bicubic_pixels(pixels: Pixels, scale: int) -> np.ndarray:
    """MATLAB bicubic upscaling of integer pixels by `scale` (the reference the page compares with)."""
    levels = 255.0 if pixels.bit_depth == 8 else 65535.0
    image = torch.from_numpy(pixels.array.astype(np.float32) / levels).permute(2, 0, 1).double()
    up = imresize(image, scale).float().clamp_(0.0, 1.0)
    channels = up.shape[0]
    color = up[:1] if channels <= 2 else up[:3]
    alpha = up[channels - 1 :] if channels in (2, 4) else None
    return to_pixels(color, alpha, pixels.bit_depth, gray=channels <= 2)


class Previewer:
    """Upscales preview crops; one at a time (the machine's cores go to one crop), models cached."""

    def __init__(self, *, precision: str = "auto", backend: str = "auto", device: str = "cpu") -> None:
        self.precision, self.backend, self.device = precision, backend, device
        self._upscalers: OrderedDict[tuple[str, float | None], Upscaler] = OrderedDict()
        self._decided: dict[str, tuple[str, str]] = {}  # model -> (precision, backend) for new strengths
        self._lock = threading.RLock()  # held while a crop runs, and while a model is made ready

    def upscaler(self, model: str, denoise: float | None) -> Upscaler:
        """The `Upscaler` of `model` at `denoise` (None: the model's default), as a batch run loads it."""
        key = (model, denoise)
        with self._lock:
            cached = self._upscalers.get(key)
            if cached is not None:
                self._upscalers.move_to_end(key)
                return cached
            precision, backend = self._decided.get(model, (self.precision, self.backend))
            upscaler = Upscaler(
                load_model(model, denoise=denoise),
                device=self.device,
                precision=precision,
                tile="auto",
                backend=backend,
            )
            if model not in self._decided:
                chosen = "fp32" if upscaler.precision.value == "int8" else upscaler.precision.value
                self._decided[model] = (chosen, upscaler.backend)
            self._upscalers[key] = upscaler
            while len(self._upscalers) > 6:
                self._upscalers.popitem(last=False)
            return upscaler

    def preview(
        self,
        pixels: Pixels,
        model: str,
        denoise: float | None,
        *,
        cx: float = 0.5,
        cy: float = 0.5,
        size: int = DEFAULT_CROP,
        scale: int | None = None,
        wanted: Callable[[], bool] | None = None,
    ) -> Preview:
        """The crop of `pixels` centred at (cx, cy) upscaled by `model` (or `BICUBIC` at `scale`).

        `wanted` is asked once the crop's turn comes: a slider dragged on 2 cores queues previews that
        the page has aborted since, and each cost a whole crop before the one it waits for (8 aborted
        previews made the ninth take 4 s instead of 0.4 s); `PreviewAbandoned` when it says no."""
        height, width = pixels.array.shape[:2]
        box = crop_box(width, height, cx, cy, size)
        x0, y0, x1, y1 = box
        crop = Pixels(np.ascontiguousarray(pixels.array[y0:y1, x0:x1]), pixels.bit_depth)
        with self._lock:
            if wanted is not None and not wanted():
                raise PreviewAbandoned
            start = time.perf_counter()
            if model == BICUBIC:
                if scale not in (2, 3, 4):
                    raise ConfigError(f"bicubic preview: scale must be 2, 3 or 4, got {scale!r}")
                out, precision = bicubic_pixels(crop, scale), BICUBIC
            else:
                upscaler = self.upscaler(model, denoise)
                scale, precision = upscaler.scale, upscaler.precision.value
                out = upscale_pixels(upscaler, crop)
            png = png_bytes(out, crop.bit_depth)
            seconds = time.perf_counter() - start
        return Preview(png, box, int(scale), seconds, precision)
