"""The loop around a step function, and the loss bookkeeping between reports; no files, no globals.

`run_steps` calls `before(i)`, `step(batch)` and `after(i + 1, loss)` for i in [start, stop).
`LossMeter` sums the losses on their device (no host sync per step) and remembers whether any was
non-finite; `mean` and `any_bad` reduce over processes when reporting. `TermMeter` does the same for the
named loss terms of a multi-term or GAN step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from repsr.training.distributed import Distributed


def run_steps(
    start: int,
    stop: int,
    batches: Iterator[Any],
    step: Callable[[Any], Tensor],
    *,
    before: Callable[[int], None] = lambda iteration: None,
    after: Callable[[int, Tensor], None] = lambda iteration, loss: None,
) -> int:
    """Steps `start`..`stop`-1 (iteration counts done before each); returns the count done at the end."""
    iteration = start
    while iteration < stop:
        before(iteration)
        loss = step(next(batches))
        iteration += 1
        after(iteration, loss)
    return iteration


class TermMeter:
    """Sums of the named loss terms (`TrainStep.terms`) since the last report, on their device."""

    def __init__(self, names: list[str], device: torch.device) -> None:
        self.names = names
        self.sum = torch.zeros(len(names), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, terms: dict[str, Tensor]) -> None:
        if self.names:
            self.sum += torch.stack([terms[name].to(torch.float64) for name in self.names])
            self.count += 1

    def mean(self, dist: Distributed) -> dict[str, float]:
        """The mean of each term since the last call, over all processes; starts a new interval."""
        if not self.names:
            return {}
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.sum.device)
        packed = dist.all_reduce_sum(torch.cat([self.sum, count]))
        self.sum.zero_()
        self.count = 0
        return {
            name: float(v) for name, v in zip(self.names, packed[:-1] / packed[-1].clamp_min(1), strict=True)
        }


class LossMeter:
    """Sum, count and a non-finite flag of the losses since the last report."""

    def __init__(self, device: torch.device, checked_at: int = 0) -> None:
        self.device = device
        self.checked_at = checked_at  # the iteration count of the last non-finite check
        self.sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0
        self.bad = torch.zeros((), dtype=torch.bool, device=device)

    def add(self, loss: Tensor) -> None:
        self.bad |= ~torch.isfinite(loss)
        self.sum += loss
        self.count += 1

    def mean(self, dist: Distributed) -> float:
        """The mean loss since the last call, over all processes; starts a new interval."""
        count = torch.tensor(float(self.count), dtype=torch.float64, device=self.device)
        packed = torch.stack([self.sum, count])
        packed = dist.all_reduce_sum(packed)
        self.sum.zero_()
        self.count = 0
        return float(packed[0] / packed[1].clamp_min(1))

    def any_bad(self, dist: Distributed) -> bool:
        """Whether any loss so far was NaN/inf on any process."""
        return bool(dist.all_reduce_sum(self.bad.to(torch.float32)) > 0)

    def bad_since(self, iteration: int, dist: Distributed) -> str | None:
        """The iterations ("a-b") since the last check if a loss in them was NaN/inf on any process,
        else None; `iteration` becomes the last check. Checking twice at one iteration is a no-op."""
        if self.checked_at == iteration:
            return None
        since, self.checked_at = self.checked_at, iteration
        return f"{since + 1}-{iteration}" if self.any_bad(dist) else None
