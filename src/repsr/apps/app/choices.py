"""Which model the page's choices pick: what is upscaled (photograph, clean render, video) and the scale.

The same rule as the README's "Which model": the general models for anything that was ever a JPEG or
came from a camera (photographs and video frames), the clean `repsr-m4c16-*` models for clean renders.
`repsr upscale` uses `DEFAULT_MODEL` (the general x4) when no `-m` is given; the page's default
(photograph, x4) is that model.
"""

from __future__ import annotations

from dataclasses import dataclass

from repsr.models.pretrained import DEFAULT_MODEL, PRETRAINED, shipped
from repsr.util.errors import ConfigError

KINDS = ("photo", "clean", "video")
SCALES = (2, 3, 4)
# kind -> the shipped model family; the scale completes the name
FAMILY = {
    "photo": "repsr-general-m4c16-x{scale}",
    "video": "repsr-general-m4c16-x{scale}",
    "clean": "repsr-m4c16-x{scale}",
}


def pick_model(kind: str, scale: int) -> str:
    """The shipped model's name for `kind` (photo, clean, video) at `scale` (2, 3, 4)."""
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if int(scale) not in SCALES:
        raise ConfigError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
    return FAMILY[kind].format(scale=int(scale))


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
