"""The runnable form of a model for one precision: `repsr.precision` decides, this module builds.

`prepare_for_precision(model, device, precision, backend)` returns a `precision.PreparedNet`: the module
to call (a backend's form from `backends.prepare_model`, `precision.Bf16PlainSR`, or an ONNX Runtime
runner), the dtype and layout its input wants, and the one-line reason for the choice.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from repsr.errors import ConfigError
from repsr.inference.backends import prepare_model
from repsr.network import describe
from repsr.precision import Precision, PreparedNet, bf16_module, choose_precision, cpu_capabilities

__all__ = ["prepare_for_precision"]


def prepare_for_precision(
    model: nn.Module,
    device: torch.device,
    precision: str | Precision = Precision.AUTO,
    backend: str = "channels-last",
) -> PreparedNet:
    """`model` (a repsr torch model, or an `OnnxInt8Runner`) ready to run on `device` in `precision`.

    The precision is `repsr.precision.choose_precision`'s decision; this builds the form that runs it.
    fp32/fp16 go through `backends.prepare_model` with `backend`; bf16 runs `Bf16PlainSR`
    (channels-last, compiled when `backend` is `compile`; float32 in and out); int8 runs an ONNX file
    in ONNX Runtime (a torch model is quantized first, calibrated on the sample photographs: slow,
    `repsr export --int8` does it once). An ONNX runner always runs in ONNX Runtime.
    """
    if describe(model).form == "onnx":  # an OnnxInt8Runner: ONNX Runtime decides the arithmetic
        requested = Precision.parse(precision)
        actual = Precision(describe(model).precisions[0])
        if requested not in (Precision.AUTO, actual):
            name = getattr(model, "path", "this ONNX file")
            raise ConfigError(f"{name} is {actual} (ONNX Runtime); it cannot run in {requested}")
        if device.type != "cpu":
            raise ConfigError("ONNX files run in ONNX Runtime on the CPU here; use --device cpu")
        reason = f"{actual}: ONNX file run by ONNX Runtime on {cpu_capabilities().name} (cpu)"
        return PreparedNet(model, actual, reason, torch.float32, False, "onnxruntime")
    chosen, reason = choose_precision(model, device, precision)
    if chosen is Precision.INT8:
        from repsr.quantize import OnnxInt8Runner, export_int8_onnx  # onnx, onnxruntime: only now

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model-int8.onnx"
            report = export_int8_onnx(model, path)
            runner = OnnxInt8Runner(path)
        reason += f"; quantized now ({report.psnr:.1f} dB from fp32; repsr export --int8 saves this step)"
        return PreparedNet(runner, chosen, reason, torch.float32, False, "onnxruntime")
    if chosen is Precision.BF16:
        module: nn.Module = bf16_module(model, device)
        if backend == "compile":
            module = torch.compile(module, dynamic=None)
        return PreparedNet(module, chosen, reason, torch.float32, True, backend)
    dtype = torch.float16 if chosen is Precision.FP16 else torch.float32
    module = prepare_model(model, backend, device, dtype)
    return PreparedNet(module, chosen, reason, dtype, backend != "eager", backend)
