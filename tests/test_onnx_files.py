"""Hostile `.onnx` files (issue 28): external data outside the model's folder or missing, truncated
files, graphs whose outputs are not the images their metadata promises. Each is refused at load in one
line naming the file, before ONNX Runtime reads anything outside the folder or a batch starts."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest

from repsr.util.errors import ModelFileError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.external_data_helper import convert_model_to_external_data  # noqa: E402

from repsr.models.onnx import OnnxRunner  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """An x2 file of `repsr export`'s layout with 16 channels (its 3x3 convs exceed the 1 KiB
    external-data threshold), built directly: an export through torch takes 8 s here."""
    from tests.helpers.onnx_files import onnx_seed

    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    onnx_seed(path, channels=16)
    return path


def _refused(path: Path, match: str) -> str:
    with pytest.raises(ModelFileError, match=match) as caught:
        OnnxRunner(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


def _with_external_data(exported: Path, folder: Path, location: str) -> Path:
    """A copy of the export whose large tensors live in `folder/w.data`, then pointed at `location`."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(exported))
    convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="w.data", size_threshold=1024
    )
    onnx.save(model, str(folder / "good.onnx"))
    model = onnx.load(str(folder / "good.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path = folder / f"{location.replace('/', '_')}.onnx"
    path.write_bytes(model.SerializeToString())  # onnx.save itself refuses '..'; a hostile file need not
    return path


def test_external_data_beside_the_model_runs(exported, tmp_path):
    runner = OnnxRunner(_with_external_data(exported, tmp_path, "w.data"))
    assert runner.spec.scale == 2


@pytest.mark.parametrize(
    "location", ["../outside/w.data", "/etc/hostname", "/dev/zero", "link.data", "no.data"]
)
def test_external_data_outside_the_folder_or_missing_is_refused(exported, tmp_path, location):
    (tmp_path / "outside").mkdir()
    path = _with_external_data(exported, tmp_path / "model", location)
    shutil.copy(tmp_path / "model" / "w.data", tmp_path / "outside" / "w.data")  # real weights, outside
    (tmp_path / "model" / "link.data").symlink_to(tmp_path / "outside" / "w.data")
    _refused(path, "missing" if location == "no.data" else "out(side| of) the model.s folder")


def test_external_data_named_by_bytes_that_are_not_utf8_is_refused(exported, tmp_path):
    """The fuzzer's case 2463: a location whose bytes are not UTF-8 (protobuf hands them over as bytes)."""
    path = _with_external_data(exported, tmp_path, "wxdata")
    raw = path.read_bytes()
    assert raw.count(b"wxdata") >= 1
    path.write_bytes(raw.replace(b"wxdata", b"w\xb8data"))  # same length: the file still parses
    _refused(path, "not UTF-8")


def test_external_data_shorter_than_claimed_is_refused(exported, tmp_path):
    path = _with_external_data(exported, tmp_path, "w.data")
    data = tmp_path / "w.data"
    data.write_bytes(data.read_bytes()[:100])
    _refused(path, "shorter than the tensor claims")


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_files_are_refused(exported, tmp_path, cut):
    raw = exported.read_bytes()
    (tmp_path / "t.onnx").write_bytes(raw[: int(len(raw) * cut)])
    _refused(tmp_path / "t.onnx", "not an ONNX file")


def _rewired(exported: Path, tmp_path: Path, tail: list, output: onnx.ValueInfoProto, extra=()) -> Path:
    """The export with its output renamed `mid` and `tail` nodes computing a new `output`."""
    model = copy.deepcopy(onnx.load(str(exported)))
    for node in model.graph.node:
        node.output[:] = ["mid" if o == "output" else o for o in node.output]
    model.graph.node.extend(tail)
    model.graph.initializer.extend(extra)
    del model.graph.output[:]
    model.graph.output.append(output)
    path = tmp_path / "rewired.onnx"
    onnx.save(model, str(path))
    return path


def _image(elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("output", elem, ["N", None, None, None])


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("scalar", "not to the image"),
        ("identity", "not to the image"),
        ("six_channels", "not to the image"),
        ("int64", "must be float32 images"),
        ("nan", "non-finite"),
    ],
)
def test_outputs_that_are_not_the_promised_image_are_refused(exported, tmp_path, case, match):
    """These ran before and failed midway with a traceback (or wrote garbage: int64, NaN)."""
    nan = numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "nan")
    tails = {
        "scalar": ([helper.make_node("ReduceMean", ["mid"], ["output"], keepdims=0)], _image(), ()),
        "identity": ([helper.make_node("Identity", ["input"], ["output"])], _image(), ()),
        "six_channels": ([helper.make_node("Concat", ["mid", "mid"], ["output"], axis=1)], _image(), ()),
        "int64": (
            [helper.make_node("Cast", ["mid"], ["output"], to=TensorProto.INT64)],
            _image(TensorProto.INT64),
            (),
        ),
        "nan": ([helper.make_node("Mul", ["mid", "nan"], ["output"])], _image(), (nan,)),
    }
    tail, output, extra = tails[case]
    _refused(_rewired(exported, tmp_path, tail, output, extra), match)


@pytest.mark.parametrize(
    ("key", "value"), [("scale", "1000"), ("scale", "3"), ("in_channels", "7"), ("block", "evil")]
)
def test_metadata_that_lies_is_refused(exported, tmp_path, key, value):
    model = onnx.load(str(exported))
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
    onnx.save(model, str(tmp_path / "lie.onnx"))
    _refused(tmp_path / "lie.onnx", "lie.onnx: ")


def test_renamed_input_is_refused(exported, tmp_path):
    model = onnx.load(str(exported))
    model.graph.input[0].name = "image"
    for node in model.graph.node:
        node.input[:] = ["image" if i == "input" else i for i in node.input]
    onnx.save(model, str(tmp_path / "renamed.onnx"))
    _refused(tmp_path / "renamed.onnx", "expected one input 'input'")


def test_cli_upscale_with_a_hostile_onnx_file_is_one_line_and_writes_nothing(exported, tmp_path, capsys):
    from PIL import Image

    from repsr.cli import main

    path = _with_external_data(exported, tmp_path / "model", "../secret.data")
    (tmp_path / "secret.data").write_bytes(b"\0" * 100_000)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (6, 5)).save(tmp_path / "in" / "a.png")
    assert (
        main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(path), "--no-progress"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("repsr: error: ") and err.count("\n") == 1 and "outside the model's folder" in err
    assert not (tmp_path / "out").exists()


def test_a_graph_right_only_on_the_probe_size_fails_that_image_in_one_line(exported, tmp_path):
    """A Resize to a fixed 16x16 passes the 8x8 probe; every other size must fail its image, not crash."""
    from PIL import Image

    from repsr.inference import Upscaler, upscale_files

    sizes = numpy_helper.from_array(np.array([1, 3, 16, 16], dtype=np.int64), "sizes")
    tail = [helper.make_node("Resize", ["mid", "", "", "sizes"], ["output"], mode="nearest")]
    runner = OnnxRunner(_rewired(exported, tmp_path, tail, _image(), (sizes,)))
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "probe-size.png")
    Image.new("RGB", (6, 5)).save(tmp_path / "in" / "other.png")
    report = upscale_files(Upscaler(runner, tile=None), [tmp_path / "in"], tmp_path / "out", progress=False)
    assert [p.name for p in report.written] == ["probe-size.png"]
    ((source, reason),) = report.failed
    assert source.name == "other.png" and "not to its x2 image" in reason and "\n" not in reason
