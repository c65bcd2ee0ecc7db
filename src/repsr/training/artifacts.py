"""What a run leaves behind: checkpoints in one format, the final model, and its verification.

Every checkpoint file, periodic (`checkpoints/ckpt_N.pt`) or final (`final.pt`), is one dict built by
`checkpoint_state` with the same keys and the same `format`; `final.pt` holds the delivered weights (the
EMA when enabled, float32) and no optimizer, scheduler, EMA or RNG state (those keys are None), and is
read by the same `checkpoint.read_checkpoint` (and by `repsr.load_model`). Building the dicts and
checking the deployed network touch no files; only `write_final` writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repsr.arch.equivalence import verify_equivalence
from repsr.arch.network import PlainSR, RepNet, reparameterize_model
from repsr.arch.phase import set_merged_training
from repsr.models.files import load_model, save_model
from repsr.training.checkpoint import CHECKPOINT_FORMAT, NonFiniteState, non_finite
from repsr.util.atomic import atomic_write
from repsr.util.errors import EquivalenceError, TrainingError

__all__ = ["BEST_MODEL", "DEPLOYED_MODEL", "FINAL_CHECKPOINT", "Delivered", "TrainingError", "deliver"]

FINAL_CHECKPOINT = "final.pt"
DEPLOYED_MODEL = "model.safetensors"
BEST_MODEL = "best.safetensors"


def _tensors(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    return {
        k: (
            v.detach().cpu() if dtype is None or not v.is_floating_point() else v.detach().cpu().to(dtype)
        ).contiguous()
        for k, v in model.state_dict().items()
    }


def checkpoint_state(
    model: RepNet,
    *,
    iteration: int,
    phase: str,
    config: dict[str, Any],
    history: list[dict[str, Any]],
    best: dict[str, Any] | None,
    seconds: float,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    ema: Any = None,
    rng: dict[str, Any] | None = None,
    weights: str = "model",
    dtype: torch.dtype | None = None,
    networks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one checkpoint format (plain types only, loadable with `weights_only=True`); `networks` holds
    the named networks besides the generator (`TrainState.networks`: GAN training's discriminator)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "spec": model.spec.to_dict(),
        "model": _tensors(model, dtype),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "iteration": iteration,
        "phase": str(phase),  # a `repsr.arch.phase.Phase` value
        "rng": rng,
        "config": config,
        "history": history,
        "best": best,
        "seconds": seconds,
        "weights": weights,  # what `model` holds: the raw weights or (final.pt) the EMA
        "networks": networks or {},  # {name: {"kind", "model", "optimizer", "scheduler"}}
    }


def verify_deployed(model: RepNet, plain: nn.Module) -> float:
    """Check a deployed plain network against the training form (`equivalence.verify_equivalence` on
    seeded random inputs: float64 merge exact, float32 within 1e-3); returns the float32 max error.
    Raises `TrainingError` otherwise."""
    try:
        return verify_equivalence(model, plain)
    except EquivalenceError as error:
        raise TrainingError(f"the deployed model does not match the training form: {error}") from None


def write_final(
    run_dir: Path, state: dict[str, Any], delivered: RepNet, plain: PlainSR
) -> tuple[Path, Path, float]:
    """Write `final.pt` (`state`) and `model.safetensors` (`plain`), then verify the saved model against
    the `delivered` training form; returns both paths and the float32 error."""
    final_path, model_path = run_dir / FINAL_CHECKPOINT, run_dir / DEPLOYED_MODEL
    atomic_write(final_path, lambda tmp: torch.save(state, tmp))
    save_model(plain.cpu().float(), model_path)
    try:
        error = verify_deployed(delivered, load_model(model_path))
    except TrainingError as failure:
        raise TrainingError(f"{model_path}: {failure}") from None
    return final_path, model_path, error


@dataclass
class Delivered:
    """A run's end product: the training form, its plain network and (rank 0) the files written."""

    model: RepNet
    plain: PlainSR
    checkpoint_path: Path
    model_path: Path
    error: float | None  # the saved model's float32 deviation from the training form (None: not written)


def deliver(model: RepNet, final_state: dict[str, Any] | None, run_dir: Path) -> Delivered:
    """Re-parameterize the delivered training form (branch form, eval mode) and, with a `final_state`
    (rank 0), write and verify `final.pt` and `model.safetensors`. A non-finite state raises
    `NonFiniteState` and writes nothing."""
    set_merged_training(model, False)
    model.eval()
    plain = reparameterize_model(model)
    final_path, model_path, error = run_dir / FINAL_CHECKPOINT, run_dir / DEPLOYED_MODEL, None
    if final_state is not None:
        bad = non_finite(final_state)
        if bad is not None:
            raise NonFiniteState(f"{bad} of the delivered model is not finite")
        final_path, model_path, error = write_final(run_dir, final_state, model, plain)
    return Delivered(model, plain, final_path, model_path, error)
