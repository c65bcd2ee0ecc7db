"""The training schedule as pure functions of the config: the BN phases, the switch, the LR factor.

A run is always in one model `Phase` (recorded in logs and checkpoints as `phase`): `batch_stats` until
the switch, then `merged` (or `frozen_stats` with `bn.merged_training: false`) under `bn.mode: switch`;
`batch_stats` throughout under `bn.mode: batch`; the post-switch phase from the start for a network
without BN. `PhaseSchedule` says when the switch is due and puts a model in a phase; it touches no files
and no global state, so it is tested on its own. Checkpoints of older versions recorded `bn_phase`
(`batch`, `frozen`, `none`); `PhaseSchedule.parse` reads both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from repsr.arch.blocks import BLOCKS
from repsr.arch.phase import Phase, set_phase
from repsr.training.distributed import disable_sync_bn, enable_sync_bn

if TYPE_CHECKING:
    from repsr.training.config import TrainConfig

_OLD_BATCH = "batch"  # the pre-switch value of the `bn_phase` older checkpoints recorded


def config_has_bn(config: TrainConfig) -> bool:
    """Whether the network a training config describes has BN at all (`plain` and `ecb` never do)."""
    return config.bn.mode != "none" and BLOCKS[config.model.block].has_bn


@dataclass(frozen=True)
class PhaseSchedule:
    """When the BN switch happens and which phase a run trains in before and after it."""

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
    def after_switch(self) -> Phase:
        """The phase once statistics are fixed (after the switch, or throughout without BN)."""
        return Phase.MERGED if self.merged_training else Phase.FROZEN_STATS

    @property
    def initial(self) -> Phase:
        """The phase a run starts in."""
        return Phase.BATCH_STATS if self.has_bn else self.after_switch

    def parse(self, recorded: str) -> Phase:
        """The phase a checkpoint recorded (`phase`, or an older file's `bn_phase`), in this config's
        form: a post-switch phase trains merged or not as `bn.merged_training` says now."""
        if recorded in (Phase.BATCH_STATS, _OLD_BATCH) and self.has_bn:
            return Phase.BATCH_STATS
        return self.after_switch

    def switch_due(self, phase: Phase | str, iteration: int) -> bool:
        """Whether the switch must happen now, `iteration` steps done, before the next step (or the end)."""
        return self.switch_at is not None and phase == Phase.BATCH_STATS and iteration >= self.switch_at

    def apply(self, model: nn.Module, phase: Phase | str, *, distributed: bool = False) -> None:
        """Put `model` in `phase` (at the start, the switch, after a resume), with SyncBN and gamma/beta
        trainability as the config says."""
        phase = Phase(phase)
        if phase != Phase.BATCH_STATS:
            disable_sync_bn(model)  # frozen statistics need no synchronisation
        set_phase(model, phase, train_affine=not (phase != Phase.BATCH_STATS and self.freeze_affine))
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
