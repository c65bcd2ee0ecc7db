"""The optimizers, one table: a new optimizer is one entry in `OPTIMIZERS` (plus a test).

Each entry takes (params, lr, betas, weight_decay) and returns a `torch.optim.Optimizer`;
`train.optimizer` names it and `training.builders.build_optimizer` builds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["OPTIMIZERS"]

Params = Iterable[nn.Parameter]
OptimizerFactory = Callable[[Params, float, tuple[float, float], float], torch.optim.Optimizer]


def _adam(
    params: Params, lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def _adamw(
    params: Params, lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


OPTIMIZERS: dict[str, OptimizerFactory] = {"adam": _adam, "adamw": _adamw}
