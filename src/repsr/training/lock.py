"""One training run per run folder: an exclusive lock on `RUN/.lock`, released on exit.

Two `repsr train` processes writing the same `--out` at once interleave `train.log`, lose rows of
`metrics.csv` and mix one run's `config.yaml` with the other's weights. `RunLock` makes the second one
stop before it writes anything, naming the process that holds the folder.

The lock is an OS file lock (`fcntl.flock`) on `RUN/.lock`: the kernel drops it when the holder exits
in any way (crash, kill -9, power loss), so a lock can never outlive its process. The file itself stays
behind after a kill with the dead holder's pid in it: the next run finds it unlocked, reports it as a
stale lock and takes it over. Where `fcntl` is missing (Windows) the file is created exclusively
instead, and a file whose pid no longer runs on this host is the stale case.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from repsr.util.errors import ConfigError

LOCK_NAME = ".lock"


def _holder_text() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _stale(path: Path, holder: str) -> str:
    return f"{path}: stale lock of a run that did not exit cleanly ({holder.strip()}); taken over"


def _pid_of(text: str) -> int | None:
    parts = text.split()
    try:
        return int(parts[1]) if len(parts) > 1 and parts[0] == "pid" else None
    except ValueError:
        return None


class RunLock:
    """Exclusive lock on a run folder. `acquire()` raises `ConfigError` when another live process holds
    it and returns a one-line note when it took over a stale lock (else None); `release()` frees it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _refuse(self, holder: str) -> ConfigError:
        return ConfigError(
            f"{self.folder}: another training run is writing this folder ({holder.strip() or 'unknown'}); "
            "wait for it to finish, or give this run another --out"
        )

    def acquire(self) -> str | None:
        if self._fd is not None:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self._acquire_exclusive_file()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 300, 0).decode("utf-8", "replace")
                os.close(fd)
                raise self._refuse(holder) from None
            except OSError:  # a file system without locks (some network mounts): go on unlocked
                os.close(fd)
                return f"{self.path}: this file system does not support locks; not locked"
            try:  # the holder may have released and removed the file between our open and lock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.pread(fd, 300, 0).decode("utf-8", "replace").strip()
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
        self._fd = fd
        return (
            f"{self.path}: stale lock of a run that did not exit cleanly ({previous}); taken over"
            if previous
            else None
        )

    def _acquire_exclusive_file(self) -> str | None:  # pragma: no cover - Windows
        note = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.path.read_text(errors="replace")
                pid = _pid_of(holder)
                alive = pid is not None and socket.gethostname() in holder and _pid_alive(pid)
                if alive or pid is None:
                    raise self._refuse(holder) from None
                self.path.unlink(missing_ok=True)
                note = _stale(self.path, holder)
                continue
            os.write(fd, (_holder_text() + "\n").encode())
            self._fd = fd
            return note
        raise self._refuse(self.path.read_text(errors="replace"))

    def release(self) -> None:
        """Remove the lock file and free the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _pid_alive(pid: int) -> bool:  # pragma: no cover - Windows fallback
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
