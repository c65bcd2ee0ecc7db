"""Errors a user can fix. The CLI prints them as one line; the API raises them typed."""

from __future__ import annotations


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name): for one-line error reports."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


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


class DependencyError(RepsrError):
    """An optional package the requested feature needs is not installed."""


class EquivalenceError(ModelFileError):
    """A converted model (merged, exported, another backend) that does not compute what its source does."""
