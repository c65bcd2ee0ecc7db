"""`--resume`: which checkpoint a run continues from, or why it must not start from scratch.

Rank 0 looks (removing a killed run's stray temp files first), every rank gets the answer; the found
state must describe the config's model. Raises `ConfigError` for what the user must decide.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from repsr.arch.network import ModelSpec
from repsr.training import checkpoint as ckpt
from repsr.training.config import TrainConfig
from repsr.training.distributed import Distributed
from repsr.util.errors import ConfigError

__all__ = ["changed_keys", "find_resume_state", "refuse_fresh_start"]

log = logging.getLogger("repsr.training")


def find_resume_state(
    run_dir: Path, config: TrainConfig, spec: ModelSpec, dist: Distributed
) -> dict[str, Any] | None:
    """The newest valid checkpoint of `run_dir` (checked against `spec`), or None to start afresh."""
    checkpoints = run_dir / "checkpoints"
    found, refusal = None, None
    if dist.is_main:
        for stray in ckpt.remove_stray_temp_files(run_dir):
            log.info("--resume: removed %s (left by a run stopped while writing it)", stray)
        found = ckpt.newest_valid_checkpoint(checkpoints)
        if found is None:
            refusal = _nothing_to_resume(run_dir)
    path, refusal = dist.broadcast_object((str(found[0]) if found else None, refusal))
    if refusal is not None:
        raise ConfigError(refusal)
    if path is None:
        if dist.is_main:
            log.info("--resume: no checkpoint in %s, starting from scratch", checkpoints)
        return None
    state = found[1] if found else ckpt.read_checkpoint(Path(path))
    if ModelSpec.from_dict(state["spec"]) != spec:
        raise ConfigError(
            f"{path}: the checkpoint holds model {state['spec']} but the config describes "
            f"{spec.to_dict()}; resume with the run's own config ({run_dir}/config.yaml)"
        )
    if dist.is_main:
        changed = changed_keys(_with_defaults(state["config"]), config.to_dict())
        if changed:
            log.warning(
                "--resume: config differs from the checkpoint's in %s; the run continues with the "
                "checkpoint's optimizer and learning-rate schedule (a new train.lr is not applied: "
                "start a new run with --init CHECKPOINT for that)",
                ", ".join(changed),
            )
        log.info("resuming from %s (iteration %d)", path, state["iteration"])
    return state


def _with_defaults(recorded: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the keys of later versions filled in at their defaults (a file written
    before `train.losses` or `discriminator` existed trained as their defaults do), else as recorded."""
    try:
        return TrainConfig.from_dict(recorded).to_dict()
    except ConfigError:
        return recorded


def refuse_fresh_start(run_dir: Path, dist: Distributed) -> None:
    """A new run (no `--resume`) must not train over an earlier run's checkpoints."""
    if dist.is_main and ckpt.list_checkpoints(run_dir / "checkpoints"):
        raise ConfigError(
            f"{run_dir} already holds checkpoints; pass --resume to continue that run "
            "or --out to start a new one"
        )


def _nothing_to_resume(run_dir: Path) -> str | None:
    """Why `--resume` must not start from scratch here (an earlier run's files), or None."""
    checkpoints = run_dir / "checkpoints"
    unusable = [path.name for _, path in ckpt.list_checkpoints(checkpoints)]
    earlier = [name for name in ("metrics.csv", "final.pt", "model.safetensors") if (run_dir / name).exists()]
    if not unusable and not earlier:
        return None
    what = f"{len(unusable)} unusable checkpoint(s) (non-finite or corrupt)" if unusable else "no checkpoint"
    return (
        f"--resume: {checkpoints} has {what} but {run_dir} holds an earlier run "
        f"({', '.join(earlier or unusable[:3])}); not training from scratch over it: choose a new --out, "
        "or delete the folder to start again"
    )


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted config keys whose values differ between two `TrainConfig.to_dict()`s."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "sets":
            changed += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(prefix + key)
    return changed
