"""Discriminators for GAN training of the SR networks: a U-Net and a PatchGAN, both with spectral norm.

A discriminator only exists during training (it is never deployed), so it is free to be any network; it
is sized here for CPU training:

- `UNetDiscriminator` follows the design of Real-ESRGAN's `UNetDiscriminatorSN` (three stride-2 4x4
  convolutions down, bilinear upsampling with skip connections back up, two more convolutions and a
  1-channel output, spectral normalization on every convolution but the first and the last): one
  real/fake logit per pixel, so it judges local texture and global structure at once. Real-ESRGAN uses
  64 base channels; `channels` sets the width (16-32 for the CPU; the cost grows with its square).
- `PatchDiscriminator` is pix2pix's PatchGAN: stride-2 4x4 convolutions to a coarse map of logits, each
  judging one receptive field (70x70 pixels with 3 downsamplings), cheaper still.

Both return logits (no sigmoid: the losses take logits) and, with `features=True`, the intermediate
feature maps, which the feature-matching loss (`training.losses`) compares between real and generated
images. `build_discriminator(kind, ...)` is the one constructor; `DISCRIMINATORS` names the kinds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["DISCRIMINATORS", "PatchDiscriminator", "UNetDiscriminator", "build_discriminator"]


def _sn(conv: nn.Conv2d, enabled: bool) -> nn.Module:
    return spectral_norm(conv) if enabled else conv


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, negative_slope=0.2)


class UNetDiscriminator(nn.Module):
    """A U-Net discriminator with spectral normalization (Real-ESRGAN's design, `channels` wide)."""

    def __init__(self, in_channels: int = 3, channels: int = 32, spectral: bool = True) -> None:
        super().__init__()
        c = channels
        self.in_channels, self.channels = in_channels, channels
        self.conv0 = nn.Conv2d(in_channels, c, 3, 1, 1)
        # downsampling: 4x4 stride 2, no bias (spectral norm bounds the weights; a bias would not be)
        self.conv1 = _sn(nn.Conv2d(c, c * 2, 4, 2, 1, bias=False), spectral)
        self.conv2 = _sn(nn.Conv2d(c * 2, c * 4, 4, 2, 1, bias=False), spectral)
        self.conv3 = _sn(nn.Conv2d(c * 4, c * 8, 4, 2, 1, bias=False), spectral)
        # upsampling: bilinear x2, then a 3x3, plus the skip of the same resolution
        self.conv4 = _sn(nn.Conv2d(c * 8, c * 4, 3, 1, 1, bias=False), spectral)
        self.conv5 = _sn(nn.Conv2d(c * 4, c * 2, 3, 1, 1, bias=False), spectral)
        self.conv6 = _sn(nn.Conv2d(c * 2, c, 3, 1, 1, bias=False), spectral)
        self.conv7 = _sn(nn.Conv2d(c, c, 3, 1, 1, bias=False), spectral)
        self.conv8 = _sn(nn.Conv2d(c, c, 3, 1, 1, bias=False), spectral)
        self.conv9 = nn.Conv2d(c, 1, 3, 1, 1)

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Per-pixel logits (N, 1, H, W); with `features`, also the feature maps of every level.

        H and W must be multiples of 8 (three stride-2 levels)."""
        x0 = _act(self.conv0(x))
        x1 = _act(self.conv1(x0))
        x2 = _act(self.conv2(x1))
        x3 = _act(self.conv3(x2))
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
        x4 = _act(self.conv4(up(x3))) + x2
        x5 = _act(self.conv5(up(x4))) + x1
        x6 = _act(self.conv6(up(x5))) + x0
        out = _act(self.conv7(x6))
        out = _act(self.conv8(out))
        logits = self.conv9(out)
        return (logits, [x1, x2, x3, x4, x5, x6]) if features else logits


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN: 4x4 convolutions (three of stride 2) to a map of patch logits."""

    def __init__(self, in_channels: int = 3, channels: int = 32, spectral: bool = True) -> None:
        super().__init__()
        c = channels
        self.in_channels, self.channels = in_channels, channels
        widths = [in_channels, c, c * 2, c * 4, c * 8]
        self.convs = nn.ModuleList(
            [nn.Conv2d(widths[0], widths[1], 4, 2, 1)]
            + [_sn(nn.Conv2d(widths[i], widths[i + 1], 4, 2 if i < 3 else 1, 1, bias=False), spectral)
               for i in range(1, 4)]
        )  # fmt: skip
        self.head = nn.Conv2d(c * 8, 1, 4, 1, 1)

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Patch logits (N, 1, H/8 - 1, W/8 - 1); with `features`, also every layer's feature map."""
        found = []
        for conv in self.convs:
            x = _act(conv(x))
            found.append(x)
        logits = self.head(x)
        return (logits, found) if features else logits


DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {"unet": UNetDiscriminator, "patch": PatchDiscriminator}


def build_discriminator(
    kind: str, in_channels: int = 3, channels: int = 32, spectral: bool = True
) -> nn.Module:
    """The discriminator `kind` names (`unet` or `patch`), `channels` wide, with or without spectral norm."""
    if kind not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator {kind!r}; known: {', '.join(DISCRIMINATORS)}")
    return DISCRIMINATORS[kind](in_channels=in_channels, channels=channels, spectral=spectral)
