"""The training losses, as tables: a new loss is one entry (plus a test). This module knows nothing of
the config; `training.builders` builds what `train.loss` / `train.losses` name.

- `LOSSES` (`l1`, `l2`, `charbonnier`): pixel losses, `loss(sr, hr) -> scalar`; `train.loss` names one.
- `TERMS`: the terms `train.losses: [{type, weight, options}]` combines into a weighted sum, each a
  function of one `LossInputs` (the generator's output, the HR patch and, when the term needs them, the
  EMA generator's output and the discriminator's logits and features). The pixel losses are terms too;
  the others need no pretrained network (no ImageNet VGG can be downloaded here):
  - `fft`: L1 between the amplitude spectra (orthonormal 2-D FFT) of SR and HR: penalises missing or
    extra energy per spatial frequency, blind to phase, so it asks for detail without asking for the
    exact pixels (the hedge that blurs L1-trained outputs);
  - `focal`: the focal frequency loss (Jiang et al., ICCV 2021): squared complex spectrum error, each
    frequency weighted by its own (detached, normalised) error to the power `alpha`: the hard
    frequencies (usually the high ones) dominate;
  - `ldl`: LDL's artifact loss (Liang et al., CVPR 2022): L1 of SR vs HR weighted by a map of the
    local variance of the residual |HR - SR| (`kernel` x `kernel`, times the patch's variance to the
    1/5), kept only where the generator is worse than its EMA (the stable model): it punishes the
    noisy, high-variance residual typical of GAN artifacts, not texture the EMA has too; the map is
    detached (a weight, not a target);
  - `phase`: the residual's pixel-shuffle pattern: the mean of SR - HR at each of the `period` x
    `period` sub-pixel phases of each patch (`period` = the scale), less their mean, in L1: a fixed
    pattern of the output grid (what a GAN-tuned pixel-shuffle network paints on ramps, the gate's
    phase bias) costs, texture that is not locked to the grid does not;
  - `gan`: the generator's adversarial loss on the discriminator's logits of SR (`adversarial`); with
    `texture` (levels of 0..255) each logit's loss is weighted by how textured the HR is under it (the
    RMS of its high-pass up to `texture` levels -> 0..1, `texture_weights`): flat colours and ramps get
    no adversarial push at all, only the pixel terms, so the generator is not paid to paint them;
  - `feature`: feature matching (Salimans et al. 2016; pix2pixHD): L1 between the discriminator's
    feature maps of SR and of HR, averaged over layers: a perceptual loss from a network trained here.
- `generator_adversarial` / `discriminator_adversarial` with `ADVERSARIAL` kinds `vanilla` (BCE with
  logits, SRGAN/ESRGAN/Real-ESRGAN), `hinge` (SNGAN/BigGAN) and `lsgan` (least squares).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ADVERSARIAL",
    "LOSSES",
    "TERMS",
    "CharbonnierLoss",
    "LossInputs",
    "Term",
    "artifact_map",
    "texture_weights",
    "discriminator_adversarial",
    "feature_matching",
    "fft_amplitude_loss",
    "focal_frequency_loss",
    "generator_adversarial",
    "phase_pattern_loss",
    "ldl_loss",
]


class CharbonnierLoss(nn.Module):
    """mean(sqrt((sr - hr)^2 + eps^2)): a differentiable L1 (LapSRN, BasicSR's `CharbonnierLoss`)."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        return torch.sqrt((sr - hr) ** 2 + self.eps**2).mean()


LOSSES: dict[str, Callable[[], nn.Module]] = {
    "l1": nn.L1Loss,
    "l2": nn.MSELoss,
    "charbonnier": CharbonnierLoss,
}

ADVERSARIAL = ("vanilla", "hinge", "lsgan")


def generator_adversarial(fake: Tensor, kind: str, weights: Tensor | None = None) -> Tensor:
    """The generator's loss on the discriminator's logits of its output: it wants them judged real.
    `weights` (broadcastable to `fake`): a weight per logit, the mean of weight x loss is returned
    (without weights the plain mean, computed as it always was)."""
    if kind not in ADVERSARIAL:
        raise ValueError(f"unknown adversarial loss {kind!r}; known: {', '.join(ADVERSARIAL)}")
    reduction = "mean" if weights is None else "none"
    if kind == "vanilla":
        loss = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake), reduction=reduction)
    elif kind == "hinge":
        loss = -fake.mean() if weights is None else -fake
    else:
        loss = F.mse_loss(fake, torch.ones_like(fake), reduction=reduction)
    return loss if weights is None else (weights * loss).mean()


def texture_weights(hr: Tensor, logits: Tensor, texture: float) -> Tensor:
    """(N, 1, h, w) weights in 0..1 for `logits` (N, *, h, w): the RMS over 7 x 7 of the HR's high-pass
    (the channels' mean, in levels of 0..255, minus its 3 x 3 mean: zero on flats and linear ramps alike)
    divided by `texture` and clipped at 1, averaged over the HR pixels each logit covers."""
    gray = hr.detach().mean(dim=1, keepdim=True) * 255.0
    high = gray[..., 1:-1, 1:-1] - F.avg_pool2d(gray, 3, stride=1)  # inside only: a ramp's border is exact
    high = F.pad(high, (1, 1, 1, 1), mode="replicate")
    rms = F.avg_pool2d(F.pad(high * high, (3, 3, 3, 3), mode="replicate"), 7, stride=1).sqrt()
    return F.adaptive_avg_pool2d((rms / texture).clamp(max=1.0), logits.shape[-2:])


def discriminator_adversarial(logits: Tensor, real: bool, kind: str) -> Tensor:
    """The discriminator's loss on logits of real (`real=True`) or generated images."""
    if kind == "vanilla":
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "hinge":
        return F.relu(1.0 - logits).mean() if real else F.relu(1.0 + logits).mean()
    if kind == "lsgan":
        return F.mse_loss(logits, torch.ones_like(logits) if real else torch.zeros_like(logits))
    raise ValueError(f"unknown adversarial loss {kind!r}; known: {', '.join(ADVERSARIAL)}")


def fft_amplitude_loss(sr: Tensor, hr: Tensor) -> Tensor:
    """Mean |(|F(sr)| - |F(hr)|)| over the orthonormal real 2-D spectrum of every channel."""
    return (torch.fft.rfft2(sr, norm="ortho").abs() - torch.fft.rfft2(hr, norm="ortho").abs()).abs().mean()


def focal_frequency_loss(sr: Tensor, hr: Tensor, alpha: float = 1.0) -> Tensor:
    """The focal frequency loss: mean of w * |F(sr) - F(hr)|^2, w = |F(sr) - F(hr)|^alpha scaled to a
    maximum of 1 per image and channel, detached."""
    distance = (torch.fft.fft2(sr, norm="ortho") - torch.fft.fft2(hr, norm="ortho")).abs() ** 2
    weight = distance.detach().sqrt() ** alpha
    weight = weight / weight.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return (weight * distance).mean()


def phase_pattern_loss(sr: Tensor, hr: Tensor, period: int) -> Tensor:
    """Mean |per-phase mean residual - its mean over phases| of (N, C, H, W) images, per patch and
    channel; H and W are cropped to multiples of `period`."""
    n, c, h, w = sr.shape
    h, w = h - h % period, w - w % period
    residual = (sr - hr)[..., :h, :w].reshape(n, c, h // period, period, w // period, period)
    phases = residual.mean(dim=(2, 4))  # (N, C, period, period)
    return (phases - phases.mean(dim=(2, 3), keepdim=True)).abs().mean()


def _local_variance(x: Tensor, kernel: int) -> Tensor:
    """Unbiased variance over each pixel's `kernel` x `kernel` window (reflect-padded borders)."""
    pad = kernel // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    mean = F.avg_pool2d(padded, kernel, stride=1)
    mean_sq = F.avg_pool2d(padded * padded, kernel, stride=1)
    n = kernel * kernel
    return ((mean_sq - mean * mean) * (n / (n - 1))).clamp_min(0)


def artifact_map(sr: Tensor, ema: Tensor, hr: Tensor, kernel: int = 7) -> Tensor:
    """LDL's refined artifact map (N, 1, H, W): local variance of the residual |hr - sr| (summed over
    channels) times its patch variance^(1/5), zero where `sr` is closer to `hr` than the EMA's `ema`."""
    residual = (hr - sr).abs().sum(dim=1, keepdim=True)
    residual_ema = (hr - ema).abs().sum(dim=1, keepdim=True)
    patch = residual.var(dim=(1, 2, 3), keepdim=True) ** 0.2
    weight = patch * _local_variance(residual, kernel)
    return torch.where(residual < residual_ema, torch.zeros_like(weight), weight)


def ldl_loss(sr: Tensor, ema: Tensor, hr: Tensor, kernel: int = 7) -> Tensor:
    """L1 of `sr` vs `hr` weighted by the (detached) artifact map of `sr` against the EMA's `ema`."""
    weight = artifact_map(sr.detach(), ema, hr, kernel)
    return F.l1_loss(weight * sr, weight * hr)


def feature_matching(fake: list[Tensor], real: list[Tensor]) -> Tensor:
    """Mean over layers of the L1 between the discriminator's feature maps of SR and (detached) HR."""
    return torch.stack([F.l1_loss(f, r.detach()) for f, r in zip(fake, real, strict=True)]).mean()


@dataclass
class LossInputs:
    """What the loss terms of one generator step may look at."""

    sr: Tensor  # the generator's output (float32, with gradient)
    hr: Tensor
    ema: Tensor | None = None  # the EMA generator's output on the same LR (no gradient): `ldl`
    fake: Tensor | None = None  # the (frozen) discriminator's logits of `sr`: `gan`
    fake_features: list[Tensor] | None = None  # its feature maps of `sr`: `feature`
    real_features: list[Tensor] | None = None  # its feature maps of `hr` (no gradient): `feature`
    adversarial: str = "vanilla"  # the adversarial loss kind (`ADVERSARIAL`)


@dataclass(frozen=True)
class Term:
    """A loss term: `make(**options)` returns `fn(LossInputs) -> scalar`; `needs` names what the step must
    compute for it (`ema`, `discriminator`, `features`); `options` are the option names it takes."""

    make: Callable[..., Callable[[LossInputs], Tensor]]
    needs: frozenset[str] = frozenset()
    options: tuple[str, ...] = ()


def _pixel(name: str) -> Term:
    def make(**options: Any) -> Callable[[LossInputs], Tensor]:
        loss = LOSSES[name](**options)
        return lambda x: loss(x.sr, x.hr)

    return Term(make, options=("eps",) if name == "charbonnier" else ())


def _needs(value: Tensor | list[Tensor] | None, term: str) -> Any:
    if value is None:
        raise ValueError(f"loss term {term!r}: the step did not compute its inputs")
    return value


def _adversarial(x: LossInputs, texture: float | None) -> Tensor:
    fake = _needs(x.fake, "gan")
    weights = None if texture is None else texture_weights(x.hr, fake, texture)
    return generator_adversarial(fake, x.adversarial, weights)


TERMS: dict[str, Term] = {
    **{name: _pixel(name) for name in LOSSES},
    "fft": Term(lambda: lambda x: fft_amplitude_loss(x.sr, x.hr)),
    "focal": Term(
        lambda alpha=1.0: lambda x: focal_frequency_loss(x.sr, x.hr, float(alpha)), options=("alpha",)
    ),
    "ldl": Term(
        lambda kernel=7: lambda x: ldl_loss(x.sr, _needs(x.ema, "ldl"), x.hr, int(kernel)),
        needs=frozenset({"ema"}),
        options=("kernel",),
    ),
    "phase": Term(lambda period: lambda x: phase_pattern_loss(x.sr, x.hr, int(period)), options=("period",)),
    "gan": Term(
        lambda texture=None: lambda x: _adversarial(x, None if texture is None else float(texture)),
        needs=frozenset({"discriminator"}),
        options=("texture",),
    ),
    "feature": Term(
        lambda: (
            lambda x: feature_matching(_needs(x.fake_features, "feature"), _needs(x.real_features, "feature"))
        ),
        needs=frozenset({"discriminator", "features"}),
    ),
}
