"""`TrainState`: everything a checkpoint holds, in one object (weights, EMA, optimizer, LR schedule
position, phase, RNG, history, best validation, training time).

`TrainState.create(config, ...)` builds a run's starting state (the initial weights are a function of
the seed, drawn under a forked RNG: the global RNG is left as it was); `checkpoint()` is the one
checkpoint dict (`artifacts.checkpoint_state`) and `restore()` its inverse, so exact resume is this
object's round trip. No files, no loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from repsr.arch.network import RepNet
from repsr.arch.phase import Phase
from repsr.training import checkpoint as ckpt
from repsr.training.artifacts import checkpoint_state
from repsr.training.builders import build_network, build_optimizer, build_scheduler
from repsr.training.config import TrainConfig
from repsr.training.ema import ModelEMA
from repsr.training.schedule import PhaseSchedule

__all__ = ["TrainState"]


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

    @classmethod
    def create(
        cls, config: TrainConfig, schedule: PhaseSchedule, device: torch.device, dtype: torch.dtype
    ) -> TrainState:
        """A fresh run's state: seeded initial weights, the configured optimizer, schedule and EMA."""
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the global RNG is left as it was
            torch.manual_seed(config.seed)  # the initial weights are a function of the seed
            model = build_network(config).to(device=device, dtype=dtype)
            rng = ckpt.rng_state()  # what the global RNG starts from in run() (a resume replaces it)
        optimizer = build_optimizer(config, model.parameters())
        scheduler = build_scheduler(config, optimizer)
        ema = ModelEMA(model, config.ema.decay) if config.ema.enabled else None
        return cls(model, optimizer, scheduler, ema, schedule.initial, rng=rng)

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
