"""Failure behaviour outside training (issue 12): huge images, output paths, full disks, bad inputs.

Each test reproduces a failure a user met (traceback, lost work, wrong file named) and checks the
one-line error or the kept work instead.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repsr import build_model, reparameterize_model, save_model
from repsr.cli import build_parser, main
from repsr.errors import ConfigError, ModelFileError
from repsr.inference import Upscaler, upscale_files
from repsr.io import read_pixels, write_image
from repsr.network import PlainSR
from tests.helpers import randomize

ROOT = Path(__file__).resolve().parents[1]


def _plain(scale: int = 2, in_channels: int = 3, num_blocks: int = 1) -> PlainSR:
    model = build_model("repsr", scale=scale, num_blocks=num_blocks, channels=4, in_channels=in_channels)
    return reparameterize_model(randomize(model, 0).eval())


@pytest.fixture
def plain_file(tmp_path: Path) -> Path:
    path = tmp_path / "plain.safetensors"
    save_model(_plain(), path)
    return path


# ------------------------------------------------------------------------------------ huge images

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    import numpy as np
    from PIL import Image
    from repsr import build_model, reparameterize_model
    from repsr.inference import Upscaler, upscale_files

    work, budget = Path(sys.argv[1]), int(sys.argv[2])
    model = reparameterize_model(build_model("repsr", scale=4, num_blocks=1, channels=4).eval())
    upscaler = Upscaler(model, device="cpu", tile=128, backend="eager")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(work / "warm.png")
    upscale_files(upscaler, [work / "warm.png"], work / "warm", progress=False)  # load every library

    def vm_size() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")

    limit = vm_size() + budget
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    report = upscale_files(upscaler, [work / "in"], work / "out", progress=False)
    for path in report.written:
        print("written", path.name)
    for path, reason in report.failed:
        print("failed", path.name, "|", reason.replace(chr(10), " "))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_huge_image_fails_alone_and_memory_is_bounded_by_the_integer_output(tmp_path):
    """400x400 at x4: the integer output is 7.7 MB; a float32 output (31 MB) plus its float64 rounding
    copies (61 MB each) do not fit in 100 MB above the warmed-up process. The 2000x2000 image's output
    (192 MB) cannot fit at all: one line for it, the others written."""
    src = tmp_path / "in"
    src.mkdir()
    yy, xx = np.mgrid[0:400, 0:400]
    smooth = np.stack([(xx * 255) // 399, (yy * 255) // 399, ((xx + yy) * 255) // 798], -1).astype(np.uint8)
    Image.fromarray(smooth).save(src / "a_big.png")
    Image.fromarray(np.zeros((2000, 2000, 3), np.uint8)).save(src / "b_huge.png", compress_level=1)
    Image.fromarray(smooth[:30, :30]).save(src / "c_small.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path), str(100 * 2**20)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "written a_big.png" in lines and "written c_small.png" in lines, done.stdout
    failed = [line for line in lines if line.startswith("failed")]
    assert len(failed) == 1 and "b_huge.png" in failed[0] and "memory" in failed[0], done.stdout
    big = read_pixels(tmp_path / "out" / "a_big.png")
    assert big.array.shape == (1600, 1600, 3) and big.bit_depth == 8


@pytest.mark.parametrize("kind", ["rgba", "gray_alpha", "rgb16", "gray16", "y_model"])
def test_tiled_files_equal_untiled_for_every_image_kind(tmp_path, kind):
    rng = np.random.default_rng(3)
    model = _plain(scale=2, in_channels=1 if kind == "y_model" else 3)
    if kind in ("rgba", "y_model"):
        Image.fromarray(rng.integers(0, 256, (37, 70, 4), dtype=np.uint8), mode="RGBA").save(
            tmp_path / "x.png"
        )
    elif kind == "gray_alpha":
        Image.fromarray(rng.integers(0, 256, (37, 70, 2), dtype=np.uint8), mode="LA").save(tmp_path / "x.png")
    else:
        channels = 3 if kind == "rgb16" else 1
        write_image(
            tmp_path / "x.png",
            torch.rand(channels, 37, 70, generator=torch.Generator().manual_seed(1)),
            bit_depth=16,
            gray=channels == 1,
        )
    outputs = []
    for tile in (None, 16):
        upscaler = Upscaler(model, device="cpu", tile=tile)
        report = upscale_files(upscaler, [tmp_path / "x.png"], tmp_path / f"out{tile}", progress=False)
        assert not report.failed
        outputs.append(read_pixels(report.written[0]))
    source = read_pixels(tmp_path / "x.png")
    assert outputs[0].array.shape == (74, 140, source.array.shape[2])
    assert outputs[0].bit_depth == outputs[1].bit_depth == source.bit_depth
    if kind in ("rgba", "gray_alpha"):
        assert np.array_equal(outputs[0].array, outputs[1].array)
    else:  # float32 rounding of the network (convolutions of another window size) can move a value
        # across a level boundary: with 65535 levels, or through the Y -> RGB conversion, rarely
        difference = np.abs(outputs[0].array.astype(int) - outputs[1].array.astype(int))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01


def test_file_pipeline_equals_the_float_pipeline(tmp_path):
    """The integer, tile-by-tile file path writes what upscale_image + to_pixels computes."""
    from repsr.inference import upscale_image
    from repsr.io import read_image, to_pixels

    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (30, 41, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "x.png")
    upscaler = Upscaler(_plain(scale=3), device="cpu", tile=16)
    report = upscale_files(upscaler, [tmp_path / "x.png"], tmp_path / "out", progress=False)
    result = upscale_image(upscaler, read_image(tmp_path / "x.png"))
    expected = to_pixels(result.rgb, result.alpha, 8, result.gray)
    assert np.array_equal(read_pixels(report.written[0]).array, expected)


def test_sixteen_bit_png_streams_in_bands_and_reads_back(tmp_path, monkeypatch):
    import repsr.io as rio

    monkeypatch.setattr(rio, "_PNG16_ROWS", 7)
    arr = np.random.default_rng(0).integers(0, 65536, (30, 11, 3), dtype=np.uint16)
    rio.write_pixels(tmp_path / "d.png", arr)
    assert np.array_equal(read_pixels(tmp_path / "d.png").array, arr)


# ------------------------------------------------------------------------------- inference form


def test_upscaler_runs_the_merged_network_of_a_training_checkpoint(tmp_path):
    model = randomize(build_model("repsr", scale=2, num_blocks=2, channels=8), 1).eval()
    upscaler = Upscaler(model, device="cpu", tile=None, backend="eager")
    assert isinstance(upscaler.module, PlainSR)
    lr = torch.rand(1, 3, 12, 13)
    with torch.no_grad():
        assert (upscaler(lr) - model(lr)).abs().max() <= 1e-5
    default = Upscaler(model, device="cpu", tile=None)
    assert not any(type(m).__name__ == "RepNet" for m in default.module.modules())


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
    import repsr.export as export

    monkeypatch.setattr(export, "write_onnx", lambda *a, **k: pytest.fail("exported before the check"))
    (tmp_path / "afile").write_text("x")
    assert main(["export", str(plain_file), "--onnx", str(tmp_path / "afile" / "a.onnx")]) == 2
    err = _one_line_error(capsys)
    assert "afile" in err and "not a folder" in err


def _disk_full(monkeypatch):
    import repsr.atomic as atomic

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
    import repsr.atomic as atomic
    from repsr.errors import WriteError

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
    import repsr.export as export

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
    import repsr.evaluation as evaluation

    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated before the check"))
    (tmp_path / "afile").write_text("x")
    assert main(["eval", str(plain_file), "--json", str(tmp_path / "afile" / "r.json")]) == 2
    assert "afile" in _one_line_error(capsys)
    assert main(["eval", str(plain_file), "--json", str(tmp_path)]) == 2
    assert "folder" in _one_line_error(capsys)


# -------------------------------------------------------------------------------- bad inputs


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


def test_skipped_training_image_names_the_file_being_read(tmp_path, caplog):
    from repsr.data import TrainPatches

    for folder in ("d_textonly", "d_mixed"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "empty.png").write_bytes(b"")
    write_image(tmp_path / "d_mixed" / "good.png", torch.rand(3, 40, 40))
    cache = tmp_path / "cache"
    with pytest.raises(Exception, match="d_textonly"):
        TrainPatches(tmp_path / "d_textonly", 2, 8, cache_dir=cache)
    caplog.set_level(logging.WARNING)
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")  # a logged line, not a UserWarning
        TrainPatches(tmp_path / "d_mixed", 2, 8, cache_dir=cache)
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "d_mixed" in message and "empty.png" in message and "d_textonly" not in message


def test_pickle_or_text_as_pth_does_not_quote_torchs_unsafe_advice(tmp_path):
    from repsr.serialization import load_model

    torch.save({"x": Path("not a tensor")}, tmp_path / "pickle.pth")
    (tmp_path / "text.pth").write_text("hello, this is not a model\n")
    for name in ("pickle.pth", "text.pth"):
        with pytest.raises(ModelFileError) as caught:
            load_model(tmp_path / name)
        message = str(caught.value)
        assert name in message and "\n" not in message
        assert "weights_only set to False" not in message and "Re-running" not in message
    with pytest.raises(ModelFileError, match="not a plain state dict"):
        load_model(tmp_path / "pickle.pth")


def test_animated_gif_is_refused_with_one_line(tmp_path, plain_file):
    frames = [Image.fromarray(np.full((10, 10, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    write_image(tmp_path / "ok.png", torch.rand(3, 8, 8))
    upscaler = Upscaler(_plain(), device="cpu", tile=None)
    report = upscale_files(
        upscaler, [tmp_path / "anim.gif", tmp_path / "ok.png"], tmp_path / "o", progress=False
    )
    assert [p.name for p in report.written] == ["ok.png"]
    ((path, reason),) = report.failed
    assert path.name == "anim.gif" and "animated" in reason and "2 frames" in reason


@pytest.mark.parametrize("value", ["0", "1", "2", "-5", "15"])
def test_tile_has_one_rule(value):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["upscale", "m", "x", "-o", "o", "--tile", value])
    with pytest.raises(ConfigError):
        Upscaler(_plain(), device="cpu", tile=int(value))


def test_tile_accepts_auto_none_and_the_minimum():
    for value, expected in (("auto", "auto"), ("none", None), ("16", 16)):
        assert build_parser().parse_args(["upscale", "m", "x", "-o", "o", "--tile", value]).tile == expected


def test_deploy_of_a_checkpoint_from_before_the_switch_warns(tmp_path, caplog):
    from repsr.export import deploy

    model = randomize(build_model("repsr", scale=2, num_blocks=1, channels=4), 2).eval()
    for phase in ("batch", "frozen"):
        state = {"spec": model.spec.to_dict(), "model": model.state_dict(), "iteration": 5, "bn_phase": phase}
        torch.save(state, tmp_path / f"{phase}.pt")
    caplog.set_level(logging.WARNING)
    report = deploy(tmp_path / "batch.pt", tmp_path / "a.safetensors")
    assert len(report.warnings) == 1 and "before the BN switch" in report.warnings[0]
    assert "batch.pt" in report.warnings[0] and "mini-batch" in report.warnings[0]
    assert any("before the BN switch" in r.getMessage() for r in caplog.records)
    assert deploy(tmp_path / "frozen.pt", tmp_path / "b.safetensors").warnings == []


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
