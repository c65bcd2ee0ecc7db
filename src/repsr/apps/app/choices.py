"""Which model the page's choices pick: what is upscaled (photograph, clean render, video) and the scale.

The same rule as the README's "Which model": the general models for anything that was ever a JPEG or
came from a camera (photographs and video frames), the clean models for clean renders; photographs and
clean renders get the photo-size M10C32 where it ships (general x2; clean x2 and x4), video the M4C16
(real time on two cores). `repsr upscale` uses `DEFAULT_MODEL` (the general x4) when no `-m` is given; the
page's default (photograph, x4) is that model.
"""

from __future__ import annotations

from dataclasses import dataclass

from repsr.models.pretrained import DEFAULT_MODEL, DEFAULT_VIDEO_MODEL, PRETRAINED, shipped
from repsr.util.errors import ConfigError

KINDS = ("photo", "clean", "video")
SCALES = (2, 3, 4)
# kind -> scale -> the shipped model
PICKS = {
    "photo": {2: "repsr-general-m10c32-x2", 3: "repsr-general-m4c16-x3", 4: DEFAULT_MODEL},
    "video": {2: "repsr-general-m4c16-x2", 3: "repsr-general-m4c16-x3", 4: DEFAULT_VIDEO_MODEL},
    "clean": {2: "repsr-m10c32-x2", 3: "repsr-m4c16-x3", 4: "repsr-m10c32-x4"},
}


def pick_model(kind: str, scale: int) -> str:
    """The shipped model's name for `kind` (photo, clean, video) at `scale` (2, 3, 4)."""
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if int(scale) not in SCALES:
        raise ConfigError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
    return PICKS[kind][int(scale)]


@dataclass(frozen=True)
class ModelChoice:
    """One shipped model as the page lists it."""

    name: str
    scale: int
    summary: str
    denoise: bool  # has a detail partner, so the denoise slider applies
    denoise_default: float | None
    default: bool


def model_choices() -> list[ModelChoice]:
    """Every shipped model present in this installation, for the page's model list."""
    return [
        ModelChoice(
            name=entry.name,
            scale=entry.scale,
            summary=entry.summary,
            denoise=entry.denoise_partner is not None,
            denoise_default=entry.denoise_default if entry.denoise_partner else None,
            default=entry.name == DEFAULT_MODEL,
        )
        for entry in shipped()
    ]


def has_denoise(model: str) -> bool:
    """Whether `--denoise` applies to `model` (a shipped general model with a detail partner)."""
    entry = PRETRAINED.get(str(model).lower())
    return entry is not None and entry.denoise_partner is not None
