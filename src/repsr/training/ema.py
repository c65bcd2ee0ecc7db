"""Exponential moving average of a model: weights AND floating-point buffers (BN statistics).

Averaging only the weights would pair averaged weights with the live model's BN statistics, which
belong to other weights. Here every floating-point tensor of the state dict is averaged; integer
buffers (`num_batches_tracked`) are copied, and so is every module's extra state (the BN mode,
`RepBN.frozen`, a Python attribute): the EMA's BN is always in the mode of the model it follows.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

_EXTRA_STATE = nn.modules.module._EXTRA_STATE_KEY_SUFFIX


class ModelEMA:
    """`ema = decay * ema + (1 - decay) * model` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    def _pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        ema_state = self.module.state_dict(keep_vars=True)
        floats_ema, floats_src, other_ema, other_src = [], [], [], []
        for key, source in model.state_dict(keep_vars=True).items():
            if key.endswith(_EXTRA_STATE):  # not a tensor of the module: see _copy_modes
                continue
            target = ema_state[key]
            if target.is_floating_point():
                floats_ema.append(target.data)
                floats_src.append(source.data)
            else:
                other_ema.append(target.data)
                other_src.append(source.data)
        return floats_ema, floats_src, other_ema, other_src

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        floats_ema, floats_src, other_ema, other_src = self._pairs(model)
        torch._foreach_lerp_(floats_ema, floats_src, 1.0 - self.decay)
        for target, source in zip(other_ema, other_src, strict=True):
            target.copy_(source)
        self._copy_modes(model)

    @torch.no_grad()
    def copy_buffers(self, model: nn.Module) -> None:
        """Take `model`'s buffers and modes as they are (at the BN switch: the new precise statistics)."""
        sources = dict(model.named_buffers())
        for name, buffer in self.module.named_buffers():
            buffer.copy_(sources[name])
        self._copy_modes(model)

    def _copy_modes(self, model: nn.Module) -> None:
        """The state that lives in Python attributes: every module's extra state (the BN mode)."""
        targets = dict(self.module.named_modules())
        for name, source in model.named_modules():
            if type(source).get_extra_state is not nn.Module.get_extra_state:
                targets[name].set_extra_state(source.get_extra_state())

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)
