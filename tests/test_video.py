"""Video upscaling on clips the tests write themselves: frames, time stamps, audio, lossless exactness."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch

from repsr import build_model, reparameterize_model, save_model
from repsr.image.pixels import to_integers
from repsr.inference import Upscaler
from repsr.inference.video import VideoError, is_video_path, require_av, upscale_video, video_jobs
from repsr.util.errors import ConfigError, DependencyError
from tests.helpers import randomize
from tests.helpers.video import RATE, SAMPLE_RATE, audio_payloads, decoded_frames, make_clip

av = pytest.importorskip("av", reason="video tests need PyAV: pip install 'repsr[video]'")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny frames run in one thread: on a shared 2-core machine a 2-thread tiny convolution waits for a
    descheduled worker at every layer (measured 2.7 s vs 3 ms for a 40x26 frame); speed only."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_upscaler(scale: int = 2, in_channels: int = 3, tile: int | None = None) -> Upscaler:
    model = build_model("repsr", scale=scale, num_blocks=2, channels=8, in_channels=in_channels)
    plain = reparameterize_model(randomize(model, seed=3).eval())
    return Upscaler(plain, device="cpu", tile=tile)


def expected_frame(upscaler: Upscaler, pixels: np.ndarray, peak: float) -> np.ndarray:
    """The frame upscaled as an image through the same Upscaler, quantized like an image file."""
    x = torch.from_numpy(pixels.astype(np.float32) / peak).permute(2, 0, 1)
    return to_integers(upscaler(x).permute(1, 2, 0), 8 if peak == 255 else 16)


def luma_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the Y channels (0-255) of two RGB frames."""
    from repsr.image.color import rgb_to_y

    ya, yb = (rgb_to_y(torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)) for x in (a, b))
    return float((ya - yb).abs().mean())


def test_video_paths_are_recognised_by_extension(tmp_path):
    assert is_video_path("clip.MP4") and is_video_path("a/b.mkv") and not is_video_path("photo.png")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    assert video_jobs([str(clip)], tmp_path / "out.mp4") == ([(clip, tmp_path / "out.mp4")], [])
    assert video_jobs([str(clip), "x.png"], tmp_path / "dir") == (
        [(clip, tmp_path / "dir" / "clip.mp4")],
        ["x.png"],
    )
    with pytest.raises(ConfigError, match="exactly one video"):
        video_jobs([str(clip), "x.png"], tmp_path / "out.mp4")
    (tmp_path / "b.mp4").write_bytes(b"")
    pattern = str(tmp_path / "*.mp4")
    assert video_jobs([pattern], "o") == (
        [(tmp_path / "b.mp4", Path("o/b.mp4")), (clip, Path("o/clip.mp4"))],
        [],
    )
    assert video_jobs([str(tmp_path / "none*.mp4")], "o") == ([], [str(tmp_path / "none*.mp4")])


def test_h264_clip_keeps_frames_time_stamps_and_audio(tmp_path):
    source, target = tmp_path / "clip.mp4", tmp_path / "out" / "up.mp4"
    make_clip(source, frames=7)
    upscaler = tiny_upscaler(scale=2)
    seen = []
    report = upscale_video(upscaler, source, target, crf=10, batch=3, progress=seen.append)
    assert report.frames == 7 and sum(seen) == 7 and report.output_size == (48, 32)
    stages = report.stage_ms_per_frame()  # each stage's working time, for what caps the pipeline
    assert list(stages) == ["decode", "model", "colour", "encode"] and all(ms > 0 for ms in stages.values())
    frames, times = decoded_frames(target)
    _, source_times = decoded_frames(source)
    assert len(frames) == 7 and frames[0].shape == (32, 48, 3)
    assert times == pytest.approx(source_times, abs=1e-3)
    with av.open(str(target)) as container:
        assert container.streams.video[0].average_rate == RATE
        assert container.streams.video[0].codec_context.name == "h264"
        assert [s.type for s in container.streams] == ["video", "audio"]
    payloads = audio_payloads(target)
    assert payloads and payloads == audio_payloads(source)  # copied packet by packet, unchanged
    # lossy and 4:2:0 (chroma at half resolution), but the luma is each frame's upscaled picture, in order
    inputs, _ = decoded_frames(source)
    for index in (0, 3, 6):
        errors = [luma_error(frames[index], expected_frame(upscaler, frame, 255.0)) for frame in inputs]
        assert errors[index] < 3 and errors[index] == min(errors)
    assert [p.name for p in target.parent.iterdir()] == ["up.mp4"]  # no temporary file left


@pytest.mark.parametrize(("pix_fmt", "depth", "fmt"), [("bgr0", 8, "rgb24"), ("rgb48le", 16, "rgb48le")])
@pytest.mark.parametrize("batch", [1, 3])
def test_lossless_output_equals_upscaling_every_frame_as_an_image(tmp_path, pix_fmt, depth, fmt, batch):
    """One frame a call: bit-exact. Batches of 3: convolutions sum in another order (float rounding ~1e-7),
    which moves a value across a rounding boundary now and then: at most one step, rarely."""
    source, target = tmp_path / "clip.mkv", tmp_path / "up.mkv"
    make_clip(source, frames=4, size=(40, 26), codec="ffv1", pix_fmt=pix_fmt, audio="flac", depth=depth)
    upscaler = tiny_upscaler(scale=3, tile=16)  # tiled, as large frames are
    report = upscale_video(upscaler, source, target, codec="ffv1", batch=batch)
    inputs, _ = decoded_frames(source, fmt)
    outputs, _ = decoded_frames(target, fmt)
    assert report.frames == len(outputs) == 4 and outputs[0].shape == (78, 120, 3)
    assert (report.pix_fmt == "bgr0") if depth == 8 else report.pix_fmt.startswith("gbrp16")
    peak = 255.0 if depth == 8 else 65535.0
    for frame_in, frame_out in zip(inputs, outputs, strict=True):
        assert frame_out.dtype == (np.uint8 if depth == 8 else np.uint16)
        expected = expected_frame(upscaler, frame_in, peak)
        if batch == 1:
            np.testing.assert_array_equal(frame_out, expected)
        else:
            difference = np.abs(frame_out.astype(np.int64) - expected)
            assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    assert audio_payloads(target) == audio_payloads(source)


def test_fused_kernel_hands_the_encoder_pixels_it_rounded_itself(tmp_path, monkeypatch):
    """With the fused kernel, 8-bit frames go from its last layer to the encoder as uint8 (no float frame,
    no rounding pass): the lossless output equals each frame upscaled as an image."""
    from repsr.kernels import availability

    if availability() is not None:
        pytest.skip(f"fused kernel: {availability()}")
    source, target = tmp_path / "clip.mkv", tmp_path / "up.mkv"
    make_clip(source, frames=3, size=(40, 26), codec="ffv1", pix_fmt="bgr0", audio=None)
    model = build_model("repsr", scale=2, num_blocks=2, channels=8)
    upscaler = Upscaler(reparameterize_model(randomize(model, seed=3).eval()), device="cpu", backend="fused")
    assert upscaler.writes_pixels(26, 40)
    calls, run = [], Upscaler.pixels
    monkeypatch.setattr(Upscaler, "pixels", lambda self, lr: calls.append(1) or run(self, lr))
    upscale_video(upscaler, source, target, codec="ffv1", batch=1)
    inputs, _ = decoded_frames(source, "rgb24")
    outputs, _ = decoded_frames(target, "rgb24")
    assert len(calls) == len(outputs) == 3
    for frame_in, frame_out in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(frame_out, expected_frame(upscaler, frame_in, 255.0))


def test_y_channel_model_upscales_video(tmp_path):
    source, target = tmp_path / "clip.mp4", tmp_path / "up.mkv"
    make_clip(source, frames=3, audio=None)
    report = upscale_video(tiny_upscaler(scale=2, in_channels=1), source, target, codec="ffv1")
    assert report.frames == 3 and report.copied_streams == []
    assert decoded_frames(target)[0][0].shape == (32, 48, 3)


def test_bad_inputs_and_codecs_get_one_line_errors(tmp_path):
    upscaler = tiny_upscaler()
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    with pytest.raises(VideoError, match="not a readable video") as error:
        upscale_video(upscaler, text, tmp_path / "out.mp4")
    assert "\n" not in str(error.value)
    sound_only = tmp_path / "sound.mkv"
    container = av.open(str(sound_only), "w")
    stream = container.add_stream("flac", rate=SAMPLE_RATE)
    stream.layout = "mono"
    chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.float32), format="flt", layout="mono")
    chunk.sample_rate, chunk.pts = SAMPLE_RATE, 0
    container.mux(stream.encode(chunk))
    container.mux(stream.encode(None))
    container.close()
    with pytest.raises(VideoError, match="no video stream"):
        upscale_video(upscaler, sound_only, tmp_path / "out.mp4")
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=2, audio=None)
    with pytest.raises(VideoError, match="unknown or unsupported video encoder 'nope'"):
        upscale_video(upscaler, clip, tmp_path / "out.mp4", codec="nope")
    with pytest.raises(VideoError, match="not a video encoder"):
        upscale_video(upscaler, clip, tmp_path / "out.mp4", codec="aac")
    with pytest.raises(VideoError, match="video extension"):
        upscale_video(upscaler, clip, tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "notes.mp4", "sound.mkv"]


def test_corrupt_stream_is_reported_and_nothing_is_kept(tmp_path):
    source, target = tmp_path / "clip.mkv", tmp_path / "up.mkv"
    make_clip(source, frames=6, size=(32, 32), codec="ffv1", pix_fmt="bgr0", audio=None)
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = bytes(range(256)) + bytes(144)  # garbage in the middle of the frames
    source.write_bytes(bytes(data))
    try:
        report = upscale_video(tiny_upscaler(), source, target, codec="ffv1", batch=1)
    except VideoError as error:
        assert "\n" not in str(error)
        assert not target.exists()
    else:  # FFmpeg may conceal the damage and skip the frame; the output then has no more frames
        assert report.frames <= 6 and target.exists()
    assert all(".partial" not in p.name for p in tmp_path.iterdir())


def test_a_failure_midway_leaves_no_output(tmp_path):
    source, target = tmp_path / "clip.mp4", tmp_path / "up.mp4"
    make_clip(source, frames=6)

    class Failing:
        scale, in_channels, calls = 2, 3, 0

        def __call__(self, x):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("model crashed")
            return torch.nn.functional.interpolate(x, scale_factor=2)

    with pytest.raises(RuntimeError, match="model crashed"):
        upscale_video(Failing(), source, target, batch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_missing_pyav_is_a_one_line_install_hint(monkeypatch):
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av" or name.startswith("av."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(DependencyError, match=r"pip install 'repsr\[video\]'"):
        require_av()


def test_cli_upscales_a_clip(tmp_path, capsys):
    from repsr.cli import main

    model = build_model("repsr", scale=2, num_blocks=1, channels=4)
    save_model(reparameterize_model(model.eval()), tmp_path / "m.safetensors")
    make_clip(tmp_path / "clip.mp4", frames=3)
    model_file, clip = str(tmp_path / "m.safetensors"), str(tmp_path / "clip.mp4")
    code = main(
        ["upscale", clip, "-m", model_file, "-o", str(tmp_path / "o.mkv"), "--codec", "ffv1", "--no-progress"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "3 frames 24x16 -> 48x32 (ffv1" in out and "frames/s (ms per frame: decode " in out
    code = main(["upscale", model_file, "-m", model_file, "-o", str(tmp_path / "x.mp4")])
    assert code == 2 and "exactly one video" in capsys.readouterr().err


def test_preset_reaches_the_encoder_and_bad_presets_are_one_line_errors(tmp_path, capsys):
    """x264 writes its settings into the stream: ultrafast turns CABAC off, the default preset keeps it."""
    source = tmp_path / "clip.mp4"
    make_clip(source, frames=3, audio=None)
    upscaler = tiny_upscaler()
    upscale_video(upscaler, source, tmp_path / "fast.mp4", preset="ultrafast")
    upscale_video(upscaler, source, tmp_path / "default.mp4")
    assert b"cabac=0" in (tmp_path / "fast.mp4").read_bytes()
    assert b"cabac=1" in (tmp_path / "default.mp4").read_bytes()
    with pytest.raises(ConfigError, match="ffv1 takes no preset"):
        upscale_video(upscaler, source, tmp_path / "x.mkv", codec="ffv1", preset="fast")
    with pytest.raises(ConfigError, match="libx264 takes one of ultrafast.*not 'warp'"):
        upscale_video(upscaler, source, tmp_path / "x.mp4", preset="warp")
    from repsr.cli import main

    code = main(["upscale", str(source), "-o", str(tmp_path / "y.mp4"), "--preset", "warp"])
    error = capsys.readouterr().err
    assert code == 2 and "not 'warp'" in error and error.count("\n") == 1
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "y.mp4").exists()


def test_ten_bit_h264_stays_ten_bit(tmp_path):
    source, target = tmp_path / "clip.mp4", tmp_path / "up.mp4"
    make_clip(source, frames=2, pix_fmt="yuv420p10le", depth=16, audio=None)
    report = upscale_video(tiny_upscaler(), source, target)
    assert report.pix_fmt == "yuv420p10le"
    with av.open(str(target)) as container:
        assert container.streams.video[0].codec_context.format.name == "yuv420p10le"


def test_without_a_model_images_and_videos_get_their_own_defaults(tmp_path, monkeypatch, capsys) -> None:
    """No -m: an image gets the photo default, a video the fast video default, in one command; -m or
    --style picks one model for both."""
    import repsr.models.pretrained as pretrained
    from repsr.cli import main
    from repsr.image.io import read_image, write_image
    from repsr.models.pretrained import DEFAULT_MODEL, DEFAULT_VIDEO_MODEL, PRETRAINED

    assert PRETRAINED[DEFAULT_VIDEO_MODEL].scale == PRETRAINED[DEFAULT_MODEL].scale
    video_model = "repsr-sharp-m4c16-x4"  # another x4 model than the default and its partner
    assert video_model != DEFAULT_MODEL
    monkeypatch.setattr(pretrained, "DEFAULT_VIDEO_MODEL", video_model)
    inputs = tmp_path / "in"
    inputs.mkdir()
    make_clip(inputs / "clip.mkv", frames=3, size=(24, 16), codec="ffv1", pix_fmt="bgr0", audio=None)
    write_image(inputs / "photo.png", torch.rand(3, 16, 20, generator=torch.Generator().manual_seed(3)))
    assert main(["upscale", str(inputs), "-o", str(tmp_path / "auto"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"videos: {video_model}" in out and f"images get {DEFAULT_MODEL}" in out
    for model, folder in ((DEFAULT_MODEL, "photo"), (video_model, "video")):
        assert main(["upscale", str(inputs), "-o", str(tmp_path / folder), "-m", model, "--no-progress"]) == 0
    assert "videos:" not in capsys.readouterr().out  # -m: one model for both
    auto_photo = read_image(tmp_path / "auto" / "photo.png").rgb
    assert torch.equal(auto_photo, read_image(tmp_path / "photo" / "photo.png").rgb)
    assert not torch.equal(auto_photo, read_image(tmp_path / "video" / "photo.png").rgb)
    auto_frames, _ = decoded_frames(tmp_path / "auto" / "clip.mkv")
    for model_frames, same in ((decoded_frames(tmp_path / "video" / "clip.mkv")[0], True),
                               (decoded_frames(tmp_path / "photo" / "clip.mkv")[0], False)):  # fmt: skip
        assert all(np.array_equal(a, b) for a, b in zip(auto_frames, model_frames, strict=True)) == same


# AVColorSpace 1 BT.709, 5 BT.601 (BT470BG); range 1 limited, 2 full
@pytest.mark.parametrize(("colorspace", "color_range"), [(1, 1), (1, 2), (5, 2)])
def test_the_output_is_converted_with_the_matrix_and_range_it_is_tagged(tmp_path, colorspace, color_range):
    """Most HD clips are tagged BT.709: the frames are converted back to YUV with the tagged matrix and
    range, so a player (which reads the tags) shows the upscaled colours (before: up to 40 levels off)."""
    source, target = tmp_path / "in.mkv", tmp_path / "out.mkv"
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :8], rgb[:, 8:16], rgb[:, 16:] = (220, 30, 30), (30, 200, 40), (40, 40, 230)
    with av.open(str(source), "w") as container:
        stream = container.add_stream("ffv1", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = 24, 16, "yuv444p"
        stream.codec_context.colorspace, stream.codec_context.color_range = colorspace, color_range
        for index in range(2):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format="yuv444p", dst_colorspace={1: 1, 5: 5}[colorspace], dst_color_range=color_range
            )
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    upscaler = tiny_upscaler(scale=2)
    upscale_video(upscaler, source, target, codec="ffv1")
    with av.open(str(source)) as container:
        decoded_in = next(container.decode(video=0)).to_ndarray(format="rgb24")
    with av.open(str(target)) as container:
        frame = next(container.decode(video=0))
        assert (int(frame.colorspace), int(frame.color_range)) == (colorspace, color_range)
        got = frame.to_ndarray(format="rgb24").astype(np.int64)
    assert np.abs(decoded_in.astype(np.int64) - rgb).max() <= 2  # the source itself decodes by its tags
    assert np.abs(got - expected_frame(upscaler, decoded_in, 255.0)).max() <= 3
