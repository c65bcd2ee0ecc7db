"""repsr: train re-parameterizable VGG-style SR networks with BN, deploy them as plain 3x3 conv stacks.

import repsr
model = repsr.build_model("repsr", scale=4, num_blocks=4, channels=16)
...train...
plain = repsr.reparameterize_model(model)   # a new plain network, equal to model.eval()
repsr.save_model(plain, "model.safetensors")
plain = repsr.load_model("model.safetensors")
"""

from repsr.errors import RepsrError
from repsr.network import ModelSpec, PlainSR, RepNet, build_model, reparameterize_model
from repsr.resize import imresize
from repsr.serialization import load_model, save_model

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
