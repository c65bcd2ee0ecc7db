"""`TrainStep`: what one run does to its `TrainState` on a batch, at the BN switch and at validation.

No loop, no files, no signals: the runner (`trainer.Trainer`) decides when each happens. The loss comes
from its tables (`losses.LOSSES` / `losses.TERMS`, built by `builders.build_loss_terms`: `train.loss`
alone, or the weighted terms of `train.losses`), so a new loss is a table entry, not a branch here.

Two step strategies, chosen by the config:
- the pixel step (no `discriminator`): forward, the weighted loss, backward, optimizer, EMA; with the
  default single loss it computes exactly what it always did (the loss is not even multiplied by 1);
- the GAN step (`discriminator.type` set), BasicSR's `SRGANModel.optimize_parameters` order: the
  generator steps with the discriminator frozen (its parameters need no gradient) on the weighted sum of
  its terms (pixel, frequency, LDL, adversarial, feature matching), then the discriminator steps on real
  HR against the detached generator output; then the generator's EMA. Every forward runs under the same
  autocast as the pixel step; losses are computed in float32.
Under torchrun each network has its own DDP wrapper: the generator's (`forward_model`, rebuilt at the
switch) and the discriminator's (`d_forward`, built once: its trainable parameters never change). The
discriminator's update goes through its wrapper, so its gradients are averaged across processes; the
generator's update calls the frozen discriminator unwrapped, so the discriminator's reducer is not
part of a backward that gives it no gradients (the generator's gradients flow through it and are
averaged by the generator's wrapper). Spectral norm's power iteration depends only on the weights and
its vector u, not on the data, so with equal weights every process keeps the same u (and DDP's buffer
broadcast from rank 0 at each wrapped forward keeps it so regardless). The EMA's BN statistics are
rank 0's on every process too (`_update_ema`), in the pixel step as in the GAN step.
The last step's terms are kept, detached, in `terms` (`loss/NAME`, and `d/real`, `d/fake` for the
discriminator) for the run log.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from repsr.arch.blocks import RepBlock
from repsr.arch.phase import Phase
from repsr.training.bn_switch import SwitchReport, switch_to_population_statistics
from repsr.training.builders import build_loss, build_loss_terms
from repsr.training.config import TrainConfig
from repsr.training.distributed import Distributed
from repsr.training.losses import LossInputs, discriminator_adversarial
from repsr.training.schedule import PhaseSchedule
from repsr.training.state import TrainState
from repsr.training.validation import evaluate
from repsr.util.errors import ConfigError

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
        self.loss = build_loss(config)  # `train.loss` (the pixel loss of a single-loss run)
        self.loss_terms = build_loss_terms(config)
        self.needs = frozenset().union(*(t.needs for t in self.loss_terms))
        self.discriminator = state.networks.get("discriminator")
        self.d_forward: nn.Module | None = self._wrap_discriminator()
        if "ema" in self.needs and state.ema is None:
            raise ConfigError("train.losses: ldl compares with the EMA: set ema.enabled: true")
        self.terms: dict[str, Tensor] = {}  # the last step's loss terms, detached (`term_names`)
        self.forward_model: nn.Module = state.model
        self.prepare()

    @property
    def term_names(self) -> list[str]:
        """The names of the per-term losses a step reports (none for a single-loss pixel run)."""
        if self.discriminator is None and len(self.loss_terms) == 1:
            return []
        names = [f"loss/{t.name}" for t in self.loss_terms]
        return names + (["d/real", "d/fake"] if self.discriminator is not None else [])

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

    def _wrap_discriminator(self) -> nn.Module | None:
        """The module the discriminator's update goes through: under torchrun its DDP wrapper (built
        once, while all its parameters are trainable), else the discriminator itself; None without one."""
        if self.discriminator is None:
            return None
        module = self.discriminator.module
        if not self.dist.enabled:
            return module
        device_ids = [self.device] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def to_device(self, x: Tensor) -> Tensor:
        """A batch tensor on the training device, dtype and memory format."""
        x = x.to(self.device, self.dtype, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(self.config.train.amp))

    def __call__(self, lr_patch: Tensor, hr_patch: Tensor) -> Tensor:
        """One optimisation step on a batch (already on the device); returns the (detached) generator
        loss. The GAN step when the config has a discriminator, else the pixel step."""
        if self.discriminator is not None:
            return self._gan_step(lr_patch, hr_patch)
        with self._autocast():
            sr = self.forward_model(lr_patch)
        if len(self.loss_terms) == 1 and not self.needs:  # `train.loss` alone: exactly as it always was
            loss = self.loss_terms[0].fn(LossInputs(sr.to(hr_patch.dtype), hr_patch))
        else:
            loss = self._generator_loss(self._inputs(lr_patch, sr, hr_patch))
        self._generator_update(loss)
        self._update_ema()
        return loss.detach()

    def _inputs(self, lr_patch: Tensor, sr: Tensor, hr_patch: Tensor) -> LossInputs:
        """What the generator's terms look at; the EMA's output only when a term needs it."""
        inputs = LossInputs(sr.to(hr_patch.dtype), hr_patch, adversarial=self.config.discriminator.loss)
        if "ema" in self.needs:
            with torch.no_grad(), self._autocast():
                inputs.ema = self.state.ema.module(lr_patch).to(hr_patch.dtype)
        return inputs

    def _generator_loss(self, inputs: LossInputs) -> Tensor:
        """The weighted sum of the terms (a weight of 1 is not multiplied); keeps each term in `terms`."""
        total: Tensor | None = None
        terms = {}
        for term in self.loss_terms:
            value = term.fn(inputs)
            terms[f"loss/{term.name}"] = value.detach()
            weighted = value if term.weight == 1.0 else term.weight * value
            total = weighted if total is None else total + weighted
        self.terms = terms
        assert total is not None  # the config has at least one term
        return total

    def _generator_update(self, loss: Tensor) -> None:
        state, train = self.state, self.config.train
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip:
            nn.utils.clip_grad_norm_(state.model.parameters(), train.grad_clip)
        state.optimizer.step()
        state.scheduler.step()

    def _gan_step(self, lr_patch: Tensor, hr_patch: Tensor) -> Tensor:
        """The generator with the discriminator frozen, then the discriminator on real vs detached fake."""
        d, d_forward = self.discriminator, self.d_forward
        assert d is not None and d_forward is not None
        kind = self.config.discriminator.loss
        for parameter in d.module.parameters():
            parameter.requires_grad_(False)
        with self._autocast():
            sr = self.forward_model(lr_patch)
        inputs = self._inputs(lr_patch, sr, hr_patch)
        with self._autocast():  # the frozen discriminator unwrapped: its DDP reducer gets no gradients here
            if "features" in self.needs:
                fake, inputs.fake_features = d.module(inputs.sr, features=True)
                with torch.no_grad():
                    _, inputs.real_features = d.module(hr_patch, features=True)
            else:
                fake = d.module(inputs.sr)
        inputs.fake = fake.to(hr_patch.dtype)
        if inputs.fake_features is not None:
            inputs.fake_features = [f.to(hr_patch.dtype) for f in inputs.fake_features]
            inputs.real_features = [f.to(hr_patch.dtype) for f in inputs.real_features or []]
        loss = self._generator_loss(inputs)
        self._generator_update(loss)

        for parameter in d.module.parameters():
            parameter.requires_grad_(True)
        d.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            real_logits = d_forward(hr_patch)  # through DDP under torchrun: gradients averaged
            fake_logits = d_forward(inputs.sr.detach())
        d_real = discriminator_adversarial(real_logits.to(hr_patch.dtype), True, kind)
        d_fake = discriminator_adversarial(fake_logits.to(hr_patch.dtype), False, kind)
        (d_real + d_fake).backward()
        d.optimizer.step()
        d.scheduler.step()
        self.terms.update({"d/real": d_real.detach(), "d/fake": d_fake.detach()})
        self._update_ema()
        return loss.detach()

    def _update_ema(self) -> None:
        """The EMA follows the generator's step; under DDP its BN statistics are rank 0's on every process.

        Without SyncBN each process's BN running statistics are its own after its forward (DDP hands
        every process rank 0's at the next one), and the EMA, averaging them, would keep that apart:
        rank 0's EMA is the one saved and resumed from, and the LDL term compares with the EMA on every
        process. After the switch the statistics are frozen, the same everywhere."""
        ema = self.state.ema
        if ema is None:
            return
        ema.update(self.state.model)
        if self.dist.enabled and self.in_batch_stats and not self.schedule.sync_bn:
            self.dist.broadcast_tensors([b for b in ema.module.buffers() if b.is_floating_point()])

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
