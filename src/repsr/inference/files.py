"""Files and folders: which images the inputs name, where each result goes, and the batch loop."""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from repsr.errors import ConfigError, DataError, ImageError, RepsrError
from repsr.inference.upscaler import Upscaler, output_bytes, upscale_pixels

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


def upscale_file(upscaler: Upscaler, source: Path, target: Path) -> Path:
    """Read `source`, upscale, write `target` (16 bit kept in PNG, 8 bit otherwise); returns `target`.

    Memory: the decoded input, the output in its final 8/16-bit form and one tile (`upscale_pixels`).
    An output too large for memory raises `ImageError` naming `source` and the size it needs.
    """
    from repsr.io import read_pixels, write_pixels

    pixels = read_pixels(source)
    bit_depth = pixels.bit_depth if target.suffix.lower() == ".png" else 8
    try:
        result = upscale_pixels(upscaler, pixels, bit_depth=bit_depth)
        write_pixels(target, result)
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


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Expand files, folders (recursive) and globs to (source, name relative to the output folder).

    A file keeps its name, a folder's images keep their path under the folder, a glob's matches their
    path under the pattern's wildcard-free prefix. Returns (found, missing): `found` without duplicates,
    `missing` the inputs that matched nothing, with the reason.
    """
    from repsr.io import list_images

    found: list[tuple[Path, Path]] = []
    missing: list[tuple[Path, str]] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            images = list_images(path, recursive=True)
            if not images:
                missing.append((path, "folder has no images"))
            found += [(image, image.relative_to(path)) for image in images]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(item):
            base = _glob_base(item)
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                missing.append((path, "pattern matched no files"))
            found += [(match, match.relative_to(base)) for match in matches]
        else:
            missing.append((path, "no such file or folder"))
    unique = list({source.resolve(): (source, relative) for source, relative in found}.values())
    return unique, missing


@dataclass
class UpscaleReport:
    """Outcome of a batch: what was written and which inputs failed, with the one-line reason."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def upscale_files(
    upscaler: Upscaler,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    fmt: str | None = None,
    progress: bool = True,
    on_done: Callable[[Path, Path], None] | None = None,
) -> UpscaleReport:
    """Upscale every image named by `inputs` into `out_dir`, mirroring names; one bad file spoils nothing.

    Problems with a single file (unreadable, not an image, would overwrite its source) are collected in
    the report instead of raised; raises `DataError` only when the inputs name no file at all.
    """
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    out_dir = Path(out_dir)
    jobs, missing = collect_inputs(inputs)
    report = UpscaleReport(failed=[(path, reason) for path, reason in missing])
    if not jobs:
        raise DataError(f"no input images found in {', '.join(map(str, inputs))}")
    targets: dict[Path, Path] = {}
    for source, relative in jobs:
        target = output_path(source, relative, out_dir, fmt)
        if target in targets:
            raise ConfigError(f"{source} and {targets[target]} would both be written to {target}")
        targets[target] = source
    for target, source in _progress(list(targets.items()), progress):
        try:
            if target.resolve() == source.resolve():
                raise ImageError(f"{source}: output would overwrite the input; choose another -o folder")
            upscale_file(upscaler, source, target)
        except (RepsrError, OSError) as error:
            report.failed.append((source, str(error)))
            continue
        except MemoryError:  # decoding a huge input
            report.failed.append((source, f"{source}: not enough memory to read and upscale this image"))
            continue
        report.written.append(target)
        if on_done is not None:
            on_done(source, target)
    return report


def _progress(jobs: list[tuple[Path, Path]], enabled: bool) -> Iterable[tuple[Path, Path]]:
    if not enabled:
        return jobs
    from tqdm import tqdm

    return tqdm(jobs, desc="upscale", unit="img", leave=False)
