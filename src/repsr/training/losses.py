"""The training losses, one table: a new loss is one entry in `LOSSES` (plus a test).

Each entry builds an `nn.Module` called as `loss(sr, hr) -> scalar tensor`; `train.loss` names it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from repsr.training.config import TrainConfig

__all__ = ["LOSSES", "CharbonnierLoss", "build_loss"]


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


def build_loss(config: TrainConfig) -> nn.Module:
    """The loss `train.loss` names (the config checked the name against `LOSSES`)."""
    return LOSSES[config.train.loss]()
