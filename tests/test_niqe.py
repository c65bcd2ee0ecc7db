"""NIQE with corpus-fitted pristine statistics: the moment-matching fits, the score's direction on
photographs (blur and noise score worse), the shipped model and its file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from repsr.image.io import read_image
from repsr.image.resize import bicubic_lr, imresize
from repsr.quality import niqe as niqe_mod
from repsr.quality.niqe import NiqeModel, fit_pristine, luminance, niqe, niqe_features, niqe_rgb, pristine

SKIMAGE_DATA = Path(__import__("skimage.data").data.__file__).parent


def _photo(name: str = "astronaut.png", side: int = 384) -> torch.Tensor:
    rgb = read_image(SKIMAGE_DATA / name).rgb.double()
    return rgb[:, :side, :side]


def test_moment_matching_recovers_the_shapes_of_gaussian_and_laplacian_samples():
    rng = np.random.default_rng(0)
    shape, variance = niqe_mod._ggd(rng.normal(0, 2, 200_000))
    assert shape == pytest.approx(2.0, abs=0.05) and variance == pytest.approx(4.0, rel=0.02)
    shape, mean, left, right = niqe_mod._aggd(rng.laplace(0, 1, 200_000))
    assert (
        shape == pytest.approx(1.0, abs=0.05) and abs(mean) < 0.02 and left == pytest.approx(right, rel=0.03)
    )
    skewed = np.concatenate([-np.abs(rng.normal(0, 1, 100_000)), np.abs(rng.normal(0, 3, 100_000))])
    _, mean, left, right = niqe_mod._aggd(skewed)
    assert mean > 0.5 and right == pytest.approx(9 * left, rel=0.05)


def test_features_per_patch_and_the_size_error():
    y = luminance(_photo())
    features, sharpness = niqe_features(y)
    assert features.shape == (16, 36) and sharpness.shape == (16,) and np.isfinite(features).all()
    with pytest.raises(ValueError, match="96x96 pixels, got 80x90"):
        niqe_features(np.zeros((90, 80)))
    with pytest.raises(ValueError, match="at least 2 patches"):
        niqe(np.zeros((100, 100)))


@pytest.mark.parametrize("name", ["astronaut.png", "coffee.png"])
def test_blur_and_noise_score_worse_than_the_photograph(name):
    hr = _photo(name)
    blurred = imresize(bicubic_lr(hr, 4, 8), 4).clamp(0, 1)  # what bicubic x4 upscaling gives
    noisy = (
        hr + torch.randn(hr.shape, generator=torch.Generator().manual_seed(0), dtype=hr.dtype) * 10 / 255
    ).clamp(0, 1)
    original, soft, grainy = (niqe_rgb(x) for x in (hr, blurred, noisy))
    assert original + 2 < soft and original + 2 < grainy


def test_the_shipped_pristine_model_and_a_fit_round_trip(tmp_path):
    model = pristine()
    assert model.mean.shape == (36,) and model.cov.shape == (36, 36) and model.patches >= 200
    assert np.allclose(model.cov, model.cov.T) and np.linalg.eigvalsh(model.cov).min() > -1e-9
    fitted = fit_pristine([luminance(_photo(n)) for n in ("astronaut.png", "coffee.png", "chelsea.png")])
    assert 3 <= fitted.patches < 48  # only the sharpest patches of each image
    again = NiqeModel.from_json(fitted.to_json())
    assert np.array_equal(again.mean, fitted.mean) and np.array_equal(again.cov, fitted.cov)
    y = luminance(_photo("rocket.jpg", 288))
    assert niqe(y, again) == niqe(y, fitted) and niqe(y, fitted) != niqe(y)
