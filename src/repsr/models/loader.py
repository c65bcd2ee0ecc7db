"""Every model form from one reference: `load_model` dispatches by what the reference names.

- a shipped model's name (`repsr-m4c16-x4`, see `repsr.models.pretrained`) or a torch file (`.safetensors`,
  `.pth`/`.pt` state dicts and training checkpoints): `serialization.load_model`;
- an `.onnx` file from `repsr export` (fp32 or `--int8`): a `quantize.OnnxRunner`, run by ONNX
  Runtime on the CPU;
- with `denoise` (and/or `denoise_from`): a general model blended with its detail partner at that
  strength (`blend.load_blended`); a shipped general model without them runs at its default strength,
  as `repsr upscale -m NAME` runs it (`denoise=1` gives the general model alone).

Every command that runs a model loads it here (`repsr upscale`, `eval`, `models`), so each accepts every
form it can run; what each form can do is its `descriptor()` (`repsr.arch.network.ModelDescriptor`).
`repsr.load_model` is this function.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from repsr.models.blend import default_strength, load_blended
from repsr.models.files import load_model as load_torch_model
from repsr.models.onnx import OnnxRunner
from repsr.util.errors import ConfigError

__all__ = ["load_model"]


def load_model(
    reference: str | Path,
    device: str | torch.device = "cpu",
    *,
    denoise: float | None = None,
    denoise_from: str | Path | None = None,
) -> nn.Module:
    """The model `reference` names, in eval mode, ready for `repsr.inference.Upscaler`.

    Raises `ModelFileError` (file and problem in one line) for anything that is not a model, and
    `ConfigError` for an ONNX file asked to run off the CPU.
    """
    if denoise is None and denoise_from is None:
        denoise = default_strength(reference)  # None for every model but the shipped general ones
    if denoise is not None or denoise_from is not None:
        return load_blended(reference, denoise, detail=denoise_from).to(device)
    if str(reference).lower().endswith(".onnx"):
        if torch.device(device).type != "cpu":
            raise ConfigError(
                f"{reference}: ONNX files run in ONNX Runtime on the CPU here; use --device cpu"
            )
        return OnnxRunner(reference)
    return load_torch_model(reference, device)
