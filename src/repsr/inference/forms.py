"""Runnable forms a backend builds that are not the network itself: `Bf16PlainSR`, a deployed network in
bf16 with its input, skip and output in float32 (`FusedTailPlainSR`, the channels-last fp32 form, lives
with the network in `repsr.arch.network`)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from repsr.arch.network import ModelDescriptor, PlainSR, reparameterize_model, shuffle_add_skip


class Bf16PlainSR(nn.Module):
    """A `PlainSR` whose convs and PReLUs run in bf16 (channels-last); input, skip and output float32.

    Takes float32 (N, C, H, W) and returns float32. The residual network sees the input rounded to
    bf16, but the global nearest-upsampled skip adds the exact float32 input to the float32-converted
    residual, so bf16 rounding only touches the residual (a small correction on top of the skip) and
    never the bulk of each pixel value. `float_layers` keeps the first `head` and last `tail` convs
    (with their PReLUs) in float32 for networks where those dominate the error (see
    `benchmarks/bench_precision.py --quality`); by default everything but the skip runs in bf16.
    """

    def __init__(self, plain: nn.Module, *, float_head: int = 0, float_tail: int = 0) -> None:
        super().__init__()
        if not isinstance(plain, PlainSR):
            raise TypeError(f"expected a PlainSR, got {type(plain).__name__}")
        self.spec = plain.spec
        self.scale = plain.spec.scale
        body = copy.deepcopy(plain.body).eval()
        convs = [i for i, layer in enumerate(body) if isinstance(layer, nn.Conv2d)]
        first_bf16 = convs[float_head] if float_head < len(convs) else len(body)
        last_bf16 = convs[len(convs) - float_tail] if float_tail > 0 else len(body)
        self.dtypes: list[torch.dtype] = []
        for index, layer in enumerate(body):
            dtype = torch.bfloat16 if first_bf16 <= index < last_bf16 else torch.float32
            layer.to(dtype=dtype)
            for parameter in layer.parameters():
                parameter.requires_grad_(False)
            self.dtypes.append(dtype)
        self.body = body.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        y = x.contiguous(memory_format=torch.channels_last)
        for layer, dtype in zip(self.body, self.dtypes, strict=True):
            y = layer(y.to(dtype))
        return shuffle_add_skip(y, x.float(), self.scale, dtype=torch.float32)  # bf16 + fp32 -> fp32

    def descriptor(self) -> ModelDescriptor:
        return ModelDescriptor.of_spec(self.spec, "bf16", ("bf16",))


def bf16_module(model: nn.Module, device: str | torch.device = "cpu", **options: int) -> Bf16PlainSR:
    """`model` (plain, or training form re-parameterized first) made ready for bf16 inference on
    `device`; the argument itself is left untouched."""
    plain = reparameterize_model(model).float()
    return Bf16PlainSR(plain, **options).to(device).eval()


__all__ = ["Bf16PlainSR", "bf16_module"]
