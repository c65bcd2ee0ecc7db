"""Clips the video tests write themselves (PyAV), and reading them back."""

from __future__ import annotations

import numpy as np
import pytest

av = pytest.importorskip("av", reason="video tests need PyAV: pip install 'repsr[video]'")

RATE = 12
SAMPLE_RATE = 16000


def frame_pixels(index: int, width: int, height: int, depth: int = 8) -> np.ndarray:
    """A moving gradient with texture: neighbouring frames differ, every channel varies."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 10 + index * 20) % 256, (yy * 12) % 256, ((xx + yy) * 7 + index * 5) % 256], -1)
    if depth == 8:
        return rgb.astype(np.uint8)
    return (rgb * 257 + (xx * 3)[..., None]).astype(np.uint16)


def make_clip(
    path,
    *,
    frames: int = 5,
    size: tuple[int, int] = (24, 16),
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    audio: str | None = "aac",
    depth: int = 8,
) -> None:
    """Write `frames` frames at RATE fps and (optionally) a 440 Hz sine tone as long as the video."""
    width, height = size
    container = av.open(str(path), "w")
    video = container.add_stream(codec, rate=RATE)
    video.width, video.height, video.pix_fmt = width, height, pix_fmt
    sound = None
    if audio is not None:
        sound = container.add_stream(audio, rate=SAMPLE_RATE)
        sound.layout = "mono"
    for index in range(frames):
        pixels = frame_pixels(index, width, height, depth)
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24" if depth == 8 else "rgb48le")
        frame.pts = index
        container.mux(video.encode(frame))
    container.mux(video.encode(None))
    if sound is not None:
        t = np.arange(SAMPLE_RATE * frames // RATE) / SAMPLE_RATE
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        chunk = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
        chunk.sample_rate, chunk.pts = SAMPLE_RATE, 0
        container.mux(sound.encode(chunk))
        container.mux(sound.encode(None))
    container.close()


def decoded_frames(path, fmt: str = "rgb24") -> tuple[list[np.ndarray], list[float]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(f.to_ndarray(format=fmt), float(f.pts * f.time_base)) for f in container.decode(stream)]
    return [f for f, _ in frames], [t for _, t in frames]


def audio_payloads(path) -> list[bytes]:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return []
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.dts is not None]
