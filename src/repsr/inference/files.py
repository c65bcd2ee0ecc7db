"""Files and folders: which images the inputs name, where each result goes, and the batch loop."""

from __future__ import annotations

import glob
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from repsr.inference.denoise import AutoDenoise
from repsr.inference.upscaler import Upscaler, output_bytes, upscale_pixels
from repsr.models.auto_denoise import DenoiseChoice
from repsr.util.errors import ConfigError, DataError, ImageError, RepsrError

OUTPUT_FORMATS = ("png", "jpg", "webp")


def output_path(source: Path, relative: Path, out_dir: Path, fmt: str | None) -> Path:
    """`out_dir / relative`, with the suffix of `fmt`, or of the source when it is writable, else .png."""
    if fmt is not None:
        suffix = "." + fmt
    elif source.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        suffix = source.suffix
    else:
        suffix = ".png"
    return out_dir / relative.with_suffix(suffix)


def upscale_file(
    upscaler: Upscaler | AutoDenoise,
    source: Path,
    target: Path,
    *,
    overwrite: bool = True,
    on_denoise: Callable[[DenoiseChoice], None] | None = None,
) -> Path:
    """Read `source`, upscale, write `target` (16 bit kept in PNG, 8 bit otherwise); returns `target`.

    An `AutoDenoise` picks the strength for this file (its pixels and, for a JPEG, its tables) and tells
    `on_denoise` what it chose, before the work.

    ICC profile, EXIF (orientation applied to the pixels and reset), DPI and PNG text are carried over;
    the written file is decoded again at the expected size before it takes its name; without
    `overwrite`, only if no file has that name by then (another run may have written it meanwhile).

    Memory: the decoded input, the output in its final 8/16-bit form and one tile (`upscale_pixels`).
    An output too large for memory raises `ImageError` naming `source` and the size it needs.
    """
    from repsr.image.io import check_output_size, read_pixels, write_pixels

    pixels = read_pixels(source)
    if isinstance(upscaler, AutoDenoise):
        upscaler, choice = upscaler.choose(pixels.array, pixels.jpeg_quality)
        if on_denoise is not None:
            on_denoise(choice)
    bit_depth = pixels.bit_depth if target.suffix.lower() == ".png" else 8
    height, width = pixels.array.shape[:2]
    check_output_size(target, width * upscaler.scale, height * upscaler.scale)  # before the work
    try:
        result = upscale_pixels(upscaler, pixels, bit_depth=bit_depth)
        write_pixels(target, result, meta=pixels.meta, replace=overwrite)
    except MemoryError:
        height, width, channels = pixels.array.shape
        s = upscaler.scale
        needed = output_bytes(height, width, channels, s, bit_depth)
        raise ImageError(
            f"{source}: not enough memory to upscale {width}x{height} to {width * s}x{height * s} "
            f"(the output alone needs {needed / 2**30:.1f} GiB); skipped"
        ) from None
    return target


def _glob_base(pattern: str) -> Path:
    """The leading part of a glob pattern without wildcards: matches are named relative to it."""
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _is_under(path: Path, folder: Path | None) -> bool:
    """Whether `path` lies inside `folder` (both resolved); False when `folder` is None."""
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def collect_inputs(
    inputs: Sequence[str | Path], *, exclude: str | Path | None = None, videos: bool = False
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Expand files, folders (recursive) and globs to (source, name relative to the output folder).

    A file keeps its name, a folder's images keep their path under the folder, a glob's matches their
    path under the pattern's wildcard-free prefix. Files under `exclude` (the output folder) are not
    taken from a folder or pattern that holds it below its own root, so a second run does not read the
    first run's results (`repsr upscale q -o q/up`); a file named explicitly is always an input.
    `videos`: folders also yield their videos. Returns (found, missing): `found` without duplicates,
    `missing` the inputs that matched nothing, with the reason.
    """
    from repsr.image.io import list_images
    from repsr.inference.video import VIDEO_EXTENSIONS

    skip = Path(exclude).resolve() if exclude is not None else None
    extra = VIDEO_EXTENSIONS if videos else ()
    found: list[tuple[Path, Path]] = []
    missing: list[tuple[Path, str]] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            images = list_images(path, recursive=True, extra=extra)
            if skip is not None and skip != path.resolve():  # an output folder inside this input folder
                images = [image for image in images if not _is_under(image, skip)]
            if not images:
                missing.append((path, "folder has no images" + (" or videos" if videos else "")))
            found += [(image, image.relative_to(path)) for image in images]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(item):
            base = _glob_base(item)
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if skip is not None and skip != base.resolve():
                matches = [match for match in matches if not _is_under(match, skip)]
            if not matches:
                missing.append((path, "pattern matched no files"))
            found += [(match, match.relative_to(base)) for match in matches]
        else:
            missing.append((path, "no such file or folder"))
    unique = list({source.resolve(): (source, relative) for source, relative in found}.values())
    return unique, missing


@dataclass
class Job:
    """One planned output: `source` is upscaled into `target` (`video`: through `repsr.inference.video`)."""

    source: Path
    target: Path
    video: bool = False


def plan_outputs(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    fmt: str | None = None,
    overwrite: bool = False,
) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Every output path of a run, decided before any work: (jobs, inputs that matched nothing).

    `output` is a folder (created if missing; results mirror the inputs' names), or, ending in a video
    extension and not an existing folder, the one output file of a single video input. Raises a
    one-line `ConfigError` when two inputs would write the same file, an output would replace an input,
    `output` is an existing file that is not a video target, or an output exists and `overwrite` is
    False (a run never replaces a file it was not told it may replace); `DataError` when nothing is found.
    """
    from repsr.inference.video import is_video_path

    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    from repsr.util.atomic import check_links

    output = Path(output)
    check_links(output, what="-o")  # a loop would end in a RuntimeError when resolved below
    single_video = is_video_path(output) and not output.is_dir()
    if output.exists() and not output.is_dir() and not single_video:
        raise ConfigError(
            f"-o {output}: is an existing file; -o takes a folder (or, for one video, the output video file)"
        )
    found, missing = collect_inputs(inputs, exclude=None if single_video else output, videos=True)
    if not found:
        names = ", ".join(map(str, inputs))
        raise DataError(f"no input images or videos found in {names}")
    jobs: list[Job] = []
    if single_video:
        videos = [source for source, _ in found if is_video_path(source)]
        if len(found) != 1 or len(videos) != 1 or missing:
            raise ConfigError(f"-o {output} names one video file: give exactly one video input")
        jobs.append(Job(videos[0], output, video=True))
    else:
        for source, relative in found:
            if is_video_path(source):
                jobs.append(Job(source, output / relative, video=True))
            else:
                jobs.append(Job(source, output_path(source, relative, output, fmt)))
    sources = {source.resolve() for source, _ in found}
    targets: dict[Path, Path] = {}
    existing: list[Path] = []
    for job in jobs:
        key = job.target.resolve()
        if key in targets:
            raise ConfigError(
                f"{job.source} and {targets[key]} would both be written to {job.target}; "
                "upscale them into separate -o folders"
            )
        targets[key] = job.source
        if key in sources:
            raise ConfigError(
                f"{job.source}: output {job.target} would overwrite an input; choose another -o"
            )
        if job.target.is_dir():
            raise ConfigError(f"{job.target}: the output path of {job.source} is a folder")
        if job.target.exists() or job.target.is_symlink():
            existing.append(job.target)
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise ConfigError(
            f"{existing[0]}{more}: already exist(s) and this run would replace them; "
            "pass --overwrite to replace them (e.g. earlier results), or choose another -o"
        )
    return jobs, missing


class Cancelled(RepsrError):
    """The batch was cancelled (`upscale_files(cancel=...)`) while this file was being upscaled."""


@dataclass
class UpscaleReport:
    """Outcome of a batch: what was written and which inputs failed, with the one-line reason.
    `videos`: the `repsr.inference.video.VideoReport` of each video written. `cancelled`: inputs not
    finished because the batch was cancelled (nothing of theirs is left under the output name).
    `denoise`: with an `AutoDenoise`, the strength chosen for each input and why."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    videos: list = field(default_factory=list)
    cancelled: list[Path] = field(default_factory=list)
    denoise: dict[Path, DenoiseChoice] = field(default_factory=dict)  # what `AutoDenoise` chose per input


def upscale_files(
    upscaler: Upscaler | AutoDenoise,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    fmt: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    video: dict | None = None,
    on_done: Callable[[Path, Path], None] | None = None,
    on_start: Callable[[Job], None] | None = None,
    on_failed: Callable[[Path, str], None] | None = None,
    on_frames: Callable[[int], None] | None = None,
    on_denoise: Callable[[Path, DenoiseChoice], None] | None = None,
    cancel: threading.Event | None = None,
    video_upscaler: Upscaler | AutoDenoise | None = None,
) -> UpscaleReport:
    """Upscale every image and video named by `inputs` into `out_dir`, mirroring names; one bad file
    spoils nothing. Videos go through `video_upscaler` where one is given (a faster model of the same
    scale), else through `upscaler`.

    Every output path is planned first (`plan_outputs`: collisions, outputs that would replace inputs
    or, without `overwrite`, existing files are refused before any work). Problems with a single file
    (unreadable, not an image, a damaged video, an output that fails its check) are collected in the
    report instead of raised, and leave no file behind. `video`: encoder options for videos (`codec`,
    `crf`, `preset`; see `repsr.inference.video.upscale_video`), checked before any work.

    Hooks for a program that shows the batch (`repsr app`): `on_start(job)` before each file,
    `on_done(source, target)` after each file written, `on_failed(source, reason)` for each failure,
    `on_frames(n)` as video frames are written (instead of the tqdm bar), `on_denoise(source, choice)`
    when an `AutoDenoise` has chosen a file's strength (also kept in `report.denoise`). `cancel`: when
    set, the file being upscaled stops (a video between two batches of frames, an image when it is
    done), no file is left under its name, and it and the files not started are listed in
    `report.cancelled`.
    """
    if video_upscaler is not None and video_upscaler.scale != upscaler.scale:
        raise ConfigError(
            f"the video model upscales x{video_upscaler.scale} and the image model x{upscaler.scale}: "
            "give models of one scale"
        )
    jobs, missing = plan_outputs(inputs, out_dir, fmt=fmt, overwrite=overwrite)
    report = UpscaleReport(failed=[(path, reason) for path, reason in missing])
    if on_failed is not None:
        for path, reason in missing:
            on_failed(path, reason)
    video = dict(video or {})
    if any(job.video for job in jobs):
        from repsr.inference.video import check_container, check_encoding

        check_encoding(video.get("codec", "libx264"), video.get("crf", 18), video.get("preset"))
        for target in {job.target.suffix.lower(): job.target for job in jobs if job.video}.values():
            check_container(target, video.get("codec", "libx264"))
    ordered = [job for job in jobs if job.video] + [job for job in jobs if not job.video]
    images = sum(not job.video for job in jobs)
    frames_progress = _frames_hook(on_frames, cancel) if (on_frames or cancel) else progress
    for job in _progress(ordered, bool(progress), images):
        if cancel is not None and cancel.is_set():
            report.cancelled.append(job.source)
            continue
        if on_start is not None:
            on_start(job)

        def chosen(choice: DenoiseChoice, source: Path = job.source) -> None:
            report.denoise[source] = choice
            if on_denoise is not None:
                on_denoise(source, choice)

        try:
            if job.video:
                from repsr.inference.video import upscale_video

                runner = video_upscaler if video_upscaler is not None else upscaler
                if isinstance(runner, AutoDenoise):
                    runner, choice = runner.choose_video()
                    chosen(choice)
                result = upscale_video(
                    runner, job.source, job.target, **video, progress=frames_progress, overwrite=overwrite
                )
                report.videos.append(result)
            else:
                upscale_file(upscaler, job.source, job.target, overwrite=overwrite, on_denoise=chosen)
        except Cancelled:
            report.cancelled.append(job.source)
            continue
        except (RepsrError, OSError) as error:
            _fail(report, job.source, str(error), on_failed)
            continue
        except MemoryError:  # decoding a huge input
            what = "upscale this video" if job.video else "read and upscale this image"
            _fail(report, job.source, f"{job.source}: not enough memory to {what}", on_failed)
            continue
        report.written.append(job.target)
        if on_done is not None:
            on_done(job.source, job.target)
    return report


def _fail(report: UpscaleReport, source: Path, reason: str, hook: Callable[[Path, str], None] | None) -> None:
    report.failed.append((source, reason))
    if hook is not None:
        hook(source, reason)


def _frames_hook(
    on_frames: Callable[[int], None] | None, cancel: threading.Event | None
) -> Callable[[int], None]:
    """The video progress callable: reports frames, and raises `Cancelled` once `cancel` is set (the
    video pipeline stops and removes its temporary file)."""

    def hook(count: int) -> None:
        if on_frames is not None:
            on_frames(count)
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")

    return hook


def _progress(jobs: list[Job], enabled: bool, images: int) -> Iterable[Job]:
    """The jobs, with a tqdm bar over the images when `enabled` (each video has its own frame bar)."""
    if not enabled or images == 0:
        return jobs
    return _with_bar(jobs, images)


def _with_bar(jobs: list[Job], images: int) -> Iterable[Job]:
    from tqdm import tqdm

    bar = tqdm(total=images, desc="upscale", unit="img", leave=False)
    try:
        for job in jobs:
            yield job
            if not job.video:
                bar.update(1)
    finally:
        bar.close()
