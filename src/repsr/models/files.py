"""Saving and loading models without unpickling arbitrary objects.

`save_model` writes safetensors with the model's spec in the header, so `load_model` rebuilds the right
module from the file alone. `load_model` also reads
- `.pth`/`.pt` state dicts of the compact VGG-style layout (Real-ESRGAN's `SRVGGNetCompact` with PReLU,
  optionally under `params`/`params_ema`), with the spec inferred from the tensor shapes;
- training checkpoints of `repsr train` (a dict with `spec` and `model`),
both through `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from repsr.arch.blocks import upgrade_legacy_state
from repsr.arch.network import ModelSpec, PlainSR, RepNet
from repsr.util.atomic import atomic_write
from repsr.util.errors import ConfigError, ModelFileError, first_line

FORMAT_NAME = "repsr"
FORMAT_VERSION = "1"


def model_metadata(model: nn.Module) -> dict[str, str]:
    """The safetensors header metadata that describes `model`."""
    form = "plain" if isinstance(model, PlainSR) else "train"
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "form": form, **model.spec.to_metadata()}


def save_model(model: nn.Module, path: str | Path) -> None:
    """Write `model` (training or plain form) as safetensors with its spec in the metadata."""
    if not isinstance(model, RepNet | PlainSR):
        raise TypeError(f"expected a RepNet or PlainSR, got {type(model).__name__}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=model_metadata(model)))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a file written by `save_model`, a compact-layout `.pth`, or a checkpoint;
    or a shipped model by name (`load_model("repsr-m4c16-x4")`, see `repsr.models.pretrained`).

    Raises `ModelFileError` with the file name and the problem for anything that is not a valid model.
    """
    return read_model_file(path, device)[0]


def read_model_file(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """`load_model`, plus the other entries of a `repsr train` checkpoint (e.g. `ema`, the EMA state
    dict) read in the same pass; the dict is empty for any other file."""
    from repsr.models.pretrained import resolve_model

    path = resolve_model(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: file is empty")
    kind = file_kind(path)
    try:
        if kind == "torch":
            model, extras = _from_torch_file(path)
        else:
            model, extras = _from_safetensors(path), {}
    except ModelFileError:
        raise
    except ConfigError as error:
        raise ModelFileError(f"{path}: {error}") from None
    except (
        TypeError,
        ValueError,
        KeyError,
        AttributeError,
        IndexError,
        RuntimeError,
        ArithmeticError,
    ) as error:
        # a damaged or hand-made file that passed the format checks (fuzz-tested): never a traceback
        raise ModelFileError(
            f"{path}: not a valid model ({type(error).__name__}: {first_line(error, 120)})"
        ) from None
    return model.to(device).eval(), extras


def file_kind(path: Path) -> str:
    """`"torch"` or `"safetensors"`, from the file's first bytes (the suffix only breaks a tie), so a
    `.PTH`, a `.bin` or a misnamed file is read by the right loader; anything else is `ModelFileError`."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
        size = path.stat().st_size
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read ({error.strerror or first_line(error)})") from None
    suffix = path.suffix.lower()
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or the legacy pickle
        return "torch"
    if len(head) >= 9 and 0 < int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    if suffix == ".onnx":
        raise ModelFileError(
            f"{path}: an ONNX model; this command needs the PyTorch model it was exported from "
            "(.safetensors, .pth or a checkpoint); ONNX files run in repsr upscale -m only"
        )
    if suffix in (".pth", ".pt"):
        return "torch"  # damaged: the torch loader says how
    if suffix == ".safetensors":
        return "safetensors"
    raise ModelFileError(
        f"{path}: not a model file repsr reads (expected safetensors, a PyTorch .pth/.pt state dict or a "
        "repsr train checkpoint)"
    )


def _from_safetensors(path: Path) -> nn.Module:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{path}: not a readable safetensors file ({first_line(error)})") from None
    if metadata.get("format") == FORMAT_NAME:
        if metadata.get("format_version") != FORMAT_VERSION:
            raise ModelFileError(f"{path}: unsupported format version {metadata.get('format_version')!r}")
        spec = ModelSpec.from_metadata(metadata)
        model = _build(PlainSR if metadata.get("form") == "plain" else RepNet, spec, path, state)
    else:
        model = PlainSR(infer_plain_spec(state, path))
    _load_checked(model, state, path)
    return model


def _from_torch_file(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says it all
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or unsafe files
        raise ModelFileError(f"{path}: {_torch_load_problem(error)}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a state dict, found {type(data).__name__}")
    extras: dict[str, Any] = {}
    if "spec" in data and "model" in data:  # a `repsr train` checkpoint
        state = data["model"]
        if not isinstance(state, dict):
            raise ModelFileError(f"{path}: the checkpoint's 'model' entry is not a state dict")
        model: nn.Module = _build(RepNet, data["spec"], path, state)
        extras = {key: value for key, value in data.items() if key not in ("spec", "model")}
    else:
        for key in ("params_ema", "params"):  # Real-ESRGAN / BasicSR release files
            if isinstance(data.get(key), dict):
                data = data[key]
                break
        state = data
        model = PlainSR(infer_plain_spec(state, path))
    _load_checked(model, state, path)
    return model, extras


def _build(kind: type, spec: ModelSpec | dict, path: Path, state: dict[str, Any]) -> nn.Module:
    """`kind(spec)`, a malformed spec (missing keys, wrong types, impossible sizes) as `ModelFileError`.

    The spec is checked against the file's tensors before any memory is spent on it: its depth by their
    count, then every key and shape on a shell built on the meta device, so a header that declares 10^9
    channels or blocks costs nothing (issue 28)."""
    try:
        if isinstance(spec, dict):
            spec = ModelSpec.from_dict(spec)
        elif not isinstance(spec, ModelSpec):
            raise TypeError(f"expected a dict, found {type(spec).__name__}")
        if spec.num_blocks > len(state):
            raise ModelFileError(
                f"{path}: the model spec declares {spec.num_blocks} blocks; the file holds only "
                f"{len(state)} tensors"
            )
        with torch.device("meta"):
            shell = kind(spec)
        _check_state(shell.state_dict(), upgrade_legacy_state(state), path)
        return kind(spec)
    except ConfigError as error:
        raise ModelFileError(f"{path}: malformed model spec ({error})") from None
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, ArithmeticError) as error:
        raise ModelFileError(f"{path}: malformed model spec ({first_line(error, 120)})") from None


def _torch_load_problem(error: Exception) -> str:
    """Why `torch.load(weights_only=True)` refused a file, without torch's advice to load it unsafely."""
    text = str(error)
    if "weights only load failed" in text.lower() or "weights_only" in text:
        found = re.search(r"Unsupported (?:global|operand):? (?:GLOBAL )?[\w.]*\w", text)
        detail = f" ({found.group(0).strip()})" if found else ""
        return (
            "not a loadable weights-only PyTorch file: not a plain state dict (tensors only); "
            f"repsr does not unpickle other Python objects{detail}"
        )
    detail = f"{type(error).__name__}: {first_line(error, 120)}"
    return f"not a loadable weights-only PyTorch file (not a state dict saved by torch.save; {detail})"


def infer_plain_spec(state: dict[str, Tensor], path: Path | str = "<state dict>") -> ModelSpec:
    """Read scale, channels and depth of a compact VGG-style state dict from its tensor shapes."""
    indices = sorted(
        int(m.group(1)) for k in state if (m := re.fullmatch(r"body\.(\d+)\.weight", k)) is not None
    )
    if not indices or indices[0] != 0:
        raise ModelFileError(f"{path}: not a compact VGG-style SR model (no 'body.0.weight' key)")
    first, last = state["body.0.weight"], state[f"body.{indices[-1]}.weight"]
    if first.ndim != 4 or last.ndim != 4:
        raise ModelFileError(f"{path}: first and last layers must be convolutions")
    channels, in_channels = first.shape[:2]
    if indices != list(range(indices[-1] + 1)):
        raise ModelFileError(
            f"{path}: only PReLU activations are supported (activation layers carry no weights)"
        )
    num_blocks = (indices[-1] - 2) // 2
    out = last.shape[0]
    scale_squared = out // in_channels if in_channels else 0
    scale = round(scale_squared**0.5)
    if in_channels * scale * scale != out:
        raise ModelFileError(f"{path}: last conv has {out} outputs, not in_channels x scale^2")
    return ModelSpec("plain", scale, num_blocks, channels, in_channels)


def _load_checked(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Load `state` into `model`, refusing missing/extra keys, wrong shapes and non-finite values."""
    state = upgrade_legacy_state(state)
    _check_state(model.state_dict(), state, path)
    model.load_state_dict(state)


def _check_state(expected: dict[str, Tensor], state: dict[str, Any], path: Path) -> None:
    """ModelFileError unless `state` has exactly the keys and shapes of `expected`, all finite tensors."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing:
        raise ModelFileError(f"{path}: missing key(s) {_few(missing)}")
    if extra:
        raise ModelFileError(f"{path}: unexpected key(s) {_few(extra)}")
    for key, tensor in state.items():
        if not isinstance(tensor, Tensor):
            raise ModelFileError(f"{path}: {key} is not a tensor")
        if tensor.shape != expected[key].shape:
            raise ModelFileError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelFileError(f"{path}: {key} has non-finite values")


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
