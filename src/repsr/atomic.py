"""Writing files so that a reader never sees half of one: the one atomic writer of repsr.

`atomic_write(path, write)` lets `write` fill a temporary file in `path`'s folder, flushes it to disk
(fsync), gives it the permissions a plain `open()` would (not mkstemp's 0600), and renames it over
`path`. A crash or kill leaves either the old file or the new one, plus at worst a hidden `.NAME.*.tmp`
file; two processes writing the same path at once each rename a complete file. Used for models,
checkpoints, exports, result files and the data cache.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path`: a crash never leaves a half-written file.

    `write` receives the temporary file's path as a string (open it, or pass it to a library's save);
    the parent folder is created if missing. On any error the temporary file is removed and the error
    propagates; `path` is then unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_stream(path: str | Path, write: Callable[[object], object]) -> None:
    """`atomic_write` for writers that take an open binary file: `write(handle)`."""

    def to_file(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    atomic_write(path, to_file)
