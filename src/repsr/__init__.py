"""repsr: train re-parameterizable VGG-style SR networks with BN, deploy them as plain 3x3 conv stacks.

import repsr
model = repsr.build_model("repsr", scale=4, num_blocks=4, channels=16)
...train...
plain = repsr.reparameterize_model(model)   # a new plain network, equal to model.eval()
repsr.save_model(plain, "model.safetensors")
plain = repsr.load_model("model.safetensors")
"""

import importlib
from typing import TYPE_CHECKING, Any

from repsr.util.errors import RepsrError

if TYPE_CHECKING:  # what type checkers and editors see; at run time these load on first use
    from repsr.arch.network import ModelSpec, PlainSR, RepNet, build_model, reparameterize_model
    from repsr.image.resize import imresize
    from repsr.models.files import save_model
    from repsr.models.loader import load_model

# The public names below load on first use: `import repsr` alone imports no torch and changes nothing
# in the process (entry points choose thread settings, see `repsr.util.runtime`).
_EXPORTS = {
    "ModelSpec": "repsr.arch.network",
    "PlainSR": "repsr.arch.network",
    "RepNet": "repsr.arch.network",
    "build_model": "repsr.arch.network",
    "reparameterize_model": "repsr.arch.network",
    "imresize": "repsr.image.resize",
    "load_model": "repsr.models.loader",  # every form: torch files, shipped names, .onnx
    "save_model": "repsr.models.files",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        try:  # submodules (`repsr.image.metrics`, `repsr.data.datasets`, ...) without importing them first
            value = importlib.import_module(f"repsr.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"repsr.{name}":
                raise
            raise AttributeError(f"module 'repsr' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"

__all__ = [
    "ModelSpec",
    "PlainSR",
    "RepNet",
    "RepsrError",
    "build_model",
    "imresize",
    "load_model",
    "reparameterize_model",
    "save_model",
]
