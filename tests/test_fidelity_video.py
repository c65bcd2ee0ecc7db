"""Issue 21, videos: batches with bad videos, trailer failures, lost frames, rotation and metadata,
containers and codecs checked up front, odd sizes, undecodable codecs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from repsr import save_model
from repsr.cli import main
from tests.helpers.files import noise, save, tiny_plain, upscaler

av = pytest.importorskip("av", reason="video tests need PyAV: pip install 'repsr[video]'")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model_file(tmp_path) -> str:
    path = tmp_path / "m.safetensors"
    save_model(tiny_plain(), path)
    return str(path)


# ------------------------------------------------------------------------------------------- videos


def clip(path: Path, frames: int = 4, **options) -> Path:
    from tests.helpers.video import make_clip

    options.setdefault("audio", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_clip(path, frames=frames, **options)
    return path


def test_case2_and_12_videos_and_images_in_one_batch(tmp_path, model_file, capsys):
    good = clip(tmp_path / "in" / "good.mp4", frames=3)
    bad = tmp_path / "in" / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 20)
    image = save(tmp_path / "in" / "img.png", noise(8, 8))
    out = tmp_path / "o"
    code = main(
        ["upscale", str(good), str(bad), str(image), "-o", str(out), "-m", model_file, "--no-progress"]
    )
    captured = capsys.readouterr()
    assert code == 1 and "bad.mp4" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["good.mp4", "img.png"]
    assert "good.mp4: 3 frames" in captured.out
    # same file name from two folders: refused before any work (case 2)
    clip(tmp_path / "a" / "clip.mp4", frames=2)
    clip(tmp_path / "b" / "clip.mp4", frames=2)
    code = main(
        ["upscale", str(tmp_path / "a" / "clip.mp4"), str(tmp_path / "b" / "clip.mp4"), "-o", str(out)]
    )
    assert code == 2 and "would both be written" in capsys.readouterr().err


def test_case3_a_video_that_fails_to_finalize_is_not_kept(tmp_path, monkeypatch):
    import repsr.inference.video as video

    source = clip(tmp_path / "clip.mp4", frames=3)
    real_open = av.open

    class FailingClose:
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def close(self):
            self._container.close()
            raise OSError(28, "No space left on device")

    def fake_open(path, mode="r", **kwargs):
        container = real_open(path, mode, **kwargs)
        return FailingClose(container) if mode == "w" else container

    monkeypatch.setattr(av, "open", fake_open)
    with pytest.raises(video.VideoError, match="could not finish writing"):
        video.upscale_video(upscaler(), source, tmp_path / "up.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_case3_written_video_is_checked(tmp_path):
    import repsr.inference.video as video

    written = clip(tmp_path / "w.mkv", frames=3, size=(48, 32), codec="ffv1", pix_fmt="bgr0")
    report = video.VideoReport(tmp_path / "s.mkv", written, 5, (24, 16), (48, 32), "ffv1", "bgr0")
    with pytest.raises(video.VideoError, match="3 frames, expected 5"):
        video._verify_video(av, written, written, report)
    report.frames = 3
    video._verify_video(av, written, written, report)


@pytest.mark.parametrize("damage", ["overwrite", "truncate"])
def test_case4_frames_lost_in_a_damaged_video_are_reported(tmp_path, damage):
    from repsr.inference.video import VideoError, upscale_video

    source = clip(tmp_path / "clip.mkv", frames=60, codec="ffv1", pix_fmt="bgr0")
    data = bytearray(source.read_bytes())
    cut = int(len(data) * (0.8 if damage == "overwrite" else 0.55))
    if damage == "overwrite":
        data[cut:] = np.random.default_rng(4).integers(0, 256, len(data) - cut, dtype=np.uint8).tobytes()
    else:
        del data[cut:]
    source.write_bytes(bytes(data))
    with pytest.raises(
        VideoError, match=r"damaged video: decoded \d+ of 60 frames \(\d+ lost after"
    ) as error:
        upscale_video(upscaler(), source, tmp_path / "up.mkv", codec="ffv1")
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv"]


def test_case5_rotation_colour_tags_and_stream_metadata_are_carried(tmp_path):
    from repsr.inference.video import upscale_video

    source = tmp_path / "phone.mp4"
    container = av.open(str(source), "w")
    container.metadata["title"] = "holiday"
    stream = container.add_stream("libx264", rate=12)
    stream.width, stream.height, stream.pix_fmt = 24, 16, "yuv420p"
    stream.set_display_rotation(90)
    stream.metadata["language"] = "fra"
    stream.codec_context.color_primaries = 9  # BT.2020
    for index in range(3):
        frame = av.VideoFrame.from_ndarray(noise(16, 24), format="rgb24")
        frame.pts = index
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    target = tmp_path / "up.mp4"
    upscale_video(upscaler(), source, target)
    with av.open(str(target)) as written:
        video = written.streams.video[0]
        assert video.language == "fra"
        assert written.metadata.get("title") == "holiday"
        frame = next(written.decode(video))
        assert frame.rotation == 90 and (frame.width, frame.height) == (48, 32)


def test_case14_15_18_21_video_problems_are_one_line_errors_up_front(tmp_path, model_file, capsys):
    from repsr.inference.video import VideoError, check_container, upscale_video

    source = clip(tmp_path / "clip.mp4", frames=2)
    # 15: a container that cannot hold the codec, checked before any work
    with pytest.raises(VideoError, match=r"\.webm file cannot hold libx264.*libvpx-vp9"):
        check_container(tmp_path / "x.webm", "libx264")
    code = main(["upscale", str(source), "-o", str(tmp_path / "x.webm"), "-m", model_file])
    assert code == 2 and "cannot hold libx264" in capsys.readouterr().err
    # 15: -o naming a folder with a video extension: outputs go into it
    (tmp_path / "d.mp4").mkdir()
    assert main(["upscale", str(source), "-o", str(tmp_path / "d.mp4"), "-m", model_file]) == 0
    assert (tmp_path / "d.mp4" / "clip.mp4").is_file()
    # 15: -o naming an existing video file: refused up front, replaced with --overwrite
    (tmp_path / "afile.mp4").write_bytes(b"old")
    assert main(["upscale", str(source), "-o", str(tmp_path / "afile.mp4"), "-m", model_file]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "afile.mp4").read_bytes() == b"old"
    assert (
        main(["upscale", str(source), "-o", str(tmp_path / "afile.mp4"), "-m", model_file, "--overwrite"])
        == 0
    )
    # 18: odd output sizes with a 4:2:0 encoder: 4:4:4 instead of an FFmpeg error
    odd = clip(tmp_path / "odd.mkv", frames=2, size=(21, 15), codec="ffv1", pix_fmt="bgr0")
    report = upscale_video(upscaler(3), odd, tmp_path / "odd-x3.mp4")
    assert report.output_size == (63, 45) and report.pix_fmt == "yuv444p"
    # 21: a truncated mp4 says so
    data = source.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="cut.mp4") as error:
        upscale_video(upscaler(), tmp_path / "cut.mp4", tmp_path / "cut-up.mp4")
    assert "\n" not in str(error.value)


def test_case14_a_stream_that_cannot_be_decoded_is_one_line(tmp_path):
    from repsr.inference.video import VideoError, upscale_video

    source = clip(tmp_path / "clip.mp4", frames=3)
    data = source.read_bytes()
    assert b"avc1" in data
    source.write_bytes(data.replace(b"avc1", b"zzzz"))  # an unknown codec tag: no decoder
    with pytest.raises(VideoError, match="cannot be decoded") as error:
        upscale_video(upscaler(), source, tmp_path / "up.mp4")
    assert "clip.mp4" in str(error.value) and "\n" not in str(error.value)


def test_a_mixed_folder_writes_every_good_file_names_every_bad_one_and_leaves_nothing_else(
    tmp_path, model_file, capsys
):
    mixed = tmp_path / "mixed"
    save(mixed / "photo.png", noise(8, 8))
    clip(mixed / "good.mp4", frames=3)
    (mixed / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    damaged = clip(mixed / "sub" / "damaged.mkv", frames=60, codec="ffv1", pix_fmt="bgr0")
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    (mixed / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = tmp_path / "out"
    code = main(["upscale", str(mixed), "-o", str(out), "-m", model_file, "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    for name in ("garbage.mp4", "damaged.mkv", "broken.jpg"):
        assert name in captured.err
    assert "damaged video" in captured.err
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["good.mp4", "photo.png"]
