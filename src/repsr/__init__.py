"""repsr: train re-parameterizable VGG-style SR networks with BN, deploy them as plain 3x3 conv stacks.

import repsr
model = repsr.build_model("repsr", scale=4, num_blocks=4, channels=16)
...train...
plain = repsr.reparameterize_model(model)   # a new plain network, equal to model.eval()
repsr.save_model(plain, "model.safetensors")
plain = repsr.load_model("model.safetensors")
"""

import os

# Idle OpenMP threads that spin take the cores from the working ones when a CPU is shared (or has as
# few cores as the machines this toolkit targets): measured 2-6x slower inference. It must be set
# before torch is first imported; users can still choose another policy in their environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from repsr.errors import RepsrError  # noqa: E402
from repsr.network import ModelSpec, PlainSR, RepNet, build_model, reparameterize_model  # noqa: E402
from repsr.resize import imresize  # noqa: E402
from repsr.serialization import load_model, save_model  # noqa: E402

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
