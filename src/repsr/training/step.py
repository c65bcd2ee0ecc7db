"""`TrainStep`: what one run does to its `TrainState` on a batch, at the BN switch and at validation.

No loop, no files, no signals: the runner (`trainer.Trainer`) decides when each happens. The loss comes
from its table (`losses.LOSSES`, built by `builders.build_loss`), so a new loss is a table entry, not a
branch here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from repsr.arch.blocks import RepBlock
from repsr.arch.phase import Phase
from repsr.training.bn_switch import SwitchReport, switch_to_population_statistics
from repsr.training.builders import build_loss
from repsr.training.config import TrainConfig
from repsr.training.distributed import Distributed
from repsr.training.schedule import PhaseSchedule
from repsr.training.state import TrainState
from repsr.training.validation import evaluate

__all__ = ["TrainStep"]


class TrainStep:
    """A training step, the BN switch and validation on `state`, as `config` describes them."""

    def __init__(
        self,
        state: TrainState,
        config: TrainConfig,
        schedule: PhaseSchedule,
        dist: Distributed,
        *,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        self.state = state
        self.config = config
        self.schedule = schedule
        self.dist = dist
        self.device = dist.device
        self.dtype = dtype
        self.channels_last = channels_last
        self.loss = build_loss(config)
        self.forward_model: nn.Module = state.model
        self.prepare()

    def prepare(self) -> None:
        """Put the model in its phase, memory format and wrappers (at the start, the switch, a resume)."""
        self.schedule.apply(self.state.model, self.state.phase, distributed=self.dist.enabled)
        self._set_memory_format()
        self._wrap()

    def _set_memory_format(self) -> None:
        """Channels-last weights (when on), except branch weights that only feed a merged kernel."""
        if not self.channels_last:
            return
        self.state.model.to(memory_format=torch.channels_last)
        for module in self.state.model.modules():
            if isinstance(module, RepBlock) and module.merged_training:
                module.to(memory_format=torch.contiguous_format)  # their gradients come out contiguous

    def _wrap(self) -> None:
        """The module the training forward goes through: DDP and/or torch.compile around the model."""
        module: nn.Module = self.state.model
        if self.dist.enabled:
            device_ids = [self.device] if self.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        if self.config.train.compile:
            module = torch.compile(module)
        self.forward_model = module

    def to_device(self, x: Tensor) -> Tensor:
        """A batch tensor on the training device, dtype and memory format."""
        x = x.to(self.device, self.dtype, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, lr_patch: Tensor, hr_patch: Tensor) -> Tensor:
        """One optimisation step on a batch (already on the device); returns the (detached) loss."""
        state, train = self.state, self.config.train
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(train.amp)):
            sr = self.forward_model(lr_patch)
        loss = self.loss(sr.to(hr_patch.dtype), hr_patch)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip:
            nn.utils.clip_grad_norm_(state.model.parameters(), train.grad_clip)
        state.optimizer.step()
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update(state.model)
        return loss.detach()

    def switch_bn(self, batches: Iterable[Tensor] | None) -> SwitchReport:
        """The BN switch: precise population statistics over `batches` (None: keep the running
        averages), frozen; the run goes on in the schedule's post-switch phase."""
        state = self.state
        report = switch_to_population_statistics(
            state.model, batches, self.dist, freeze_affine=self.config.bn.freeze_affine
        )
        state.phase = self.schedule.after_switch
        if state.ema is not None:
            state.ema.copy_buffers(state.model)
        self.prepare()
        return report

    def validate(self, eval_sets: dict[str, Iterable[Any]]) -> dict[str, float]:
        """PSNR/SSIM of the deployed form of the delivered model on `eval_sets` (`name/psnr`, ...)."""
        crop = self.config.val.crop_border
        return evaluate(
            self.state.delivered,
            eval_sets,
            crop_border=self.config.model.scale if crop is None else crop,
            y_channel=self.config.val.y_channel,
            device=self.device,
        )

    @property
    def in_batch_stats(self) -> bool:
        """Whether BN still normalizes with mini-batch statistics (before the switch)."""
        return self.state.phase == Phase.BATCH_STATS
