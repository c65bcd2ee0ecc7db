"""ONNX export: `export_onnx`: plain network -> ONNX (opset 18, the dynamo-based `torch.onnx.export`,
static or dynamic batch/height/width), run in ONNX Runtime and refused if it differs from PyTorch.

Verification uses a crop of a built-in sample photograph (`repsr.data.samples.sample_images()`): random
inputs hide problems that only show on image statistics (e.g. values near the clamp range), and a crop keeps
the check to a fraction of a second.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from repsr.arch.equivalence import IMAGE_TOLERANCE, check_deviation, max_deviation
from repsr.arch.network import PlainSR, reparameterize_model
from repsr.data.samples import verification_image
from repsr.models.onnx import onnx_session, require_onnx
from repsr.util.atomic import atomic_write, check_target
from repsr.util.errors import (
    ConfigError,
    EquivalenceError,
    ModelFileError,
    RepsrError,
    first_line,
)

ONNX_TOLERANCE = IMAGE_TOLERANCE
ONNX_OPSET = 18


# ------------------------------------------------------------------------------------------- ONNX


@dataclass
class OnnxExportReport:
    """What `export_onnx` wrote and how well ONNX Runtime reproduced PyTorch on the check image."""

    path: Path
    opset: int
    dynamic: bool
    exporter: str
    input_shape: tuple[int | str, ...]
    check_shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress lines and logs missing optional torchvision ops and opset
    conversions: mute them (errors still raise)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def write_onnx(model: PlainSR, path: str | Path, example: Tensor, *, dynamic: bool, opset: int) -> None:
    """Export `model` with the dynamo-based exporter to `path` (one self-contained file, spec in metadata).

    Input `input` (N, C, H, W) float32, output `output` (N, C, H*s, W*s); with `dynamic` N, H and W
    are symbolic.
    """
    onnx, _ = require_onnx()
    dynamic_shapes = None
    if dynamic:
        dims = torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width")
        dynamic_shapes = ({0: dims[0], 2: dims[1], 3: dims[2]},)
    with _quiet_exporter():
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in {"producer": "repsr", **model.spec.to_metadata()}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    dynamic: bool = False,
    size: tuple[int, int] = (256, 256),
    opset: int = ONNX_OPSET,
    tolerance: float = ONNX_TOLERANCE,
    overwrite: bool = False,
) -> OnnxExportReport:
    """Write `model` (plain, or training form re-parameterized first) as ONNX, verified in ONNX Runtime.

    `size` (height, width) is the static input size; with `dynamic` any batch/height/width is accepted
    and the check runs on a different size and batch than the export trace, to prove it. The file
    appears only if ONNX Runtime matches PyTorch within `tolerance`; otherwise `ModelFileError`. An
    existing file is refused before any work unless `overwrite`.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ConfigError(f"{path}: ONNX files must end in .onnx")
    check_target(path, what="ONNX file", overwrite=overwrite)
    require_onnx()
    if opset < 17:
        raise ConfigError(f"opset must be 17 or newer, got {opset}")
    plain = reparameterize_model(model).cpu().float()
    channels = plain.spec.in_channels
    example = verification_image(channels, size)
    if dynamic:
        example = verification_image(channels, (64, 64))
        check = verification_image(channels, (size[0] // 2 + 3, size[1] // 2 + 5), batch=2)
    else:
        check = example
    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp) / path.name
        try:
            write_onnx(plain, draft, example, dynamic=dynamic, opset=opset)
        except RepsrError:
            raise
        except Exception as error:  # the exporter raises many types; name it in one line
            raise ModelFileError(f"{path}: ONNX export failed ({first_line(error)})") from None
        session = onnx_session(draft)

        def onnx_runtime(x: Tensor) -> Tensor:
            return torch.from_numpy(session.run(["output"], {"input": x.numpy()})[0])

        try:
            difference = max_deviation(plain, onnx_runtime, check)
            check_deviation(difference, tolerance, "ONNX Runtime differs from PyTorch")
        except EquivalenceError as error:
            raise EquivalenceError(f"{path}: {error}; not kept") from None
        data = draft.read_bytes()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return OnnxExportReport(
        path=path,
        opset=opset,
        dynamic=dynamic,
        exporter="torch.onnx.export(dynamo=True)",
        input_shape=("N", channels, "H", "W") if dynamic else tuple(example.shape),
        check_shape=tuple(check.shape),
        max_abs_diff=difference,
        tolerance=tolerance,
    )


__all__ = ["OnnxExportReport", "export_onnx", "write_onnx"]
