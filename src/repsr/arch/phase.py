"""The phase a network is in, set in one place: `set_phase(model, Phase.MERGED)`.

- `Phase.BATCH_STATS`: every `RepBN` normalizes with mini-batch statistics (RepSR's phase 1); blocks
  run their branches.
- `Phase.FROZEN_STATS`: every `RepBN` uses its population statistics, also under `model.train()`;
  blocks still run their branches.
- `Phase.MERGED`: statistics frozen as above, and every block computes its forward as its equivalent
  3x3 conv, merged differentiably from its branch parameters (phase 2 at about the plain net's cost).

Frozen statistics and merged training are distinct facts (a frozen network may train in branch form);
`MERGED` implies frozen because merging needs every block to be linear. The phase is independent of
`model.train()`/`eval()`, which never change it. This module is the only code that sets `RepBN.frozen`,
`RepBlock.merged_training`, the BN momentum and the trainability of BN's gamma/beta.
"""

from __future__ import annotations

from enum import Enum

from torch import nn

from repsr.arch.blocks import BNMode, RepBlock, RepBN

DEFAULT_MOMENTUM = 0.1  # nn.BatchNorm2d's


class Phase(str, Enum):
    BATCH_STATS = "batch_stats"
    FROZEN_STATS = "frozen_stats"
    MERGED = "merged"

    def __str__(self) -> str:
        return self.value


def set_phase(
    model: nn.Module,
    phase: Phase | str,
    *,
    track_statistics: bool = True,
    train_affine: bool = True,
) -> nn.Module:
    """Put every `RepBN` and `RepBlock` in `model` into `phase`; returns `model`.

    `track_statistics=False` keeps batch-statistics BN from updating its running averages (a probe of
    what training-time BN computes, without touching the model's statistics). `train_affine=False`
    stops training BN's gamma/beta (`bn.freeze_affine` after the switch).
    """
    phase = Phase(phase)
    set_bn_mode(model, BNMode.BATCH if phase == Phase.BATCH_STATS else BNMode.FROZEN)
    set_merged_training(model, phase == Phase.MERGED)
    for module in model.modules():
        if isinstance(module, RepBN):
            module.momentum = DEFAULT_MOMENTUM if track_statistics else 0.0
            module.weight.requires_grad_(train_affine)
            module.bias.requires_grad_(train_affine)
    return model


def model_phase(model: nn.Module) -> Phase:
    """The phase `model` is in (`BATCH_STATS` if any BN still uses mini-batch statistics)."""
    if any(isinstance(m, RepBN) and m.mode == BNMode.BATCH for m in model.modules()):
        return Phase.BATCH_STATS
    merged = any(isinstance(m, RepBlock) and m.merged_training for m in model.modules())
    return Phase.MERGED if merged else Phase.FROZEN_STATS


def set_bn_mode(model: nn.Module, mode: str | BNMode) -> int:
    """Set every `RepBN` in `model` to `batch` or `frozen`; returns how many were set.

    A lower-level step of `set_phase` (which also sets the blocks' form to match).
    """
    count = 0
    for module in model.modules():
        if isinstance(module, RepBN):
            module.set_mode(mode)
            count += 1
    return count


def set_merged_training(model: nn.Module, enabled: bool = True) -> None:
    """Make every block compute its forward as its merged 3x3 conv (still differentiable), or not.

    Only valid once no BN uses mini-batch statistics (after the switch, or without BN): then each block
    is a linear function of its input and the merged conv is the same function at a fraction of the cost.
    A lower-level step of `set_phase`.
    """
    if enabled:
        live = [n for n, m in model.named_modules() if isinstance(m, RepBN) and m.mode == BNMode.BATCH]
        if live:
            raise ValueError(f"merged training needs frozen BN; still in batch mode: {', '.join(live[:3])}")
    for module in model.modules():
        if isinstance(module, RepBlock):
            module.merged_training = enabled
