"""Video benchmark: end-to-end frames/s of `repsr.inference.video.upscale_video` vs the model alone on
the same frames.

Run: ``python benchmarks/bench_video.py [--frames N] [--codec C] [--preset P]`` (needs
``pip install 'repsr[video]'``).

Two cases, each with a shipped M4C16 (`repsr-m4c16-x4`, `repsr-m4c16-x2`: int8 speed depends on the
weights, through the outliers of each layer's range) on CPU, each run
in fp32 on torch (`Upscaler`'s default) and with `precision="auto"` (what `repsr upscale` runs: the fused
kernel in the precision its probe picks, see `repsr.kernels`):
- 640x480 -> 2560x1920 (x4): the pipeline's overhead; goal: end to end >= 90% of the model-alone rate;
- 960x540 -> 1920x1080 (x2): the real-time target (24 frames/s).

The clip is written first (libx264, a panned crop of a sample photograph plus a sine tone, so decoder
and encoder see real content). "model alone" runs the same `Upscaler` on the same decoded frames, one
frame per call as the pipeline does at these sizes, with nothing else running. All figures come from
one process; on a shared machine compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repsr.util.runtime import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()  # as the `repsr` CLI does; must precede torch

import numpy as np  # noqa: E402
import torch  # noqa: E402

from repsr import load_model  # noqa: E402
from repsr.inference import Upscaler  # noqa: E402
from repsr.inference.video import require_av, upscale_video  # noqa: E402

GOAL_FRACTION = 0.90
REALTIME_FPS = 24.0


def write_clip(path: Path, width: int, height: int, frames: int, rate: int = 24) -> None:
    """A libx264 clip panning over a sample photograph, with a 440 Hz tone as long as the video."""
    av = require_av()
    from repsr.data.samples import sample_photo
    from repsr.image.resize import imresize

    photo = sample_photo(0)
    factor = max((height + 2 * frames) / photo.shape[-2], (width + 4 * frames) / photo.shape[-1], 1.0)
    if factor > 1:
        photo = imresize(photo, factor).clamp(0, 1)
    pixels = (photo.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    container = av.open(str(path), "w")
    video = container.add_stream("libx264", rate=rate)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.options = {"crf": "18"}
    sound = container.add_stream("aac", rate=48000)
    sound.layout = "stereo"
    for index in range(frames):
        crop = np.ascontiguousarray(pixels[2 * index : 2 * index + height, 4 * index : 4 * index + width])
        frame = av.VideoFrame.from_ndarray(crop, format="rgb24")
        frame.pts = index
        container.mux(video.encode(frame))
    container.mux(video.encode(None))
    t = np.arange(48000 * frames // rate) / 48000
    tone = np.repeat((0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], 2, axis=0)
    chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="stereo")
    chunk.sample_rate, chunk.pts = 48000, 0
    container.mux(sound.encode(chunk))
    container.mux(sound.encode(None))
    container.close()


def decoded(path: Path) -> list[torch.Tensor]:
    av = require_av()
    with av.open(str(path)) as container:
        return [
            torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1)[None].float().div(255)
            for f in container.decode(video=0)
        ]


def model_alone_fps(upscaler: Upscaler, frames: list[torch.Tensor]) -> float:
    """The model's part of the pipeline alone: float frames in; out as the pipeline takes them (8-bit
    pixels where the fused kernel writes them, else float)."""
    run = upscaler.pixels if upscaler.writes_pixels(*frames[0].shape[-2:]) else upscaler
    run(frames[0])  # warm-up: oneDNN plans the kernels for this shape
    start = time.perf_counter()
    for frame in frames:
        run(frame)
    return len(frames) / (time.perf_counter() - start)


def case(
    name: str,
    size: tuple[int, int],
    scale: int,
    frames: int,
    codec: str,
    preset: str | None,
    workdir: Path,
    precision: str = "fp32",
) -> None:
    width, height = size
    model = load_model(f"repsr-m4c16-x{scale}")
    upscaler = Upscaler(model, device="cpu", precision=precision)
    how = f"{upscaler.precision} {upscaler.backend}"
    clip = workdir / f"in-{width}x{height}.mp4"
    write_clip(clip, width, height, frames)
    lr = decoded(clip)
    alone = model_alone_fps(upscaler, lr)
    suffix = ".mkv" if codec == "ffv1" else ".mp4"
    out = workdir / f"out-{width}x{height}-x{scale}-{precision}-{codec}{suffix}"  # one file per case
    report = upscale_video(upscaler, clip, out, codec=codec, preset=preset)
    alone_after = model_alone_fps(upscaler, lr)
    reference = (alone + alone_after) / 2  # the machine's load drifts: bracket the pipeline run
    fraction = report.fps / reference
    print(
        f"{name}: {width}x{height} -> {width * scale}x{height * scale} (M4C16 x{scale} {how}, {codec}"
        f"{f' preset {preset}' if preset else ''}), "
        f"{report.frames} frames: model alone {alone:.2f} / {alone_after:.2f} frames/s, "
        f"end to end {report.fps:.2f} frames/s = {100 * fraction:.0f}% of model alone"
    )
    print(f"  working ms per frame, each stage's thread(s): {report.stage_summary()}")


def main(
    frames: int = 24,
    codecs: tuple[str, ...] = ("libx264", "ffv1"),
    preset: str | None = None,
    precisions: tuple[str, ...] = ("fp32", "auto"),
) -> None:
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, tile auto")
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            for codec in codecs:
                keep = preset if codec != "ffv1" else None
                case("480p x4", (640, 480), 4, frames, codec, keep, Path(tmp), precision)
            for codec in codecs:
                keep = preset if codec != "ffv1" else None
                case("540p x2", (960, 540), 2, frames, codec, keep, Path(tmp), precision)
    print(
        f"goals: end to end >= {100 * GOAL_FRACTION:.0f}% of model alone; "
        f"960x540 -> 1920x1080 at >= {REALTIME_FPS:.0f} frames/s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--codec", action="append", help="encoder(s) to run (default libx264 and ffv1)")
    parser.add_argument("--preset", help="encoder preset for libx264/libx265/libsvtav1 (default: theirs)")
    parser.add_argument("--precision", action="append", help="Upscaler precision(s) (default fp32 and auto)")
    args = parser.parse_args()
    main(
        args.frames,
        tuple(args.codec or ("libx264", "ffv1")),
        args.preset,
        tuple(args.precision or ("fp32", "auto")),
    )
