"""Writing files so that a reader never sees half of one: the one atomic writer of repsr.

`atomic_write(path, write)` lets `write` fill a temporary file in `path`'s folder, flushes it to disk
(fsync), gives it the permissions a plain `open()` would (not mkstemp's 0600), and renames it over
`path`. A crash or kill leaves either the old file or the new one, plus at worst a hidden `.NAME.*.tmp`
file; two processes writing the same path at once each rename a complete file. Used for models,
checkpoints, exports, result files, the data cache, videos and the fused kernel's builds.

Failures raise `repsr.util.errors.WriteError` (a `RepsrError` and an `OSError`) naming the path and the cause,
"disk full" for a full disk, including torch's C++ writer that reports it as a `RuntimeError`.
`check_target` tells before long work starts whether a path can be written at all.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from repsr.util.errors import RepsrError, WriteError, describe_os_error, first_line

# Below this much free space, a write error that does not say why (torch's C++ writer) is a full disk.
_NEARLY_FULL = 1 << 20
# How library writers that raise their own exception types describe a failed write.
_WRITE_WORDS = ("write", "no space left", "storagefull", "ioerror")
_FULL_WORDS = ("no space left", "storagefull", "disk full")


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask would set it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: setting and restoring the umask per write would race with threads creating files.
_UMASK = _current_umask()


def atomic_write(
    path: str | Path, write: Callable[[str], object], *, keep_suffix: bool = False, replace: bool = True
) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path`: a crash never leaves a half-written file.

    `write` receives the temporary file's path as a string (open it, or pass it to a library's save);
    the parent folder is created if missing. `keep_suffix` ends the temporary name in `path`'s own
    extension (`.NAME.*.partial.mp4`) for writers that pick the format by it (video muxers). On any error
    the temporary file is removed and the error propagates; `path` is then unchanged. `replace=False`:
    the file takes its name only if no file has it by then (a hard link, which fails on an existing name),
    else `WriteError`: a file another process wrote meanwhile (two runs on one output folder) is kept.
    """
    path = Path(path)
    suffix = f".partial{path.suffix}" if keep_suffix else ".tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, RepsrError):  # WriteError, or a writer's own check of what it wrote
            raise
        if isinstance(error, OSError):
            raise _write_error(path, error) from None
        if isinstance(error, Exception) and any(word in str(error).lower() for word in _WRITE_WORDS):
            raise _write_error(path, error) from None  # torch's C++ writer, safetensors' Rust writer
        raise


def _publish_new(tmp: str, path: Path) -> None:
    """Give `tmp` the name `path` unless a file (or link) has it: atomically by a hard link, else (a
    file system without hard links) by a check just before the rename."""
    taken = WriteError(
        f"{path}: appeared while this run was writing it (another run on the same output?); kept, "
        "not replaced",
        errno.EEXIST,
    )
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise taken from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        if os.path.lexists(path):
            raise taken from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _write_error(path: Path, error: BaseException) -> WriteError:
    """`WriteError` naming `path` and the cause in one line."""
    code = getattr(error, "errno", None)
    if not isinstance(error, OSError) and (
        any(word in str(error).lower() for word in _FULL_WORDS) or _free_bytes(path.parent) < _NEARLY_FULL
    ):
        code = errno.ENOSPC
    if code in (errno.ENOSPC, errno.EDQUOT):
        cause = "disk full: no space left on the device"
    elif isinstance(error, OSError):
        cause = describe_os_error(error)
    else:
        cause = first_line(error)
    return WriteError(f"{path}: cannot write ({cause})", code)


def _free_bytes(folder: Path) -> int:
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):
        return _NEARLY_FULL
    return stats.f_bavail * stats.f_frsize


def check_target(
    path: str | Path, *, what: str = "output", inputs: Iterable[str | Path] = (), overwrite: bool = False
) -> Path:
    """Raise `WriteError` now if `path` cannot be written later: it is a folder, a parent is a file, the
    nearest existing parent folder is not writable, it is one of this run's `inputs` (a run never
    writes over what it reads), or it exists and `overwrite` is not given (a run never replaces a file
    it did not create unless asked). Called before long work (evaluation, export, deploy)."""
    path = Path(path)
    for source in map(Path, inputs):
        if source.exists() and path.exists() and os.path.samefile(source, path):
            raise WriteError(
                f"{path}: the {what} would overwrite its input {source}; choose another output name",
                errno.EEXIST,
            )
    if path.is_dir():
        raise WriteError(f"{path}: the {what} path is a folder, not a file", errno.EISDIR)
    if (path.exists() or path.is_symlink()) and not overwrite:  # a dangling link is not this run's either
        raise WriteError(
            f"{path}: exists already; the {what} does not replace it (--overwrite, or overwrite=True)",
            errno.EEXIST,
        )
    _check_nearest_folder(path, path.parent, f"write the {what}", what)
    return path


def check_links(path: str | Path, *, what: str = "output") -> None:
    """Raise `WriteError` if `path` or a folder above it is a symlink that leads nowhere (a loop, or a
    link to something missing): creating folders through it fails with a bare FileExistsError, and
    resolving it (a loop) with a RuntimeError."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():
            raise WriteError(
                f"{path}: the {what} path goes through {probe}, a symlink that leads nowhere (a loop, or "
                "its target is missing)",
                errno.ELOOP,
            )
        probe = probe.parent


def _check_nearest_folder(path: Path, start: Path, action: str, what: str) -> None:
    """The nearest existing folder at or above `start` must be a writable folder (not a file), reached
    through no dangling or looping symlink."""
    check_links(start, what=what)
    probe = start
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise WriteError(f"{path}: cannot {action} ({probe} is a file, not a folder)", errno.ENOTDIR)
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        raise WriteError(f"{path}: cannot write the {what} ({probe} is not writable)", errno.EACCES)


def atomic_write_stream(path: str | Path, write: Callable[[object], object]) -> None:
    """`atomic_write` for writers that take an open binary file: `write(handle)`."""

    def to_file(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    atomic_write(path, to_file)


def check_folder(path: str | Path, *, what: str = "output folder") -> Path:
    """Raise `WriteError` now if folder `path` cannot be created or written: it is a file, a parent is a
    file, or the nearest existing parent is not writable. Called before long work (training)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteError(f"{path}: the {what} is a file, not a folder", errno.ENOTDIR)
    _check_nearest_folder(path, path, f"create the {what}", what)
    return path
