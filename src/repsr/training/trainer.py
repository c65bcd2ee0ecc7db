"""The trainer: RepSR's recipe with the BN switch, merged-form phase 2, checkpoints and DDP.

Phases of a `bn.mode: switch` run:
1. iterations [0, switch): multi-branch blocks, BN on mini-batch statistics (optionally synchronised
   across processes);
2. at the switch: precise population statistics over `bn.precise_batches` batches, frozen;
3. iterations [switch, end): BN frozen, so each block is linear and (by default) runs as one 3x3 conv
   merged differentiably from its branch parameters: the same training at about the plain net's cost.
At the end the (EMA of the) training form is re-parameterized into the plain network, verified against
the training form, and saved as `model.safetensors`.

The parts, each usable without the file system: `schedule` (when to switch, what each phase means, the
LR factor), `loop` (the loop around a step function, loss bookkeeping), `artifacts` (the one checkpoint
format, the final model and its verification), `sampling` (patch keys). This module wires them to the
optimizer, the data loaders, the log and the run folder.

Exact resume: every random choice of the data comes from the patch keys (`sampling`), and the checkpoint
holds everything else that changes (model, optimizer, scheduler, EMA, BN phase, RNG states, history).

Constructing a `Trainer` has no global side effects; seeding the global RNG, the thread count, the run
folder's `config.yaml` and log files happen when `run()` first starts (`start()`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from repsr.blocks import BNMode, RepBlock
from repsr.data import EvalPair, build_train_set
from repsr.errors import ConfigError, first_line
from repsr.network import ModelSpec, PlainSR, RepNet, build_network, reparameterize_model
from repsr.network import config_has_bn as model_has_bn
from repsr.phase import set_merged_training
from repsr.precision import autocast_bf16_default, device_capabilities
from repsr.serialization import load_model, save_model
from repsr.training import checkpoint as ckpt
from repsr.training.artifacts import (
    BEST_MODEL,
    DEPLOYED_MODEL,
    FINAL_CHECKPOINT,
    TrainingError,
    checkpoint_state,
    write_final,
)
from repsr.training.bn_switch import switch_to_population_statistics
from repsr.training.config import TrainConfig, save_config
from repsr.training.distributed import Distributed
from repsr.training.ema import ModelEMA
from repsr.training.lock import RunLock
from repsr.training.loop import LossMeter, run_steps
from repsr.training.run_log import RunLog
from repsr.training.sampling import PRECISE_STREAM, TRAIN_STREAM, KeyBatches
from repsr.training.schedule import PhaseSchedule, lr_factor
from repsr.training.validation import build_eval_sets, evaluate

__all__ = [
    "BEST_MODEL",
    "DEPLOYED_MODEL",
    "FINAL_CHECKPOINT",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "TrainResult",
    "build_network",  # re-exported: repsr.network's since issue 13 (demo and benchmark import it here)
    "build_train_set",
    "model_has_bn",
    "train",
]

log = logging.getLogger("repsr.training")


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


# -------------------------------------------------------------------------------------------- trainer


class TrainingInterrupted(TrainingError):
    """SIGINT/SIGTERM stopped a run after finishing a step; `checkpoint` holds that step's state."""

    def __init__(self, message: str, *, checkpoint: Path | None, iteration: int, signum: int) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.iteration = iteration
        self.signum = signum


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
        val_paths = {k: v for k, v in (val or {}).items() if isinstance(v, str | Path)}
        config = dataclasses.replace(
            config,
            data=dataclasses.replace(
                config.data, root=str(data) if isinstance(data, str | Path) else config.data.root
            ),
            val=dataclasses.replace(
                config.val, sets={**config.val.sets, **{k: str(v) for k, v in val_paths.items()}}
            ),
        )
        self.config = config
        self.progress = progress
        self.dtype = dtype
        self.dist = dist_info or Distributed.from_env(config.device)
        self.device = self.dist.device
        self.run_dir = Path(out) if out is not None else Path("runs") / config.name
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.total = config.train.iterations
        self.schedule = PhaseSchedule.from_config(config)
        channels_last = config.train.channels_last
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        if config.train.amp is None:  # "auto": decided here, recorded in config.yaml and checkpoints
            amp = autocast_bf16_default(self.device, dtype)
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, amp=amp))
            self.config = config
            if self.dist.is_main:
                found = device_capabilities(self.device).describe()
                log.info("train.amp auto: bf16 autocast %s (%s)", "on" if amp else "off", found)

        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the global RNG is left as it was
            torch.manual_seed(config.seed)  # the initial weights are a function of the seed
            self.model = build_network(config).to(device=self.device, dtype=dtype)
            self._rng = ckpt.rng_state()  # what the global RNG starts from in run() (a resume replaces it)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=config.train.lr,
            betas=tuple(config.train.betas),
            weight_decay=config.train.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(config, step)
        )
        self.ema = ModelEMA(self.model, config.ema.decay) if config.ema.enabled else None
        self.iteration = 0
        self.bn_phase = self.schedule.initial
        self.best: dict[str, Any] | None = None
        self.seconds = 0.0
        self._history: list[dict[str, Any]] = []
        self.log: RunLog | None = None  # opened by start()
        self._threads_before: int | None = None
        self._saved_at: int | None = None
        self._stop_signal: int | None = None

        state = self._load_resume_state() if resume else None
        if state is None and config.train.init:
            self.model.load_state_dict(initial_weights(config.train.init, self.model.spec))
        if not resume and self.dist.is_main and ckpt.list_checkpoints(self.checkpoint_dir):
            raise ConfigError(
                f"{self.run_dir} already holds checkpoints; pass --resume to continue that run "
                "or --out to start a new one"
            )
        if state is not None:
            self._restore(state)
        self._apply_phase()

        self.train_set = build_train_set(config, data)
        if len(self.train_set) == 0:
            raise ConfigError("data: the training set is empty")
        self.eval_sets = self._eval_sets(val) if self.dist.is_main else {}  # only rank 0 validates
        self._set_memory_format()
        self._wrap()

    @property
    def switch_at(self) -> int | None:
        """The iteration count after which BN statistics freeze (None: no switch in this run)."""
        return self.schedule.switch_at

    def start(self) -> None:
        """What a run does before its first step (once; `run()` calls it): the global RNG state, the
        thread count, the run folder with its `config.yaml` and the log files."""
        if self.log is not None:
            return
        ckpt.restore_rng_state(self._rng)
        self._threads_before = torch.get_num_threads()
        if self.config.train.threads:
            torch.set_num_threads(self.config.train.threads)
        if self.dist.is_main:
            self._lock = RunLock(self.run_dir)  # one run per folder, before anything is written
            note = self._lock.acquire()
            if note:
                log.warning(note)
            save_config(self.config, self.run_dir / "config.yaml")
        self.log = RunLog(
            self.run_dir if self.dist.is_main else None,
            [f"{name}/{m}" for name in self.eval_sets for m in ("psnr", "ssim")],
            tensorboard=self.config.log.tensorboard,
            history=self._history,
            start_iteration=self.iteration,
        )

    def _eval_sets(self, val: dict[str, Path | Iterable[EvalPair]] | None) -> dict[str, Iterable[EvalPair]]:
        """Folders from `val.sets` (which include `val`'s folders), ready sets from `val`, else samples."""
        config = self.config
        sets: dict[str, Iterable[EvalPair]] = dict(
            build_eval_sets(
                {name: Path(root) for name, root in config.val.sets.items()},
                config.model.scale,
                sample=config.val.sample and val is None,
                crop_border=config.model.scale if config.val.crop_border is None else config.val.crop_border,
            )
        )
        sets.update({k: v for k, v in (val or {}).items() if not isinstance(v, str | Path)})
        return sets

    # ------------------------------------------------------------------------------------- state

    def _load_resume_state(self) -> dict[str, Any] | None:
        found, refusal = None, None
        if self.dist.is_main:
            for stray in ckpt.remove_stray_temp_files(self.run_dir):
                log.info("--resume: removed %s (left by a run stopped while writing it)", stray)
            found = ckpt.newest_valid_checkpoint(self.checkpoint_dir)
            if found is None:
                refusal = self._nothing_to_resume()
        path, refusal = self.dist.broadcast_object((str(found[0]) if found else None, refusal))
        if refusal is not None:
            raise ConfigError(refusal)
        if path is None:
            if self.dist.is_main:
                log.info("--resume: no checkpoint in %s, starting from scratch", self.checkpoint_dir)
            return None
        state = found[1] if found else ckpt.read_checkpoint(Path(path))
        if ModelSpec.from_dict(state["spec"]) != self.model.spec:
            raise ConfigError(
                f"{path}: the checkpoint holds model {state['spec']} but the config describes "
                f"{self.model.spec.to_dict()}; resume with the run's own config ({self.run_dir}/config.yaml)"
            )
        if self.dist.is_main:
            changed = _changed_keys(state["config"], self.config.to_dict())
            if changed:
                log.warning(
                    "--resume: config differs from the checkpoint's in %s; the run continues with the "
                    "checkpoint's optimizer and learning-rate schedule (a new train.lr is not applied: "
                    "start a new run with --init CHECKPOINT for that)",
                    ", ".join(changed),
                )
            log.info("resuming from %s (iteration %d)", path, state["iteration"])
        return state

    def _nothing_to_resume(self) -> str | None:
        """Why `--resume` must not start from scratch here (an earlier run's files), or None."""
        unusable = [path.name for _, path in ckpt.list_checkpoints(self.checkpoint_dir)]
        earlier = [
            name
            for name in ("metrics.csv", "final.pt", "model.safetensors")
            if (self.run_dir / name).exists()
        ]
        if not unusable and not earlier:
            return None
        what = (
            f"{len(unusable)} unusable checkpoint(s) (non-finite or corrupt)" if unusable else "no checkpoint"
        )
        return (
            f"--resume: {self.checkpoint_dir} has {what} but {self.run_dir} holds an earlier run "
            f"({', '.join(earlier or unusable[:3])}); not training from scratch over it: choose a new --out, "
            "or delete the folder to start again"
        )

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema = ModelEMA(self.model, self.config.ema.decay)
        self.iteration = int(state["iteration"])
        self.bn_phase = BNMode(state["bn_phase"])
        self.best = state.get("best")
        self.seconds = float(state.get("seconds", 0.0))
        self._rng = state["rng"]
        self._history = list(state.get("history", []))

    def _apply_phase(self) -> None:
        """Put the model in the configuration its BN phase needs (also after a resume)."""
        self.schedule.apply(self.model, self.bn_phase, distributed=self.dist.enabled)

    def _set_memory_format(self) -> None:
        """Channels-last weights (when on), except branch weights that only feed a merged kernel."""
        if not self.channels_last:
            return
        self.model.to(memory_format=torch.channels_last)
        for module in self.model.modules():
            if isinstance(module, RepBlock) and module.merged_training:
                module.to(memory_format=torch.contiguous_format)  # their gradients come out contiguous

    def _wrap(self) -> None:
        """The module the training forward goes through: DDP and/or torch.compile around the model."""
        module: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device] if self.device.type == "cuda" else None
            module = DistributedDataParallel(self.model, device_ids=device_ids)
        if self.config.train.compile:
            module = torch.compile(module)
        self.forward_model = module

    def _checkpoint_state(self) -> dict[str, Any]:
        return checkpoint_state(
            self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            ema=self.ema,
            iteration=self.iteration,
            bn_phase=self.bn_phase,
            rng=ckpt.rng_state(),
            config=self.config.to_dict(),
            history=self.log.history if self.log is not None else self._history,
            best=self.best,
            seconds=self.seconds,
        )

    # ------------------------------------------------------------------------------------- data

    def _loader(self, stream: int, start: int, stop: int) -> DataLoader:
        workers = self.config.data.workers
        return DataLoader(
            self.train_set,
            batch_sampler=KeyBatches(
                self.config.seed, stream, self.dist.rank, self.config.train.batch_size, start, stop
            ),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )

    def _to_device(self, x: Tensor) -> Tensor:
        x = x.to(self.device, self.dtype, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # ------------------------------------------------------------------------------------- steps

    def train_step(self, lr_patch: Tensor, hr_patch: Tensor) -> Tensor:
        """One optimisation step on a batch; returns the (detached) loss."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.train.amp):
            sr = self.forward_model(lr_patch)
        sr = sr.to(hr_patch.dtype)
        if self.config.train.loss == "l1":
            loss = F.l1_loss(sr, hr_patch)
        else:
            loss = F.mse_loss(sr, hr_patch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.train.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach()

    def switch_bn(self) -> None:
        """The BN switch: precise population statistics, frozen; phase 2 runs in merged form."""
        config = self.config.bn
        started = time.perf_counter()
        batches = None
        if config.precise_batches:
            loader = self._loader(PRECISE_STREAM, 0, config.precise_batches)
            batches = (self._to_device(lr_patch) for lr_patch, _ in loader)
        report = switch_to_population_statistics(
            self.model, batches, self.dist, freeze_affine=config.freeze_affine
        )
        self.bn_phase = BNMode.FROZEN
        if self.ema is not None:
            self.ema.copy_buffers(self.model)
        self._apply_phase()
        self._set_memory_format()
        self._wrap()
        if self.dist.is_main:
            how = (
                f"recomputed over {report.batches} batches (vs the running averages: mean shift "
                f"{report.mean_shift:.3f} std, variance ratio {report.var_ratio:.3f})"
                if report.batches
                else "taken from the running averages"
            )
            log.info(
                "BN switch after iteration %d: population statistics of %d BN layers %s, now frozen%s; "
                "training continues %s (%.1fs)",
                self.iteration,
                report.layers,
                how,
                " with gamma/beta" if config.freeze_affine else "",
                "in merged form" if config.merged_training else "in branch form",
                time.perf_counter() - started,
            )

    # --------------------------------------------------------------------------------------- loop

    def run(self, until: int | None = None) -> TrainResult | None:
        """Train to the end (returns the result, closes the run) or until iteration `until` (returns None).

        After a partial run, call `run()` again to go on, or `close()` to abandon the trainer.
        """
        stop = self.total if until is None else min(until, self.total)
        try:
            self.start()
            with self._stop_on_signals():
                self._loop(stop)
            if self.iteration < self.total:
                return None
            result = self._finish()
        except BaseException:
            self.close()
            raise
        self.close()
        return result

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM: finish the current step, save a checkpoint, raise `TrainingInterrupted`; a
        second signal aborts at once (KeyboardInterrupt). Only in the main thread (signals go there)."""
        self._stop_signal: int | None = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signums = [signal.SIGINT, signal.SIGTERM]
        previous = {signum: signal.getsignal(signum) for signum in signums}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                restore()
                raise KeyboardInterrupt
            self._stop_signal = signum
            log.warning(
                "%s: finishing iteration %d, then saving a checkpoint (press Ctrl-C again to abort at once)",
                signal.Signals(signum).name,
                self.iteration + 1,
            )

        for signum in signums:
            signal.signal(signum, handler)
        try:
            yield
        finally:
            restore()

    def _stop_requested(self) -> bool:
        """Whether a signal asked this run (any process of it) to stop after the current step."""
        asked = getattr(self, "_stop_signal", None) is not None
        if not self.dist.enabled:
            return asked
        if self.iteration % self.config.log.every:  # processes agree on it at the log interval
            return False
        flag = torch.tensor(float(asked), device=self.device)
        return bool(self.dist.all_reduce_sum(flag) > 0)

    def _interrupt(self) -> None:
        """Save this iteration's state (unless just saved) and raise `TrainingInterrupted`."""
        signum = self._stop_signal if self._stop_signal is not None else signal.SIGTERM
        self.log.flush()
        saved = ckpt.checkpoint_path(self.checkpoint_dir, self.iteration)
        if not (saved.is_file() and self._saved_at == self.iteration):
            saved = self.save_checkpoint()
        name = signal.Signals(signum).name
        raise TrainingInterrupted(
            f"interrupted ({name}) after iteration {self.iteration}; checkpoint {saved} written",
            checkpoint=saved,
            iteration=self.iteration,
            signum=signum,
        )

    def close(self) -> None:
        """Close the log files and restore the thread setting; the trainer cannot log afterwards."""
        if self.log is not None:
            self.log.close()
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)

    @contextlib.contextmanager
    def _progress_bar(self, stop: int) -> Iterator[Any]:
        """A tqdm bar on rank 0 (iterations/s, ETA, loss, LR), with log lines routed around it."""
        if not (self.progress and self.dist.is_main and self.iteration < stop):
            yield None
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        bar = tqdm(total=self.total, initial=self.iteration, unit="it", dynamic_ncols=True, smoothing=0.05)
        try:
            with logging_redirect_tqdm(loggers=[logging.getLogger()]):
                yield bar
        finally:
            bar.close()

    def _tick(self) -> None:
        """Add the wall time since the last tick to `seconds` (training time, validation included)."""
        now = time.perf_counter()
        self.seconds += now - self._last_tick
        self._last_tick = now

    def _switch_if_due(self) -> None:
        """The one place the BN switch is triggered: before a step, or at the end, once it is due."""
        if self.schedule.switch_due(self.bn_phase, self.iteration):
            self.switch_bn()

    def _loop(self, stop: int) -> None:
        self._losses = LossMeter(self.device)
        self._checked_at = self.iteration
        self.model.train()
        if self.iteration >= stop:
            return
        batches = self._guarded(iter(self._loader(TRAIN_STREAM, self.iteration, self.total)))
        self._last_tick = time.perf_counter()

        def step(batch: tuple[Tensor, Tensor]) -> Tensor:
            lr_patch, hr_patch = batch
            return self.train_step(self._to_device(lr_patch), self._to_device(hr_patch))

        with self._progress_bar(stop) as bar:

            def after(iteration: int, loss: Tensor) -> None:
                self._losses.add(loss)
                self.iteration = iteration
                if bar is not None:
                    bar.update(1)
                self._after_step(bar)
                if iteration < stop and self._stop_requested():
                    self._interrupt()

            before = lambda _: self._switch_if_due()  # noqa: E731
            run_steps(self.iteration, stop, batches, step, before=before, after=after)
        self._tick()

    def _guarded(self, batches: Iterator[Any]) -> Iterator[Any]:
        """`batches`, but a loader failing after a stop signal (Ctrl-C also reaches the data workers,
        which then exit) stops the run like the signal does, with the last finished step saved."""
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception:
                if self._stop_signal is not None:
                    self._interrupt()
                raise
            yield batch

    def _after_step(self, bar: Any) -> None:
        """What happens between iterations: log, the switch at the very end, validation, checkpoint."""
        it, config = self.iteration, self.config
        last = it == self.total
        if it % config.log.every == 0 or last:
            self._tick()
            self._check_finite()
            mean_loss = self._losses.mean(self.dist)
            lr = config.train.lr * lr_factor(config, it - 1)  # the rate of the step just taken
            phase = str(self.bn_phase)
            self.log.record(it, loss=mean_loss, lr=lr, bn_phase=phase, seconds=round(self.seconds, 3))
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", bn=phase)
            if self.dist.is_main:
                log.info("iter %d/%d loss %.5f lr %.3e bn %s", it, self.total, mean_loss, lr, phase)
        if last:
            self._switch_if_due()  # bn.switch_at 1.0: precise statistics for the delivered model
        if (config.val.every and it % config.val.every == 0) or last:
            try:
                self.validate()
            except Exception as error:  # keep this iteration's state before reporting
                self.log.flush()
                saved = self.save_checkpoint()
                kept = f"checkpoint {saved} written; " if saved is not None else ""
                raise TrainingError(
                    f"validation failed at iteration {it} ({first_line(error)}); {kept}fix the validation "
                    "data and continue with --resume"
                ) from error
        self.log.flush()  # before the checkpoint, which stores the history
        if it % config.checkpoint.every == 0 or last:
            self._tick()
            self.save_checkpoint()

    def _check_finite(self) -> None:
        """Stop the run if any loss since the last check was NaN/inf (on any process)."""
        if self._checked_at == self.iteration:
            return
        since, self._checked_at = self._checked_at, self.iteration
        if self._losses.any_bad(self.dist):
            raise TrainingError(
                f"the loss became non-finite in iterations {since + 1}-{self.iteration}; "
                f"stopped without saving ({self._last_good()}); try a lower train.lr or train.grad_clip"
            )

    def _last_good(self) -> str:
        """Which checkpoint a diverged run can resume from (checked: every tensor finite), in words."""
        found = ckpt.newest_valid_checkpoint(self.checkpoint_dir) if self.dist.is_main else None
        if found is None:
            return "no usable checkpoint was written"
        return f"the last good checkpoint is {found[0]}; --resume continues from it"

    def _diverged(self, what: str) -> TrainingError:
        return TrainingError(
            f"training diverged: {what}; stopped without saving ({self._last_good()}); "
            "try a lower train.lr or train.grad_clip"
        )

    def validate(self) -> dict[str, float]:
        """Validate the deployed form of the delivered model (EMA if enabled); keep the best."""
        if not self.dist.is_main or not self.eval_sets:
            return {}
        self.start()
        delivered = self.ema.module if self.ema is not None else self.model
        started = time.perf_counter()
        crop = self.config.val.crop_border
        results = evaluate(
            delivered,
            self.eval_sets,
            crop_border=self.config.model.scale if crop is None else crop,
            y_channel=self.config.val.y_channel,
            device=self.device,
        )
        self.log.record(self.iteration, **results)
        text = ", ".join(
            f"{k.split('/')[0]} {results[k]:.3f} dB / {results[k[:-4] + 'ssim']:.4f}"
            for k in results
            if k.endswith("/psnr")
        )
        log.info(
            "validation at iteration %d (deployed form): %s (%.1fs)",
            self.iteration,
            text,
            time.perf_counter() - started,
        )
        metric = next((k for k in results if k.endswith("/psnr")), None)
        if metric is not None and (self.best is None or results[metric] > self.best["value"]):
            self.best = {"metric": metric, "value": results[metric], "iteration": self.iteration}
            save_model(reparameterize_model(delivered).cpu().float(), self.run_dir / BEST_MODEL)
        return results

    def save_checkpoint(self) -> Path | None:
        """Write a full checkpoint of the current iteration (rank 0), after checking the loss."""
        self._check_finite()
        if not self.dist.is_main:
            return None
        try:
            path = ckpt.save_checkpoint(
                self._checkpoint_state(), self.checkpoint_dir, self.config.checkpoint.keep
            )
        except ckpt.NonFiniteState as error:
            raise self._diverged(str(error)) from None
        self._saved_at = self.iteration
        log.debug("checkpoint %s", path)
        return path

    def _finish(self) -> TrainResult:
        """Final artifacts: `final.pt` (the delivered training form) and the verified `model.safetensors`."""
        self._switch_if_due()  # bn.switch_at 1.0 when the last step's switch did not run
        delivered = self.ema.module if self.ema is not None else self.model
        set_merged_training(delivered, False)
        delivered.eval()
        plain = reparameterize_model(delivered)
        model_path = self.run_dir / DEPLOYED_MODEL
        final_path = self.run_dir / FINAL_CHECKPOINT
        if self.dist.is_main:
            final = checkpoint_state(
                delivered,
                iteration=self.iteration,
                bn_phase=self.bn_phase,
                config=self.config.to_dict(),
                history=list(self.log.history),
                best=self.best,
                seconds=self.seconds,
                weights="ema" if self.ema is not None else "model",
                dtype=torch.float32,
            )
            bad = ckpt.non_finite(final)
            if bad is not None:
                raise self._diverged(f"{bad} of the delivered model is not finite")
            final_path, model_path, error = write_final(self.run_dir, final, delivered, plain)
            log.info(
                "done: %d iterations in %.0fs; deployed %s (max deviation from the training form %.1e)",
                self.iteration,
                self.seconds,
                model_path,
                error,
            )
        self.dist.barrier()
        return TrainResult(
            run_dir=self.run_dir,
            model=delivered,
            plain=plain,
            history=list(self.log.history),
            train_seconds=self.seconds,
            model_path=model_path,
            checkpoint_path=final_path,
            best=self.best,
        )


def initial_weights(reference: str | Path, spec: ModelSpec) -> dict[str, Tensor]:
    """The training-form weights `train.init` names (fine-tuning): a shipped model's training form
    (`repsr-m4c16-x4`) or a training-form file (checkpoint, `final.pt`, `NAME.train.safetensors`).

    The file's spec must equal the config's; a deployed plain network cannot start training (its
    branches are gone). Both are `ConfigError`s naming the file.
    """
    from repsr.pretrained import resolve_model

    path = resolve_model(reference, training_form=True)
    source = load_model(path)
    if not isinstance(source, RepNet):
        raise ConfigError(
            f"train.init {path}: a deployed plain network cannot start training; give a training-form "
            "model (a checkpoint, final.pt, NAME.train.safetensors or a shipped model's name)"
        )
    if source.spec != spec:
        raise ConfigError(
            f"train.init {path}: holds model {source.spec.to_dict()} but the config describes "
            f"{spec.to_dict()}; set model.* to match it"
        )
    return source.state_dict()


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "sets":
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(prefix + key)
    return changed


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
