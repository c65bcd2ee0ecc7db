"""Video upscaling with bounded memory: decode -> upscale batches of frames -> encode, overlapped.

`upscale_video(upscaler, "clip.mp4", "out.mp4")` streams the clip through three stages:

- a decoder thread demuxes the input, decodes video frames to RGB (8 or 16 bit) and groups them into
  small batches; packets of the other streams (audio, subtitles) travel with the next batch;
- the calling thread runs the model (`repsr.inference.Upscaler`, tiled as for images when frames are
  large) on each batch;
- an encoder thread quantizes the result, encodes it and muxes it with the copied packets.

Stages talk through queues of `QUEUE_BATCHES` batches, so memory stays bounded whatever the clip's
length and, with PyAV and torch releasing the GIL in their work, the model is the only stage that waits
for nobody. The output keeps every frame's time stamp (so frame count and frame rate), copies audio and
subtitle packets unchanged, and keeps the pixel format (so the bit depth) where the encoder supports it.
It is written under a temporary name in the output folder and renamed at the end: a clip that fails
midway leaves nothing under the final name.

Needs PyAV (`pip install 'repsr[video]'`), which bundles FFmpeg with libx264; no system ffmpeg.
"""

from __future__ import annotations

import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from repsr.image.pixels import to_levels
from repsr.inference.upscaler import upscale_rgb
from repsr.util.atomic import atomic_write
from repsr.util.errors import ConfigError, DependencyError, RepsrError, first_line

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi", ".ts", ".mts", ".flv", ".wmv", ".mpg")
DEFAULT_CODEC = "libx264"
DEFAULT_CRF = 18
QUEUE_BATCHES = 2  # batches waiting between two stages
BATCH_PIXELS = 1 << 18  # `batch="auto"`: frames per batch so that a batch holds about this many LR pixels
MAX_BATCH = 16
# Lossless or quality-scale encoders: the option that sets quality (`--crf`) for each.
CRF_OPTION = {
    "libx264": "crf",
    "libx265": "crf",
    "libvpx-vp9": "crf",
    "libaom-av1": "crf",
    "libsvtav1": "crf",
}

# Encoders with a speed/size trade-off (`--preset`) and the values each accepts.
_X26X_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"
)  # fmt: skip
PRESETS = {"libx264": _X26X_PRESETS, "libx265": _X26X_PRESETS, "libsvtav1": tuple(map(str, range(14)))}


class VideoError(RepsrError):
    """A video file that is not a video, cannot be decoded, or cannot be written as asked."""


def is_video_path(path: str | Path) -> bool:
    """Whether `path` names a video by its extension (`VIDEO_EXTENSIONS`)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def require_av() -> Any:
    """Import PyAV, or say in one line what to install."""
    try:
        import av
    except ImportError:
        raise DependencyError(
            "video support needs PyAV: install it with pip install 'repsr[video]'"
        ) from None
    return av


@dataclass
class VideoReport:
    """What `upscale_video` wrote: frame count and size, streams copied, and the speed it ran at."""

    source: Path
    target: Path
    frames: int
    input_size: tuple[int, int]  # (width, height)
    output_size: tuple[int, int]
    codec: str
    pix_fmt: str
    copied_streams: list[str] = field(default_factory=list)
    seconds: float = 0.0
    copied_packets: int = 0  # audio/subtitle packets muxed (checked against the written file)
    # wall seconds each stage's thread spent working, its waits for the other stages left out (time it
    # waited for a core is in, the stage's own worker threads are not): decode (demux, decode, RGB),
    # model, colour (8-bit frames, RGB -> the encoder's pixel format), encode (encoder, flush, muxer)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def stage_ms_per_frame(self) -> dict[str, float]:
        """Each stage's working time per frame, in ms: which one caps the pipeline."""
        frames = max(self.frames, 1)
        return {stage: 1000 * seconds / frames for stage, seconds in self.stage_seconds.items()}

    def stage_summary(self) -> str:
        """`decode 5.9, model 61.0, colour 7.0, encode 13.0` (ms per frame), or '' before a run."""
        return ", ".join(f"{stage} {ms:.1f}" for stage, ms in self.stage_ms_per_frame().items())


@dataclass
class _Batch:
    """Frames decoded together (N, H, W, 3) uint8/uint16, their time stamps, and packets to copy first."""

    pixels: np.ndarray | None
    pts: list[int | None]
    packets: list[Any]


# ------------------------------------------------------------------------------------------- formats


def _depth(av: Any, pix_fmt: str) -> int:
    """Bits per component of a pixel format (8 when unknown)."""
    try:
        return max(c.bits for c in av.VideoFormat(pix_fmt).components)
    except Exception:
        return 8


def _fits(av: Any, pix_fmt: str, size: tuple[int, int] | None) -> bool:
    """Whether frames of `size` (width, height) can be stored in `pix_fmt`: subsampled chroma (4:2:0,
    4:2:2) needs even sides."""
    if size is None:
        return True
    try:
        fmt = av.VideoFormat(pix_fmt)
        sub_w, sub_h = fmt.chroma_width(16) < 16, fmt.chroma_height(16) < 16
    except Exception:
        return True
    width, height = size
    return not (sub_w and width % 2) and not (sub_h and height % 2)


def output_pix_fmt(av: Any, codec: Any, source_fmt: str, size: tuple[int, int] | None = None) -> str:
    """The input's pixel format if the encoder takes it, else one of the same bit depth (4:2:0 first).

    Keeps 10-bit clips 10-bit with libx264/libx265/ffv1; 8-bit clips stay 8 bit. With an odd output
    `size` (width, height), a format without chroma subsampling (4:4:4) is chosen instead of 4:2:0/4:2:2,
    which need even sides; when the encoder has none, `VideoError` says what to do.
    """
    supported = [f.name for f in (codec.video_formats or [])]
    chosen = _same_depth_fmt(av, supported, source_fmt)
    if _fits(av, chosen, size):
        return chosen
    depth = _depth(av, source_fmt)
    full = [name for name in supported if _fits(av, name, size)]
    for name in sorted(full, key=lambda n: (_depth(av, n) != depth, not n.startswith("yuv444p"))):
        return name
    width, height = size or (0, 0)
    raise VideoError(
        f"output {width}x{height}: {codec.name} writes {chosen} (4:2:0/4:2:2 chroma), which needs even "
        "frame sizes; crop the input to an even width and height, or use --codec ffv1 or libx264 (4:4:4)"
    )


def _same_depth_fmt(av: Any, supported: list[str], source_fmt: str) -> str:
    if not supported or source_fmt in supported:
        return source_fmt
    depth = _depth(av, source_fmt)
    same_depth = [name for name in supported if _depth(av, name) == depth]
    for name in same_depth:
        if name.startswith("yuv420p"):
            return name
    if same_depth:
        return same_depth[0]
    return "yuv420p" if "yuv420p" in supported else supported[0]


def _encoder(av: Any, name: str) -> Any:
    try:
        codec = av.codec.Codec(name, "w")
    except Exception:
        raise VideoError(f"unknown or unsupported video encoder {name!r} (try libx264 or ffv1)") from None
    if codec.type != "video":
        raise VideoError(f"{name!r} is a {codec.type} encoder, not a video encoder (try libx264 or ffv1)")
    return codec


# ------------------------------------------------------------------------------------------- stages


def frame_pixels(rgb: Tensor, depth: int) -> np.ndarray:
    """(N, 3, H, W) float -> (N, H, W, 3) uint8 (depth 8) or uint16 by the one pixel rule
    (`repsr.image.pixels`), so a frame equals the same image written as a file."""
    # permute first: the elementwise passes then write NHWC directly (rounding in NCHW and transposing
    # afterwards took 14-27 ms for a 1080p frame on 2 cores)
    values = to_levels(rgb.permute(0, 2, 3, 1), depth)
    array = values.to(torch.uint8 if depth == 8 else torch.int32).numpy()
    return array if depth == 8 else array.astype(np.uint16)


def to_tensor(pixels: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8/uint16 -> (N, 3, H, W) float32 in [0, 1] (NHWC in memory: channels-last)."""
    peak = 255.0 if pixels.dtype == np.uint8 else 65535.0
    values = torch.from_numpy(pixels.astype(np.int32) if pixels.dtype == np.uint16 else pixels)
    return values.permute(0, 3, 1, 2).float().div_(peak)


# FFmpeg's colour matrix tags (AVColorSpace) -> swscale's matrices (SWS_CS_*: ITU709 1, FCC 4, ITU601 5,
# SMPTE240M 7, BT2020 9)
_SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}


def yuv_matrix(codec_context: Any, pix_fmt: str) -> dict[str, int]:
    """The reformat arguments that convert RGB to a YUV `pix_fmt` with the matrix and range the output
    is tagged with (the source's tags, copied): untagged, swscale's default (BT.601, limited range), the
    decoder's default too. Without them a BT.709 clip (most HD video) came out up to 40 levels off."""
    if not pix_fmt.startswith(("yuv", "nv")):
        return {}
    arguments = {}
    matrix = _SWS_MATRIX.get(int(getattr(codec_context, "colorspace", 2) or 2))
    if matrix is not None:
        arguments["dst_colorspace"] = matrix
    color_range = int(getattr(codec_context, "color_range", 0) or 0)
    if color_range in (1, 2):  # MPEG (limited) or JPEG (full)
        arguments["dst_color_range"] = color_range
    return arguments


class _Stop(Exception):
    """Raised inside a stage when another stage failed: stop quietly."""


def _put(channel: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            channel.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(channel: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            return channel.get(timeout=0.1)
        except queue.Empty:
            continue


def check_encoding(codec: str, crf: int | None = DEFAULT_CRF, preset: str | None = None) -> tuple[Any, dict]:
    """The encoder named `codec` and its FFmpeg options: the quality option from `crf` (where the encoder
    has one) and `preset`. Raises a one-line `VideoError`/`ConfigError` for an unknown encoder, a crf out
    of range or a preset the encoder does not take, so a caller can check before doing any work."""
    if crf is not None and not 0 <= crf <= 63:
        raise ConfigError(f"crf must be between 0 and 63, got {crf}")
    encoder = _encoder(require_av(), codec)
    options = {}
    option = CRF_OPTION.get(encoder.name)
    if option and crf is not None:
        options[option] = str(crf)
    if preset is not None:
        values = PRESETS.get(encoder.name)
        if values is None:
            raise ConfigError(f"preset: {encoder.name} takes no preset (these do: {', '.join(PRESETS)})")
        if preset not in values:
            raise ConfigError(f"preset: {encoder.name} takes one of {', '.join(values)}, not {preset!r}")
        options["preset"] = preset
    return encoder, options


def upscale_video(
    upscaler: Any,
    source: str | Path,
    target: str | Path,
    *,
    codec: str = DEFAULT_CODEC,
    crf: int | None = DEFAULT_CRF,
    preset: str | None = None,
    batch: int | str = "auto",
    progress: bool | Callable[[int], None] = False,
    overwrite: bool = False,
) -> VideoReport:
    """Upscale the first video stream of `source` into `target`, copying audio and subtitle streams.

    `upscaler`: a `repsr.inference.Upscaler` (device, tiling and backend are its own). `codec`: FFmpeg
    encoder name (default libx264; `ffv1` is lossless). `crf`: quality for libx264/libx265/VP9/AV1
    (lower is better; ignored by other encoders). `preset`: the encoder's speed/size trade-off
    (libx264/libx265: ultrafast ... veryslow, default medium; libsvtav1: 0-13); a faster preset keeps the
    encoder from being the bottleneck at a larger file size. `batch`: frames per model call, or `auto`.
    `progress`: a tqdm bar on stderr when True, or a callable given the number of frames just written.
    `overwrite`: replace an existing `target` (else refused before any work).

    The display rotation, colour tags and every stream's metadata (language, title) are carried over.
    A damaged input (frames the decoder lost, even where FFmpeg's threaded decoder conceals it) fails
    with where frames were lost; the output is re-opened before it takes its name (frame count, streams,
    copied packets) and removed if it does not match. Raises `VideoError` (one line) for bad input or
    output, `DependencyError` without PyAV.
    """
    av = require_av()
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise VideoError(f"{source}: no such file")
    if target.resolve() == source.resolve():
        raise VideoError(f"{source}: output would overwrite the input; choose another output name")
    if not is_video_path(target):
        raise VideoError(f"{target}: output needs a video extension ({', '.join(VIDEO_EXTENSIONS)})")
    if target.is_dir():
        raise VideoError(f"{target}: the output path is a folder; name a video file or give -o a folder")
    if target.exists() and not overwrite:
        raise VideoError(f"{target}: already exists; pass --overwrite to replace it, or choose another name")
    encoder, options = check_encoding(codec, crf, preset)
    try:
        container = av.open(str(source), "r")
    except Exception as error:
        raise VideoError(f"{source}: not a readable video ({first_line(error)})") from None
    try:
        if not container.streams.video:
            found = ", ".join(sorted({st.type for st in container.streams})) or "no streams"
            raise VideoError(
                f"{source}: no video stream in this file ({found}; not a video, or a truncated or "
                "damaged file)"
            )
        done: list[VideoReport] = []

        def write(
            tmp: str,
        ) -> None:  # into a temporary file with the target's extension, checked, then renamed
            report = _transcode(av, upscaler, container, source, Path(tmp), encoder, options, batch, progress)
            _verify_video(av, Path(tmp), target, report)
            done.append(report)

        atomic_write(target, write, keep_suffix=True, replace=overwrite)
        report = done[0]
    finally:
        container.close()
    report.target = target
    return report


def _transcode(
    av: Any,
    upscaler: Any,
    container: Any,
    source: Path,
    tmp: Path,
    encoder: Any,
    options: dict[str, str],
    batch: int | str,
    progress: bool | Callable[[int], None],
) -> VideoReport:
    video = container.streams.video[0]
    ctx = video.codec_context
    if ctx is None:
        raise VideoError(f"{source}: the video stream's codec cannot be decoded by this FFmpeg build")
    video.thread_type = "AUTO"  # frame + slice threads in the decoder; lost frames are counted below
    width, height, scale = ctx.width, ctx.height, upscaler.scale
    if not width or not height:
        raise VideoError(f"{source}: video stream has no frame size (unreadable stream)")
    source_fmt = ctx.format.name if ctx.format is not None else "yuv420p"
    depth = 8 if _depth(av, source_fmt) <= 8 else 16
    if batch == "auto":
        batch = max(1, min(MAX_BATCH, BATCH_PIXELS // (width * height)))
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be 'auto' or a positive integer, got {batch!r}")
    copied = [s for s in container.streams if s.type in ("audio", "subtitle")]
    for stream in copied:
        if stream.codec_context is None:
            raise VideoError(
                f"{source}: {stream.type} stream #{stream.index} has a codec this FFmpeg build does not "
                "know, so it cannot be copied (damaged file, or remove the stream first)"
            )

    try:
        output = av.open(str(tmp), "w")
    except Exception as error:
        raise VideoError(f"{tmp.name}: cannot write this container ({first_line(error)})") from None
    try:
        out_video = output.add_stream(encoder.name, rate=video.average_rate or video.guessed_rate or 24)
        out_video.width, out_video.height = width * scale, height * scale
        out_video.pix_fmt = output_pix_fmt(av, encoder, source_fmt, (width * scale, height * scale))
        matrix = _display_matrix(av, source)
        if matrix is not None:  # phone videos: the rotation a player applies
            out_video.set_display_matrix(matrix)
        _copy_metadata(video, out_video)
        _copy_metadata(container, output, skip=_CONTAINER_KEYS)
        out_video.time_base = video.time_base
        out_video.codec_context.time_base = video.time_base
        for attribute in ("color_range", "colorspace", "color_primaries", "color_trc"):
            value = getattr(ctx, attribute, None)
            if value is not None and hasattr(out_video.codec_context, attribute):
                try:
                    setattr(out_video.codec_context, attribute, value)
                except Exception:
                    pass
        if options:
            out_video.options = options
        mapping = {}
        for stream in copied:
            try:
                mapping[stream.index] = output.add_stream_from_template(stream)
                _copy_metadata(stream, mapping[stream.index])
            except Exception as error:
                raise VideoError(
                    f"{source}: cannot copy {stream.type} stream #{stream.index} "
                    f"({stream.codec_context.name}) into {tmp.suffix} ({first_line(error)}); try .mkv"
                ) from None
        report = VideoReport(
            source=source,
            target=tmp,
            frames=0,
            input_size=(width, height),
            output_size=(width * scale, height * scale),
            codec=encoder.name,
            pix_fmt=out_video.pix_fmt,
            copied_streams=[f"{s.type}:{s.codec_context.name}" for s in copied],
        )
        start = time.perf_counter()
        _run_pipeline(
            av, upscaler, container, video, mapping, output, out_video, depth, batch, progress, report
        )
        report.seconds = time.perf_counter() - start
    except BaseException:
        try:
            output.close()
        except Exception:
            pass  # the first error is the one to report; the file is removed
        raise
    try:
        output.close()  # writes the trailer (mp4's index): a failure here is an unplayable file
    except Exception as error:
        raise VideoError(f"{source}: could not finish writing the output ({first_line(error)})") from None
    return report


# Container metadata that describes the file itself (the muxer writes its own), not the content.
_CONTAINER_KEYS = frozenset({"major_brand", "minor_version", "compatible_brands", "encoder", "duration"})


def _copy_metadata(
    source: Any, target: Any, skip: frozenset[str] = frozenset({"encoder", "duration"})
) -> None:
    """Copy the metadata tags (language, title, handler, ...) of a stream or container."""
    try:
        for key, value in dict(source.metadata).items():
            if key.lower() not in skip and not key.upper().startswith("DURATION"):
                target.metadata[key] = value
    except Exception:  # a tag the muxer refuses is not worth failing the clip
        pass


def _display_matrix(av: Any, source: Path) -> list[int] | None:
    """The display matrix (rotation/flip a player applies) of the first video frame, or None."""
    try:
        with av.open(str(source)) as container:
            for frame in container.decode(container.streams.video[0]):
                for data in frame.side_data:
                    if "DISPLAYMATRIX" in str(data.type):
                        matrix = list(np.frombuffer(bytes(data), dtype="<i4")[:9])
                        identity = [65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30]
                        return None if matrix == identity else [int(v) for v in matrix]
                return None
    except Exception:
        return None
    return None


def _expected_frames(video: Any, container: Any) -> int | None:
    """How many frames the container says the video stream has (count, else duration x rate)."""
    if video.frames:
        return int(video.frames)
    rate = video.average_rate or video.guessed_rate
    seconds = None
    if video.duration and video.time_base:
        seconds = float(video.duration * video.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000
    if rate and seconds:
        return round(seconds * float(rate))
    return None


def _lost_frames_error(
    source: str, decoded: int, expected: int, gap: tuple[float, float] | None, end: float
) -> VideoError:
    lost = expected - decoded
    where = f"between {gap[0]:.2f} s and {gap[1]:.2f} s" if gap else f"after {end:.2f} s"
    return VideoError(
        f"{source}: damaged video: decoded {decoded} of {expected} frames ({lost} lost {where}); "
        "not upscaled (re-encode the input to keep what decodes, e.g. ffmpeg -i IN -c:v ffv1 OUT.mkv)"
    )


def frames_lost(decoded: int, expected: int | None) -> bool:
    """Whether a decode of `decoded` frames lost some of `expected` (a 2% / 2-frame rounding allowance
    for containers that only store a duration)."""
    return expected is not None and expected - decoded > max(2, expected // 50)


def _verify_video(av: Any, path: Path, target: Path, report: VideoReport) -> None:
    """Re-open the written file: one video stream of the expected size and frame count, the copied
    streams with every packet; else `VideoError` (the caller removes the file)."""
    try:
        with av.open(str(path)) as written:
            videos = written.streams.video
            streams = len(written.streams)
            if len(videos) != 1:
                raise VideoError(f"{target}: the written file has {len(videos)} video streams, expected 1")
            size = (videos[0].codec_context.width, videos[0].codec_context.height)
            frames, other = 0, 0
            for packet in written.demux():
                if packet.dts is None and packet.size == 0:
                    continue
                if packet.stream.type == "video":
                    frames += 1
                else:
                    other += 1
    except VideoError:
        raise
    except Exception as error:
        raise VideoError(
            f"{target}: the written file does not re-open ({first_line(error)}); not kept"
        ) from None
    expected_streams = 1 + len(report.copied_streams)
    problems = []
    if size != report.output_size:
        problems.append(
            f"frame size {size[0]}x{size[1]}, expected {report.output_size[0]}x{report.output_size[1]}"
        )
    if frames != report.frames:
        problems.append(f"{frames} frames, expected {report.frames}")
    if streams != expected_streams:
        problems.append(f"{streams} streams, expected {expected_streams}")
    if other != report.copied_packets:
        problems.append(f"{other} audio/subtitle packets, expected {report.copied_packets}")
    if problems:
        raise VideoError(f"{target}: the written file has {'; '.join(problems)}; not kept")


_PROBE_FORMATS = {".ts": "mpegts", ".mts": "mpegts", ".m4v": "mp4", ".mpg": "mpeg", ".wmv": "asf"}


def check_container(target: str | Path, codec: str = DEFAULT_CODEC) -> None:
    """Raise `VideoError` now if `target`'s container cannot hold `codec` video: a two-frame probe
    written to a temporary file (e.g. libx264 in .webm, which takes VP8/VP9/AV1 only)."""
    av = require_av()
    target = Path(target)
    encoder = _encoder(av, codec)
    with tempfile.TemporaryDirectory(prefix="repsr-probe-") as folder:
        probe = Path(folder) / f"probe{target.suffix.lower()}"
        try:
            with av.open(str(probe), "w", format=_PROBE_FORMATS.get(target.suffix.lower())) as output:
                stream = output.add_stream(encoder.name, rate=24)
                stream.width, stream.height = 64, 64
                stream.pix_fmt = output_pix_fmt(av, encoder, "yuv420p")
                for index in range(2):
                    frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
                    frame.pts = index
                    output.mux(stream.encode(frame))
                output.mux(stream.encode(None))
        except Exception as error:
            raise VideoError(
                f"{target}: a {target.suffix} file cannot hold {encoder.name} video "
                f"({first_line(error, 80)}); choose another --codec (webm: libvpx-vp9) "
                "or write .mkv, which holds every codec"
            ) from None


def _decoded_batches(
    av: Any, container: Any, video: Any, mapping: dict[int, Any], depth: int, batch: int
) -> Iterator[_Batch]:
    """Demux and decode: batches of RGB frames, each with the copied packets that came before it."""
    fmt = "rgb24" if depth == 8 else "rgb48le"
    frames: list[np.ndarray] = []
    stamps: list[int | None] = []
    packets: list[Any] = []
    streams = [video, *(s for s in container.streams if s.index in mapping)]
    rate = video.average_rate or video.guessed_rate or 24
    step = float(1 / rate)
    expected = _expected_frames(video, container)
    decoded, previous, gap = 0, None, None
    try:
        for packet in container.demux(streams):
            if packet.stream.index != video.index:
                if packet.dts is not None:  # None: the demuxer's end-of-stream marker
                    packets.append(packet)
                continue
            for frame in packet.decode():
                if frame.pts is not None and frame.time_base is not None:
                    now = float(frame.pts * frame.time_base)
                    if previous is not None and now - previous > 2.5 * step and gap is None:
                        gap = (previous, now)  # the first place frames went missing
                    previous = now
                frames.append(frame.to_ndarray(format=fmt))
                # a frame without a time stamp (some AVI/raw streams) gets its place at the nominal rate
                stamps.append(
                    frame.pts if frame.pts is not None else round(decoded / (rate * video.time_base))
                )
                decoded += 1
                if len(frames) == batch:
                    yield _Batch(np.stack(frames), stamps, packets)
                    frames, stamps, packets = [], [], []
    except (RepsrError, _Stop):
        raise
    except Exception as error:  # av.error.* for corrupt data, ValueError for odd frames
        raise VideoError(
            f"{container.name}: unreadable video stream after {decoded} frame(s) ({first_line(error)})"
        ) from None
    if frames_lost(decoded, expected):
        raise _lost_frames_error(container.name, decoded, expected, gap, previous or 0.0)
    yield _Batch(np.stack(frames) if frames else None, stamps, packets)


def _run_pipeline(
    av: Any,
    upscaler: Any,
    container: Any,
    video: Any,
    mapping: dict[int, Any],
    output: Any,
    out_video: Any,
    depth: int,
    batch: int,
    progress: bool | Callable[[int], None],
    report: VideoReport,
) -> None:
    stop = threading.Event()
    decoded_q: queue.Queue = queue.Queue(QUEUE_BATCHES)
    upscaled_q: queue.Queue = queue.Queue(QUEUE_BATCHES)
    errors: list[BaseException] = []
    fmt = "rgb24" if depth == 8 else "rgb48le"
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=video.frames or None, desc="upscale", unit="frame", leave=False)
    on_frames = bar.update if bar is not None else (progress if callable(progress) else None)
    busy = dict.fromkeys(("decode", "model", "colour", "encode"), 0.0)  # each written by one thread

    def decode() -> None:
        try:
            batches = _decoded_batches(av, container, video, mapping, depth, batch)
            while True:
                started = time.perf_counter()
                item = next(batches, None)
                busy["decode"] += time.perf_counter() - started
                if item is None:
                    break
                _put(decoded_q, item, stop)
            _put(decoded_q, None, stop)
        except _Stop:
            pass
        except BaseException as error:
            errors.append(error)
            stop.set()

    def encode() -> None:
        try:
            converter = av.video.reformatter.VideoReformatter()  # one for the clip: it keeps its context
            matrix = yuv_matrix(out_video.codec_context, out_video.pix_fmt)
            # 8-bit RGB is read in place (no copy: 2-8 ms a 1080p frame) where conversion makes a new frame
            wraps_in_place = fmt == "rgb24" and out_video.pix_fmt != fmt
            while True:
                item = _get(upscaled_q, stop)
                if item is None:
                    break
                result, stamps, packets = item
                for packet in packets:
                    packet.stream = mapping[packet.stream.index]
                    output.mux(packet)
                    report.copied_packets += 1
                if result is None:
                    continue
                started = time.perf_counter()
                frames = result if isinstance(result, np.ndarray) else frame_pixels(result, depth)
                busy["colour"] += time.perf_counter() - started
                for pixels, pts in zip(frames, stamps, strict=True):
                    started = time.perf_counter()
                    # converted here, as the encoder would, so that its cost is counted apart
                    in_place = wraps_in_place and pixels.flags.c_contiguous
                    wrap = av.VideoFrame.from_numpy_buffer if in_place else av.VideoFrame.from_ndarray
                    frame = converter.reformat(wrap(pixels, format=fmt), format=out_video.pix_fmt, **matrix)
                    frame.pts = pts
                    frame.time_base = out_video.codec_context.time_base
                    encoding = time.perf_counter()
                    output.mux(out_video.encode(frame))
                    busy["colour"] += encoding - started
                    busy["encode"] += time.perf_counter() - encoding
                report.frames += len(stamps)
                if on_frames is not None:
                    on_frames(len(stamps))
            started = time.perf_counter()
            output.mux(out_video.encode(None))  # the encoder's look-ahead: a short clip encodes here
            busy["encode"] += time.perf_counter() - started
        except _Stop:
            pass
        except BaseException as error:
            errors.append(_write_error(error, report))
            stop.set()

    threads = [threading.Thread(target=decode, daemon=True), threading.Thread(target=encode, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        while True:
            item = _get(decoded_q, stop)
            if item is None:
                _put(upscaled_q, None, stop)
                break
            result = None
            started = time.perf_counter()
            fused = item.pixels is not None and depth == 8 and hasattr(upscaler, "writes_pixels")
            if fused and upscaler.writes_pixels(*item.pixels.shape[1:3]):
                result = upscaler.pixels(to_tensor(item.pixels)).numpy()  # the kernel rounds: no float frame
            elif item.pixels is not None:
                result = upscale_rgb(upscaler, to_tensor(item.pixels)).cpu()
            busy["model"] += time.perf_counter() - started
            _put(upscaled_q, (result, item.pts, item.packets), stop)
    except _Stop:
        pass
    except BaseException:
        stop.set()
        raise
    finally:
        for thread in threads:
            thread.join()
        if bar is not None:
            bar.close()
    report.stage_seconds = busy
    if errors:
        raise errors[0]


def _write_error(error: BaseException, report: VideoReport) -> BaseException:
    if isinstance(error, RepsrError):
        return error
    return VideoError(
        f"{report.source}: encoding with {report.codec} failed after {report.frames} frame(s) "
        f"({first_line(error)})"
    )


def video_jobs(inputs: list[str], output: str | Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Split CLI inputs into (video source, target) pairs and the remaining (image) inputs.

    Videos are named by file or glob (a folder's videos are not searched). `output` ending in a video
    extension names the one video's output; otherwise it is a folder and each video keeps its file name.
    """
    import glob

    output = Path(output)
    videos: list[Path] = []
    rest: list[str] = []
    for item in map(str, inputs):
        if not is_video_path(item):
            rest.append(item)
            continue
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        if not matches:
            rest.append(item)  # reported with the images' "pattern matched no files"
        videos += [Path(match) for match in matches]
    if is_video_path(output):
        if len(videos) != 1 or rest:
            raise ConfigError(f"-o {output} names one video file: give exactly one video input")
        return [(videos[0], output)], []
    return [(video, output / video.name) for video in videos], rest


def describe(report: VideoReport) -> str:
    """One line for the CLI: what was written and how fast."""
    (w, h), (ow, oh) = report.input_size, report.output_size
    copied = f", copied {', '.join(report.copied_streams)}" if report.copied_streams else ""
    stages = report.stage_summary()
    return (
        f"{report.target}: {report.frames} frames {w}x{h} -> {ow}x{oh} "
        f"({report.codec}, {report.pix_fmt}{copied}) in {report.seconds:.1f} s, {report.fps:.2f} frames/s"
        + (f" (ms per frame: {stages})" if stages else "")
    )


__all__ = [
    "DEFAULT_CODEC",
    "DEFAULT_CRF",
    "VIDEO_EXTENSIONS",
    "VideoError",
    "VideoReport",
    "describe",
    "is_video_path",
    "check_container",
    "output_pix_fmt",
    "require_av",
    "upscale_video",
    "video_jobs",
]
