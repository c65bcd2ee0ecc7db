"""The artifact gate: simple hostile inputs every shipped model must pass.

A handful of photographs' mean PSNR hides artifacts that show at a glance on ordinary pictures (a
sub-pixel grid on saturated colours, a colour shift on flat fields). The gate runs a model on inputs that
make such failures measurable, each with a fixed limit:

- flat colour fields over a 5-level grid of the RGB cube (its saturated corners included): the output
  must be the input colour;
- smooth ramps (each channel, gray, dark and bright ramps, a hue sweep) against bicubic upscaling of the
  same ramp: no bias that depends on the pixel-shuffle phase, no overshoot beyond what bicubic shows;
- saturated and high-dynamic photographs (scikit-image's, shipped with it): the model must beat bicubic
  on each.

`run_gate(model)` returns a `GateReport` whose `failures` name the input and its figure; the limits are
the module constants below. `make test` runs it over every model in `repsr.models.pretrained`, and
`scripts/ship_model.py` runs it before a model is kept.
"""

from __future__ import annotations

import colorsys
import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from repsr.data.samples import sample_images
from repsr.image import io as rio
from repsr.image.color import rgb_to_y
from repsr.image.metrics import psnr
from repsr.image.pixels import round_levels
from repsr.image.resize import bicubic_lr, imresize

__all__ = [
    "FLAT_MAX_LEVELS",
    "GATE_PHOTOS",
    "PHASE_BIAS_MAX_LEVELS",
    "PHOTO_MIN_GAIN_DB",
    "RINGING_MARGIN_LEVELS",
    "Check",
    "GateReport",
    "flat_colour_checks",
    "photo_checks",
    "ramp_checks",
    "run_gate",
]

# A flat field must come out as itself: 2 of 255 levels is below what is visible on a flat area and above
# the rounding of bf16/int8 inference. The x3 model that prompted the gate deviated by 20.5 levels.
FLAT_MAX_LEVELS = 2.0
# A pixel-shuffle phase may not be brighter or darker on average than the others by more than 1 level on
# a smooth ramp: a 1-level periodic pattern is at the edge of visibility on a smooth area; the bad x3
# model showed -3.7..+3.0 levels per phase on a photograph.
PHASE_BIAS_MAX_LEVELS = 1.0
# Overshoot past the ramp's own range may exceed bicubic's (which itself rings a little) by at most this.
RINGING_MARGIN_LEVELS = 1.0
# On each photograph the model must beat bicubic: a model worse than interpolation has no reason to ship.
PHOTO_MIN_GAIN_DB = 0.0
# scikit-image's colour photographs with saturated colours or high dynamic range (none in the corpus).
GATE_PHOTOS: tuple[str, ...] = (
    "coffee.png",
    "astronaut.png",
    "chelsea.png",
    "motorcycle_left.png",
    "rocket.jpg",
)

_LEVELS = (0, 64, 128, 191, 255)
_FLAT_CORE = 12  # LR side of a flat field's checked core; the field adds the model's margin around it
_RAMP_SIDE = 48
_PHOTO_SIDE = 192  # HR crop side, a multiple of 2, 3 and 4


class Check(NamedTuple):
    """One measured input: its `figure` against `limit` (`passed` when figure <= limit, or >= for gains)."""

    kind: str
    input: str
    figure: float
    limit: float
    passed: bool

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.kind} {self.input}: {self.figure:.2f} (limit {self.limit:g}) {verdict}"


@dataclass
class GateReport:
    """Every check of one model; `passed` when all passed."""

    model: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def worst(self, kind: str) -> Check:
        """The check of this kind with the worst figure."""
        of_kind = [c for c in self.checks if c.kind == kind]
        if kind == "photo":
            return min(of_kind, key=lambda c: c.figure)
        return max(of_kind, key=lambda c: c.figure)

    def summary(self) -> str:
        """One line per kind (its worst input), then every failure."""
        kinds = dict.fromkeys(c.kind for c in self.checks)
        lines = [f"artifact gate for {self.model}: {'passed' if self.passed else 'FAILED'}"]
        lines += [f"  worst {self.worst(k).describe()}" for k in kinds]
        lines += [f"  {c.describe()}" for c in self.failures]
        return "\n".join(lines)


def _run(model: nn.Module, lr: Tensor) -> Tensor:
    """The model's output in 0..255 levels, float64, for a float32 batch in [0, 1]."""
    with torch.no_grad():
        return model(lr).clamp(0, 1).double() * 255.0


def _margin(model: nn.Module) -> int:
    """LR pixels at each border whose output sees the zero padding (one per 3x3 conv)."""
    return int(model.spec.num_blocks) + 2


def flat_colour_checks(model: nn.Module) -> list[Check]:
    """Max deviation (levels) from the input colour, away from the borders, for 125 colours."""
    colours = list(itertools.product(_LEVELS, repeat=model.spec.in_channels))
    levels = torch.tensor(colours, dtype=torch.float64)
    channels = model.spec.in_channels
    side = _FLAT_CORE + 2 * _margin(model)  # 24 for M4C16; deeper models see more padding
    lr = (levels / 255.0).float().view(-1, channels, 1, 1).expand(-1, channels, side, side)
    out = _run(model, lr.contiguous())
    inner = _margin(model) * model.spec.scale
    core = out[:, :, inner:-inner, inner:-inner]
    deviation = (core - levels.view(-1, channels, 1, 1)).abs().amax(dim=(1, 2, 3))
    return [
        Check("flat colour", str(colour), float(d), FLAT_MAX_LEVELS, float(d) <= FLAT_MAX_LEVELS)
        for colour, d in zip(colours, deviation.tolist(), strict=True)
    ]


def _ramps(channels: int) -> dict[str, np.ndarray]:
    """Named smooth test images (C, side, side) in 0..255, each a horizontal ramp of at most 64 levels
    over the side (under 1.4 levels per LR pixel, a sky's gradient, not an edge).

    Gray, dark and bright ramps; for RGB models also a ramp of each saturated primary up to full
    intensity (the other channels 0) and a hue sweep away from each of the six saturated hues.
    """
    t = np.broadcast_to(np.linspace(0.0, 1.0, _RAMP_SIDE), (_RAMP_SIDE, _RAMP_SIDE))
    gray = {"gray ramp": (96, 160), "dark ramp": (0, 32), "bright ramp": (223, 255)}
    ramps = {name: np.repeat((lo + (hi - lo) * t)[None], channels, axis=0) for name, (lo, hi) in gray.items()}
    if channels == 3:
        for c, name in enumerate(("red", "green", "blue")):
            ramp = np.zeros((3, _RAMP_SIDE, _RAMP_SIDE))
            ramp[c] = 191 + 64 * t
            ramps[f"{name} ramp"] = ramp
        for k, name in enumerate(("red", "yellow", "green", "cyan", "blue", "magenta")):
            start = np.array(colorsys.hsv_to_rgb(k / 6, 1.0, 1.0))
            end = np.array(colorsys.hsv_to_rgb(k / 6 + 1 / 24, 1.0, 1.0))  # 64 levels further along
            ramps[f"hue sweep from {name}"] = 255 * (start[:, None, None] + (end - start)[:, None, None] * t)
    return ramps


def _overshoot(img: Tensor, low: float, high: float) -> float:
    """How far (levels) `img` leaves the range [low, high]."""
    return max(float(img.max()) - high, low - float(img.min()), 0.0)


def ramp_checks(model: nn.Module) -> list[Check]:
    """Per ramp: the largest pixel-shuffle phase bias against bicubic, and overshoot beyond bicubic's."""
    scale = model.spec.scale
    checks: list[Check] = []
    for name, ramp in _ramps(model.spec.in_channels).items():
        lr = torch.from_numpy(round_levels(ramp) / 255.0)[None]
        out = _run(model, lr.float())[0]
        bicubic = imresize(lr, scale).clamp(0, 1)[0] * 255.0
        inner = _margin(model) * scale
        diff = (out - bicubic)[:, inner:-inner, inner:-inner]
        phase_means = [
            diff[:, i::scale, j::scale].mean(dim=(1, 2)) for i, j in itertools.product(range(scale), repeat=2)
        ]
        per_phase = torch.stack(phase_means)  # (phases, C)
        bias = float((per_phase - per_phase.mean(dim=0)).abs().max())
        checks.append(Check("phase bias", name, bias, PHASE_BIAS_MAX_LEVELS, bias <= PHASE_BIAS_MAX_LEVELS))
        low, high = float(ramp.min()), float(ramp.max())
        core_out, core_bicubic = (img[:, inner:-inner, inner:-inner] for img in (out, bicubic))
        excess = _overshoot(core_out, low, high) - _overshoot(core_bicubic, low, high)
        checks.append(Check("ringing", name, excess, RINGING_MARGIN_LEVELS, excess <= RINGING_MARGIN_LEVELS))
    return checks


def _photo_pairs(scale: int) -> list[tuple[str, Tensor, Tensor]]:
    """(name, LR, HR) centre crops of the gate photographs, LR by MATLAB bicubic, 8-bit rounded."""
    folder = sample_images()["val"][0].parent  # scikit-image's data folder: all its photographs
    pairs = []
    for file in GATE_PHOTOS:
        rgb = rio.read_image(folder / file).rgb.double()
        h, w = rgb.shape[-2:]
        top, left = (h - _PHOTO_SIDE) // 2, (w - _PHOTO_SIDE) // 2
        hr = rgb[:, top : top + _PHOTO_SIDE, left : left + _PHOTO_SIDE]
        lr = bicubic_lr(hr, scale, 8)
        pairs.append((Path(file).stem, lr.float(), hr.float()))
    return pairs


def photo_checks(model: nn.Module) -> list[Check]:
    """Y-PSNR gain over bicubic on each gate photograph (border = scale)."""
    scale = model.spec.scale
    checks = []
    for name, lr, hr in _photo_pairs(scale):
        if model.spec.in_channels == 1:
            lr, hr = rgb_to_y(lr), rgb_to_y(hr)
        out = _run(model, lr[None])[0] / 255.0
        bicubic = imresize(lr.double(), scale).clamp(0, 1)
        gain = psnr(out, hr, scale) - psnr(bicubic, hr, scale)
        gain = gain if math.isfinite(gain) else 0.0
        checks.append(Check("photo", name, gain, PHOTO_MIN_GAIN_DB, gain > PHOTO_MIN_GAIN_DB))
    return checks


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode for the block, its own mode restored after (the gates leave a training
    network as they found it)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def run_gate(model: nn.Module) -> GateReport:
    """Every gate check of `model` (a plain or training-form network with `.spec`, run in eval mode)."""
    with evaluating(model):
        report = GateReport(model.spec.name)
        report.checks += flat_colour_checks(model)
        report.checks += ramp_checks(model)
        report.checks += photo_checks(model)
    return report
