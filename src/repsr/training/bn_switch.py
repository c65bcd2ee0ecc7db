"""The BN switch: from mini-batch statistics to precise, frozen population statistics.

Before the switch every `RepBN` normalizes with the statistics of the current mini-batch, and its
running averages trail the weights (they mix statistics of many older weight states). At the switch
`precise_statistics` recomputes the population mean and variance of every BN input with the weights
fixed, over a number of training batches, in float64 and combined exactly across batches and processes
(law of total variance, not an average of per-batch variances). `switch_to_population_statistics` then
freezes them: from here on training sees what inference will see.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from repsr.arch.blocks import RepBN
from repsr.arch.phase import Phase, set_phase
from repsr.training.distributed import Distributed, combine_moments


@dataclass
class SwitchReport:
    """What the switch did, for the log."""

    layers: int
    batches: int
    mean_shift: float  # mean |new - old| of running_mean, relative to sqrt(new var)
    var_ratio: float  # mean of new var / old var

    def describe(self, iteration: int, freeze_affine: bool, merged: bool, seconds: float) -> str:
        """The log line of a switch after `iteration` steps."""
        how = (
            f"recomputed over {self.batches} batches (vs the running averages: mean shift "
            f"{self.mean_shift:.3f} std, variance ratio {self.var_ratio:.3f})"
            if self.batches
            else "taken from the running averages"
        )
        return (
            f"BN switch after iteration {iteration}: population statistics of {self.layers} BN layers "
            f"{how}, now frozen{' with gamma/beta' if freeze_affine else ''}; training continues in "
            f"{'merged' if merged else 'branch'} form ({seconds:.1f}s)"
        )


class _MomentAccumulator:
    """Per-channel count, mean and M2 of a BN's input, merged batch by batch (Chan et al.)."""

    def __init__(self, channels: int, device: torch.device) -> None:
        self.count = torch.zeros(channels, dtype=torch.float64, device=device)
        self.mean = torch.zeros_like(self.count)
        self.m2 = torch.zeros_like(self.count)

    def __call__(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0].detach().to(torch.float64)
        n_b = x.numel() // x.shape[1]
        mean_b = x.mean((0, 2, 3))
        m2_b = ((x - mean_b.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3))
        n_a = self.count
        total = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / total)
        self.m2 += m2_b + delta * delta * (n_a * n_b / total)
        self.count = total


def batch_mode_bns(model: nn.Module) -> list[RepBN]:
    """Every `RepBN` that still normalizes with mini-batch statistics."""
    return [m for m in model.modules() if isinstance(m, RepBN) and not m.frozen]


@torch.no_grad()
def precise_statistics(model: nn.Module, batches: Iterable[Tensor], dist_info: Distributed) -> SwitchReport:
    """Replace the running statistics of every batch-mode BN by its inputs' population statistics.

    The network runs in training mode (each BN normalizing with its batch's statistics, as during
    training) on `batches` with the weights fixed; the statistics are reduced over all processes, so
    every rank ends with identical buffers.
    """
    bns = batch_mode_bns(model)
    if not bns:
        return SwitchReport(0, 0, 0.0, 1.0)
    accumulators = {bn: _MomentAccumulator(bn.num_features, bn.running_mean.device) for bn in bns}
    hooks = [bn.register_forward_pre_hook(acc) for bn, acc in accumulators.items()]
    was_training = model.training
    model.train()
    count = 0
    try:
        for x in batches:
            model(x)
            count += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("precise_statistics needs at least one batch")
    shifts, ratios = [], []
    for bn, acc in accumulators.items():
        mean, var = combine_moments(acc.count, acc.mean, acc.m2, dist_info)
        shifts.append(((bn.running_mean.double() - mean).abs() / var.sqrt().clamp_min(1e-12)).mean())
        ratios.append((var / bn.running_var.double().clamp_min(1e-12)).mean())
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return SwitchReport(len(bns), count, float(torch.stack(shifts).mean()), float(torch.stack(ratios).mean()))


@torch.no_grad()
def broadcast_statistics(model: nn.Module, dist_info: Distributed) -> None:
    """Give every process rank 0's BN running statistics (used when no precise batches are drawn)."""
    if not dist_info.enabled:
        return
    import torch.distributed as dist

    for bn in batch_mode_bns(model):
        dist.broadcast(bn.running_mean, src=0)
        dist.broadcast(bn.running_var, src=0)


def switch_to_population_statistics(
    model: nn.Module,
    batches: Iterable[Tensor] | None,
    dist_info: Distributed,
    *,
    freeze_affine: bool = False,
) -> SwitchReport:
    """The switch: precise statistics (if `batches`), then every BN frozen; optionally gamma/beta too.

    Leaves `model` in `Phase.FROZEN_STATS`; the caller then chooses the form phase 2 trains in.
    """
    if batches is not None:
        report = precise_statistics(model, batches, dist_info)
    else:
        broadcast_statistics(model, dist_info)
        report = SwitchReport(len(batch_mode_bns(model)), 0, 0.0, 1.0)
    set_phase(model, Phase.FROZEN_STATS, train_affine=not freeze_affine)
    return report
