"""ONNX files as runnable models: `OnnxRunner` runs a file `repsr export` wrote (fp32 or int8) in ONNX
Runtime with the call contract of a torch model, so `Upscaler`'s tiling, alpha and bit-depth handling
drive it unchanged; `onnx_session` is the one way repsr opens a file in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from repsr.arch.network import ModelDescriptor, ModelSpec
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
        self.spec = ModelSpec.from_metadata(metadata)
        self.quantized = any(node.op_type == "QuantizeLinear" for node in proto.graph.node)
        # (N, C, H, W) of the file's input: an int where the export fixed it, None where it is dynamic
        dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        try:
            self.session = onnx_session(self.path, threads=threads or torch.get_num_threads())
        except Exception as error:
            raise ModelFileError(f"{self.path}: ONNX Runtime cannot load it ({first_line(error)})") from None

    def forward(self, x: Tensor) -> Tensor:
        self.check_shape(tuple(x.shape))
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(["output"], {"input": array})
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
