"""Merge math: small pure functions on (kernel, bias) pairs.

Every block builds its equivalent 3x3 convolution by composing these functions, in the spirit of
Diverse Branch Block's transforms. They are differentiable, so the same code serves the one-off
merge for deployment (`Block.fuse`) and the merged-form training after the BN switch.

Shapes: a kernel is (out, in, kh, kw), a bias is (out,). A depthwise kernel (out, 1, kh, kw) must be
expanded with `depthwise_to_full` before composing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KernelBias = tuple[Tensor, Tensor]


def fuse_bn(
    kernel: Tensor,
    bias: Tensor | None,
    mean: Tensor,
    var: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    eps: float,
) -> KernelBias:
    """Fold a BN that follows a convolution into the convolution.

    BN(conv(x)) = s * (W x + b - mean) + beta with s = gamma / sqrt(var + eps).
    """
    std = torch.sqrt(var + eps)
    scale = (gamma if gamma is not None else torch.ones_like(std)) / std
    shift = beta if beta is not None else torch.zeros_like(std)
    if bias is None:
        bias = torch.zeros_like(mean)
    return kernel * scale.reshape(-1, 1, 1, 1), scale * (bias - mean) + shift


def pad_to(kernel: Tensor, size: int = 3) -> Tensor:
    """Zero-pad a 1x1, 1x3 or 3x1 kernel to size x size, centred (same output with padding=size//2)."""
    kh, kw = kernel.shape[-2:]
    if (size - kh) % 2 or (size - kw) % 2 or kh > size or kw > size:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {size}x{size}")
    ph, pw = (size - kh) // 2, (size - kw) // 2
    return F.pad(kernel, (pw, pw, ph, ph))


def compose_kxk_1x1(first: KernelBias, second: KernelBias) -> KernelBias:
    """A kxk conv followed by a 1x1 conv is one kxk conv: W[o,i] = sum_m W1[o,m] Wk[m,i]."""
    (k_kxk, b_kxk), (k_1x1, b_1x1) = first, second
    w1 = k_1x1.flatten(1)  # (out, mid)
    kernel = torch.einsum("om,mihw->oihw", w1, k_kxk)
    return kernel, w1 @ b_kxk + b_1x1


def compose_1x1_kxk(first: KernelBias, second: KernelBias) -> KernelBias:
    """A 1x1 conv followed by a kxk conv is one kxk conv.

    Exact at the borders only if the kxk conv pads its input with the 1x1 stage's bias
    (what the 1x1 stage outputs for a zero input pixel); blocks use `pad_with_values` for that.
    """
    (k_1x1, b_1x1), (k_kxk, b_kxk) = first, second
    w1 = k_1x1.flatten(1)  # (mid, in)
    kernel = torch.einsum("omhw,mi->oihw", k_kxk, w1)
    return kernel, torch.einsum("omhw,m->o", k_kxk, b_1x1) + b_kxk


def depthwise_to_full(kernel: Tensor) -> Tensor:
    """Expand a depthwise kernel (C, 1, kh, kw) to a dense (C, C, kh, kw) one."""
    channels = kernel.shape[0]
    eye = torch.eye(channels, dtype=kernel.dtype, device=kernel.device)
    return eye[:, :, None, None] * kernel


def identity_kernel(channels: int, size: int = 3, *, dtype=None, device=None) -> KernelBias:
    """The kernel that copies channel o to channel o: a 1 at the centre of the (o, o) slice."""
    kernel = torch.zeros(channels, channels, size, size, dtype=dtype, device=device)
    index = torch.arange(channels, device=device)
    kernel[index, index, size // 2, size // 2] = 1
    return kernel, torch.zeros(channels, dtype=dtype, device=device)


def avgpool_kernel(channels: int, size: int = 3, *, dtype=None, device=None) -> Tensor:
    """Average pooling (stride 1) as a dense kernel: 1/size^2 on every (o, o) slice."""
    eye = torch.eye(channels, dtype=dtype, device=device)
    return eye[:, :, None, None].expand(channels, channels, size, size) / size**2


def add_branches(*branches: KernelBias) -> KernelBias:
    """Parallel branches on the same input sum their kernels and biases."""
    kernel = torch.stack([k for k, _ in branches]).sum(0)
    bias = torch.stack([b for _, b in branches]).sum(0)
    return kernel, bias


def pad_with_values(x: Tensor, values: Tensor, pad: int = 1) -> Tensor:
    """Pad a feature map by `pad` pixels on each side with a per-channel constant.

    Padding a 1x1 stage's output with what that stage yields for zero input makes the following
    kxk conv equal to the merged kxk conv with ordinary zero padding, borders included.
    """
    values = values.reshape(1, -1, 1, 1)
    return F.pad(x - values, (pad, pad, pad, pad)) + values
