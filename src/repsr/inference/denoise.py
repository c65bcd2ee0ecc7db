"""`AutoDenoise`: each image upscaled at the denoise strength its own degradation asks for.

`repsr upscale` with a general model runs this by default (`--denoise auto`): the file is measured
(`repsr.image.assess`: a JPEG's quality from its tables, noise, the 8x8 block grid), the measures give a
strength (`repsr.models.auto_denoise.auto_strength`), and the image goes through the general model
blended with its clean partner at that strength (`repsr.models.blend`). Clean input gets the detail end.

The first blend built (strength 1, the general model) decides precision and backend, timed when they are
`auto`; every other strength reuses that decision explicitly (the blends are the same network, so the
timing would be the same), and is built once and kept (at most `KEEP` of them at a time). So a reduced
precision that `auto` accepted for the general model is also used for the other blends without being
checked again on each (measured: on the held-out photographs the int8 clean end through `AutoDenoise`
scored as the clean model's own `auto` Upscaler did, docs/results/denoise-auto.md).

A video is one decision for the whole clip: it is a compressed stream, so it gets the denoising end
(strength 1), and `choose_video` says so.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from repsr.image.assess import assess
from repsr.inference.upscaler import Upscaler
from repsr.models.auto_denoise import DenoiseChoice, auto_strength
from repsr.models.blend import blend_models, default_strength, load_pair
from repsr.models.loader import load_model

__all__ = ["KEEP", "VIDEO_CHOICE", "AutoDenoise", "choose_for", "make_upscaler", "wants_auto"]

KEEP = 4  # blended networks kept ready at once (each strength is rounded to 0.1: at most 11 exist)
VIDEO_CHOICE = DenoiseChoice(1.0, None, "a video: compressed stream")  # one choice for a whole clip


def choose_for(array: np.ndarray, jpeg_quality: int | None = None) -> DenoiseChoice:
    """What `auto` chooses for an image's pixels (and a JPEG file's quality from its tables)."""
    return auto_strength(assess(array, jpeg_quality))


class AutoDenoise:
    """A general `model` and its detail partner (`detail`, default the shipped one), upscaling each image
    at its own strength. The keywords are `Upscaler`'s; `default` is the strength-1 `Upscaler`.

        auto = AutoDenoise("repsr-general-m4c16-x4", precision="auto")
        upscaler, choice = auto.choose(pixels.array, pixels.jpeg_quality)
        print(choice.describe())            # denoise auto 0 (clean input): not a JPEG, noise 0.6, ...
        repsr.inference.upscale_files(auto, ["photos/"], "out/")
    """

    def __init__(
        self,
        model: str | Path,
        *,
        detail: str | Path | None = None,
        device: str | torch.device = "auto",
        precision: str | None = None,
        tile: int | str | None = "auto",
        backend: str = "auto",
    ) -> None:
        self.model = str(model)
        self._ends = load_pair(model, detail)
        self._tile = tile
        self._ready: OrderedDict[float, Upscaler] = OrderedDict()
        self.default = Upscaler(
            blend_models(*self._ends, 1.0), device=device, precision=precision, tile=tile, backend=backend
        )
        self._ready[1.0] = self.default
        self.scale = self.default.scale
        self.precision, self.precision_reason = self.default.precision, self.default.precision_reason
        self.backend, self.device = self.default.backend, self.default.device

    def upscaler_at(self, strength: float) -> Upscaler:
        """The `Upscaler` of the blend at `strength`, with the default's precision and backend."""
        if strength not in self._ready:
            self._ready[strength] = Upscaler(
                blend_models(*self._ends, strength),
                device=self.device,
                precision=str(self.precision),
                tile=self._tile,
                backend=self.backend,
            )
            while len(self._ready) > KEEP:
                evicted = next(key for key in self._ready if key != 1.0)
                del self._ready[evicted]
        self._ready.move_to_end(strength)
        return self._ready[strength]

    def choose(self, array: np.ndarray, jpeg_quality: int | None = None) -> tuple[Upscaler, DenoiseChoice]:
        """The `Upscaler` for an image's pixels (and a JPEG file's quality), with what was chosen and why."""
        choice = choose_for(array, jpeg_quality)
        return self.upscaler_at(choice.strength), choice

    def choose_video(self) -> tuple[Upscaler, DenoiseChoice]:
        """A video's `Upscaler`: the denoising end (strength 1) for the compressed stream."""
        return self.default, VIDEO_CHOICE


def wants_auto(
    model: str | Path, denoise: str | float | None, denoise_from: str | Path | None = None
) -> bool:
    """Whether `repsr upscale -m model [--denoise ...]` runs `AutoDenoise`: `denoise="auto"`, or no strength
    given for a model with a detail partner (a shipped general model, or `denoise_from`)."""
    if denoise is None:
        return denoise_from is not None or default_strength(model) is not None
    return denoise == "auto"


def make_upscaler(
    model: str | Path,
    denoise: str | float | None = None,
    denoise_from: str | Path | None = None,
    **options,
) -> Upscaler | AutoDenoise:
    """What `repsr upscale` and `repsr app` run: an `AutoDenoise` where `wants_auto`, else an `Upscaler`
    of the model (blended at `denoise` when given; an .onnx file runs in ONNX Runtime). `options` are
    `Upscaler`'s keywords."""
    if wants_auto(model, denoise, denoise_from):
        return AutoDenoise(model, detail=denoise_from, **options)
    return Upscaler(load_model(model, denoise=denoise, denoise_from=denoise_from), **options)
