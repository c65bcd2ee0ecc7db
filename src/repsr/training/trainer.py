"""The training loop: RepSR's recipe with the BN switch, merged-form phase 2, checkpoints and DDP.

Phases of a `bn.mode: switch` run:
1. iterations [0, switch): multi-branch blocks, BN on mini-batch statistics (optionally synchronised
   across processes);
2. at the switch: precise population statistics over `bn.precise_batches` batches, frozen;
3. iterations [switch, end): BN frozen, so each block is linear and (by default) runs as one 3x3 conv
   merged differentiably from its branch parameters: the same training at about the plain net's cost.
At the end the (EMA of the) training form is re-parameterized into the plain network, verified against
the training form, and saved as `model.safetensors`.

Exact resume: every random choice of the data comes from the patch keys, and the keys of iteration i are
drawn from a generator seeded with (seed, rank, i). Resuming at iteration N therefore sees exactly the
batches the uninterrupted run saw, regardless of DataLoader workers and prefetching, and the checkpoint
holds everything else that changes (model, optimizer, scheduler, EMA, BN phase, RNG states, history).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from repsr.blocks import BLOCKS, RepBlock
from repsr.data import EvalPair
from repsr.errors import ConfigError, RepsrError
from repsr.network import ModelSpec, PlainSR, RepNet, build_model, reparameterize_model, set_merged_training
from repsr.phase import Phase, set_phase
from repsr.serialization import atomic_write, load_model, save_model
from repsr.training import checkpoint as ckpt
from repsr.training.bn_switch import switch_to_population_statistics
from repsr.training.config import TrainConfig, save_config
from repsr.training.distributed import Distributed, disable_sync_bn, enable_sync_bn
from repsr.training.ema import ModelEMA
from repsr.training.run_log import RunLog
from repsr.training.validation import build_eval_sets, evaluate

log = logging.getLogger("repsr.training")

TRAIN_STREAM, PRECISE_STREAM = 0, 1
FINAL_CHECKPOINT = "final.pt"
DEPLOYED_MODEL = "model.safetensors"
BEST_MODEL = "best.safetensors"


class TrainingError(RepsrError):
    """A run that cannot go on (non-finite loss, a merge that does not verify)."""


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


# ------------------------------------------------------------------------------------------ patch keys


def _stream_seed(seed: int, stream: int, rank: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{stream}/{rank}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def patch_keys(seed: int, stream: int, rank: int, index: int, batch_size: int) -> list[int]:
    """The patch keys of batch `index`: a pure function of its arguments (what makes resume exact)."""
    generator = torch.Generator().manual_seed(_stream_seed(seed, stream, rank, index))
    return torch.randint(0, 2**62, (batch_size,), generator=generator).tolist()


class KeyBatches(Sampler[list[int]]):
    """Batches of patch keys for batch indices [start, stop) of one (seed, stream, rank)."""

    def __init__(self, seed: int, stream: int, rank: int, batch_size: int, start: int, stop: int) -> None:
        self.seed, self.stream, self.rank = seed, stream, rank
        self.batch_size, self.start, self.stop = batch_size, start, stop

    def __iter__(self) -> Iterator[list[int]]:
        for index in range(self.start, self.stop):
            yield patch_keys(self.seed, self.stream, self.rank, index, self.batch_size)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


# ----------------------------------------------------------------------------------------- LR schedule


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


# -------------------------------------------------------------------------------------------- helpers


def model_has_bn(config: TrainConfig) -> bool:
    """Whether the configured network has BN at all (the `plain` and `ecb` blocks never do)."""
    return config.bn.mode != "none" and BLOCKS[config.model.block].has_bn


def build_network(config: TrainConfig) -> RepNet:
    """The training-form network the config describes (BN in batch mode unless `bn.mode` is none)."""
    m = config.model
    options = m.block_options()
    if BLOCKS[m.block].has_bn:
        options["bn_mode"] = "batch" if model_has_bn(config) else "none"
    return build_model(
        m.block,
        scale=m.scale,
        num_blocks=m.num_blocks,
        channels=m.channels,
        in_channels=m.in_channels,
        **options,
    )


def build_train_set(config: TrainConfig, data: Path | Dataset | None) -> Dataset:
    """Training patches from `data` (a folder/file, or a ready dataset), `data.root`, or the samples."""
    if isinstance(data, Dataset):
        return data
    from repsr.data import TrainPatches, sample_images

    root: Any = data if data is not None else config.data.root
    hr = Path(root) if root is not None else sample_images()["train"]
    return TrainPatches(
        hr,
        config.model.scale,
        config.data.patch_size,
        lr=config.data.lr_root,
        cache_dir=config.data.cache_dir,
        augment=config.data.augment,
        y_channel=config.model.in_channels == 1,
    )


def _verify_plain(model: RepNet, plain_path: Path) -> float:
    """Check the saved plain model against the training form; returns the float32 max error."""
    reference = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    set_merged_training(reference, False)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, model.spec.in_channels, 19, 23, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        exact = (reference(x) - reparameterize_model(reference)(x)).abs().max().item()
        saved = load_model(plain_path)
        err32 = (reference.float()(x.float()) - saved(x.float())).abs().max().item()
    if not exact <= 1e-8 or not err32 <= 1e-3:
        raise TrainingError(
            f"{plain_path}: the deployed model does not match the training form "
            f"(float64 error {exact:.2e}, float32 error {err32:.2e})"
        )
    return err32


# -------------------------------------------------------------------------------------------- trainer


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
        self.switch_at = config.switch_iteration if model_has_bn(config) else None
        channels_last = config.train.channels_last
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last

        torch.manual_seed(config.seed)
        self.model = build_network(config).to(device=self.device, dtype=dtype)
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
        self.bn_phase = "batch" if model_has_bn(config) else "none"
        self.best: dict[str, Any] | None = None
        self.seconds = 0.0
        history: list[dict[str, Any]] = []

        state = self._load_resume_state() if resume else None
        if not resume and self.dist.is_main and ckpt.list_checkpoints(self.checkpoint_dir):
            raise ConfigError(
                f"{self.run_dir} already holds checkpoints; pass --resume to continue that run "
                "or --out to start a new one"
            )
        if state is not None:
            history = self._restore(state)
        self._apply_phase()

        self.train_set = build_train_set(config, data)
        if len(self.train_set) == 0:
            raise ConfigError("data: the training set is empty")
        self.eval_sets = self._eval_sets(val) if self.dist.is_main else {}  # only rank 0 validates
        metric_columns = [f"{name}/{m}" for name in self.eval_sets for m in ("psnr", "ssim")]

        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml")
        self._set_memory_format()
        self.log = RunLog(
            self.run_dir if self.dist.is_main else None,
            metric_columns,
            tensorboard=config.log.tensorboard,
            history=history,
            start_iteration=self.iteration,
        )
        self._threads_before = torch.get_num_threads()
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self._wrap()

    def _eval_sets(self, val: dict[str, Path | Iterable[EvalPair]] | None) -> dict[str, Iterable[EvalPair]]:
        """Folders from `val.sets` (which include `val`'s folders), ready sets from `val`, else samples."""
        config = self.config
        sets: dict[str, Iterable[EvalPair]] = dict(
            build_eval_sets(
                {name: Path(root) for name, root in config.val.sets.items()},
                config.model.scale,
                sample=config.val.sample and val is None,
            )
        )
        sets.update({k: v for k, v in (val or {}).items() if not isinstance(v, str | Path)})
        return sets

    # ------------------------------------------------------------------------------------- state

    def _load_resume_state(self) -> dict[str, Any] | None:
        found = ckpt.newest_valid_checkpoint(self.checkpoint_dir) if self.dist.is_main else None
        path = self.dist.broadcast_object(str(found[0]) if found else None)
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
                log.warning("--resume: config differs from the checkpoint's in %s", ", ".join(changed))
            log.info("resuming from %s (iteration %d)", path, state["iteration"])
        return state

    def _restore(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema = ModelEMA(self.model, self.config.ema.decay)
        self.iteration = int(state["iteration"])
        self.bn_phase = str(state["bn_phase"])
        self.best = state.get("best")
        self.seconds = float(state.get("seconds", 0.0))
        ckpt.restore_rng_state(state["rng"])
        return list(state.get("history", []))

    def _apply_phase(self) -> None:
        """Put the model in the configuration its BN phase needs (also after a resume)."""
        if self.bn_phase == "batch":
            set_phase(self.model, Phase.BATCH_STATS)
            if self.config.bn.sync and self.dist.enabled:
                enable_sync_bn(self.model)
            return
        disable_sync_bn(self.model)
        bn = self.config.bn
        phase = Phase.MERGED if bn.merged_training else Phase.FROZEN_STATS
        set_phase(self.model, phase, train_affine=not (self.bn_phase == "frozen" and bn.freeze_affine))

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
        return {
            "format": ckpt.CHECKPOINT_FORMAT,
            "spec": self.model.spec.to_dict(),
            "model": {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "iteration": self.iteration,
            "bn_phase": self.bn_phase,
            "rng": ckpt.rng_state(),
            "config": self.config.to_dict(),
            "history": self.log.history,
            "best": self.best,
            "seconds": self.seconds,
        }

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
        self.bn_phase = "frozen"
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
            self._loop(stop)
            if self.iteration < self.total:
                return None
            result = self._finish()
        except BaseException:
            self.close()
            raise
        self.close()
        return result

    def close(self) -> None:
        """Close the log files and restore the thread setting; the trainer cannot log afterwards."""
        self.log.close()
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

    def _loop(self, stop: int) -> None:
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._loss_count = 0
        self._bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self._checked_at = self.iteration
        self.model.train()
        if self.iteration >= stop:
            return
        batches = iter(self._loader(TRAIN_STREAM, self.iteration, self.total))
        self._last_tick = time.perf_counter()
        with self._progress_bar(stop) as bar:
            while self.iteration < stop:
                if (
                    self.switch_at is not None
                    and self.bn_phase == "batch"
                    and self.iteration >= self.switch_at
                ):
                    self.switch_bn()
                lr_patch, hr_patch = next(batches)
                loss = self.train_step(self._to_device(lr_patch), self._to_device(hr_patch))
                self._bad |= ~torch.isfinite(loss)
                self._loss_sum += loss
                self._loss_count += 1
                self.iteration += 1
                if bar is not None:
                    bar.update(1)
                self._after_step(bar)
        self._tick()

    def _after_step(self, bar: Any) -> None:
        """What happens between iterations: log, the switch at the very end, validation, checkpoint."""
        it, config = self.iteration, self.config
        last = it == self.total
        if it % config.log.every == 0 or last:
            self._tick()
            self._check_finite()
            mean_loss = self._mean_loss(self._loss_sum, self._loss_count)
            self._loss_sum.zero_()
            self._loss_count = 0
            lr = config.train.lr * lr_factor(config, it - 1)  # the rate of the step just taken
            self.log.record(it, loss=mean_loss, lr=lr, bn_phase=self.bn_phase, seconds=round(self.seconds, 3))
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", bn=self.bn_phase)
            if self.dist.is_main:
                log.info("iter %d/%d loss %.5f lr %.3e bn %s", it, self.total, mean_loss, lr, self.bn_phase)
        if last and self.switch_at is not None and self.bn_phase == "batch":
            self.switch_bn()  # bn.switch_at 1.0: precise statistics for the delivered model
        if (config.val.every and it % config.val.every == 0) or last:
            self.validate()
        self.log.flush()  # before the checkpoint, which stores the history
        if it % config.checkpoint.every == 0 or last:
            self._tick()
            self.save_checkpoint()

    def _mean_loss(self, loss_sum: Tensor, count: int) -> float:
        packed = torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64, device=self.device)])
        packed = self.dist.all_reduce_sum(packed)
        return float(packed[0] / packed[1].clamp_min(1))

    def _check_finite(self) -> None:
        """Stop the run if any loss since the last check was NaN/inf (on any process)."""
        if self._checked_at == self.iteration:
            return
        bad = self.dist.all_reduce_sum(self._bad.to(torch.float32))
        since, self._checked_at = self._checked_at, self.iteration
        if bool(bad > 0):
            found = ckpt.list_checkpoints(self.checkpoint_dir)
            kept = f"the last good checkpoint is {found[0][1]}" if found else "no checkpoint was written yet"
            raise TrainingError(
                f"the loss became non-finite in iterations {since + 1}-{self.iteration}; "
                f"stopped without saving ({kept}); try a lower train.lr or train.grad_clip"
            )

    def validate(self) -> dict[str, float]:
        """Validate the deployed form of the delivered model (EMA if enabled); keep the best."""
        if not self.dist.is_main or not self.eval_sets:
            return {}
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
        path = ckpt.save_checkpoint(
            self._checkpoint_state(), self.checkpoint_dir, self.config.checkpoint.keep
        )
        log.debug("checkpoint %s", path)
        return path

    def _finish(self) -> TrainResult:
        """Final artifacts: training-form `final.pt` and the verified deployed `model.safetensors`."""
        if self.switch_at is not None and self.bn_phase == "batch":  # bn.switch_at: 1.0
            self.switch_bn()
        delivered = self.ema.module if self.ema is not None else self.model
        set_merged_training(delivered, False)
        delivered.eval()
        plain = reparameterize_model(delivered)
        model_path = self.run_dir / DEPLOYED_MODEL
        final_path = self.run_dir / FINAL_CHECKPOINT
        if self.dist.is_main:
            final = {
                "spec": delivered.spec.to_dict(),
                "model": {
                    k: v.detach().cpu().float().contiguous() for k, v in delivered.state_dict().items()
                },
                "config": self.config.to_dict(),
                "iteration": self.iteration,
                "bn_phase": self.bn_phase,
                "weights": "ema" if self.ema is not None else "model",
            }
            atomic_write(final_path, lambda tmp: torch.save(final, tmp))
            save_model(plain.cpu().float(), model_path)
            error = _verify_plain(delivered, model_path)
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
