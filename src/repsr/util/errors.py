"""Errors a user can fix. The CLI prints them as one line; the API raises them typed."""

from __future__ import annotations


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name): for one-line error reports."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


def describe_os_error(error: OSError) -> str:
    """A short cause for a failed file operation; a full disk is named as such."""
    import errno

    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full: no space left on the device"
    if error.errno == errno.ENOTDIR:
        return "a parent of this path is a file, not a folder"
    return error.strerror or first_line(error)


class RepsrError(Exception):
    """Base class: a problem with the user's input, named in one line."""


class ModelFileError(RepsrError):
    """A model file that is missing, not a model, or does not match what it claims to be."""


class ImageError(RepsrError):
    """An image file that is missing, empty, truncated or not an image."""


class DataError(RepsrError):
    """A data folder with nothing usable in it."""


class ConfigError(RepsrError):
    """A configuration key that is unknown or has the wrong type or value."""


class TrainingError(RepsrError):
    """A run that cannot go on (non-finite loss, a merge that does not verify)."""


class DependencyError(RepsrError):
    """An optional package the requested feature needs is not installed."""


class EquivalenceError(ModelFileError):
    """A converted model (merged, exported, another backend) that does not compute what its source does."""


class WriteError(RepsrError, OSError):
    """A file that could not be written (full disk, a parent that is a file, permissions). Also an
    `OSError`, with the cause's `errno`, so handlers of OS errors keep catching it."""

    def __init__(self, message: str, errno_code: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_code
