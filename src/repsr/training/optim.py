"""The optimizer and the LR schedule a training config names: a new optimizer is one `OPTIMIZERS` entry.

Each entry takes (params, config) and returns a `torch.optim.Optimizer`; `train.optimizer` names it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from repsr.training.schedule import lr_factor

if TYPE_CHECKING:
    from repsr.training.config import TrainConfig

__all__ = ["OPTIMIZERS", "build_optimizer", "build_scheduler"]

Params = Iterable[nn.Parameter]


def _adam(params: Params, config: TrainConfig) -> torch.optim.Optimizer:
    t = config.train
    return torch.optim.Adam(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)


def _adamw(params: Params, config: TrainConfig) -> torch.optim.Optimizer:
    t = config.train
    return torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)


OPTIMIZERS: dict[str, Callable[[Params, TrainConfig], torch.optim.Optimizer]] = {
    "adam": _adam,
    "adamw": _adamw,
}


def build_optimizer(config: TrainConfig, params: Params) -> torch.optim.Optimizer:
    """The optimizer `train.optimizer` names, over `params`, with `train.lr`, `betas`, `weight_decay`."""
    return OPTIMIZERS[config.train.optimizer](params, config)


def build_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR schedule: `train.lr` times `schedule.lr_factor` (warm-up, then cosine/step/constant)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
