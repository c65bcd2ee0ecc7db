"""ncnn export: pnnx conversion run in ncnn's own runtime matches PyTorch; failures are one line."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from repsr import build_model, reparameterize_model, save_model
from repsr.data.samples import verification_image
from repsr.deploy.ncnn import (
    INPUT_BLOB,
    OUTPUT_BLOB,
    export_ncnn,
    fp16_storage_reference,
    rename_blobs,
    require_ncnn,
    run_ncnn,
)
from repsr.util.errors import ConfigError, DependencyError, ModelFileError
from tests.helpers import randomize

pytest.importorskip("ncnn", reason="ncnn tests need the ncnn runtime: pip install 'repsr[ncnn]'")
pytest.importorskip("pnnx", reason="ncnn tests need the converter: pip install --no-deps pnnx")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets run in one thread (a shared 2-core machine stalls 2-thread tiny convolutions)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(in_channels: int = 3, scale: int = 2):
    model = build_model("repsr", scale=scale, num_blocks=2, channels=8, in_channels=in_channels)
    return randomize(model, seed=5).eval()


@pytest.mark.parametrize(("in_channels", "scale"), [(3, 3), (1, 2)])
def test_export_runs_in_ncnn_like_pytorch_at_any_size(tmp_path, in_channels, scale):
    model = tiny_model(in_channels, scale)  # training form: re-parameterized by the export
    report = export_ncnn(model, tmp_path / "models", name="tiny")
    assert report.param == tmp_path / "models" / "tiny.param" and report.bin.is_file()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny.bin", "tiny.param"]
    assert report.max_abs_diff <= 1e-3 and report.max_abs_diff_fp16 < 1e-2
    assert {"Convolution", "PReLU", "PixelShuffle", "Interp", "BinaryOp"} <= set(report.layers)
    text = report.param.read_text()
    assert f" 0 1 {INPUT_BLOB}\n" in text and f" {OUTPUT_BLOB} " in text
    # independently of the export's own check: another photo, another size, batch of one
    plain = reparameterize_model(model)
    x = verification_image(in_channels, (37, 52), index=3)
    with torch.no_grad():
        expected = plain(x)[0].numpy()
    for winograd in (True, False):
        result = run_ncnn(report.param, report.bin, x[0].numpy(), winograd=winograd)
        assert result.shape == (in_channels, 37 * scale, 52 * scale)
        assert np.abs(result - expected).max() <= 1e-4  # fp32 weights: float rounding only


def test_fp16_weights_halve_the_file_and_stay_close(tmp_path):
    model = tiny_model()
    full = export_ncnn(model, tmp_path, name="full")
    half = export_ncnn(model, tmp_path, name="half", fp16_weights=True, tolerance=1e-1)
    assert half.bin.stat().st_size < 0.6 * full.bin.stat().st_size
    assert full.max_abs_diff < half.max_abs_diff <= 1e-1


def test_fp16_storage_reference_rounds_activations():
    plain = reparameterize_model(tiny_model())
    x = verification_image(3, (20, 24))
    with torch.no_grad():
        exact = plain(x)
    emulated = fp16_storage_reference(plain, x)
    difference = float((emulated - exact).abs().max())
    assert 0 < difference < 0.05


def test_a_mismatch_keeps_nothing(tmp_path, monkeypatch):
    import repsr.deploy.ncnn as module

    real = module.run_ncnn
    monkeypatch.setattr(module, "run_ncnn", lambda *a, **k: real(*a, **k) + 0.01)
    with pytest.raises(ModelFileError, match="differs from PyTorch by .*not kept"):
        export_ncnn(tiny_model(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_converter_failures_and_corrupt_files_are_one_line_errors(tmp_path, monkeypatch):
    import repsr.deploy.ncnn as module

    fake = tmp_path / "fake-pnnx"
    fake.write_text("#!/bin/sh\necho 'pnnx: unsupported operator aten::foo' >&2\nexit 1\n")
    fake.chmod(0o755)
    ncnn, _ = require_ncnn()
    monkeypatch.setattr(module, "require_ncnn", lambda: (ncnn, str(fake)))
    with pytest.raises(ModelFileError, match=r"pnnx conversion failed \(pnnx: unsupported operator") as error:
        export_ncnn(tiny_model(), tmp_path / "out")
    assert "\n" not in str(error.value)
    monkeypatch.undo()
    report = export_ncnn(tiny_model(), tmp_path / "good", name="m")
    corrupt = tmp_path / "corrupt.param"
    corrupt.write_text("7767517\n3 3\nInput in0 0 1 data\nNoSuchLayer x 1 1 data output\n")
    with pytest.raises(ModelFileError, match="could not read this .param"):
        run_ncnn(corrupt, report.bin, np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ModelFileError, match="not an ncnn .param"):
        rename_blobs("hello\n", {"a": "b"})
    with pytest.raises(ConfigError, match="plain file name"):
        export_ncnn(tiny_model(), tmp_path, name="../x")


def test_rename_blobs_touches_only_blob_lists():
    text = "7767517\n2 2\nInput in0 0 1 in0\nReLU in0x 1 1 in0 out0 0=1\n"
    renamed = rename_blobs(text, {"in0": "data", "out0": "output"})
    assert renamed == "7767517\n2 2\nInput in0 0 1 data\nReLU in0x 1 1 data output 0=1\n"
    with pytest.raises(ModelFileError, match="already used"):
        rename_blobs(text, {"in0": "out0"})


def test_missing_runtime_is_a_one_line_install_hint(monkeypatch):
    real_import = builtins.__import__

    def no_ncnn(name, *args, **kwargs):
        if name == "ncnn":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ncnn)
    with pytest.raises(DependencyError, match=r"pip install 'repsr\[ncnn\]'"):
        require_ncnn()


def test_cli_exports_ncnn(tmp_path, capsys):
    from repsr.cli import main

    save_model(reparameterize_model(tiny_model()), tmp_path / "m.safetensors")
    assert main(["export", str(tmp_path / "m.safetensors"), "--ncnn", str(tmp_path / "models")]) == 0
    out = capsys.readouterr().out
    assert "blobs data -> output" in out and "max abs difference" in out
    assert sorted(p.suffix for p in (tmp_path / "models").iterdir()) == [".bin", ".param"]
    assert main(["export", str(tmp_path / "m.safetensors")]) == 2
    assert "--onnx FILE and/or --ncnn DIR" in capsys.readouterr().err
