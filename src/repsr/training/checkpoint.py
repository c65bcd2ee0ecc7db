"""Training checkpoints: atomic, weights-only loadable, the last K kept, the newest valid one found.

A checkpoint is a `torch.save` dict of plain types only (tensors, dicts, lists, numbers, strings, None),
so `torch.load(path, weights_only=True)` reads it. Keys: `format`, `spec` (the model spec), `model`
(training-form state dict), `optimizer`, `scheduler`, `ema` (or None), `iteration`, `phase`, `rng`,
`config` and `history`, `best`, `seconds`, `weights`, `networks` (built by `artifacts.checkpoint_state`;
the run's `final.pt` has the same format with None for optimizer, scheduler, EMA and RNG). `networks`
holds the named networks besides the generator (GAN training's `discriminator`: `{name: {"kind",
"model", "optimizer", "scheduler"}}`), empty for a single-network run; files written before it have no
such key and load as single-network runs. `repsr.load_model` reads `spec` + `model` as a training-form
model. Files written before `weights` existed still load, and so do files that recorded `bn_phase`
(`batch`, `frozen`, `none`) instead of `phase`: `read_checkpoint` renames the key and
`schedule.PhaseSchedule.parse` reads either vocabulary.

Files are written with `atomic_write` (temp file, fsync, rename): a run killed while saving leaves the
previous checkpoints intact and at worst a stray temp file, which the next resume removes.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from repsr.models.files import atomic_write
from repsr.util.errors import TrainingError, first_line

CHECKPOINT_FORMAT = "repsr-train-checkpoint-1"
REQUIRED_KEYS = ("format", "spec", "model", "optimizer", "scheduler", "iteration", "phase", "config")
_NAME = re.compile(r"ckpt_(\d+)\.pt")

log = logging.getLogger("repsr.training")


def checkpoint_path(directory: Path, iteration: int) -> Path:
    return directory / f"ckpt_{iteration:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(iteration, path) of the checkpoint files in `directory`, newest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.fullmatch(p.name))]
    return sorted(found, reverse=True)


class NonFiniteState(ValueError):
    """A checkpoint that would hold NaN/inf (a diverged run): not written."""


def save_checkpoint(state: dict[str, Any], directory: Path, keep: int) -> Path:
    """Write `state` as the checkpoint of its iteration atomically, then drop all but the newest `keep`.

    Raises `NonFiniteState` (and writes nothing) if any tensor in `state` is NaN/inf: a checkpoint is
    only ever a state training can go on from."""
    path = checkpoint_path(directory, int(state["iteration"]))
    bad = non_finite(state)
    if bad is not None:
        raise NonFiniteState(f"{bad} is not finite at iteration {state['iteration']}")
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for _, old in list_checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check one checkpoint; raises ValueError (with the reason) for anything unusable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle errors, ... : torch raises many types
        raise ValueError(first_line(error)) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("not a repsr training checkpoint")
    if "phase" not in state and "bn_phase" in state:  # written before the phase vocabulary was one
        state["phase"] = state.pop("bn_phase")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    bad = non_finite(state)
    if bad is not None:
        raise ValueError(f"non-finite values in {bad}")
    return state


def non_finite(state: Any, prefix: str = "") -> str | None:
    """The key path of the first floating-point tensor with NaN/inf anywhere in `state` (weights, BN
    buffers, EMA, optimizer moments), or None when every tensor is finite."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
            return prefix or "<tensor>"
        return None
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        found = non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


# The run's own atomic writers leave `.NAME.XXXX.tmp` when killed mid-write (see `repsr.util.atomic`).
RUN_FILES = ("best.safetensors", "model.safetensors", "final.pt", "config.yaml", "metrics.csv")


def remove_stray_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files a killed run's writers left in `run_dir` and its `checkpoints/`."""
    strays: list[Path] = []
    if run_dir.is_dir():
        strays += [p for name in RUN_FILES for p in run_dir.glob(f".{name}.*.tmp")]
    if (run_dir / "checkpoints").is_dir():
        strays += list((run_dir / "checkpoints").glob(".ckpt_*.tmp"))
    for stray in strays:
        stray.unlink(missing_ok=True)
    return strays


def newest_valid_checkpoint(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `directory` that loads and checks out; broken ones are skipped (logged)."""
    for stray in directory.glob(".ckpt_*.tmp") if directory.is_dir() else ():
        stray.unlink(missing_ok=True)  # left by a run killed while writing
    for _, path in list_checkpoints(directory):
        try:
            return path, read_checkpoint(path)
        except ValueError as error:
            log.warning("skipping unusable checkpoint %s: %s", path, error)
    return None


def rng_state() -> dict[str, Any]:
    """The global RNG states (CPU and CUDA) as tensors."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def last_good(directory: Path, is_main: bool = True) -> str:
    """Which checkpoint a diverged run can resume from (checked: every tensor finite), in words."""
    found = newest_valid_checkpoint(directory) if is_main else None
    if found is None:
        return "no usable checkpoint was written"
    return f"the last good checkpoint is {found[0]}; --resume continues from it"


def diverged(what: str, directory: Path, is_main: bool = True) -> TrainingError:
    """The error of a run that diverged (`what` is not finite), naming the checkpoint to resume from."""
    resume = last_good(directory, is_main)
    advice = "try a lower train.lr or train.grad_clip"
    if what.startswith("the loss"):
        return TrainingError(f"{what}; stopped without saving ({resume}); {advice}")
    return TrainingError(f"training diverged: {what}; stopped without saving ({resume}); {advice}")
