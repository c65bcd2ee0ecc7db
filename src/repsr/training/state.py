"""`TrainState`: everything a checkpoint holds, in one object (weights, EMA, optimizer, LR schedule
position, phase, RNG, history, best validation, training time).

The generator (the SR network that is delivered) is `model` / `optimizer` / `scheduler` / `ema`, under
the checkpoint keys of a single-network run; every other trained network (GAN training's
`discriminator`) is a named `Network` in `networks`, stored under the checkpoint's `networks` key as
`{name: {"kind", "model", "optimizer", "scheduler"}}`. A checkpoint of a single-network run (no
`networks` key, as every file before GAN training) restores unchanged; restored into a GAN run, its
discriminator starts from its seeded initial weights (logged).

`TrainState.create(config, ...)` builds a run's starting state (the initial weights are a function of
the seed, drawn under a forked RNG: the global RNG is left as it was); `checkpoint()` is the one
checkpoint dict (`artifacts.checkpoint_state`) and `restore()` its inverse, so exact resume is this
object's round trip. No files, no loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from repsr.arch.network import RepNet
from repsr.arch.phase import Phase
from repsr.training import checkpoint as ckpt
from repsr.training.artifacts import checkpoint_state
from repsr.training.builders import build_discriminator, build_network, build_optimizer, build_scheduler
from repsr.training.config import TrainConfig
from repsr.training.ema import ModelEMA
from repsr.training.schedule import PhaseSchedule
from repsr.util.errors import ConfigError, first_line

__all__ = ["Network", "TrainState"]

log = logging.getLogger("repsr.training")


@dataclass
class Network:
    """A trained network besides the generator: the module, its optimizer and LR schedule, and `kind`
    (what it is, as plain data: a resume checks it)."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    kind: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": dict(self.kind),
            "model": {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, name: str, saved: dict[str, Any]) -> None:
        if saved.get("kind") != self.kind:
            raise ConfigError(
                f"the checkpoint's {name} is {saved.get('kind')} but the config describes {self.kind}; "
                "resume with the run's own config"
            )
        try:
            self.module.load_state_dict(saved["model"])
        except RuntimeError as error:
            raise ConfigError(f"the checkpoint's {name} does not load: {first_line(error)}") from None
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])


def _discriminator_kind(config: TrainConfig) -> dict[str, Any]:
    d = config.discriminator
    return {"type": d.type, "channels": d.channels, "spectral_norm": d.spectral_norm}


@dataclass
class TrainState:
    """The changing state of a run; the checkpoint format is `checkpoint()`'s dict."""

    model: RepNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: ModelEMA | None
    phase: Phase
    iteration: int = 0
    best: dict[str, Any] | None = None  # {"metric", "value", "iteration"} of the best validation
    seconds: float = 0.0  # training time so far (validation included)
    rng: dict[str, Any] = field(default_factory=dict)  # the global RNG state the next steps start from
    history: list[dict[str, Any]] = field(default_factory=list)
    networks: dict[str, Network] = field(default_factory=dict)  # named networks besides the generator

    @classmethod
    def create(
        cls, config: TrainConfig, schedule: PhaseSchedule, device: torch.device, dtype: torch.dtype
    ) -> TrainState:
        """A fresh run's state: seeded initial weights, the configured optimizers, schedules and EMA.

        The discriminator (GAN training) is drawn after the generator and after the run's RNG state is
        taken, so the generator's weights and the run's random stream do not depend on it."""
        devices = [device] if device.type == "cuda" else []
        networks: dict[str, Network] = {}
        with torch.random.fork_rng(devices=devices):  # the global RNG is left as it was
            torch.manual_seed(config.seed)  # the initial weights are a function of the seed
            model = build_network(config).to(device=device, dtype=dtype)
            rng = ckpt.rng_state()  # what the global RNG starts from in run() (a resume replaces it)
            if config.discriminator.enabled:
                d = build_discriminator(config).to(device=device, dtype=dtype)
                d_optimizer = build_optimizer(config, d.parameters(), network="discriminator")
                d_scheduler = build_scheduler(config, d_optimizer)
                networks["discriminator"] = Network(d, d_optimizer, d_scheduler, _discriminator_kind(config))
        optimizer = build_optimizer(config, model.parameters())
        scheduler = build_scheduler(config, optimizer)
        ema = ModelEMA(model, config.ema.decay) if config.ema.enabled else None
        return cls(model, optimizer, scheduler, ema, schedule.initial, rng=rng, networks=networks)

    @property
    def delivered(self) -> RepNet:
        """The model a run delivers: the EMA when enabled, else the trained weights."""
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self, config: TrainConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint of this state (with the current global RNG state), plain types only."""
        return checkpoint_state(
            self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            ema=self.ema,
            iteration=self.iteration,
            phase=self.phase,
            rng=ckpt.rng_state(),
            config=config.to_dict(),
            history=history,
            best=self.best,
            seconds=self.seconds,
            networks={name: network.state_dict() for name, network in self.networks.items()},
        )

    def final(self, config: TrainConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
        """The run's `final.pt`: the same format, the delivered weights in float32, no optimizer,
        scheduler, EMA or RNG state."""
        return checkpoint_state(
            self.delivered,
            iteration=self.iteration,
            phase=self.phase,
            config=config.to_dict(),
            history=history,
            best=self.best,
            seconds=self.seconds,
            weights="ema" if self.ema is not None else "model",
            dtype=torch.float32,
        )

    def keep_best(self, results: dict[str, float]) -> bool:
        """Record `results` (validation metrics) as the best if its first PSNR beats the best so far."""
        metric = next((k for k in results if k.endswith("/psnr")), None)
        if metric is None or (self.best is not None and results[metric] <= self.best["value"]):
            return False
        self.best = {"metric": metric, "value": results[metric], "iteration": self.iteration}
        return True

    def restore(self, saved: dict[str, Any], schedule: PhaseSchedule, ema_decay: float) -> None:
        """Take over a checkpoint's state (a checked `checkpoint.read_checkpoint` dict)."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None:
            if saved.get("ema") is not None:
                self.ema.load_state_dict(saved["ema"])
            else:  # EMA switched on at resume: it starts from the restored weights
                self.ema = ModelEMA(self.model, ema_decay)
        self.iteration = int(saved["iteration"])
        self.phase = schedule.parse(saved["phase"])
        self.best = saved.get("best")
        self.seconds = float(saved.get("seconds", 0.0))
        self.rng = saved["rng"]
        self.history = list(saved.get("history", []))
        saved_networks = saved.get("networks") or {}  # absent in single-network checkpoints
        for name, network in self.networks.items():
            if name in saved_networks:
                network.load_state_dict(name, saved_networks[name])
            else:
                log.warning("--resume: the checkpoint holds no %s; it starts from its initial weights", name)
        for name in sorted(set(saved_networks) - set(self.networks)):
            log.warning("--resume: the checkpoint's %s is not part of this config; not used", name)
