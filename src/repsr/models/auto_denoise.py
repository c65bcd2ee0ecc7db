"""`--denoise auto`: the denoise strength for one image, from what `repsr.image.assess` measured on it.

Each measure asks for a strength on its own through a linear ramp (0 up to where the input is plainly
clean, 1 from where it is plainly degraded), and the image gets the largest of the three, rounded to
`STEP`: a JPEG at quality 60 needs the denoising end whatever its noise reads (JPEG smooths noise away),
and a noisy PNG needs it whatever its tables say (it has none). Clean input gets the detail end, where
the clean model's gain is.

The ramps were fitted on the training corpus (`repsr corpus`: its training photographs only, never the
held-out ones), by `scripts/calibrate_denoise_auto.py`: crops degraded under many conditions, each
upscaled at every strength, the ramps chosen to maximise the mean gain over bicubic. The figures are in
`docs/results/denoise-auto.md`.
"""

from __future__ import annotations

from dataclasses import dataclass

from repsr.image.assess import Assessment

__all__ = ["BLOCKINESS_RAMP", "JPEG_RAMP", "NOISE_RAMP", "STEP", "DenoiseChoice", "Ramp", "auto_strength"]

STEP = 0.1  # strengths are rounded to this: one blended network per step at most


@dataclass(frozen=True)
class Ramp:
    """Strength 0 at `zero`, 1 at `full`, linear between and flat beyond (either may be the larger)."""

    zero: float
    full: float

    def __call__(self, value: float) -> float:
        if self.full == self.zero:
            return float(value >= self.full) if self.full > self.zero else float(value <= self.full)
        return min(1.0, max(0.0, (value - self.zero) / (self.full - self.zero)))


# Fitted by scripts/calibrate_denoise_auto.py on the corpus' training photographs (x2 and x4 together;
# docs/results/denoise-auto.md). The fit chose steps: missing gray noise of sigma 2 costs 1.1 dB at x2,
# giving a clean photograph the general model 0.6-0.8 dB, so the noise step sits low.
JPEG_RAMP = Ramp(zero=92.0, full=92.0)  # IJG quality from the file's tables: 92 and below -> 1
BLOCKINESS_RAMP = Ramp(zero=1.05, full=1.075)  # block-grid gradient ratio (1 = no grid)
NOISE_RAMP = Ramp(zero=1.25, full=1.5)  # sigma in 0..255 levels


@dataclass(frozen=True)
class DenoiseChoice:
    """The strength `auto` chose for one image, what it measured, and the measure that decided."""

    strength: float
    assessment: Assessment | None  # None: chosen without measuring (a video)
    reason: str

    def describe(self) -> str:
        """'denoise auto 1 (JPEG quality 50): JPEG quality 50, noise 0.2, blockiness 1.41'."""
        measured = f": {self.assessment.describe()}" if self.assessment is not None else ""
        return f"denoise auto {self.strength:g} ({self.reason}){measured}"


def auto_strength(
    assessment: Assessment,
    *,
    jpeg: Ramp = JPEG_RAMP,
    blockiness: Ramp = BLOCKINESS_RAMP,
    noise: Ramp = NOISE_RAMP,
    step: float = STEP,
) -> DenoiseChoice:
    """The strength for an image of this `assessment`: the largest any measure asks for, rounded to
    `step` (the ramps are keywords so the calibration can try others)."""
    asks = {}  # on a tie the first named decides: the file's tables, then the pixels' measures
    if assessment.jpeg_quality is not None:
        asks[f"JPEG quality {assessment.jpeg_quality}"] = jpeg(assessment.jpeg_quality)
    asks[f"blockiness {assessment.blockiness:.2f}"] = blockiness(assessment.blockiness)
    asks[f"noise {assessment.noise:.1f}"] = noise(assessment.noise)
    reason, wanted = max(asks.items(), key=lambda item: item[1])
    strength = min(1.0, round(round(wanted / step) * step, 6))
    if strength == 0.0:
        reason = "clean input"
    return DenoiseChoice(strength=strength, assessment=assessment, reason=reason)
