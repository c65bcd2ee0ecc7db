"""Synthetic smooth patches (flat colours and ramps) mixed into training: content, LR/HR agreement, and
that the patches they do not replace stay exactly as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from repsr.data.datasets import TrainPatches
from repsr.data.smooth import KINDS, smooth_hr, smooth_pair
from repsr.image.io import write_image

SKIMAGE_DATA = Path(__import__("skimage.data").data.__file__).parent


@pytest.fixture
def hr_folder(tmp_path) -> Path:
    from repsr.image.io import read_image

    folder = tmp_path / "hr"
    write_image(folder / "a.png", read_image(SKIMAGE_DATA / "astronaut.png").rgb[:, 60:124, 150:222])
    write_image(folder / "b.png", read_image(SKIMAGE_DATA / "chelsea.png").rgb[:, 80:140, 120:180])
    return folder


def test_smooth_images_are_flat_or_gentle_and_cover_dark_bright_and_saturated():
    rng = np.random.default_rng(0)
    flats = steps = 0
    extremes = set()
    for _ in range(300):
        img = smooth_hr(rng, 64, 64).astype(np.int32)
        assert img.shape == (64, 64, 3) and img.min() >= 0 and img.max() <= 255
        step = max(np.abs(np.diff(img, axis=0)).max(), np.abs(np.diff(img, axis=1)).max())
        assert step <= 3  # at most 1.5 levels a pixel along a ramp (+ rounding): never an edge
        flats += int(step == 0)
        steps += int(step > 0)
        extremes.update(int(v) for v in np.unique(img) if v in (0, 255))
    assert flats > 50 and steps > 150  # all kinds occur (flat is one of KINDS)
    assert extremes == {0, 255} and len(KINDS) == 3


def test_smooth_pair_lr_is_the_bicubic_of_its_hr_without_border_effects():
    rng = np.random.default_rng(1)
    for scale in (2, 3, 4):
        lr, hr = smooth_pair(rng, 16, scale)
        assert lr.shape == (16, 16, 3) and hr.shape == (16 * scale, 16 * scale, 3)
        assert lr.dtype == hr.dtype == np.uint8
        # on a smooth image the bicubic LR is the HR's box mean to within rounding, up to the edges
        box = F.avg_pool2d(torch.from_numpy(hr.astype(np.float64)).permute(2, 0, 1)[None], scale)
        assert np.abs(box[0].permute(1, 2, 0).numpy() - lr).max() <= 1.5


def test_smooth_share_replaces_that_share_and_leaves_the_other_patches_exactly_alone(hr_folder, tmp_path):
    cache = tmp_path / "cache"
    plain = TrainPatches(hr_folder, 2, 12, cache_dir=cache, channel_shuffle=True)
    mixed = TrainPatches(hr_folder, 2, 12, cache_dir=cache, channel_shuffle=True, smooth_share=0.3)
    replaced = 0
    for key in range(200):
        (lr0, hr0), (lr1, hr1) = plain[key], mixed[key]
        if torch.equal(lr0, lr1) and torch.equal(hr0, hr1):
            continue
        replaced += 1
        assert hr1.shape == hr0.shape and lr1.shape == lr0.shape
        assert hr1.diff(dim=-1).abs().max() <= 3.5 / 255  # smooth content
    assert 40 <= replaced <= 80  # about 30% of 200
    assert all(torch.equal(a, b) for a, b in zip(mixed[7], mixed[7], strict=True))  # deterministic per key


def test_smooth_share_must_be_a_share(hr_folder, tmp_path):
    with pytest.raises(ValueError, match="smooth_share"):
        TrainPatches(hr_folder, 2, 12, cache_dir=tmp_path / "cache", smooth_share=1.2)
