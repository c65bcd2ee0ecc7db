"""Validation during training: `repsr.quality.evaluation` on the deployed form (see its docstring).

Kept as the names the trainer imports: `build_eval_sets` (folders cached in memory, the sample set
when none) and `evaluate` (= `repsr.quality.evaluation.validation_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from repsr.quality import evaluation
from repsr.quality.evaluation import CachedEvalSet
from repsr.quality.evaluation import validation_metrics as evaluate


def build_eval_sets(
    val: dict[str, Path], scale: int, *, sample: bool, crop_border: int | None = None
) -> dict[str, Iterable[Any]]:
    """`repsr.quality.evaluation.build_eval_sets` with the sets kept decoded in memory between validations,
    checked when the run starts: unusable images (unreadable, too small to measure) are named and
    skipped, a set with none usable is dropped, and `DataError` if nothing usable remains."""
    border = scale if crop_border is None else crop_border
    return evaluation.build_eval_sets(
        val, scale, sample=sample, cached=True, checked=True, crop_border=border
    )


__all__ = ["CachedEvalSet", "build_eval_sets", "describe", "evaluate"]


def describe(results: dict[str, float]) -> str:
    """`evaluate`'s results in words: "set PSNR dB / SSIM" per set."""
    return ", ".join(
        f"{k.split('/')[0]} {results[k]:.3f} dB / {results[k[:-4] + 'ssim']:.4f}"
        for k in results
        if k.endswith("/psnr")
    )
