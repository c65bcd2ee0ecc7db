"""Evaluate a model on datasets with the SR literature's protocol, next to the bicubic baseline.

Protocol (`repsr.image.metrics`): outputs rounded to 8-bit levels, `crop_border = scale` pixels removed on
every side, PSNR/SSIM on the MATLAB BT.601 Y channel. The bicubic row is MATLAB bicubic upscaling of the same
LR, measured the same way, so every table carries its own sanity check (x4 Set5 bicubic: 28.42 dB).

A Y-channel model is measured on the RGB image it produces (its Y plus bicubic Cb/Cr, what `repsr
upscale` writes); its Y channel is the model's own, so the Y-PSNR is the model's.

`evaluate` is the one measurement; `repsr eval`, the studies and validation during training all call
it. Training validates with `validation_metrics`: `evaluate` on the deployed (re-parameterized) form,
without the bicubic row, as flat `{"NAME/psnr": ..., "NAME/ssim": ...}` for the run log. Evaluating the
training form in `train()` mode would normalize each image with its own statistics and hide exactly the
artifacts the BN switch is about; the plain network shows what a user of the delivered model gets.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from repsr.inference import Upscaler, upscale_rgb
from repsr.util.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SAMPLE_NAME = "sample"
_CACHE_BYTES = 256 * 2**20  # images kept decoded in memory per cached set (re-read beyond that)


@dataclass
class ImageScore:
    """Scores of one image: the model's and the bicubic baseline's."""

    name: str
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float


@dataclass
class DatasetScore:
    """Per-image scores of one dataset; the means are the table's numbers."""

    name: str
    images: list[ImageScore] = field(default_factory=list)

    def mean(self, key: str) -> float:
        """Mean of `psnr`, `ssim`, `bicubic_psnr` or `bicubic_ssim` over the images."""
        values = [getattr(image, key) for image in self.images]
        return sum(values) / len(values) if values else float("nan")


@dataclass
class EvalResults:
    """What `evaluate` returns: the protocol used and one `DatasetScore` per dataset, in order."""

    model: str
    scale: int
    crop_border: int
    y_channel: bool
    datasets: list[DatasetScore] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: protocol, per-dataset means and per-image values."""
        data = asdict(self)
        for entry, dataset in zip(data["datasets"], self.datasets, strict=True):
            entry["mean"] = {k: dataset.mean(k) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
            entry["count"] = len(dataset.images)
        return data

    def metrics(self) -> dict[str, float]:
        """Mean PSNR and SSIM per dataset as `{"NAME/psnr": ..., "NAME/ssim": ...}` (the run log's keys)."""
        results: dict[str, float] = {}
        for dataset in self.datasets:
            results[f"{dataset.name}/psnr"] = dataset.mean("psnr")
            results[f"{dataset.name}/ssim"] = dataset.mean("ssim")
        return results

    def write_json(self, path: str | Path) -> None:
        """Write `to_dict()` to `path` (atomically)."""
        from repsr.util.atomic import atomic_write

        text = json.dumps(self.to_dict(), indent=2)
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def _prediction(upscaler: Upscaler, lr: Tensor, hr: Tensor) -> Tensor:
    """The model's output for `lr`, in the channels `hr` has."""
    channels = lr.shape[0]
    if channels == upscaler.in_channels:
        return upscaler(lr)
    if channels == 3 and upscaler.in_channels == 1:
        return upscale_rgb(upscaler, lr)
    raise DataError(f"dataset gives {channels}-channel images; the model takes {upscaler.in_channels}")


def evaluate(
    model: nn.Module,
    datasets: Mapping[str, Iterable[Any]],
    *,
    device: str | torch.device = "auto",
    tile: int | str | None = "auto",
    crop_border: int | None = None,
    y_channel: bool = True,
    upscaler: Upscaler | None = None,
    progress: bool = False,
    baseline: bool = True,
) -> EvalResults:
    """PSNR/SSIM of `model` and of bicubic on each dataset (name -> iterable of `EvalPair`-like items
    with `.name`, `.lr`, `.hr`); `crop_border` defaults to the scale, metrics on Y by default.
    `baseline=False` skips the bicubic row (its fields are NaN), as validation during training does."""
    from repsr.image.metrics import min_image_side, psnr, ssim
    from repsr.image.resize import imresize

    upscaler = upscaler or Upscaler(model, device=device, tile=tile)
    scale = upscaler.scale
    border = scale if crop_border is None else crop_border
    results = EvalResults(model.spec.name, scale, border, y_channel)
    smallest = min_image_side(border)
    for name, pairs in datasets.items():
        score = DatasetScore(name)
        skipped = 0
        for pair in _progress(pairs, name, progress):
            lr, hr = pair.lr.float(), pair.hr.float()
            if tuple(hr.shape[-2:]) != (lr.shape[-2] * scale, lr.shape[-1] * scale):
                raise DataError(
                    f"{name}/{pair.name}: HR {tuple(hr.shape[-2:])} is not LR {tuple(lr.shape[-2:])} x{scale}"
                )
            if min(hr.shape[-2:]) < smallest:
                height, width = hr.shape[-2:]
                log.warning(
                    "%s/%s: skipped, HR %dx%d is below %dx%d (the SSIM window after a %d-pixel border)",
                    name,
                    pair.name,
                    width,
                    height,
                    smallest,
                    smallest,
                    border,
                )
                skipped += 1
                continue
            prediction = _prediction(upscaler, lr, hr).clamp(0, 1)
            bicubic = imresize(lr, scale).clamp(0, 1) if baseline else None
            score.images.append(
                ImageScore(
                    name=pair.name,
                    psnr=psnr(prediction, hr, border, y_channel=y_channel),
                    ssim=ssim(prediction, hr, border, y_channel=y_channel),
                    bicubic_psnr=psnr(bicubic, hr, border, y_channel=y_channel) if baseline else math.nan,
                    bicubic_ssim=ssim(bicubic, hr, border, y_channel=y_channel) if baseline else math.nan,
                )
            )
        if not score.images:
            why = f" ({skipped} too small to measure)" if skipped else ""
            raise DataError(f"dataset {name} has no measurable images{why}")
        results.datasets.append(score)
    return results


def validation_metrics(
    model: nn.Module,
    sets: Mapping[str, Iterable[Any]],
    *,
    crop_border: int,
    y_channel: bool,
    device: str | torch.device,
) -> dict[str, float]:
    """`evaluate` of the deployed (re-parameterized, untiled) form of `model` without the bicubic row,
    as `EvalResults.metrics()`: what training records at each validation."""
    from repsr.arch.network import reparameterize_model

    scores = evaluate(
        reparameterize_model(model),
        sets,
        device=device,
        tile=None,
        crop_border=crop_border,
        y_channel=y_channel,
        baseline=False,
    )
    return scores.metrics()


def _progress(pairs: Iterable[Any], name: str, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return pairs
    from tqdm import tqdm

    return tqdm(pairs, desc=name, unit="img", leave=False, total=_length(pairs))


def _length(pairs: Iterable[Any]) -> int | None:
    try:
        return len(pairs)  # type: ignore[arg-type]
    except TypeError:
        return None


def sample_dataset(scale: int) -> list[Any]:
    """The built-in validation photographs as evaluation pairs (LR by MATLAB bicubic, 8-bit rounded)."""
    from repsr.data.datasets import EvalSet
    from repsr.data.samples import sample_images

    return [EvalSet(path, scale)[0] for path in sample_images()["val"]]


def parse_named_folders(specs: Sequence[str], flag: str = "--data") -> dict[str, Path]:
    """`NAME=DIR` command-line arguments -> {NAME: DIR}; malformed or repeated names are `ConfigError`s."""
    folders: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"{flag} {spec!r}: expected NAME=DIR, e.g. Set5=datasets/Set5")
        if name in folders:
            raise ConfigError(f"{flag} {spec!r}: dataset name {name!r} given twice")
        folders[name] = Path(folder)
    return folders


class CachedEvalSet:
    """An evaluation set whose pairs are decoded once and kept in memory (up to a budget): training
    validates on the same images many times."""

    def __init__(self, name: str, sources: Iterable[Any]) -> None:
        self.name = name
        self.sources = list(sources)
        self._cache: list[Any] = []
        self._complete = False

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __iter__(self) -> Iterator[Any]:
        if self._complete:
            yield from self._cache
            return
        kept, budget = [], _CACHE_BYTES
        for source in self.sources:
            for pair in source:
                size = (pair.lr.numel() + pair.hr.numel()) * pair.hr.element_size()
                if budget >= size:
                    kept.append(pair)
                    budget -= size
                else:
                    budget = -1
                yield pair
        if budget >= 0:
            self._cache, self._complete = kept, True


def checked_eval_set(dataset: Any, crop_border: int) -> tuple[Any, list[str]]:
    """Read every image of an `EvalSet` once; returns a copy holding only the usable ones and a
    one-line reason for each skipped one (unreadable, not matching its LR, too small to measure)."""
    import copy

    from repsr.image.metrics import min_image_side
    from repsr.util.errors import ImageError

    keep: list[int] = []
    skipped: list[str] = []
    smallest = min_image_side(crop_border)
    for index, source in enumerate(dataset.hr_files):
        try:
            pair = dataset[index]
        except (ImageError, DataError) as error:
            skipped.append(str(error) if str(source) in str(error) else f"{source}: {error}")
            continue
        except OSError as error:
            skipped.append(f"{source}: cannot read ({error.strerror or error})")
            continue
        height, width = pair.hr.shape[-2:]
        if min(height, width) < smallest:
            skipped.append(
                f"{source}: {width}x{height} is smaller than {smallest}x{smallest} (SSIM window + border)"
            )
            continue
        keep.append(index)
    usable = copy.copy(dataset)
    usable.hr_files = [dataset.hr_files[i] for i in keep]
    if dataset.lr_files is not None:
        usable.lr_files = [dataset.lr_files[i] for i in keep]
    return usable, skipped


def build_eval_sets(
    folders: Mapping[str, Path],
    scale: int,
    *,
    sample: bool = True,
    cached: bool = False,
    checked: bool = False,
    crop_border: int | None = None,
) -> dict[str, Iterable[Any]]:
    """Named evaluation sets from folders (kept decoded in memory with `cached`); the built-in sample
    images as set `sample` when `folders` is empty and `sample` is set.

    `checked` (training): every image is read now; unusable images are skipped and unusable sets dropped,
    each with a one-line warning, and `DataError` is raised only when no folder has a usable image.
    Sets are RGB whatever the model: a Y model is measured on the RGB image it produces.
    """
    from repsr.data.datasets import EvalSet
    from repsr.util.errors import ImageError

    sets: dict[str, Iterable[Any]] = {}
    problems: list[str] = []
    for name, folder in folders.items():
        try:
            dataset = EvalSet(folder, scale, name=name)
        except (DataError, ImageError) as error:
            if not checked:
                raise
            problems.append(str(error))
            log.warning("validation set %s skipped: %s", name, error)
            continue
        if checked:
            dataset, skipped = checked_eval_set(dataset, scale if crop_border is None else crop_border)
            for reason in skipped:
                log.warning("validation set %s: skipped %s", name, reason)
            problems += skipped
            if not dataset.hr_files:
                log.warning("validation set %s skipped: no usable images in %s", name, folder)
                continue
        sets[name] = CachedEvalSet(name, [dataset]) if cached else dataset
    if folders and not sets and checked:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise DataError(f"no usable validation images in {', '.join(map(str, folders.values()))} ({shown})")
    if not sets and sample:
        sets[SAMPLE_NAME] = sample_dataset(scale)
    return sets


def open_datasets(specs: Sequence[str], scale: int) -> dict[str, Any]:
    """`NAME=DIR` arguments -> {name: EvalSet}; no arguments -> the built-in sample set as `sample`."""
    return build_eval_sets(parse_named_folders(specs), scale)


def format_table(results: EvalResults) -> str:
    """Datasets as columns, model and bicubic as rows: `PSNR / SSIM` in each cell."""
    names = [d.name for d in results.datasets]
    rows = [["", *names]]
    rows.append(
        [f"{results.model}", *(f"{d.mean('psnr'):.2f} / {d.mean('ssim'):.4f}" for d in results.datasets)]
    )
    rows.append(
        [
            "bicubic",
            *(f"{d.mean('bicubic_psnr'):.2f} / {d.mean('bicubic_ssim'):.4f}" for d in results.datasets),
        ]
    )
    counts = ", ".join(f"{d.name} {len(d.images)}" for d in results.datasets)
    return "\n".join([*table_lines(results, rows), f"images: {counts}"])


def table_lines(results: EvalResults, rows: list[list[str]]) -> list[str]:
    """The protocol line (scale, Y or RGB, border), then `rows` as left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    channel = "Y" if results.y_channel else "RGB"
    return [f"x{results.scale}, PSNR (dB) / SSIM on {channel}, border {results.crop_border}", *lines]
