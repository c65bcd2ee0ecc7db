"""The training schedule as pure functions of the config: the BN phases, the switch, the LR factor.

A run's BN phase (`BNMode`, recorded in logs and checkpoints) is `batch` until the switch and `frozen`
after it (`bn.mode: switch`), `batch` throughout (`bn.mode: batch`), or `none` for a network without BN.
`PhaseSchedule` says when the switch is due and which model `Phase` each BN phase trains in; it
touches no files and no global state, so it is tested on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from repsr.blocks import BNMode
from repsr.network import config_has_bn
from repsr.phase import Phase, set_phase
from repsr.training.distributed import disable_sync_bn, enable_sync_bn

if TYPE_CHECKING:
    from repsr.training.config import TrainConfig


@dataclass(frozen=True)
class PhaseSchedule:
    """When the BN switch happens and what each BN phase means for the model."""

    switch_at: int | None  # the iteration count after which BN freezes; None: never
    has_bn: bool
    merged_training: bool  # phase 2 (and BN-free networks) train each block as its merged conv
    freeze_affine: bool  # gamma/beta stop training at the switch
    sync_bn: bool  # synchronised batch statistics across processes before the switch

    @classmethod
    def from_config(cls, config: TrainConfig) -> PhaseSchedule:
        has_bn = config_has_bn(config)
        bn = config.bn
        switch_at = config.switch_iteration if has_bn else None
        return cls(switch_at, has_bn, bn.merged_training, bn.freeze_affine, bn.sync)

    @property
    def initial(self) -> BNMode:
        """The BN phase a run starts in."""
        return BNMode.BATCH if self.has_bn else BNMode.NONE

    def switch_due(self, bn_phase: BNMode | str, iteration: int) -> bool:
        """Whether the switch must happen now, `iteration` steps done, before the next step (or the end)."""
        return self.switch_at is not None and bn_phase == BNMode.BATCH and iteration >= self.switch_at

    def model_phase(self, bn_phase: BNMode | str) -> Phase:
        """The model phase a BN phase trains in."""
        if bn_phase == BNMode.BATCH:
            return Phase.BATCH_STATS
        return Phase.MERGED if self.merged_training else Phase.FROZEN_STATS

    def apply(self, model: nn.Module, bn_phase: BNMode | str, *, distributed: bool = False) -> None:
        """Put `model` in the configuration `bn_phase` needs (at the start, the switch, after a resume)."""
        phase = self.model_phase(bn_phase)
        if phase != Phase.BATCH_STATS:
            disable_sync_bn(model)  # frozen statistics need no synchronisation
        set_phase(model, phase, train_affine=not (bn_phase == BNMode.FROZEN and self.freeze_affine))
        if phase == Phase.BATCH_STATS and self.sync_bn and distributed:
            enable_sync_bn(model)


def lr_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of `train.lr` at `step` (0-based iteration): warm-up, then cosine/step/constant."""
    optim = config.train
    if step < optim.warmup:
        return (step + 1) / optim.warmup
    if optim.scheduler == "cosine":
        span = max(1, optim.iterations - optim.warmup)
        t = min(1.0, (step - optim.warmup) / span)
        floor = optim.min_lr / optim.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    if optim.scheduler == "step":
        passed = sum(step >= round(m * optim.iterations) for m in optim.milestones)
        return optim.gamma**passed
    return 1.0
