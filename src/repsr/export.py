"""From a trained model to deployable files, each checked on a real photograph before it is kept.

- `deploy`: training-form checkpoint -> plain network (safetensors or .pth), refused if the plain network
  differs from the training form (in eval mode) by more than a tolerance.
- `export_onnx`: plain network -> ONNX (opset 18, the dynamo-based `torch.onnx.export`, static or
  dynamic batch/height/width), run in ONNX Runtime and refused if it differs from PyTorch.

Verification uses a crop of a built-in sample photograph (`repsr.data.sample_images()`): random inputs
hide problems that only show on image statistics (e.g. values near the clamp range), and a crop keeps
the check to a fraction of a second.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from repsr.atomic import atomic_write, check_target
from repsr.equivalence import IMAGE_TOLERANCE, check_deviation, max_deviation, verify_equivalence
from repsr.errors import (
    ConfigError,
    DependencyError,
    EquivalenceError,
    ModelFileError,
    RepsrError,
    first_line,
)
from repsr.network import ModelSpec, PlainSR, reparameterize_model
from repsr.serialization import read_model_file, save_model

DEPLOY_TOLERANCE = IMAGE_TOLERANCE
ONNX_TOLERANCE = IMAGE_TOLERANCE
ONNX_OPSET = 18
VERIFY_SIZE = (128, 128)  # (height, width) of the photograph crop the checks run on
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- the photo


def sample_photo(index: int = 0) -> Tensor:
    """The `index`-th built-in validation photograph (then training ones) as (3, H, W) in [0, 1]."""
    from repsr.data import sample_images
    from repsr.io import read_image

    images = sample_images()
    pool = [*images["val"], *images["train"]]
    return read_image(pool[index % len(pool)]).rgb


def verification_image(
    in_channels: int, size: tuple[int, int] = VERIFY_SIZE, *, batch: int = 1, index: int = 0
) -> Tensor:
    """(batch, in_channels, H, W) centre crop(s) of sample photographs; Y channel for a 1-channel model."""
    crops = []
    for offset in range(batch):
        photo = sample_photo(index + offset)
        height, width = size
        if photo.shape[-2] < height or photo.shape[-1] < width:
            from repsr.resize import imresize

            factor = max(height / photo.shape[-2], width / photo.shape[-1])
            photo = imresize(photo, factor).clamp(0, 1)
        top, left = (photo.shape[-2] - height) // 2, (photo.shape[-1] - width) // 2
        crops.append(photo[:, top : top + height, left : left + width])
    rgb = torch.stack(crops)
    if in_channels == 1:
        from repsr.color import rgb_to_y

        return rgb_to_y(rgb).contiguous()
    return rgb.contiguous()


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


# ------------------------------------------------------------------------------------------- ONNX


def require_onnx() -> tuple[Any, Any]:
    """Import `onnx` and `onnxruntime` (and check `onnxscript`), or say in one line what to install."""
    missing = []
    modules = {}
    for name in ONNX_PACKAGES:
        try:
            modules[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise DependencyError(
            f"ONNX support needs {', '.join(missing)}: install it with pip install 'repsr[onnx]'"
        )
    return modules["onnx"], modules["onnxruntime"]


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


def onnx_session(
    path: str | Path, *, threads: int | None = None, device: str = "cpu", spinning: bool = False
) -> Any:
    """An ONNX Runtime session for `path` with all graph optimizations, on CPU (or CUDA if asked).

    Idle worker threads sleep instead of spinning unless `spinning`: on a machine shared with other
    processes, spinning threads took cores from the working ones (M4C16 x4 at 320x180 on 2 shared
    cores: 84-90 ms spinning, 35-57 ms not).
    """
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


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


__all__ = [
    "DeployReport",
    "OnnxExportReport",
    "deploy",
    "export_onnx",
    "onnx_session",
    "require_onnx",
    "verification_image",
    "write_onnx",
]
