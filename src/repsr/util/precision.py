"""The numeric precisions repsr runs a network in: their names and torch dtypes, declared once here."""

from __future__ import annotations

import enum

import torch

from repsr.util.errors import ConfigError


class Precision(str, enum.Enum):
    """The numeric precision an `Upscaler` runs in (`auto`: the decider of `repsr.inference.backends`
    picks by measurement)."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        """`Precision` from its name (`auto`, `fp32`, `bf16`, `fp16`, `int8`); `ConfigError` otherwise."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise ConfigError(f"precision must be one of {names}, got {value!r}") from None

    @property
    def dtype(self) -> torch.dtype | None:
        """The torch dtype of the network's arithmetic (None for `auto` and `int8`)."""
        return _DTYPES.get(self.value)


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = tuple(p.value for p in Precision)  # what `--precision` accepts
NUMERIC_PRECISIONS = PRECISIONS[1:]  # what a network can run in (`auto` aside)

__all__ = ["NUMERIC_PRECISIONS", "PRECISIONS", "Precision"]
