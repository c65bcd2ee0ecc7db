"""ncnn export: the plain network as an ncnn `.param`/`.bin` pair, verified in ncnn's own runtime.

`export_ncnn(model, "models/")` converts with pnnx (TorchScript trace -> pnnx -> ncnn) and writes
`models/<name>.param` and `models/<name>.bin` only after ncnn's Python runtime reproduced PyTorch on a
real photograph at a size other than the traced ones (so the dynamic input size is proven):

- input blob `data`: (C, H, W) float32 RGB (or Y) in [0, 1], any H and W;
- output blob `output`: (C, H*s, W*s) float32, not clamped;
- `name` defaults to the model's size name (e.g. `repsr-M4C16-x4`).

These are the blob names Real-ESRGAN-ncnn-vulkan (and tools built on its code) feed and extract, and
its `-n NAME` loads `NAME.param`/`NAME.bin`, so the files drop into such a tool's models folder. The
layers are Convolution, PReLU, PixelShuffle, Interp (nearest) and BinaryOp (add), which every ncnn
backend (x86, ARM, Vulkan) implements.

Precision (measured with the trained M4C16 x4 on this x86 CPU, max abs difference to PyTorch):
- weights stored as fp32 (default): ~2e-6 (~4e-7 without Winograd: that is all Winograd adds);
- weights stored as fp16 (`fp16_weights=True`, half the file; pnnx's own default): ~2e-4, all of it
  from rounding the weights; runtime options (Winograd, packing) change nothing measurable;
- ncnn's fp16 storage/arithmetic options are inactive in the x86 build (identical results on or off);
  on ARM and Vulkan they keep activations in fp16, which we estimate by rounding every layer's output
  to fp16 in PyTorch (`fp16_storage_estimate`, ~8e-4 for that model).

pnnx (the converter) is installed with `pip install --no-deps pnnx`: it declares an unpinned torch
dependency. ncnn (the runtime) comes with `pip install 'repsr[ncnn]'`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repsr.arch.network import PlainSR, reparameterize_model
from repsr.models.files import atomic_write
from repsr.util.errors import ConfigError, DependencyError, ModelFileError, RepsrError, first_line

INPUT_BLOB = "data"
OUTPUT_BLOB = "output"
NCNN_TOLERANCE = 1e-3
TRACE_SIZE = (64, 64)  # (height, width) traced; a second shape tells pnnx that H and W are dynamic
TRACE_SIZE2 = (48, 80)
CHECK_SIZE = (101, 77)  # verification size: neither traced size, odd on both sides
PNNX_TIMEOUT_S = 300


def require_ncnn() -> tuple[Any, str]:
    """Import ncnn's runtime and find the pnnx converter, or say in one line what to install."""
    try:
        import ncnn
    except ImportError:
        raise DependencyError(
            "ncnn export needs the ncnn runtime: install it with pip install 'repsr[ncnn]'"
        ) from None
    try:
        import pnnx
    except ImportError:
        raise DependencyError(
            "ncnn export needs the pnnx converter: install it with pip install --no-deps pnnx "
            "(--no-deps: it would otherwise pull another torch)"
        ) from None
    executable = getattr(pnnx, "EXEC_PATH", "")
    if not executable or not os.access(executable, os.X_OK):
        raise DependencyError(f"the pnnx package has no runnable converter ({executable or 'not found'})")
    return ncnn, executable


@dataclass
class NcnnExportReport:
    """What `export_ncnn` wrote and how well ncnn reproduced PyTorch on the check photograph."""

    param: Path
    bin: Path
    name: str
    input_blob: str
    output_blob: str
    layers: list[str]
    fp16_weights: bool
    check_shape: tuple[int, ...]
    max_abs_diff: float  # ncnn with fp16 storage/arithmetic off: the verified figure
    max_abs_diff_fp16: float  # ncnn with its fp16 options on (no effect where the build lacks them)
    fp16_storage_estimate: float  # PyTorch with every activation rounded to fp16 (ARM/Vulkan fp16 storage)
    tolerance: float


# ------------------------------------------------------------------------------------------- convert


def rename_blobs(param_text: str, mapping: dict[str, str]) -> str:
    """Rename blobs in an ncnn `.param` text (only in the bottom/top lists of each layer line)."""
    lines = param_text.strip().splitlines()
    if len(lines) < 3 or lines[0].strip() != "7767517":
        raise ModelFileError("not an ncnn .param file (no 7767517 magic line)")
    used = {token for line in lines[2:] for token in _blobs(line.split())}
    clash = [new for old, new in mapping.items() if new in used and new != old]
    if clash:
        raise ModelFileError(f"blob name {clash[0]!r} is already used in the .param file")
    out = lines[:2]
    for line in lines[2:]:
        tokens = line.split()
        count = 4 + int(tokens[2]) + int(tokens[3])
        tokens[4:count] = [mapping.get(token, token) for token in tokens[4:count]]
        out.append(" ".join(tokens))
    return "\n".join(out) + "\n"


def _blobs(tokens: list[str]) -> list[str]:
    return tokens[4 : 4 + int(tokens[2]) + int(tokens[3])]


def _layer_types(param_text: str) -> list[str]:
    return [line.split()[0] for line in param_text.strip().splitlines()[2:]]


def convert_with_pnnx(
    plain: PlainSR, workdir: Path, *, fp16_weights: bool = False, executable: str | None = None
) -> tuple[Path, Path]:
    """Trace `plain` and convert it with pnnx in `workdir`; returns (param, bin) with blobs renamed to
    `data`/`output`. Raises `ModelFileError` (one line) when pnnx fails."""
    if executable is None:
        executable = require_ncnn()[1]
    c = plain.spec.in_channels
    example = torch.rand(1, c, *TRACE_SIZE)
    shape = lambda size: f"[1,{c},{size[0]},{size[1]}]f32"  # noqa: E731
    traced_path = workdir / "model.pt"
    # pnnx reads TorchScript; torch.jit.trace is deprecated in recent torch (a warning, still works)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(plain.eval(), example, check_trace=False).save(str(traced_path))
    param, weights = workdir / "model.ncnn.param", workdir / "model.ncnn.bin"
    command = [
        executable,
        str(traced_path),
        "inputshape=" + shape(TRACE_SIZE),
        "inputshape2=" + shape(TRACE_SIZE2),
        "device=cpu",
        "optlevel=2",
        f"fp16={int(fp16_weights)}",
        f"ncnnparam={param}",
        f"ncnnbin={weights}",
        f"ncnnpy={workdir / 'model_ncnn.py'}",
        f"pnnxparam={workdir / 'model.pnnx.param'}",
        f"pnnxbin={workdir / 'model.pnnx.bin'}",
        f"pnnxpy={workdir / 'model_pnnx.py'}",
        f"pnnxonnx={workdir / 'model.pnnx.onnx'}",
    ]
    try:
        done = subprocess.run(
            command, cwd=workdir, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ModelFileError(f"pnnx could not run ({first_line(error)})") from None
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        output = (done.stderr or done.stdout or "").strip().splitlines()
        reason = output[-1] if output else f"exit status {done.returncode}"
        raise ModelFileError(f"pnnx conversion failed ({reason[:200]})")
    text = param.read_text()
    tokens = [line.split() for line in text.strip().splitlines()[2:]]
    inputs = [t[1] for t in tokens if t[0] == "Input"]
    produced = {b for t in tokens for b in _blobs(t)[int(t[2]) :]}
    consumed = {b for t in tokens for b in _blobs(t)[: int(t[2])]}
    outputs = sorted(produced - consumed)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelFileError(
            f"pnnx produced {len(inputs)} input(s) and {len(outputs)} output(s), expected 1 and 1"
        )
    param.write_text(rename_blobs(text, {inputs[0]: INPUT_BLOB, outputs[0]: OUTPUT_BLOB}))
    return param, weights


# ------------------------------------------------------------------------------------------- run


def run_ncnn(
    param: str | Path,
    weights: str | Path,
    image: np.ndarray,
    *,
    fp16: bool = False,
    winograd: bool = True,
    packing: bool = True,
    threads: int = 1,
) -> np.ndarray:
    """Run an exported network in ncnn's Python runtime on the CPU: (C, H, W) float32 -> (C, sH, sW).

    `fp16` turns ncnn's fp16 storage, packing and arithmetic on (they are off otherwise); `winograd` and
    `packing` are the convolution options that change the order of float operations.
    """
    ncnn, _ = require_ncnn()
    net = ncnn.Net()
    options = net.opt
    options.use_vulkan_compute = False
    options.num_threads = threads
    options.use_fp16_storage = options.use_fp16_packed = options.use_fp16_arithmetic = fp16
    options.use_winograd_convolution = winograd
    options.use_packing_layout = packing
    if net.load_param(str(param)) != 0:
        raise ModelFileError(f"{param}: ncnn could not read this .param file")
    if net.load_model(str(weights)) != 0:
        raise ModelFileError(f"{weights}: ncnn could not read this .bin file (does it match the .param?)")
    extractor = net.create_extractor()
    # A Mat made from a numpy array borrows its memory: clone it so ncnn owns what it reads.
    array = np.ascontiguousarray(image, dtype=np.float32)
    if extractor.input(INPUT_BLOB, ncnn.Mat(array).clone()) != 0:
        raise ModelFileError(f"{param}: no input blob {INPUT_BLOB!r}")
    status, result = extractor.extract(OUTPUT_BLOB)
    if status != 0:
        raise ModelFileError(f"{param}: ncnn failed to compute blob {OUTPUT_BLOB!r} (status {status})")
    out = np.array(result, dtype=np.float32, copy=True)
    del extractor, net
    return out


def fp16_storage_reference(plain: PlainSR, x: Tensor) -> Tensor:
    """`plain(x)` with the input, every layer's output and the result rounded to fp16: what fp16
    activation storage (ncnn on ARM or Vulkan) does, computed in float32 otherwise."""
    half = lambda t: t.half().float()  # noqa: E731
    with torch.no_grad():
        lr = half(x)
        y = lr
        for layer in plain.body:
            y = half(layer(y))
        scale = plain.spec.scale
        return half(F.pixel_shuffle(y, scale) + F.interpolate(lr, scale_factor=scale, mode="nearest"))


# ------------------------------------------------------------------------------------------- export


def export_ncnn(
    model: nn.Module,
    out_dir: str | Path,
    *,
    name: str | None = None,
    fp16_weights: bool = False,
    tolerance: float = NCNN_TOLERANCE,
) -> NcnnExportReport:
    """Write `out_dir/<name>.param` and `.bin` for `model` (a training form is re-parameterized first),
    verified in ncnn against PyTorch within `tolerance` on a photograph crop at an untraced size.

    The check that must pass runs ncnn with fp16 storage/arithmetic off; the fp16-on deviation and an
    fp16-storage estimate are reported beside it. Raises `ModelFileError` and writes nothing otherwise.
    """
    from repsr.data.samples import verification_image

    _, executable = require_ncnn()
    plain = reparameterize_model(model).cpu().float().eval()
    name = name or plain.spec.name
    if not name or any(ch in name for ch in "/\\") or name.startswith("."):
        raise ConfigError(f"ncnn model name must be a plain file name, got {name!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: --ncnn takes a folder (the .param and .bin go inside)")
    check = verification_image(plain.spec.in_channels, CHECK_SIZE, index=1)
    with torch.no_grad():
        expected = plain(check)[0].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            param, weights = convert_with_pnnx(
                plain, Path(tmp), fp16_weights=fp16_weights, executable=executable
            )
        except RepsrError:
            raise
        except Exception as error:  # tracing raises many types; name it in one line
            raise ModelFileError(f"ncnn export failed ({first_line(error)})") from None
        image = check[0].numpy()
        result = run_ncnn(param, weights, image, fp16=False)
        if result.shape != expected.shape:
            raise ModelFileError(f"ncnn output shape {result.shape} != PyTorch {expected.shape}; not kept")
        difference = float(np.abs(result - expected).max())
        if not difference <= tolerance:  # also catches NaN
            raise ModelFileError(
                f"ncnn differs from PyTorch by {difference:.3g} (> {tolerance:g}) on a "
                f"{CHECK_SIZE[1]}x{CHECK_SIZE[0]} photo crop; not kept"
            )
        difference_fp16 = float(np.abs(run_ncnn(param, weights, image, fp16=True) - expected).max())
        estimate = float((fp16_storage_reference(plain, check)[0] - torch.from_numpy(expected)).abs().max())
        param_text, weight_bytes = param.read_text(), weights.read_bytes()
    param_path, bin_path = out_dir / f"{name}.param", out_dir / f"{name}.bin"
    atomic_write(bin_path, lambda tmp: Path(tmp).write_bytes(weight_bytes))
    atomic_write(param_path, lambda tmp: Path(tmp).write_text(param_text))
    return NcnnExportReport(
        param=param_path,
        bin=bin_path,
        name=name,
        input_blob=INPUT_BLOB,
        output_blob=OUTPUT_BLOB,
        layers=_layer_types(param_text),
        fp16_weights=fp16_weights,
        check_shape=tuple(check.shape[1:]),
        max_abs_diff=difference,
        max_abs_diff_fp16=difference_fp16,
        fp16_storage_estimate=estimate,
        tolerance=tolerance,
    )


__all__ = [
    "INPUT_BLOB",
    "NCNN_TOLERANCE",
    "OUTPUT_BLOB",
    "NcnnExportReport",
    "convert_with_pnnx",
    "export_ncnn",
    "fp16_storage_reference",
    "rename_blobs",
    "require_ncnn",
    "run_ncnn",
]
