"""Validation during training: the deployed form (merged, population statistics) on evaluation sets.

Evaluating the training form in `train()` mode would normalize each image with its own statistics and
hide exactly the artifacts the BN switch is about; evaluating the re-parameterized plain network shows
what a user of the delivered model gets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from repsr import evaluation
from repsr.data import EvalPair, EvalSet
from repsr.evaluation import sample_dataset
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


def build_eval_sets(val: dict[str, Path], scale: int, *, sample: bool) -> dict[str, Iterable[EvalPair]]:
    """Named evaluation sets from folders; the built-in sample images as set "sample" when `val` is empty.

    Sets are RGB whatever the model: a Y model is measured on the RGB image it produces, exactly as
    `repsr eval` measures it.
    """
    sets: dict[str, Iterable[EvalPair]] = {
        name: CachedEvalSet(name, [EvalSet(root, scale, name=name)]) for name, root in val.items()
    }
    if not sets and sample:
        sets[SAMPLE_SET] = sample_dataset(scale)
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

    Returns `{"NAME/psnr": ..., "NAME/ssim": ...}`, measured by `repsr.evaluation.evaluate`.
    """
    plain = reparameterize_model(model)
    scores = evaluation.evaluate(
        plain, sets, device=device, tile=None, crop_border=crop_border, y_channel=y_channel, baseline=False
    )
    results: dict[str, float] = {}
    for dataset in scores.datasets:
        results[f"{dataset.name}/psnr"] = dataset.mean("psnr")
        results[f"{dataset.name}/ssim"] = dataset.mean("ssim")
    return results
