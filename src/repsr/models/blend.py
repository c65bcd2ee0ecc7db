"""Denoise strength: one network between a detail-keeping and a denoising model of the same architecture.

Deep network interpolation (Wang et al., CVPR 2019; Real-ESRGAN's `-dn`): the weights of two models
fine-tuned from a common starting point are mixed once at load time, `w = (1 - s) * w_detail + s *
w_denoise`, which gives a plain network of the same size (no extra inference cost) whose behaviour moves
between the two. The shipped general models are fine-tuned from the clean models of the same size, and
`repsr.models.pretrained` registers that pair: `load_blended("repsr-general-m4c16-x4", 0.3)`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from repsr.arch.network import reparameterize_model
from repsr.models.files import load_model
from repsr.models.pretrained import PRETRAINED
from repsr.util.errors import ConfigError, ModelFileError

__all__ = ["blend_models", "blend_weights", "check_strength", "default_strength", "load_blended", "load_pair"]


def check_strength(strength: float) -> float:
    """`strength` as a float in [0, 1]; ConfigError naming --denoise otherwise."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--denoise: the strength must be a number between 0 and 1, got {strength!r} (a strength per "
            "image: --denoise auto, or repsr.inference.AutoDenoise in Python)"
        ) from None
    if not 0.0 <= value <= 1.0 or value != value:
        raise ConfigError(f"--denoise: the strength must be between 0 and 1, got {strength}")
    return value


def blend_weights(a: nn.Module, b: nn.Module, strength: float) -> nn.Module:
    """A copy of `a` with every floating-point parameter and buffer `(1 - strength) * a + strength * b`;
    the two must have the same state-dict keys and shapes (the same network in the same form)."""
    strength = check_strength(strength)
    state_b = b.state_dict()
    blended = copy.deepcopy(a)
    with torch.no_grad():
        for key, value in blended.state_dict().items():
            if key not in state_b or state_b[key].shape != value.shape:
                raise ModelFileError(f"cannot blend: '{key}' differs between the two models")
            if value.is_floating_point():
                value.lerp_(state_b[key].to(value.dtype), strength)
    return blended.eval()


def blend_models(detail: nn.Module, denoise: nn.Module, strength: float) -> nn.Module:
    """A new plain network with weights `(1 - strength) * detail + strength * denoise`.

    Both are re-parameterized first (a training form is merged), and must have the same spec (block
    options aside: the merged networks are what is mixed). ModelFileError when they differ.
    """
    strength = check_strength(strength)
    a, b = reparameterize_model(detail), reparameterize_model(denoise)
    spec_a, spec_b = a.spec, b.spec
    differ = [
        f"{key} {getattr(spec_a, key)} vs {getattr(spec_b, key)}"
        for key in ("scale", "num_blocks", "channels", "in_channels")
        if getattr(spec_a, key) != getattr(spec_b, key)
    ]
    if differ:
        raise ModelFileError(
            f"cannot blend {spec_a.name} with {spec_b.name}: the networks differ in shape "
            f"({', '.join(differ)})"
        )
    return blend_weights(a, b, strength)


def default_strength(model: str | Path) -> float | None:
    """The shipped default denoise strength of a registered general model, None for other models."""
    entry = PRETRAINED.get(str(model).lower())
    return entry.denoise_default if entry is not None and entry.denoise_partner else None


def load_pair(model: str | Path, detail: str | Path | None = None) -> tuple[nn.Module, nn.Module]:
    """(detail end, denoising end) of a blend: `detail` or the shipped partner of the shipped general
    `model`, and `model` itself, both loaded; ConfigError when there is no partner or one is an ONNX file."""
    entry = PRETRAINED.get(str(model).lower())
    partner = detail if detail is not None else (entry.denoise_partner if entry is not None else None)
    for end in (model, partner):
        if end is not None and str(end).lower().endswith(".onnx"):
            raise ConfigError(
                f"--denoise: {end} is an ONNX file, and blending mixes PyTorch weights; blend the models it "
                "was exported from, then export the blend"
            )
    if partner is None:
        raise ConfigError(
            f"--denoise: {model} has no registered detail partner; name one with --denoise-from MODEL "
            "(a model of the same size fine-tuned from the same start)"
        )
    return load_model(partner), load_model(model)


def load_blended(
    model: str | Path, strength: float | None = None, *, detail: str | Path | None = None
) -> nn.Module:
    """`model` (the denoising end, strength 1) blended with `detail` (strength 0) at `strength`.

    `detail` defaults to the shipped partner of a shipped general model (its clean model of the same
    size); `strength` defaults to that model's default. For other files both must be given.
    """
    ends = load_pair(model, detail)
    if strength is None:
        strength = default_strength(model)
        if strength is None:
            raise ConfigError(f"--denoise: {model} has no default strength; give one between 0 and 1")
    return blend_models(*ends, strength)
