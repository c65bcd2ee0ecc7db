"""The runner: one training run's cadence around a `TrainStep` on a `TrainState`.

Phases of a `bn.mode: switch` run:
1. iterations [0, switch): multi-branch blocks, BN on mini-batch statistics (optionally synchronised
   across processes);
2. at the switch: precise population statistics over `bn.precise_batches` batches, frozen;
3. iterations [switch, end): BN frozen, so each block is linear and (by default) runs as one 3x3 conv
   merged differentiably from its branch parameters: the same training at about the plain net's cost.
At the end the (EMA of the) training form is re-parameterized into the plain network, verified against
the training form, and saved as `model.safetensors`.

The parts: `state` (what a checkpoint holds), `step` (a training step, the BN switch, validation),
`losses` / `optim` (the tables `train.loss` and `train.optimizer` name), `schedule` (phases, the switch,
the LR factor), `loop` (steps and loss bookkeeping), `signals` (clean stops), `resume`, `artifacts`
(the checkpoint format and final model), `sampling` (patch keys). This module only decides when things
happen (log, validation, checkpoint, the switch, stop) and owns the run folder and the progress bar.

Exact resume: every random choice of the data comes from the patch keys (`sampling`); the checkpoint
(`TrainState.checkpoint`) holds everything else that changes. Constructing a `Trainer` has no global
side effects; the global RNG, the thread count, `config.yaml` and the logs are set up by `start()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from repsr.arch.network import PlainSR, RepNet, reparameterize_model
from repsr.arch.phase import Phase
from repsr.data.datasets import EvalPair
from repsr.models.files import save_model
from repsr.training import checkpoint as ckpt
from repsr.training.artifacts import BEST_MODEL, DEPLOYED_MODEL, FINAL_CHECKPOINT, TrainingError, deliver
from repsr.training.builders import build_train_set, build_val_sets, initial_weights, make_loader
from repsr.training.config import TrainConfig, save_config
from repsr.training.distributed import Distributed
from repsr.training.ema import ModelEMA
from repsr.training.lock import RunLock
from repsr.training.loop import LossMeter, TermMeter, run_steps
from repsr.training.resume import find_resume_state, refuse_fresh_start
from repsr.training.run_log import RunLog
from repsr.training.sampling import PRECISE_STREAM, TRAIN_STREAM, KeyBatches
from repsr.training.schedule import PhaseSchedule, lr_factor
from repsr.training.signals import StopSignals
from repsr.training.state import TrainState
from repsr.training.step import TrainStep
from repsr.training.validation import describe
from repsr.util.errors import ConfigError, first_line
from repsr.util.hardware import device_capabilities

__all__ = [
    "BEST_MODEL",
    "DEPLOYED_MODEL",
    "FINAL_CHECKPOINT",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "TrainResult",
    "train",
]

log = logging.getLogger("repsr.training")


def autocast_bf16_default(device: str | torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether training should run its forward under bf16 autocast when the config leaves it to us.

    On where the device has native bf16 units and the weights are float32 (a float64 run exists to be
    exact). Measured on an idle 2-core AMD EPYC (AVX512-BF16), RepSR x4 training step fp32 / bf16:
    M4C16 phase 1 1.22-1.57x, merged phase 2 0.97-1.20x; M16C64 1.87x / 1.57x (docs/results/precision.md).
    """
    return dtype == torch.float32 and device_capabilities(device).bf16_native


@dataclass
class TrainResult:
    """What a finished run delivers."""

    run_dir: Path
    model: RepNet  # final training form (the EMA when enabled), eval mode
    plain: PlainSR  # the deployed network, equal to `model`
    history: list[dict[str, Any]]
    train_seconds: float
    model_path: Path  # run_dir / model.safetensors
    checkpoint_path: Path  # run_dir / final.pt (training form, readable by repsr.load_model)
    best: dict[str, Any] | None = None  # {"metric", "value", "iteration"} of the best validation
    extra: dict[str, Any] = field(default_factory=dict)


class TrainingInterrupted(TrainingError):
    """SIGINT/SIGTERM stopped a run after finishing a step; `checkpoint` holds that step's state."""

    def __init__(self, message: str, *, checkpoint: Path | None, iteration: int, signum: int) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.iteration = iteration
        self.signum = signum

    @classmethod
    def after(cls, iteration: int, signum: int, checkpoint: Path | None) -> TrainingInterrupted:
        """The error a stop after `iteration` raises, `checkpoint` holding that iteration."""
        name = signal.Signals(signum).name
        message = f"interrupted ({name}) after iteration {iteration}; checkpoint {checkpoint} written"
        return cls(message, checkpoint=checkpoint, iteration=iteration, signum=signum)


class Trainer:
    """One training run. `Trainer(config, ...).run()` trains to the end and returns a `TrainResult`.

    `run(until=N)` stops after iteration N without finishing (the tests use it to simulate a kill);
    `dtype` float64 is for equivalence tests only.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        data: Path | Dataset | None = None,
        val: dict[str, Path | Iterable[EvalPair]] | None = None,
        out: Path | None = None,
        resume: bool = False,
        progress: bool = True,
        dtype: torch.dtype = torch.float32,
        dist_info: Distributed | None = None,
    ) -> None:
        self.dist = dist_info or Distributed.from_env(config.device)
        self.device, self.dtype, self.progress = self.dist.device, dtype, progress
        self.config = config = _resolved(config, data, val, self.device, dtype, self.dist.is_main)
        self.run_dir = Path(out) if out is not None else Path("runs") / config.name
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.total = config.train.iterations
        self.schedule = PhaseSchedule.from_config(config)
        layout = config.train.channels_last
        self.channels_last = self.device.type == "cpu" if layout is None else layout
        self.state = TrainState.create(config, self.schedule, self.device, dtype)
        saved = find_resume_state(self.run_dir, config, self.model.spec, self.dist) if resume else None
        if saved is None and config.train.init:
            self.model.load_state_dict(initial_weights(config.train.init, self.model))
            if self.state.ema is not None:  # the average starts from the starting weights, not random ones
                self.state.ema = ModelEMA(self.model, config.ema.decay)
        if not resume:
            refuse_fresh_start(self.run_dir, self.dist)
        if saved is not None:
            self.state.restore(saved, self.schedule, config.ema.decay)
        self.step = TrainStep(
            self.state, config, self.schedule, self.dist, dtype=dtype, channels_last=self.channels_last
        )
        self.train_set = build_train_set(config, data)
        if len(self.train_set) == 0:
            raise ConfigError("data: the training set is empty")
        self.eval_sets = build_val_sets(config, val) if self.dist.is_main else {}  # only rank 0 validates
        self.log: RunLog | None = None  # opened by start()
        self.signals = StopSignals(lambda: self.state.iteration + 1)
        self._threads_before: int | None = None
        self._saved_at: int | None = None

    model = property(lambda self: self.state.model, doc="The training-form network being trained.")
    iteration = property(lambda self: self.state.iteration, doc="Iterations done.")
    phase = property(lambda self: self.state.phase, doc="The `Phase` the run is in.")
    switch_at = property(lambda self: self.schedule.switch_at, doc="When BN freezes (None: never).")

    def train_step(self, lr_patch: Tensor, hr_patch: Tensor) -> Tensor:
        """One optimisation step on a batch on the device (`step.to_device`); the detached loss."""
        return self.step(lr_patch, hr_patch)

    def start(self) -> None:
        """What a run does before its first step (once; `run()` calls it): the global RNG state, the
        thread count, the run folder with its `config.yaml` and the log files."""
        if self.log is not None:
            return
        ckpt.restore_rng_state(self.state.rng)
        self._threads_before = torch.get_num_threads()
        if self.config.train.threads:
            torch.set_num_threads(self.config.train.threads)
        if self.dist.is_main:
            self._lock = RunLock(self.run_dir)  # one run per folder, before anything is written
            note = self._lock.acquire()
            if note:
                log.warning(note)
            save_config(self.config, self.run_dir / "config.yaml")
        metrics = [f"{name}/{m}" for name in self.eval_sets for m in ("psnr", "ssim")]
        folder, tensorboard = self.run_dir if self.dist.is_main else None, self.config.log.tensorboard
        self.log = RunLog(
            folder,
            metrics,
            tensorboard=tensorboard,
            term_columns=self.step.term_names,
            history=self.state.history,
            start_iteration=self.iteration,
        )

    def switch_bn(self) -> None:
        """The BN switch: precise population statistics, frozen; phase 2 runs in merged form."""
        bn, started = self.config.bn, time.perf_counter()
        batches = None
        if bn.precise_batches:
            loader = self._loader(PRECISE_STREAM, bn.precise_batches, 0)
            batches = (self.step.to_device(lr_patch) for lr_patch, _ in loader)
        report = self.step.switch_bn(batches)
        if self.dist.is_main:
            seconds = time.perf_counter() - started
            log.info(report.describe(self.iteration, bn.freeze_affine, self.phase == Phase.MERGED, seconds))

    def replan(self, iterations: int) -> None:
        """Change the run's length to `iterations` between partial runs (`run(until=...)`): what a time
        budget does when it re-measures the machine's pace (`repsr demo`).

        The schedule follows: the LR curve is the one of an `iterations`-long run from the next step on,
        and the BN switch moves to `bn.switch_at` of the new length (due at once if that is already
        past). Patch keys are functions of the iteration, so the data of the steps done is unchanged.
        The run folder's `config.yaml` and later checkpoints record the new length: resuming with that
        `config.yaml` continues the new plan.
        """
        if iterations <= self.iteration:
            raise ConfigError(f"replan: {iterations} iterations, but {self.iteration} are done already")
        train = dataclasses.replace(self.config.train, iterations=iterations)
        self.config = self.step.config = dataclasses.replace(self.config, train=train)
        self.total = iterations
        self.schedule = self.step.schedule = PhaseSchedule.from_config(self.config)
        config = self.config
        schedulers = [self.state.scheduler, *(n.scheduler for n in self.state.networks.values())]
        for scheduler in schedulers:  # the generator's and (GAN training) the discriminator's
            scheduler.lr_lambdas = [lambda step: lr_factor(config, step)] * len(scheduler.lr_lambdas)
            factor = lr_factor(config, scheduler.last_epoch)  # the next step's rate, on the new curve
            for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = base * factor
        if self.log is not None and self.dist.is_main:
            save_config(self.config, self.run_dir / "config.yaml")

    def run(self, until: int | None = None) -> TrainResult | None:
        """Train to the end (returns the result, closes the run) or until iteration `until` (returns None).

        After a partial run, call `run()` again to go on, or `close()` to abandon the trainer.
        """
        stop = self.total if until is None else min(until, self.total)
        try:
            self.start()
            with self.signals:
                self._loop(stop)
            result = self._finish() if self.iteration >= self.total else None
        except BaseException:
            self.close()
            raise
        if result is not None:
            self.close()
        return result

    def _loader(self, stream: int, batches: int, start: int) -> DataLoader:
        """Batches `start`..`batches`-1 of a patch-key stream (`sampling`): the same on a resume."""
        config = self.config
        sampler = KeyBatches(config.seed, stream, self.dist.rank, config.train.batch_size, start, batches)
        return make_loader(self.train_set, sampler, config.data.workers, self.device)

    def _loop(self, stop: int) -> None:
        self._losses = LossMeter(self.device, checked_at=self.iteration)
        self._terms = TermMeter(self.step.term_names, self.device)
        self.model.train()
        for network in self.state.networks.values():
            network.module.train()
        if self.iteration >= stop:
            return
        loader = self._loader(TRAIN_STREAM, self.total, self.iteration)
        batches = _guarded(iter(loader), self.signals, self._interrupt)
        self._last_tick = time.perf_counter()

        def step(batch: tuple[Tensor, Tensor]) -> Tensor:
            lr_patch, hr_patch = batch
            return self.train_step(self.step.to_device(lr_patch), self.step.to_device(hr_patch))

        with _progress_bar(self.progress and self.dist.is_main and self.iteration < stop, self) as bar:

            def after(iteration: int, loss: Tensor) -> None:
                self._losses.add(loss)
                self._terms.add(self.step.terms)
                self.state.iteration = iteration
                if bar is not None:
                    bar.update(1)
                self._after_step(bar)
                if iteration < stop and self.signals.agreed(self.dist, iteration, self.config.log.every):
                    self._interrupt()

            before = lambda _: self._switch_if_due()  # noqa: E731
            run_steps(self.iteration, stop, batches, step, before=before, after=after)
        self._tick()

    def _tick(self) -> None:
        """Add the wall time since the last tick to `seconds` (training time, validation included)."""
        now = time.perf_counter()
        self.state.seconds += now - self._last_tick
        self._last_tick = now

    def _switch_if_due(self) -> None:
        """The one place the BN switch is triggered: before a step, or at the end, once it is due."""
        if self.schedule.switch_due(self.phase, self.iteration):
            self.switch_bn()

    def _after_step(self, bar: Any) -> None:
        """What happens between iterations: log, the switch at the very end, validation, checkpoint."""
        it, config = self.iteration, self.config
        last = it == self.total
        if it % config.log.every == 0 or last:
            self._tick()
            self._check_finite()
            lr = config.train.lr * lr_factor(config, it - 1)  # the rate of the step just taken
            loss, phase, seconds = self._losses.mean(self.dist), str(self.phase), self.state.seconds
            terms = self._terms.mean(self.dist)
            self.log.report(
                it, self.total, loss=loss, lr=lr, phase=phase, seconds=seconds, bar=bar, terms=terms
            )
        if last:
            self._switch_if_due()  # bn.switch_at 1.0: precise statistics for the delivered model
        if (config.val.every and it % config.val.every == 0) or last:
            try:
                self.validate()
            except Exception as error:  # keep this iteration's state before reporting
                self.log.flush()
                raise _validation_failed(it, error, self.save_checkpoint()) from error
        self.log.flush()  # before the checkpoint, which stores the history
        if it % config.checkpoint.every == 0 or last:
            self._tick()
            self.save_checkpoint()

    def _interrupt(self) -> None:
        """Save this iteration's state (unless just saved) and raise `TrainingInterrupted`."""
        signum = self.signals.requested if self.signals.requested is not None else signal.SIGTERM
        self.log.flush()
        saved = ckpt.checkpoint_path(self.checkpoint_dir, self.iteration)
        if not (saved.is_file() and self._saved_at == self.iteration):
            saved = self.save_checkpoint()
        raise TrainingInterrupted.after(self.iteration, signum, saved)

    def close(self) -> None:
        """Close the log files and restore the thread setting; the trainer cannot log afterwards."""
        if self.log is not None:
            self.log.close()
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)

    def _check_finite(self) -> None:
        """Stop the run if any loss since the last check was NaN/inf (on any process)."""
        bad = self._losses.bad_since(self.iteration, self.dist)
        if bad is not None:
            raise ckpt.diverged(
                f"the loss became non-finite in iterations {bad}", self.checkpoint_dir, self.dist.is_main
            )

    def validate(self) -> dict[str, float]:
        """Validate the deployed form of the delivered model (EMA if enabled); keep the best."""
        if not self.dist.is_main or not self.eval_sets:
            return {}
        self.start()
        started = time.perf_counter()
        results = self.step.validate(self.eval_sets)
        self.log.record(self.iteration, **results)
        text, seconds = describe(results), time.perf_counter() - started
        log.info("validation at iteration %d (deployed form): %s (%.1fs)", self.iteration, text, seconds)
        if self.state.keep_best(results):
            save_model(reparameterize_model(self.state.delivered).cpu().float(), self.run_dir / BEST_MODEL)
        return results

    def save_checkpoint(self) -> Path | None:
        """Write a full checkpoint of the current iteration (rank 0), after checking the loss."""
        self._check_finite()
        if not self.dist.is_main:
            return None
        history = self.log.history if self.log is not None else self.state.history
        try:
            state = self.state.checkpoint(self.config, history)
            path = ckpt.save_checkpoint(state, self.checkpoint_dir, self.config.checkpoint.keep)
        except ckpt.NonFiniteState as error:
            raise ckpt.diverged(str(error), self.checkpoint_dir, self.dist.is_main) from None
        self._saved_at = self.iteration
        log.debug("checkpoint %s", path)
        return path

    def _finish(self) -> TrainResult:
        """Final artifacts: `final.pt` (the delivered training form) and the verified `model.safetensors`."""
        self._switch_if_due()  # bn.switch_at 1.0 when the last step's switch did not run
        state, history = self.state, list(self.log.history)
        final_state = state.final(self.config, history) if self.dist.is_main else None
        try:
            final = deliver(state.delivered, final_state, self.run_dir)
        except ckpt.NonFiniteState as error:
            raise ckpt.diverged(str(error), self.checkpoint_dir, self.dist.is_main) from None
        if final.error is not None:
            done = f"done: {self.iteration} iterations in {state.seconds:.0f}s; deployed {final.model_path}"
            log.info("%s (max deviation from the training form %.1e)", done, final.error)
        self.dist.barrier()
        return TrainResult(
            self.run_dir, final.model, final.plain, history, state.seconds, final.model_path,
            final.checkpoint_path, state.best,
        )  # fmt: skip


def _validation_failed(iteration: int, error: Exception, saved: Path | None) -> TrainingError:
    kept = f"checkpoint {saved} written; " if saved is not None else ""
    return TrainingError(
        f"validation failed at iteration {iteration} ({first_line(error)}); {kept}fix the validation "
        "data and continue with --resume"
    )


def _guarded(batches: Iterator[Any], signals: StopSignals, interrupt: Callable[[], None]) -> Iterator[Any]:
    """`batches`, but a loader failing after a stop signal (Ctrl-C also reaches the data workers,
    which then exit) stops the run like the signal does (`interrupt`), with the last step saved."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception:
            if signals.requested is not None:
                interrupt()
            raise
        yield batch


def _resolved(
    config: TrainConfig,
    data: Path | Dataset | None,
    val: dict[str, Path | Iterable[EvalPair]] | None,
    device: torch.device,
    dtype: torch.dtype,
    is_main: bool,
) -> TrainConfig:
    """The config a run records: `data`/`val` folders given as arguments, `train.amp` "auto" decided."""
    val_paths = {k: str(v) for k, v in (val or {}).items() if isinstance(v, str | Path)}
    root = str(data) if isinstance(data, str | Path) else config.data.root
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, root=root),
        val=dataclasses.replace(config.val, sets={**config.val.sets, **val_paths}),
    )
    if config.train.amp is not None:
        return config
    amp = autocast_bf16_default(device, dtype)  # "auto": recorded in config.yaml and checkpoints
    if is_main:
        log.info(
            "train.amp auto: bf16 autocast %s (%s)",
            "on" if amp else "off",
            device_capabilities(device).describe(),
        )
    return dataclasses.replace(config, train=dataclasses.replace(config.train, amp=amp))


@contextlib.contextmanager
def _progress_bar(enabled: bool, trainer: Trainer) -> Iterator[Any]:
    """A tqdm bar (iterations/s, ETA, loss, LR), with log lines routed around it; None when off."""
    if not enabled:
        yield None
        return
    bar = tqdm(total=trainer.total, initial=trainer.iteration, unit="it", dynamic_ncols=True, smoothing=0.05)
    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger()]):
            yield bar
    finally:
        bar.close()


def train(
    config: TrainConfig,
    *,
    data: Path | Dataset | None = None,
    val: dict[str, Path | Iterable[EvalPair]] | None = None,
    out: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the network `config` describes and deliver the plain model; see `Trainer`.

    `data`: a folder (or file) of HR images, or a ready `TrainPatches`-like dataset; default
    `config.data.root`, else the built-in sample images. `val`: name -> folder (or iterable of
    `EvalPair`), added to `config.val.sets`; with `val=None` and no sets in the config, the sample
    validation images (set "sample", when `val.sample`); `val={}` validates on the config's sets only.
    `out`: the run folder (default `runs/NAME`). Under `torchrun` this runs DistributedDataParallel.
    """
    dist_info = Distributed.from_env(config.device)
    try:
        trainer = Trainer(
            config, data=data, val=val, out=out, resume=resume, progress=progress, dist_info=dist_info
        )
        result = trainer.run()
        assert result is not None
        return result
    finally:
        dist_info.close()
