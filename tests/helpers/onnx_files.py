"""A small `.onnx` file of the layout `repsr export` writes, built directly with `onnx.helper`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from repsr import build_model


def onnx_seed(path: Path, *, channels: int = 4, external: bool = False) -> None:
    """A small x2 `.onnx` of the layout `repsr export` writes (input -> Conv -> PReLU -> Conv ->
    DepthToSpace = output, repsr metadata), built directly: exporting through torch takes 8 s here."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w0": rng.normal(0, 0.2, (channels, 3, 3, 3)).astype(np.float32),
        "b0": np.zeros(channels, np.float32),
        "slope": np.full((channels, 1, 1), 0.25, np.float32),
        "w1": rng.normal(0, 0.2, (12, channels, 3, 3)).astype(np.float32),
        "b1": np.zeros(12, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w0", "b0"], ["h0"], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["h0", "slope"], ["h1"]),
        helper.make_node("Conv", ["h1", "w1", "b1"], ["h2"], pads=[1, 1, 1, 1]),
        helper.make_node("DepthToSpace", ["h2"], ["output"], blocksize=2, mode="CRD"),
    ]
    graph = helper.make_graph(
        nodes,
        "repsr",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H2", "W2"])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = build_model("plain", scale=2, num_blocks=0, channels=channels).spec
    for key, value in {"producer": "repsr", **spec.to_metadata()}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    if external:
        onnx.save(
            model, str(path), save_as_external_data=True, location=path.stem + ".data", size_threshold=256
        )
    else:
        onnx.save(model, str(path))
