"""The CLI's failure surface: outputs checked before work, full disks and bad inputs in one line."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
import torch

from repsr.cli import main
from repsr.image.io import write_image

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- output paths, disks


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_deploy_under_a_file_is_one_line(tmp_path, plain_file, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["deploy", str(plain_file), "-o", str(tmp_path / "afile" / "a.safetensors")]) == 2
    err = _one_line_error(capsys)
    assert "afile" in err and "not a folder" in err


def test_export_under_a_file_is_refused_before_exporting(tmp_path, plain_file, capsys, monkeypatch):
    import repsr.deploy.onnx as export

    monkeypatch.setattr(export, "write_onnx", lambda *a, **k: pytest.fail("exported before the check"))
    (tmp_path / "afile").write_text("x")
    assert main(["export", str(plain_file), "--onnx", str(tmp_path / "afile" / "a.onnx")]) == 2
    err = _one_line_error(capsys)
    assert "afile" in err and "not a folder" in err


def _disk_full(monkeypatch):
    import repsr.util.atomic as atomic

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)


def test_deploy_on_a_full_disk_says_disk_full_and_names_the_file(tmp_path, plain_file, capsys, monkeypatch):
    _disk_full(monkeypatch)
    target = tmp_path / "out" / "a.safetensors"
    assert main(["deploy", str(plain_file), "-o", str(target)]) == 2
    err = _one_line_error(capsys)
    assert str(target) in err and "disk full" in err
    assert not target.exists() and not list(target.parent.glob(".*.tmp"))


def test_torch_writer_failure_on_a_full_disk_says_disk_full(tmp_path, monkeypatch):
    """torch.save reports a failed write as RuntimeError('... inline_container.cc ...')."""
    import repsr.util.atomic as atomic
    from repsr.util.errors import WriteError

    def fail(tmp):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\nfile write failed"
        )

    monkeypatch.setattr(atomic, "_free_bytes", lambda folder: 0)
    with pytest.raises(WriteError, match="disk full") as caught:
        atomic.atomic_write(tmp_path / "ckpt.pt", fail)
    assert "ckpt.pt" in str(caught.value) and "inline_container" not in str(caught.value)
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC


def test_export_on_a_full_disk_says_disk_full(tmp_path, plain_file, capsys, monkeypatch):
    """The exporter and ONNX Runtime are stood in for (they take seconds); the final write is real."""
    import repsr.deploy.onnx as export

    monkeypatch.setattr(export, "require_onnx", lambda: (None, None))
    monkeypatch.setattr(export, "write_onnx", lambda model, path, *a, **k: Path(path).write_bytes(b"onnx"))
    monkeypatch.setattr(export, "onnx_session", lambda path: None)
    monkeypatch.setattr(export, "max_deviation", lambda *a: 0.0)
    _disk_full(monkeypatch)
    target = tmp_path / "m.onnx"
    assert main(["export", str(plain_file), "--onnx", str(target), "--size", "32x32"]) == 2
    err = _one_line_error(capsys)
    assert str(target) in err and "disk full" in err and not target.exists()


def test_eval_json_path_is_checked_before_evaluating(tmp_path, plain_file, capsys, monkeypatch):
    import repsr.quality.evaluation as evaluation

    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated before the check"))
    (tmp_path / "afile").write_text("x")
    assert main(["eval", str(plain_file), "--json", str(tmp_path / "afile" / "r.json")]) == 2
    assert "afile" in _one_line_error(capsys)
    assert main(["eval", str(plain_file), "--json", str(tmp_path)]) == 2
    assert "folder" in _one_line_error(capsys)


def test_eval_skips_images_too_small_to_measure_with_a_warning(tmp_path, plain_file, capsys, caplog):
    data = tmp_path / "set"
    write_image(data / "good.png", torch.rand(3, 40, 40))
    write_image(data / "tiny.png", torch.rand(3, 12, 12))  # 12 - 2*2 border < 11 (SSIM window)
    write_image(data / "dot.png", torch.rand(3, 1, 1))  # smaller than the scale
    caplog.set_level(logging.WARNING)
    assert main(["eval", str(plain_file), "--data", f"S={data}", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "images: S 1" in out
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("tiny" in w and "skipped" in w for w in warnings), warnings
    assert any("dot.png" in w and "skipped" in w for w in warnings), warnings
    assert all("\n" not in w for w in warnings)


# ------------------------------------------------------------------------- training entry points


def test_train_out_under_a_file_and_a_config_folder_are_one_line(tmp_path, capsys, monkeypatch):
    import repsr.training as training

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained despite the bad path"))
    (tmp_path / "afile").write_text("x")
    config = ROOT / "configs" / "quick.yaml"
    assert main(["train", str(config), "--out", str(tmp_path / "afile" / "sub"), "--no-progress"]) == 2
    err = _one_line_error(capsys)
    assert "afile" in err and "not a folder" in err
    assert main(["train", str(tmp_path), "--no-progress"]) == 2
    err = _one_line_error(capsys)
    assert "is a folder" in err and "no such config" not in err


def test_deploy_export_and_eval_never_replace_an_existing_file_unless_asked(tmp_path, plain_file, capsys):
    """A file the command did not create is kept, refused before any work; --overwrite replaces it."""
    pytest.importorskip("onnxruntime")
    targets = {
        "deploy": (tmp_path / "kept.safetensors", ["deploy", str(plain_file), "-o"]),
        "export": (tmp_path / "kept.onnx", ["export", str(plain_file), "--onnx"]),
        "eval": (tmp_path / "kept.json", ["eval", str(plain_file), "--json"]),
    }
    for command, (target, args) in targets.items():
        target.write_bytes(b"someone else's file")
        assert main([*args, str(target)]) == 2, command
        assert target.read_bytes() == b"someone else's file", command
        err = capsys.readouterr().err
        assert (
            f"{target}: exists already" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
        )
        assert main([*args, str(target), "--overwrite"]) == 0, command
        assert target.read_bytes() != b"someone else's file", command
