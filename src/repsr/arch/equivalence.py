"""One check that a converted network computes what its source computes, used wherever forms change hands.

`verify_equivalence(training, plain, inputs)` measures two things:
- the merge math, exactly: the training form and its own re-parameterization, both in float64, must
  agree within `exact_tolerance` (1e-8; the merge is exact algebra, float64 leaves only rounding);
- the delivered network: `plain` against the training form in `dtype` (float32), within `tolerance`.
It raises `EquivalenceError` naming which check failed and by how much, and returns the measured
deviation of `plain`. `max_deviation` is the bare measurement for any two callables (backends, ONNX).

Tolerances, by what is compared:
- `RANDOM_INPUT_TOLERANCE` (1e-3): uniform random inputs, the trainer's check of the model it saved;
- `IMAGE_TOLERANCE` (1e-4): a photograph crop in [0, 1], `repsr deploy` and `repsr export`;
- `BACKEND_TOLERANCE` (1e-3): another execution path of the same plain network, `repsr bench`;
- `MAX_PIXEL_LEVELS` (16): a reduced precision (int8, bf16) against fp32, the largest 8-bit pixel
  difference on photographs (`check_against_fp32`): the limit int8 files and `auto` hold to.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from repsr.image.metrics import signal_psnr
from repsr.image.pixels import to_integers
from repsr.util.errors import EquivalenceError

EXACT_TOLERANCE = 1e-8
RANDOM_INPUT_TOLERANCE = 1e-3
IMAGE_TOLERANCE = 1e-4
BACKEND_TOLERANCE = 1e-3
MAX_PIXEL_LEVELS = 16
RANDOM_INPUT_SHAPE = (2, 19, 23)  # (batch, height, width): odd sizes catch padding and shuffle slips


def deviation(expected: Tensor, actual: Tensor) -> float:
    """Largest |expected - actual| (NaN if either has NaN); shapes must agree."""
    if expected.shape != actual.shape:
        raise EquivalenceError(f"output shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    difference = (expected.detach().to(actual) - actual.detach()).abs()
    return float("nan") if bool(difference.isnan().any()) else float(difference.max())


def max_deviation(
    reference: Callable[[Tensor], Tensor], candidate: Callable[[Tensor], Tensor], x: Tensor
) -> float:
    """Largest |reference(x) - candidate(x)| (NaN if either output has NaN), without gradients."""
    with torch.no_grad():
        return deviation(reference(x), candidate(x))


def check_deviation(error: float, tolerance: float, what: str) -> float:
    """`error` if within `tolerance`, else `EquivalenceError("{what} by {error} (> {tolerance})")`."""
    if not error <= tolerance:  # also catches NaN
        raise EquivalenceError(f"{what} by {error:.3g} (> {tolerance:g})")
    return error


def random_inputs(
    in_channels: int, shape: tuple[int, int, int] = RANDOM_INPUT_SHAPE, seed: int = 0
) -> Tensor:
    """Uniform [0, 1) float64 inputs (batch, in_channels, height, width), the same for a given seed."""
    batch, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, in_channels, height, width, generator=generator, dtype=torch.float64)


def _reference_form(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A CPU eval-mode copy of `model` in `dtype` computing through its branches (not merged on the fly)."""
    from repsr.arch.network import set_merged_training

    reference = copy.deepcopy(model).to(device="cpu", dtype=dtype).eval()
    set_merged_training(reference, False)
    return reference


def verify_equivalence(
    training_model: nn.Module,
    plain_model: nn.Module,
    inputs: Tensor | tuple[int, int, int] = RANDOM_INPUT_SHAPE,
    *,
    tolerance: float = RANDOM_INPUT_TOLERANCE,
    dtype: torch.dtype = torch.float32,
    exact_tolerance: float | None = EXACT_TOLERANCE,
) -> float:
    """Check that `plain_model` computes `training_model` (in eval mode); returns the `dtype` deviation.

    `inputs`: a (N, C, H, W) tensor, or (batch, height, width) for seeded uniform random inputs. The
    float64 check re-parameterizes a float64 copy of `training_model` (skipped with `exact_tolerance`
    None); the `dtype` check runs `plain_model` as given (on CPU) against the training form. Neither
    model is modified. Raises `EquivalenceError` naming the check that failed.
    """
    from repsr.arch.network import reparameterize_model

    in_channels = int(training_model.spec.in_channels)
    x = random_inputs(in_channels, inputs) if isinstance(inputs, tuple) else inputs.detach().cpu()
    if exact_tolerance is not None:
        exact = _reference_form(training_model, torch.float64)
        merged = reparameterize_model(exact)
        error64 = max_deviation(exact, merged, x.double())
        check_deviation(error64, exact_tolerance, "the float64 merge differs from the training form")
    reference = _reference_form(training_model, dtype)
    candidate = copy.deepcopy(plain_model).to(device="cpu", dtype=dtype).eval()
    error = max_deviation(reference, candidate, x.to(dtype))
    name = str(dtype).removeprefix("torch.")
    return check_deviation(error, tolerance, f"the plain network ({name}) differs from the training form")


def check_against_fp32(
    run: Callable[[Tensor], Tensor], plain: nn.Module, images: dict[str, Tensor]
) -> tuple[float, int, str]:
    """(lowest PSNR of `run`'s output against `plain`'s, RGB, unrounded; largest 8-bit pixel difference;
    the image it was on) over `images`: how far a reduced-precision form is from fp32."""
    lowest, worst, where = float("inf"), 0, ""
    with torch.inference_mode():
        for name, x in images.items():
            got, want = run(x), plain(x)
            lowest = min(lowest, signal_psnr(got.numpy(), want.numpy()))
            levels = int(np.abs(to_integers(got).astype(np.int32) - to_integers(want)).max())
            if levels > worst or not where:
                worst, where = levels, name
    return lowest, worst, where
