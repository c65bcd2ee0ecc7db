"""Issue 21: never a wrong or lost file. Output planning, verified outputs, metadata carried, hostile
inputs answered in one line. Each test names the case of the issue it covers."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repsr import build_model, save_model
from repsr.cli import main
from repsr.image.io import read_pixels, write_pixels
from repsr.inference import plan_outputs, upscale_files
from repsr.util.errors import ConfigError, ImageError
from tests.helpers.files import noise, save, tiny_plain, upscaler

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model_file(tmp_path) -> str:
    path = tmp_path / "m.safetensors"
    save_model(tiny_plain(), path)
    return str(path)


# ----------------------------------------------------------------------------- 1, 2, 10, 19: planning


def test_case1_an_existing_file_that_is_not_an_input_is_never_replaced(tmp_path, model_file, capsys):
    pair = tmp_path / "pair"
    save(pair / "IMG_1.png", noise(8, 8))
    original = save(pair / "IMG_1.jpg", noise(8, 8, seed=1)).read_bytes()
    code = main(["upscale", str(pair / "*.png"), "--format", "jpg", "-o", str(pair), "-m", model_file])
    err = capsys.readouterr().err
    assert code == 2 and "IMG_1.jpg" in err and "--overwrite" in err and err.count("\n") == 1
    assert (pair / "IMG_1.jpg").read_bytes() == original
    assert sorted(p.name for p in pair.iterdir()) == ["IMG_1.jpg", "IMG_1.png"]
    # with --overwrite the earlier result is replaced by a fresh one, and the input never
    code = main(
        ["upscale", str(pair / "*.png"), "--format", "jpg", "-o", str(pair), "-m", model_file, "--overwrite"]
    )
    assert code == 0 and Image.open(pair / "IMG_1.jpg").size == (16, 16)
    with pytest.raises(ConfigError, match="would overwrite an input"):
        plan_outputs([pair / "IMG_1.png"], pair, overwrite=True)


def test_case1_bmp_into_its_own_folder_is_refused_before_work(tmp_path):
    r = tmp_path / "r"
    save(r / "a.bmp", noise(6, 6))
    save(r / "a.png", noise(6, 6, seed=2))
    with pytest.raises(ConfigError, match=r"a\.png.*already exist"):
        plan_outputs([str(r / "*.bmp")], r)


def test_case2_videos_and_images_sharing_an_output_name_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "clip.mp4").write_bytes(b"x")
    with pytest.raises(ConfigError, match="would both be written to .*clip.mp4"):
        plan_outputs([tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4"], tmp_path / "out")
    save(tmp_path / "a" / "x.png", noise(4, 4))
    save(tmp_path / "b" / "x.jpg", noise(4, 4))
    with pytest.raises(ConfigError, match="would both be written"):
        plan_outputs([tmp_path / "a" / "x.png", tmp_path / "b" / "x.jpg"], tmp_path / "out", fmt="png")
    assert not (tmp_path / "out").exists()


def test_case10_the_output_folder_is_never_read_as_input(tmp_path):
    q = tmp_path / "q"
    save(q / "a.png", noise(6, 6))
    report = upscale_files(upscaler(), [q], q / "up", progress=False)
    assert [p.relative_to(q).as_posix() for p in report.written] == ["up/a.png"]
    report = upscale_files(upscaler(), [q], q / "up", progress=False, overwrite=True)
    assert [p.relative_to(q).as_posix() for p in report.written] == ["up/a.png"]
    assert not (q / "up" / "up").exists()
    jobs, _ = plan_outputs([str(q / "**" / "*.png")], q / "up", overwrite=True)
    assert [job.source.name for job in jobs] == ["a.png"]


def test_case19_output_naming_an_existing_file_is_one_refusal_up_front(tmp_path, model_file, capsys):
    save(tmp_path / "a.png", noise(6, 6))
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    code = main(["upscale", str(tmp_path / "a.png"), "-o", str(afile), "-m", model_file])
    err = capsys.readouterr().err
    assert code == 2 and "existing file" in err and err.count("\n") == 1
    assert afile.read_text() == "keep me"


# ------------------------------------------------------------------------- 6, 11, 13, 21: image files


def _srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_case6_icc_exif_dpi_and_text_are_carried(tmp_path, suffix):
    icc = _srgb_icc()
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0x0132] = "2024:01:02 03:04:05"  # DateTime
    info = {"icc_profile": icc, "exif": exif.tobytes(), "dpi": (300, 300)}
    if suffix == ".png":
        from PIL.PngImagePlugin import PngInfo

        text = PngInfo()
        text.add_text("Title", "harbour")
        info["pnginfo"] = text
    src = save(tmp_path / f"in{suffix}", noise(10, 12), **info)
    report = upscale_files(upscaler(), [src], tmp_path / "out", progress=False)
    assert not report.failed
    with Image.open(report.written[0]) as out:
        assert out.size == (24, 20)
        assert out.info.get("icc_profile") == icc
        assert out.getexif().get(0x010F) == "CameraMaker"
        if suffix != ".webp":  # WebP has no resolution field
            assert tuple(round(v) for v in out.info["dpi"]) == (300, 300)
        if suffix == ".png":
            assert out.text.get("Title") == "harbour"


def test_case6_sixteen_bit_png_carries_metadata_and_orientation_is_normalised(tmp_path):
    icc = _srgb_icc()
    arr = (np.random.default_rng(0).integers(0, 65536, (6, 10, 3))).astype(np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to view
    exif[0x010F] = "Deep"
    meta = {"icc_profile": icc, "exif": exif.tobytes(), "dpi": (72.0, 72.0), "text": {"Author": "me"}}
    write_pixels(tmp_path / "deep.png", arr, meta=meta)
    pixels = read_pixels(tmp_path / "deep.png")
    assert pixels.bit_depth == 16 and pixels.array.shape == (10, 6, 3)  # turned upright
    assert np.array_equal(pixels.array, np.rot90(arr, -1))
    assert pixels.meta["icc_profile"] == icc and pixels.meta["text"] == {"Author": "me"}
    reread = Image.Exif()
    reread.load(pixels.meta["exif"])
    assert reread[0x0112] == 1 and reread[0x010F] == "Deep"
    report = upscale_files(upscaler(), [tmp_path / "deep.png"], tmp_path / "out", progress=False)
    out = read_pixels(report.written[0])
    assert out.bit_depth == 16 and out.array.shape == (20, 12, 3) and out.meta["icc_profile"] == icc


@pytest.mark.parametrize("orientation", range(1, 9))
def test_case6_exif_orientation_matches_pillow_for_every_value(tmp_path, orientation):
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    src = save(tmp_path / "o.jpg", noise(5, 7), exif=exif.tobytes(), quality=100)
    with Image.open(src) as im:
        expected = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(read_pixels(src).array, expected)


def test_case6_cmyk_with_a_profile_is_converted_through_it(tmp_path):
    from PIL import ImageCms

    cmyk = Image.fromarray(noise(6, 6, 4), mode="CMYK")
    cmyk.save(tmp_path / "c.jpg", quality=100)
    pixels = read_pixels(tmp_path / "c.jpg")
    assert pixels.array.shape == (6, 6, 3) and "icc_profile" not in pixels.meta  # sRGB now
    assert ImageCms  # the conversion path exists in this Pillow


def test_case11_float_tiffs_outside_0_1_are_refused_and_0_1_read(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    values = np.linspace(0, 254.5, 48, dtype=np.float32).reshape(6, 8)
    tifffile.imwrite(tmp_path / "f255.tif", values)
    with pytest.raises(ImageError, match=r"0\.\.254\.5.*divide by 255"):
        read_pixels(tmp_path / "f255.tif")
    tifffile.imwrite(tmp_path / "f01.tif", values / 255)
    pixels = read_pixels(tmp_path / "f01.tif")
    assert pixels.bit_depth == 16 and int(pixels.array.max()) == round(254.5 / 255 * 65535)
    # case 21: a float RGB TIFF (Pillow cannot open it) is read too
    rgb = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb)
    pixels = read_pixels(tmp_path / "rgb.tif")
    assert pixels.array.shape == (5, 7, 3)
    assert np.abs(pixels.array / 65535 - rgb).max() < 1e-4
    tifffile.imwrite(tmp_path / "nan.tif", np.full((4, 4), np.nan, np.float32))
    with pytest.raises(ImageError, match="NaN"):
        read_pixels(tmp_path / "nan.tif")


def test_case13_fuzzed_tiff_headers_are_one_line_errors(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(noise(8, 8)).save(buffer, format="TIFF")
    data = buffer.getvalue()
    rng = np.random.default_rng(13)
    for trial in range(60):
        mutated = bytearray(data)
        for _ in range(4):
            position = int(rng.integers(0, min(len(mutated), 200)))
            mutated[position] = int(rng.integers(0, 256))
        path = tmp_path / f"f{trial}.tif"
        path.write_bytes(bytes(mutated))
        try:
            read_pixels(path)
        except ImageError as error:
            assert "\n" not in str(error) and path.name in str(error)


def test_case21_jpeg_and_webp_size_limits_are_checked_before_the_work(tmp_path):
    src = save(tmp_path / "wide.png", noise(2, 8200))
    report = upscale_files(upscaler(), [src], tmp_path / "out", fmt="webp", progress=False)
    ((path, reason),) = report.failed
    assert "WEBP holds at most 16383" in reason and "--format png" in reason
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_case21_jpeg_limit_is_named_with_the_way_out():
    from repsr.image.io import check_output_size

    with pytest.raises(ImageError, match=r"JPEG holds at most 65535 pixels per side.*70000x10.*--format png"):
        check_output_size("x.jpg", 70000, 10)
    check_output_size("x.png", 70000, 10)


def test_written_images_are_verified_and_removed_when_they_do_not_decode(tmp_path, monkeypatch):
    import repsr.image.io as rio

    real = Image.Image.save

    def broken_save(self, fp, *args, **kwargs):
        real(self, fp, *args, **kwargs)
        with open(fp, "r+b") as handle:  # damage the written file after the encoder wrote it
            handle.truncate(40)

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ImageError, match="does not decode.*not kept"):
        rio.write_pixels(tmp_path / "x.png", noise(8, 8))
    assert list(tmp_path.iterdir()) == []


def test_upscale_leaves_no_file_it_did_not_report(tmp_path, model_file, capsys):
    mixed = tmp_path / "mixed"
    save(mixed / "good.png", noise(8, 8))
    save(mixed / "sub" / "good.jpg", noise(8, 8))
    (mixed / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (mixed / "worse.tif").write_bytes(b"II*\x00" + bytes(40))
    out = tmp_path / "out"
    code = main(["upscale", str(mixed), "-o", str(out), "-m", model_file, "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "bad.png" in captured.err and "worse.tif" in captured.err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["good.png", "sub/good.jpg"]
    assert "2 image(s) written" in captured.out
    assert not any(name.startswith(".") for name in os.listdir(out))


# ------------------------------------------------------------------------------ 7: run folder lock


def test_case7_second_training_on_the_same_folder_is_refused_before_writing(tmp_path):
    from repsr.training.lock import RunLock
    from tests.helpers.train import make_trainer, tiny_config

    holder = RunLock(tmp_path / "run")
    assert holder.acquire() is None
    trainer = make_trainer(tmp_path, tiny_config())
    with pytest.raises(
        ConfigError, match=rf"another training run is writing this folder \(pid {os.getpid()}"
    ):
        trainer.run()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing of the second run
    holder.release()
    result = make_trainer(tmp_path, tiny_config()).run()
    assert result is not None and (tmp_path / "run" / "metrics.csv").is_file()
    assert not (tmp_path / "run" / ".lock").exists()  # released on exit


def test_case7_a_killed_holder_leaves_a_stale_lock_that_is_taken_over(tmp_path):
    import subprocess
    import sys

    from repsr.training.lock import RunLock

    script = (
        "import sys, time; from repsr.training.lock import RunLock; "
        "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"pid {child.pid}"):
            RunLock(tmp_path / "run").acquire()
    finally:
        child.kill()
        child.wait()
    lock = RunLock(tmp_path / "run")
    note = lock.acquire()
    assert note is not None and "stale lock" in note and f"pid {child.pid}" in note
    lock.release()


# ------------------------------------------------------------------ 8, 9, 16, 17, 20, 21: models, API


def test_case8_deploy_never_writes_over_its_input(tmp_path, capsys):
    model = build_model("repsr", scale=2, num_blocks=1, channels=4)
    train_form = tmp_path / "X.train.safetensors"
    save_model(model, train_form)
    before = train_form.read_bytes()
    code = main(["deploy", str(train_form), "-o", str(train_form)])
    err = capsys.readouterr().err
    assert code == 2 and "would overwrite its input" in err and err.count("\n") == 1
    assert train_form.read_bytes() == before


def test_case9_upscaler_validates_its_input():
    up = upscaler()
    with pytest.raises(TypeError, match=r"dtype torch.uint8.*float\(\) / 255"):
        up(torch.randint(0, 255, (3, 10, 12), dtype=torch.uint8))
    with pytest.raises(TypeError, match="got ndarray"):
        up(np.zeros((10, 12, 3), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        up(torch.empty(3, 0, 5))
    with pytest.raises(ValueError, match="divide by 255"):
        up(torch.rand(3, 6, 6) * 255)
    with pytest.raises(ValueError, match="NaN"):
        up(torch.full((3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        up(torch.rand(1, 6, 6))
    assert up(torch.rand(3, 6, 6)).shape == (3, 12, 12)


def test_case16_malformed_checkpoint_spec_is_a_model_file_error(tmp_path):
    from repsr.models.files import load_model
    from repsr.util.errors import ModelFileError

    cases = {
        "partial.pt": {"spec": {"block": "repsr", "scale": 2}, "model": {}},
        "wrongtype.pt": {"spec": ["repsr"], "model": {}},
        "badvalue.pt": {
            "spec": {"block": "repsr", "scale": "x", "num_blocks": 1, "channels": 4},
            "model": {},
        },
        "notstate.pt": {"spec": {"block": "repsr", "scale": 2, "num_blocks": 1, "channels": 4}, "model": 3},
        "plainvalues.pth": {"body.0.weight": 3},
    }
    for name, data in cases.items():
        torch.save(data, tmp_path / name)
        with pytest.raises(ModelFileError) as error:
            load_model(tmp_path / name)
        assert name in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("device", ["mps", "xla", "xpu", "meta"])
def test_case17_devices_this_machine_lacks_are_one_line(tmp_path, model_file, device, capsys):
    save(tmp_path / "a.png", noise(6, 6))
    for argv in (
        ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "-m", model_file],
        ["eval", model_file],
        ["deploy", model_file, "-o", str(tmp_path / "d.safetensors")],
    ):
        code = main([*argv, "--device", device])
        err = capsys.readouterr().err
        assert code == 2 and device in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "o").exists() and not (tmp_path / "d.safetensors").exists()


def test_case20_model_files_are_recognised_by_content(tmp_path, capsys):
    from repsr.models.files import load_model
    from repsr.util.errors import ModelFileError

    model = tiny_plain()
    save_model(model, tmp_path / "m.safetensors")
    (tmp_path / "m.bin").write_bytes((tmp_path / "m.safetensors").read_bytes())
    torch.save(model.state_dict(), tmp_path / "M.PTH")
    x = torch.rand(1, 3, 6, 6)
    for name in ("m.bin", "M.PTH"):
        with torch.no_grad():
            assert torch.allclose(load_model(tmp_path / name)(x), model(x))
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(50))
    with pytest.raises(ModelFileError, match="an ONNX model.*repsr upscale -m"):
        load_model(tmp_path / "m.onnx")
    (tmp_path / "ncnn.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelFileError, match="not a model file repsr reads"):
        load_model(tmp_path / "ncnn.bin")
    code = main(["deploy", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "d.safetensors")])
    assert code == 2 and "ONNX model" in capsys.readouterr().err


def test_case21_eval_has_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, model_file, capsys):
    from repsr.cli.args import show_progress

    class Args:
        no_progress = False

    assert show_progress(Args()) is False  # pytest's captured stderr is not a terminal
    data = tmp_path / "set"
    save(data / "a.png", noise(40, 40))
    assert main(["eval", model_file, "--data", f"s={data}"]) == 0
    assert "\r" not in capsys.readouterr().err


# ------------------------------------------------------------------- debatable cases, as decided


def test_sigterm_during_upscale_leaves_no_file_not_even_a_hidden_one(tmp_path, model_file, monkeypatch):
    import signal

    import repsr.inference.files as files

    save(tmp_path / "in" / "a.png", noise(8, 8))
    real = files.upscale_pixels

    def killed(*args, **kwargs):
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the image is being written
        return result

    monkeypatch.setattr(files, "upscale_pixels", killed)
    before = signal.getsignal(signal.SIGTERM)
    code = main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", model_file])
    assert code == 130
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_resume_with_a_changed_learning_rate_keeps_the_checkpoint_schedule_and_says_so(tmp_path, caplog):
    import dataclasses
    import logging

    from tests.helpers.train import make_trainer, tiny_config

    trainer = make_trainer(tmp_path, tiny_config())
    trainer.run(until=4)
    trainer.close()
    config = tiny_config()
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, lr=1e-5))
    with caplog.at_level(logging.WARNING, logger="repsr"):
        resumed = make_trainer(tmp_path, config, resume=True)
    assert resumed.state.scheduler.base_lrs == [tiny_config().train.lr]
    assert "train.lr" in caplog.text and "new train.lr is not applied" in caplog.text


def test_verification_of_large_outputs_is_not_stopped_by_the_decompression_bomb_guard(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # as if the output were over Pillow's 179 MP limit
    write_pixels(tmp_path / "big.png", noise(8, 8))
    assert Image.MAX_IMAGE_PIXELS == 10 and (tmp_path / "big.png").is_file()
