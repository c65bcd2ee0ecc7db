"""Deploy refuses a wrong merge; ONNX export matches PyTorch in ONNX Runtime, static and dynamic."""

from __future__ import annotations

import builtins
import logging

import numpy as np
import pytest
import torch

from repsr import build_model, load_model, save_model
from repsr.arch.network import PlainSR
from repsr.data.samples import verification_image
from repsr.deploy.checkpoint import deploy
from repsr.deploy.onnx import export_onnx
from repsr.models.onnx import onnx_session
from repsr.util.errors import ConfigError, DependencyError, ModelFileError
from tests.helpers import randomize


def training_model(in_channels: int = 3, scale: int = 2):
    model = build_model(
        "repsr", scale=scale, num_blocks=2, channels=8, in_channels=in_channels, bn_mode="frozen"
    )
    return randomize(model).eval()


def test_verification_image_is_a_real_photo_crop():
    rgb = verification_image(3, (48, 64), batch=2)
    y = verification_image(1, (48, 64))
    assert rgb.shape == (2, 3, 48, 64) and y.shape == (1, 1, 48, 64)
    assert rgb.std() > 0.05  # not a flat or random-noise stand-in: neighbouring pixels correlate
    horizontal = torch.corrcoef(torch.stack([rgb[0, 0, :, :-1].flatten(), rgb[0, 0, :, 1:].flatten()]))[0, 1]
    assert horizontal > 0.5


@pytest.mark.parametrize("in_channels", [3, 1])
def test_deploy_writes_a_plain_model_equal_to_the_training_form(tmp_path, in_channels):
    model = training_model(in_channels)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"spec": model.spec.to_dict(), "model": model.state_dict()}, checkpoint)
    report = deploy(checkpoint, tmp_path / "plain.safetensors")
    assert not report.was_plain and report.max_abs_diff <= 1e-5
    plain = load_model(tmp_path / "plain.safetensors")
    assert isinstance(plain, PlainSR)
    x = torch.rand(1, in_channels, 20, 20, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert (plain(x) - model(x)).abs().max() <= 1e-5


def test_deploy_refuses_to_write_when_the_merge_is_off(tmp_path, monkeypatch):
    import repsr.deploy.checkpoint as export

    save_model(training_model(), tmp_path / "train.safetensors")
    real = export.reparameterize_model

    def broken(model):
        plain = real(model)
        with torch.no_grad():
            plain.body[2].bias.add_(1e-2)
        return plain

    monkeypatch.setattr(export, "reparameterize_model", broken)
    with pytest.raises(ModelFileError, match="differs from the training form"):
        deploy(tmp_path / "train.safetensors", tmp_path / "plain.safetensors")
    assert not (tmp_path / "plain.safetensors").exists()


def test_deploy_to_pth_loads_as_a_compact_params_file(tmp_path):
    save_model(training_model(), tmp_path / "train.safetensors")
    deploy(tmp_path / "train.safetensors", tmp_path / "plain.pth")
    data = torch.load(tmp_path / "plain.pth", weights_only=True)
    assert set(data) == {"params"} and "body.0.weight" in data["params"]
    assert isinstance(load_model(tmp_path / "plain.pth"), PlainSR)
    with pytest.raises(ConfigError):
        deploy(tmp_path / "train.safetensors", tmp_path / "plain.bin")


def test_onnx_static_export_matches_pytorch(tmp_path):
    model = training_model(scale=3)
    report = export_onnx(model, tmp_path / "m.onnx", size=(40, 56))
    assert report.max_abs_diff <= 1e-5 and report.opset >= 17
    import onnx

    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert proto.opset_import[0].version >= 17
    assert {p.key: p.value for p in proto.metadata_props}["scale"] == "3"
    session = onnx_session(tmp_path / "m.onnx")
    with pytest.raises(Exception):  # noqa: B017 - static: another size is rejected by ONNX Runtime
        session.run(None, {"input": np.zeros((1, 3, 20, 20), np.float32)})


def test_onnx_dynamic_export_runs_any_batch_and_size(tmp_path):
    model = training_model(in_channels=1)
    report = export_onnx(model, tmp_path / "d.onnx", dynamic=True, size=(40, 40))
    assert report.check_shape[0] == 2 and report.max_abs_diff <= 1e-5
    session = onnx_session(tmp_path / "d.onnx")
    x = torch.rand(3, 1, 17, 29, generator=torch.Generator().manual_seed(0))
    (out,) = session.run(None, {"input": x.numpy()})
    with torch.inference_mode():
        assert np.abs(out - model(x).numpy()).max() <= 1e-5


def test_missing_onnx_packages_give_one_install_line(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(DependencyError, match=r"repsr\[onnx\]") as error:
        export_onnx(training_model(), tmp_path / "x.onnx")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "x.onnx").exists()


def test_onnx_file_is_not_kept_when_onnx_runtime_disagrees(tmp_path, monkeypatch):
    import repsr.deploy.onnx as export

    real_session = export.onnx_session

    class Perturbed:
        def __init__(self, path):
            self.session = real_session(path)

        def run(self, names, feed):
            return [out + 1e-2 for out in self.session.run(names, feed)]

    monkeypatch.setattr(export, "onnx_session", Perturbed)
    with pytest.raises(ModelFileError, match="differs from PyTorch"):
        export_onnx(training_model(), tmp_path / "x.onnx", size=(32, 32))
    assert not (tmp_path / "x.onnx").exists()


def test_deploy_prefers_a_checkpoints_ema_weights(tmp_path):
    model, ema = training_model(), randomize(training_model(), seed=7).eval()
    checkpoint = tmp_path / "ckpt.pt"
    torch.save(
        {"spec": model.spec.to_dict(), "model": model.state_dict(), "ema": ema.state_dict()}, checkpoint
    )
    x = verification_image(3, (24, 24))
    for weights, expected in (("auto", ema), ("ema", ema), ("model", model)):
        report = deploy(checkpoint, tmp_path / f"{weights}.safetensors", weights=weights)
        assert report.weights == ("model" if weights == "model" else "ema")
        with torch.inference_mode():
            out = load_model(tmp_path / f"{weights}.safetensors")(x)
            assert (out - expected(x)).abs().max() <= 1e-5
    torch.save({"spec": model.spec.to_dict(), "model": model.state_dict(), "ema": None}, checkpoint)
    with pytest.raises(ModelFileError, match="no EMA"):
        deploy(checkpoint, tmp_path / "x.safetensors", weights="ema")
    assert deploy(checkpoint, tmp_path / "x.safetensors").weights == "model"


def test_deploy_reads_a_checkpoint_once_and_takes_its_ema(tmp_path, monkeypatch):
    model = training_model()
    ema = randomize(training_model(), seed=5).state_dict()
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"spec": model.spec.to_dict(), "model": model.state_dict(), "ema": ema}, checkpoint)
    real, calls = torch.load, []

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    report = deploy(checkpoint, tmp_path / "plain.safetensors")
    assert calls == [checkpoint] and report.weights == "ema"


def test_deploy_of_a_checkpoint_from_before_the_switch_warns(tmp_path, caplog):
    from repsr.deploy.checkpoint import deploy

    model = randomize(build_model("repsr", scale=2, num_blocks=1, channels=4), 2).eval()
    for key, phase in (
        ("bn_phase", "batch"),
        ("bn_phase", "frozen"),
        ("phase", "batch_stats"),
        ("phase", "merged"),
    ):
        state = {"spec": model.spec.to_dict(), "model": model.state_dict(), "iteration": 5, key: phase}
        torch.save(state, tmp_path / f"{phase}.pt")  # bn_phase: files of older versions
    caplog.set_level(logging.WARNING)
    report = deploy(tmp_path / "batch.pt", tmp_path / "a.safetensors")
    assert len(report.warnings) == 1 and "before the BN switch" in report.warnings[0]
    assert "batch.pt" in report.warnings[0] and "mini-batch" in report.warnings[0]
    assert any("before the BN switch" in r.getMessage() for r in caplog.records)
    assert deploy(tmp_path / "frozen.pt", tmp_path / "b.safetensors").warnings == []
    assert len(deploy(tmp_path / "batch_stats.pt", tmp_path / "c.safetensors").warnings) == 1
    assert deploy(tmp_path / "merged.pt", tmp_path / "d.safetensors").warnings == []
