"""The training losses, one table: a new loss is one entry in `LOSSES` (plus a test).

Each entry builds an `nn.Module` called as `loss(sr, hr) -> scalar tensor`; `train.loss` names it and
`training.builders.build_loss` builds it. This module knows nothing of the config.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["LOSSES", "CharbonnierLoss"]


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
