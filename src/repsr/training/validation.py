"""Validation during training: the deployed form (merged, population statistics) on evaluation sets.

Evaluating the training form in `train()` mode would normalize each image with its own statistics and
hide exactly the artifacts the BN switch is about; evaluating the re-parameterized plain network shows
what a user of the delivered model gets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from repsr import data, metrics
from repsr.data import EvalPair, EvalSet
from repsr.network import RepNet, reparameterize_model

SAMPLE_SET = "sample"
_CACHE_BYTES = 256 * 2**20  # images kept decoded in memory per set (re-read beyond that)


class CachedEvalSet:
    """An evaluation set whose pairs are decoded once and kept in memory (up to a budget)."""

    def __init__(self, name: str, sources: Iterable[EvalSet]) -> None:
        self.name = name
        self.sources = list(sources)
        self._cache: list[EvalPair] = []
        self._complete = False

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __iter__(self) -> Iterator[EvalPair]:
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


def build_eval_sets(
    val: dict[str, Path], scale: int, *, y_channel: bool, sample: bool
) -> dict[str, CachedEvalSet]:
    """Named evaluation sets from folders; the built-in sample images as set "sample" when `val` is empty."""
    sets = {
        name: CachedEvalSet(name, [EvalSet(root, scale, name=name, y_channel=y_channel)])
        for name, root in val.items()
    }
    if not sets and sample:
        paths = data.sample_images()["val"]
        sources = [EvalSet(p, scale, name=p.stem, y_channel=y_channel) for p in paths]
        sets[SAMPLE_SET] = CachedEvalSet(SAMPLE_SET, sources)
    return sets


@torch.no_grad()
def evaluate(
    model: RepNet,
    sets: dict[str, Iterable[EvalPair]],
    *,
    crop_border: int,
    y_channel: bool,
    device: torch.device,
) -> dict[str, float]:
    """Mean PSNR and SSIM per set of the deployed (re-parameterized) form of `model`.

    Returns `{"NAME/psnr": ..., "NAME/ssim": ...}`. `y_channel` measures on Y (RGB models); a 1-channel
    model's output already is Y.
    """
    plain = reparameterize_model(model).to(device=device, dtype=torch.float32)
    results: dict[str, float] = {}
    for name, pairs in sets.items():
        psnrs, ssims = [], []
        for pair in pairs:
            sr = plain(pair.lr[None].to(device)).clamp_(0, 1)[0].cpu()
            psnrs.append(metrics.psnr(sr, pair.hr, crop_border, y_channel=y_channel))
            ssims.append(metrics.ssim(sr, pair.hr, crop_border, y_channel=y_channel))
        if psnrs:
            results[f"{name}/psnr"] = float(sum(psnrs) / len(psnrs))
            results[f"{name}/ssim"] = float(sum(ssims) / len(ssims))
    return results
