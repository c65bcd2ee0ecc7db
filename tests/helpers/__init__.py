"""Helpers shared by the tests."""

from __future__ import annotations

import torch
from torch import nn

from repsr.arch.blocks import RepBN
from repsr.arch.network import PlainSR, build_model, reparameterize_model

# Tolerances by what is compared: max |a - b| of outputs of images in [0, 1].
# Bit-exact (0) only where the same kernel runs on the same data; oneDNN and the fused kernel choose other
# kernels (and so other summation orders) by CPU, tile shape and layout, so float32 results of different
# code paths or tilings agree to a few float32 rounding steps, not bits (AVX2: 1.5e-6 seen).
ACROSS_PATHS = 1e-5
# bf16 forms through different tilings or kernels: one rounding step of bf16 (8 significant bits) near 1.
BF16_RESOLUTION = 2.0**-7


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights AND random BN statistics/affine parameters.

    With PyTorch's default BN init (mean 0, var 1, gamma 1, beta 0) a wrong BN fold can still pass a
    merge check, so every merge test starts from this.
    """
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.copy_(torch.rand(parameter.shape, generator=generator) * 0.4 - 0.2)
    for module in model.modules():
        if isinstance(module, RepBN):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) * 1.5 + 0.25)
            module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
            module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)
    return model


def tiny_plain(scale: int = 2, in_channels: int = 3, num_blocks: int = 1) -> PlainSR:
    """A small deployed network with random BN statistics merged in (fast to run and to save)."""
    model = build_model("repsr", scale=scale, num_blocks=num_blocks, channels=4, in_channels=in_channels)
    return reparameterize_model(randomize(model, 0).eval())
