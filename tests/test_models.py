"""One loader for every model form (`repsr.load_model`), and the descriptor every form implements."""

from __future__ import annotations

import pytest
import torch

import repsr
from repsr.arch.network import ModelDescriptor, build_model, describe, reparameterize_model
from repsr.cli import main
from repsr.deploy.onnx import export_onnx
from repsr.image.io import write_image
from repsr.inference import Upscaler, receptive_radius
from repsr.inference.backends import prepare_model
from repsr.inference.forms import bf16_module
from repsr.models.onnx import OnnxRunner
from repsr.util.errors import ModelFileError

from .helpers import randomize


def _training(scale: int = 2):
    return randomize(build_model("repsr", scale=scale, num_blocks=3, channels=8)).eval()


def test_every_form_describes_itself_the_same_way():
    training = _training()
    plain = reparameterize_model(training)
    forms = {
        "training": training,
        "plain": plain,
        "fused-tail": prepare_model(plain, "channels-last", torch.device("cpu"), torch.float32),
        "bf16": bf16_module(plain),
    }
    for form, model in forms.items():
        d = describe(model)
        assert isinstance(d, ModelDescriptor) and d.form == form
        assert (d.scale, d.in_channels, d.channels, d.receptive_radius) == (2, 3, 8, 5)
        assert receptive_radius(model) == 5 and d.spec == training.spec
    assert describe(forms["bf16"]).precisions == ("bf16",)
    assert "int8" in describe(training).precisions
    with pytest.raises(TypeError, match="expected a repsr model"):
        describe(torch.nn.Conv2d(3, 3, 3))


def test_the_tiled_result_follows_the_descriptors_radius():
    """Tiles cut with the descriptor's radius reproduce the untiled output (so the radius is right)."""
    plain = reparameterize_model(_training())
    x = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    whole = Upscaler(plain, device="cpu", tile=None, backend="eager")(x)
    tiled = Upscaler(plain, device="cpu", tile=16, backend="eager")(x)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


def test_load_model_dispatches_by_what_the_reference_names(tmp_path):
    plain = reparameterize_model(_training())
    repsr.save_model(plain, tmp_path / "m.safetensors")
    export_onnx(plain, tmp_path / "m.onnx", dynamic=True, size=(24, 24))
    torch_model = repsr.load_model(tmp_path / "m.safetensors")
    onnx_model = repsr.load_model(tmp_path / "m.onnx")
    assert isinstance(onnx_model, OnnxRunner) and describe(onnx_model).form == "onnx"
    assert describe(onnx_model).precisions == ("fp32",) and describe(onnx_model).spec == plain.spec
    x = torch.rand(1, 3, 20, 18, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(onnx_model(x), torch_model(x), rtol=1e-4, atol=1e-4)
    shipped = repsr.load_model("repsr-m4c16-x4")
    assert describe(shipped).scale == 4
    with pytest.raises(ModelFileError, match="no such ONNX file"):
        repsr.load_model(tmp_path / "missing.onnx")


def test_eval_runs_an_onnx_file(tmp_path, capsys):
    plain = reparameterize_model(_training(scale=4))
    export_onnx(plain, tmp_path / "m.onnx", dynamic=True, size=(24, 24))
    assert main(["eval", str(tmp_path / "m.onnx"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bicubic" in out.lower()


def test_a_fixed_size_onnx_file_is_refused_up_front_in_one_line(tmp_path, capsys):
    plain = reparameterize_model(_training(scale=2))
    export_onnx(plain, tmp_path / "fixed.onnx", dynamic=False, size=(24, 24))
    for command in (
        ["eval", str(tmp_path / "fixed.onnx"), "--no-progress"],
        ["upscale", str(tmp_path / "x.png"), "-m", str(tmp_path / "fixed.onnx"), "-o", str(tmp_path / "o")],
    ):
        write_image(tmp_path / "x.png", torch.rand(3, 8, 8))
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "fixed.onnx" in err and "fixed size 1x3x24x24" in err and "--dynamic" in err, err
        assert err.count("\n") == 1


def test_bench_refuses_an_onnx_file_in_one_line(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"")
    assert main(["bench", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "m.onnx" in err and "repsr bench times a torch model" in err and err.count("\n") == 1
