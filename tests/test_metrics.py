"""PSNR/SSIM protocol: hand cases, reference implementations, real photographs, input forms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from repsr.image.color import rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb
from repsr.image.io import read_image
from repsr.image.metrics import gaussian_window, psnr, ssim, to_uint8_levels
from repsr.image.pixels import quantize, to_integers
from repsr.image.resize import imresize

SKIMAGE_DATA = Path(__import__("skimage.data").data.__file__).parent


def _photo(name: str, scale: int) -> torch.Tensor:
    img = read_image(SKIMAGE_DATA / name).rgb
    h, w = img.shape[1] // scale * scale, img.shape[2] // scale * scale
    return img[:, :h, :w]


def _bicubic(hr: torch.Tensor, scale: int) -> torch.Tensor:
    lr = quantize(imresize(hr.double(), 1 / scale))  # LR saved as 8-bit, as DIV2K's
    return imresize(lr, scale).float()


def _as_uint8_hwc(img: torch.Tensor) -> np.ndarray:
    return to_integers(img.permute(1, 2, 0))  # the one pixel rule (tests/test_pixels.py)


def _reference_psnr_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """Written from the protocol's definition: uint8 HWC RGB, crop, unrounded Y, 0..255 PSNR."""

    def y(img):
        img = img[border:-border, border:-border].astype(np.float64)
        return 16.0 + img @ np.array([65.481, 128.553, 24.966]) / 255.0

    mse = np.mean((y(sr) - y(hr)) ** 2)
    return 10 * math.log10(255**2 / mse)


def _reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """ssim_index.m with an explicit 2-D window and direct windowed sums."""
    r = np.arange(11) - 5.0
    win = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    win /= win.sum()

    def filt(x):
        return np.einsum("ijkl,kl->ij", sliding_window_view(x, (11, 11)), win)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = filt(a), filt(b)
    s1, s2, s12 = filt(a * a) - mu1**2, filt(b * b) - mu2**2, filt(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def test_psnr_hand_cases():
    hr = np.full((4, 4), 100, np.uint8)
    sr = hr.copy()
    sr[1, 2] = 101
    assert psnr(sr, hr, 0) == pytest.approx(10 * math.log10(255**2 * 16))
    rgb_hr = np.full((4, 4, 3), 100, np.uint8)
    rgb_sr = rgb_hr.copy()
    rgb_sr[0, 0] = 101  # a gray step of one level moves Y by 219/255
    assert psnr(rgb_sr, rgb_hr, 0) == pytest.approx(10 * math.log10(255**2 * 16 / (219 / 255) ** 2))
    assert psnr(rgb_sr, rgb_hr, 0, y_channel=False) == pytest.approx(10 * math.log10(255**2 * 16))
    assert psnr(rgb_sr, rgb_hr, 1) == math.inf  # the differing pixel is in the cropped border
    assert psnr(rgb_hr, rgb_hr, 0) == math.inf


def test_float_outputs_are_rounded_first():
    hr = _photo("chelsea.png", 2)
    jitter = (torch.rand_like(hr) - 0.5) * 0.9 / 255  # stays within half a level
    assert psnr(quantize(hr) + jitter, hr, 2) == math.inf
    assert ssim(quantize(hr) + jitter, hr, 2) == pytest.approx(1.0, abs=1e-12)
    # Out-of-range floats are clamped like saving to PNG would.
    assert psnr(hr * 0 + 1.3, torch.ones_like(hr), 0) == math.inf


@pytest.mark.parametrize(
    "name,scale,lo,hi", [("astronaut.png", 4, 24.0, 30.0), ("chelsea.png", 2, 31.0, 38.0)]
)
def test_bicubic_psnr_on_photographs(name, scale, lo, hi):
    hr = _photo(name, scale)
    sr = _bicubic(hr, scale)
    value = psnr(sr, hr, scale)
    assert lo < value < hi
    reference = _reference_psnr_y(_as_uint8_hwc(sr), _as_uint8_hwc(hr), scale)
    assert value == pytest.approx(reference, abs=1e-9)
    # Same answer from uint8 HWC arrays, numpy floats and batched tensors.
    assert psnr(_as_uint8_hwc(sr), _as_uint8_hwc(hr), scale) == pytest.approx(value, abs=1e-9)
    assert psnr(sr.numpy(), hr[None], scale) == pytest.approx(value, abs=1e-9)
    # Rounding Y (older MATLAB scripts) moves the result only slightly.
    rounded = psnr(sr, hr, scale, round_y=True)
    assert rounded != value and abs(rounded - value) < 0.1
    assert psnr(sr, hr, scale, y_channel=False) < value  # chroma makes the RGB PSNR lower


def test_ssim_matches_reference_and_skimage():
    hr = _photo("astronaut.png", 4)[:, 100:196, 180:300]
    sr = _bicubic(hr, 4)
    value = ssim(sr, hr, 4)
    a = to_uint8_levels(sr)[:, 4:-4, 4:-4]
    b = to_uint8_levels(hr)[:, 4:-4, 4:-4]
    ya, yb = rgb_to_y(a / 255)[0] * 255, rgb_to_y(b / 255)[0] * 255
    assert value == pytest.approx(_reference_ssim(ya, yb), abs=1e-10)
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    sk = structural_similarity(
        ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255.0
    )
    assert value == pytest.approx(sk, abs=1e-6)
    rgb = ssim(sr, hr, 4, y_channel=False)
    per_channel = np.mean([_reference_ssim(a[c], b[c]) for c in range(3)])
    assert rgb == pytest.approx(per_channel, abs=1e-10)


def test_ssim_sane_values():
    hr = _photo("coffee.png", 3)
    assert ssim(hr, hr, 3) == pytest.approx(1.0, abs=1e-12)
    value = ssim(_bicubic(hr, 3), hr, 3)
    assert 0.6 < value < 0.98
    noisy = (hr + 0.2 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert ssim(noisy, hr, 3) < value
    assert gaussian_window().sum() == pytest.approx(1.0)


def test_color_roundtrip_and_matlab_values():
    rgb = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb)
    white, black = torch.ones(3, 1, 1), torch.zeros(3, 1, 1)
    assert rgb_to_y(white).item() * 255 == pytest.approx(235.0, abs=1e-4)
    assert rgb_to_y(black).item() * 255 == pytest.approx(16.0, abs=1e-4)
    red = np.array([1.0, 0, 0]).reshape(3, 1, 1)
    np.testing.assert_allclose(rgb_to_ycbcr(red).ravel() * 255, [81.481, 90.203, 240.0], atol=1e-9)


def test_input_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 9), 0)
    with pytest.raises(TypeError):
        psnr(np.zeros((8, 8, 3), np.int16), np.zeros((8, 8, 3), np.int16), 0)
    with pytest.raises(ValueError, match="leaves nothing"):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 8), 4)
    with pytest.raises(ValueError, match="SSIM needs"):
        ssim(torch.rand(3, 12, 12), torch.rand(3, 12, 12), 2)


def test_signal_psnr_is_unrounded_all_channels():
    import math

    from repsr.image.metrics import signal_psnr

    a = np.zeros((3, 4, 4))
    b = np.full((3, 4, 4), 0.001)  # 0.255 of a level: rounding would make it identical
    assert math.isclose(signal_psnr(a, b), 10 * math.log10(255.0**2 / 0.255**2))
    assert signal_psnr(a, a) == math.inf and signal_psnr(a - 1, a) == math.inf  # clipped to [0, 1]
