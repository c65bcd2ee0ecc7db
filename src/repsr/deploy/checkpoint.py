"""`deploy`: a training-form checkpoint -> the plain network (safetensors or .pth), refused if the plain
network differs from the training form (in eval mode) by more than a tolerance.

Verification uses a crop of a built-in sample photograph (`repsr.data.samples.sample_images()`): random inputs
hide problems that only show on image statistics (e.g. values near the clamp range), and a crop keeps the
check to a fraction of a second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repsr.arch.equivalence import IMAGE_TOLERANCE, verify_equivalence
from repsr.arch.network import ModelSpec, PlainSR, reparameterize_model
from repsr.data.samples import verification_image
from repsr.models.files import read_model_file, save_model
from repsr.util.atomic import atomic_write, check_target
from repsr.util.errors import (
    ConfigError,
    EquivalenceError,
    ModelFileError,
    first_line,
)

DEPLOY_TOLERANCE = IMAGE_TOLERANCE

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- deploy


@dataclass
class DeployReport:
    """What `deploy` did: the spec, whether the input was already plain, and the measured difference."""

    source: Path
    target: Path
    spec: ModelSpec
    was_plain: bool
    max_abs_diff: float
    tolerance: float
    weights: str = "model"  # "ema" when a checkpoint's EMA weights were deployed
    warnings: list[str] = field(default_factory=list)  # e.g. a checkpoint from before the BN switch


def save_compact_pth(plain: PlainSR, path: str | Path) -> None:
    """Write `{"params": state_dict}`, the file layout Real-ESRGAN/BasicSR scripts load with
    `torch.load(...)["params"]` (no spec: readers infer it from the tensor shapes, as `load_model` does)."""
    if not isinstance(plain, PlainSR):
        raise TypeError(f"expected a PlainSR, got {type(plain).__name__}")
    state = {key: value.detach().cpu().contiguous() for key, value in plain.state_dict().items()}
    atomic_write(Path(path), lambda tmp: torch.save({"params": state}, tmp))


WEIGHTS_CHOICES = ("auto", "ema", "model")


def load_for_deploy(
    path: str | Path, weights: str = "auto", device: str | torch.device = "cpu"
) -> tuple[nn.Module, str]:
    """`load_model`, but a training checkpoint's EMA weights replace the raw ones when `weights` is
    `ema`, or `auto` and the checkpoint has them (the trainer also delivers EMA weights when enabled).
    Returns the model and which weights it carries (`ema` or `model`)."""
    model, used, _ = _load_for_deploy(path, weights, device)
    return model, used


def _load_for_deploy(
    path: str | Path, weights: str, device: str | torch.device
) -> tuple[nn.Module, str, dict[str, Any]]:
    """`load_for_deploy`, plus the checkpoint's other entries (empty for other files)."""
    if weights not in WEIGHTS_CHOICES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS_CHOICES)}, got {weights!r}")
    path = Path(path)
    model, extras = read_model_file(path, device=device)  # one read: model and a checkpoint's EMA
    ema = extras.get("ema") if weights != "model" else None
    if not isinstance(ema, dict) or not ema:
        if weights == "ema":
            raise ModelFileError(f"{path}: no EMA weights in this file (use --weights model)")
        return model, "model", extras
    try:
        model.load_state_dict(ema)
    except RuntimeError as error:
        raise ModelFileError(f"{path}: EMA weights do not fit the model ({first_line(error)})") from None
    if any(t.is_floating_point() and not torch.isfinite(t).all() for t in ema.values()):
        raise ModelFileError(f"{path}: EMA weights have non-finite values")
    return model.eval(), "ema", extras


def pre_switch_warning(path: Path, extras: dict[str, Any]) -> str | None:
    """The warning for a checkpoint saved before the BN switch (BN still on mini-batch statistics)."""
    recorded = str(extras.get("phase", extras.get("bn_phase", "")))  # bn_phase: files of older versions
    if recorded not in ("batch_stats", "batch"):
        return None
    iteration = extras.get("iteration")
    when = f" at iteration {iteration}" if iteration is not None else ""
    return (
        f"{path} was saved{when}, before the BN switch: its BN layers carry running averages of "
        "mini-batch statistics, not the precise population statistics the switch computes; the deployed "
        "model may show artifacts (deploy a checkpoint from after the switch, or final.pt)"
    )


def deploy(
    checkpoint: str | Path,
    output: str | Path,
    *,
    tolerance: float = DEPLOY_TOLERANCE,
    device: str | torch.device = "cpu",
    weights: str = "auto",
    overwrite: bool = False,
) -> DeployReport:
    """Re-parameterize `checkpoint` (any file `load_model` reads), verify on a photo crop, save plain.

    `output` ending in .safetensors gets the spec in its header (repsr, spandrel, chaiNNer read it);
    .pth gets the Real-ESRGAN/BasicSR `{"params": ...}` layout. `weights`: see `load_for_deploy`. An
    existing `output` is refused before any work unless `overwrite`.

    Raises `ModelFileError` and writes nothing when the plain network differs from the training form
    by more than `tolerance` (max abs difference on [0, 1] images).
    """
    source, target = Path(checkpoint), Path(output)
    if target.suffix not in (".safetensors", ".pth"):
        raise ConfigError(f"{target}: deployed models are written as .safetensors or .pth")
    check_target(target, what="deployed model", inputs=[source], overwrite=overwrite)
    model, used, extras = _load_for_deploy(source, weights, device)
    notes = [note] if (note := pre_switch_warning(source, extras)) else []
    for note in notes:
        log.warning("warning: %s", note)
    plain = reparameterize_model(model)
    x = verification_image(model.spec.in_channels)
    try:
        difference = verify_equivalence(model, plain, x, tolerance=tolerance)
    except EquivalenceError as error:
        raise EquivalenceError(f"{source}: {error}; nothing written") from None
    if target.suffix == ".pth":
        save_compact_pth(plain, target)
    else:
        save_model(plain, target)
    was_plain = isinstance(model, PlainSR)
    return DeployReport(
        source, target, plain.spec, was_plain, difference, tolerance, weights=used, warnings=notes
    )


__all__ = ["DeployReport", "deploy", "load_for_deploy", "save_compact_pth"]
