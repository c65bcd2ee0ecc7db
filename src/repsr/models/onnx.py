"""ONNX files as runnable models: `OnnxRunner` runs a file `repsr export` wrote (fp32 or int8) in ONNX
Runtime with the call contract of a torch model, so `Upscaler`'s tiling, alpha and bit-depth handling
drive it unchanged; `onnx_session` is the one way repsr opens a file in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from repsr.arch.network import IN_CHANNELS, SCALES, ModelDescriptor, ModelSpec
from repsr.util.errors import ConfigError, DependencyError, ModelFileError, first_line

ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


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


class OnnxRunner(nn.Module):
    """An ONNX file (int8 or fp32) run by ONNX Runtime on CPU, called like a torch model.

    `runner(x)`: (N, C, H, W) float tensor -> (N, C, H*s, W*s) float32 tensor on x's device. `.spec`
    comes from the file's metadata (written by `repsr export`); the file must have dynamic height and
    width (as `export_int8_onnx` writes it) for tiles of any size.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        onnx, _ = require_onnx()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such ONNX file")
        try:
            proto = onnx.load(str(self.path), load_external_data=False)
        except Exception as error:
            raise ModelFileError(f"{self.path}: not an ONNX file ({first_line(error)})") from None
        metadata = {entry.key: entry.value for entry in proto.metadata_props}
        if metadata.get("producer") != "repsr":
            raise ModelFileError(f"{self.path}: not written by repsr export (no model spec in its metadata)")
        try:
            self.spec = ModelSpec.from_metadata(metadata)
        except ConfigError as error:
            raise ModelFileError(f"{self.path}: {error}") from None
        self.quantized = any(node.op_type == "QuantizeLinear" for node in proto.graph.node)
        # (N, C, H, W) of the file's input: an int where the export fixed it, None where it is dynamic
        dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        check_external_data(proto, self.path)
        try:
            self.session = onnx_session(self.path, threads=threads or torch.get_num_threads())
        except Exception as error:
            raise ModelFileError(f"{self.path}: ONNX Runtime cannot load it ({first_line(error)})") from None
        self._check_outputs()

    def _check_outputs(self) -> None:
        """ModelFileError unless the file maps a float image `input` to a float image `output` of its
        declared scale, finite on a small probe: a file whose metadata lies or whose graph computes
        something else is refused at load, not midway through a batch."""
        inputs, outputs = self.session.get_inputs(), {o.name: o for o in self.session.get_outputs()}
        if [i.name for i in inputs] != ["input"] or "output" not in outputs:
            raise ModelFileError(
                f"{self.path}: expected one input 'input' and an output 'output' (as repsr export writes "
                f"them), found inputs {[i.name for i in inputs]} and outputs {sorted(outputs)}"[:300]
            )
        if inputs[0].type != "tensor(float)" or outputs["output"].type != "tensor(float)":
            raise ModelFileError(
                f"{self.path}: input and output must be float32 images, found {inputs[0].type} -> "
                f"{outputs['output'].type}"
            )
        spec, c = self.spec, self.spec.in_channels
        if spec.scale not in SCALES or c not in IN_CHANNELS:
            raise ModelFileError(f"{self.path}: metadata declares scale {spec.scale} and {c} channel(s)")
        dims = tuple(self.input_shape) + (None,) * (4 - len(self.input_shape))
        probe = tuple(d if d is not None else default for d, default in zip(dims, (1, c, 8, 8), strict=False))
        if len(self.input_shape) != 4 or probe[1] != c:
            raise ModelFileError(f"{self.path}: input must be (N, {c}, H, W), found {self.input_shape}")
        try:
            (out,) = self.session.run(["output"], {"input": np.zeros(probe, dtype=np.float32) + 0.5})
        except Exception as error:  # ONNX Runtime raises its own types
            raise ModelFileError(f"{self.path}: ONNX Runtime cannot run it ({first_line(error)})") from None
        want = (probe[0], c, probe[2] * spec.scale, probe[3] * spec.scale)
        if tuple(out.shape) != want:
            raise ModelFileError(
                f"{self.path}: the graph maps {probe} to shape {tuple(out.shape)}, not to the image {want} "
                f"its metadata (x{spec.scale}) promises"
            )
        if not np.isfinite(out).all():
            raise ModelFileError(f"{self.path}: the graph computes non-finite values")

    def forward(self, x: Tensor) -> Tensor:
        self.check_shape(tuple(x.shape))
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(["output"], {"input": array})
        n, c, h, w = array.shape
        if out.shape != (n, c, h * self.spec.scale, w * self.spec.scale):  # right on the probe, not here
            raise ModelFileError(
                f"{self.path}: the graph maps {array.shape} to shape {out.shape}, "
                f"not to its x{self.spec.scale} image"
            )
        return torch.from_numpy(out).to(x.device)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """`ConfigError` in one line, before ONNX Runtime's own message, when `shape` (N, C, H, W) differs
        from a size the file fixed (`repsr export` without `--dynamic`)."""
        fixed = [(i, d) for i, d in enumerate(self.input_shape) if d is not None and i < len(shape)]
        if any(shape[i] != d for i, d in fixed):
            want = "x".join(str(d) if d is not None else "any" for d in self.input_shape)
            raise ConfigError(
                f"{self.path}: this ONNX file takes input of the fixed size {want} (N x C x H x W) only, and "
                "images come in every size; export it again with `repsr export MODEL --onnx FILE --dynamic`"
            )

    def descriptor(self) -> ModelDescriptor:
        """An ONNX file runs in the precision it was written in: int8 (quantized) or fp32."""
        return ModelDescriptor.of_spec(self.spec, "onnx", ("int8",) if self.quantized else ("fp32",))


def check_external_data(proto: Any, path: Path) -> None:
    """ModelFileError unless every tensor the file keeps outside itself lies in a regular file inside the
    file's folder (no absolute path, no `..`, no link out of it) that is long enough for it: nothing
    outside what the user named is read, whatever the ONNX Runtime version checks (issue 28)."""
    from onnx import TensorProto
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors

    folder = path.absolute().parent.resolve()
    for tensor in _get_all_tensors(proto):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        try:
            info = ExternalDataInfo(tensor)
            offset, length = int(info.offset or 0), info.length
        except (ValueError, TypeError) as error:
            raise ModelFileError(f"{path}: malformed external data of {tensor.name!r} ({error})") from None
        where = f"{path}: tensor {tensor.name!r} keeps its data in {info.location!r}"[:200]
        if not isinstance(info.location or "", str):  # a name that is not UTF-8 stays bytes
            raise ModelFileError(f"{where}, a file name that is not UTF-8 text")
        location = Path(info.location or "")
        if not info.location or location.is_absolute() or ".." in location.parts:
            raise ModelFileError(f"{where}, outside the model's folder; repsr reads only files beside it")
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise ModelFileError(f"{where}, a link out of the model's folder; repsr reads only files in it")
        if not target.is_file():
            raise ModelFileError(f"{where}, which is missing (copy it beside the .onnx file)")
        if offset < 0 or offset + int(length or 0) > target.stat().st_size:
            raise ModelFileError(f"{where}, which is shorter than the tensor claims (truncated?)")
