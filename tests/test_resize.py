"""MATLAB-compatible bicubic imresize: hand-computed weights, invariants, and a slow reference port."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repsr.image.resize import cubic, imresize, output_size, resize_weights


def _matlab_cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def _reference_resize_1d(signal: np.ndarray, scale: float, out_len: int) -> np.ndarray:
    """Straight loop port of MATLAB's imresize 'contributions' + resizeAlongDim (1-based maths)."""
    in_len = len(signal)
    width = 4.0
    aa = scale < 1
    if aa:
        width = width / scale
    out = np.zeros(out_len)
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = math.ceil(width) + 2
        idx = [left + k for k in range(taps)]
        if aa:
            w = [scale * _matlab_cubic(scale * (u - j)) for j in idx]
        else:
            w = [_matlab_cubic(u - j) for j in idx]
        total = sum(w)
        acc = 0.0
        for j, wj in zip(idx, w, strict=True):
            # aux = [1:n, n:-1:1]; indices = aux(mod(indices - 1, 2n) + 1)
            m = (j - 1) % (2 * in_len)
            src = m if m < in_len else 2 * in_len - 1 - m
            acc += wj / total * signal[src]
        out[x - 1] = acc
    return out


def _reference_imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """(H, W) numpy image, rows then columns, like MATLAB for equal scales."""
    h, w = img.shape
    oh, ow = math.ceil(h * scale - 1e-9), math.ceil(w * scale - 1e-9)
    tmp = np.stack([_reference_resize_1d(img[:, j], scale, oh) for j in range(w)], axis=1)
    return np.stack([_reference_resize_1d(tmp[i, :], scale, ow) for i in range(oh)], axis=0)


def test_cubic_kernel_known_values():
    x = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5])
    expected = [1.0, 0.8671875, 0.5625, 0.2265625, 0.0, -0.0703125, -0.0625, -0.0234375, 0.0, 0.0]
    np.testing.assert_allclose(cubic(x), expected, atol=0)
    np.testing.assert_allclose(cubic(-x), expected, atol=0)


def test_downscale_by_two_weights_by_hand():
    # Antialiased kernel cubic(d/2)/2 at d = +-0.5, 1.5, 2.5, 3.5 (its taps sum to exactly 1).
    k05, k15, k25, k35 = 0.43359375, 0.11328125, -0.03515625, -0.01171875
    m = resize_weights(8, 4, 0.5)
    # Output 1: u = 1.5, taps at 1-based -2..5; -2, -1, 0 mirror to 3, 2, 1.
    np.testing.assert_allclose(m[0], [k15 + k05, k25 + k05, k35 + k15, k25, k35, 0, 0, 0], atol=1e-15)
    # Output 2: u = 3.5, taps 0..7; 0 mirrors to 1.
    np.testing.assert_allclose(m[1], [k35 + k25, k15, k05, k05, k15, k25, k35, 0], atol=1e-15)
    # Output 3: u = 5.5, taps 2..9; 9 mirrors to 8.
    np.testing.assert_allclose(m[2], [0, k35, k25, k15, k05, k05, k15, k25 + k35], atol=1e-15)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-15)
    # The same through imresize on a 1 x 8 image (a single row is mirrored onto itself).
    row = torch.arange(1.0, 9.0, dtype=torch.float64).reshape(1, 1, 8)
    out = imresize(row, 0.5)
    assert out.shape == (1, 1, 4)
    np.testing.assert_allclose(out[0, 0].numpy(), m @ np.arange(1.0, 9.0), atol=1e-13)


def test_upscale_by_two_weights_by_hand():
    a, b, c, d = -0.0234375, 0.2265625, 0.8671875, -0.0703125  # cubic at 1.75, 0.75, 0.25, 1.25
    m = resize_weights(6, 12, 2.0)
    # x = 1: u = 0.75, taps -2..3 -> (-1 -> 2), (0 -> 1).
    np.testing.assert_allclose(m[0], [b + c, a + d, 0, 0, 0, 0], atol=1e-15)
    # x = 2: u = 1.25, taps -1..4 -> (0 -> 1).
    np.testing.assert_allclose(m[1], [d + c, b, a, 0, 0, 0], atol=1e-15)
    # x = 5: u = 2.75, interior.
    np.testing.assert_allclose(m[4], [a, b, c, d, 0, 0], atol=1e-15)
    # x = 6: u = 3.25, interior, mirror image of the weights.
    np.testing.assert_allclose(m[5], [0, d, c, b, a, 0], atol=1e-15)


def test_ramp_stays_linear_inside():
    n = 32
    ramp = torch.arange(1.0, n + 1, dtype=torch.float64).reshape(1, 1, n)
    down = imresize(ramp, 0.5)[0, 0].numpy()
    x = np.arange(1, n // 2 + 1)
    inside = slice(2, 14)  # outputs whose taps stay inside the signal (u - 3.5 >= 1, u + 3.5 <= n)
    np.testing.assert_allclose(down[inside], (2 * x - 0.5)[inside], atol=1e-12)
    assert abs(down[0] - 1.5) > 1e-3  # the mirrored border bends the ramp, as MATLAB's does
    up = imresize(ramp, 2.0)[0, 0].numpy()
    x = np.arange(1, 2 * n + 1)
    np.testing.assert_allclose(up[4:-4], (x / 2 + 0.25)[4:-4], atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3, 4, 0.7, 1.5])
def test_matches_reference_port(scale):
    rng = np.random.default_rng(0)
    img = rng.random((13, 17))
    got = imresize(torch.from_numpy(img)[None], scale)[0].numpy()
    want = _reference_imresize(img, scale)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3, 4, 0.37])
def test_constant_stays_constant(scale):
    img = torch.full((3, 23, 31), 0.37)
    out = imresize(img, scale)
    assert out.shape == (3, output_size(23, scale), output_size(31, scale))
    torch.testing.assert_close(out, torch.full_like(out, 0.37), atol=2e-6, rtol=0)


def test_separable_and_order_free():
    rng = np.random.default_rng(1)
    col, row = rng.random(20), rng.random(28)
    img = torch.from_numpy(np.outer(col, row))[None]
    out = imresize(img, 1 / 4)[0].numpy()
    col_r = imresize(torch.from_numpy(col).reshape(1, 20, 1), (1 / 4, 1))[0, :, 0].numpy()
    row_r = imresize(torch.from_numpy(row).reshape(1, 1, 28), (1, 1 / 4))[0, 0].numpy()
    np.testing.assert_allclose(out, np.outer(col_r, row_r), atol=1e-13)
    full = torch.from_numpy(rng.random((2, 20, 28)))
    two_pass = imresize(imresize(full, (1 / 3, 1)), (1, 1 / 3))
    np.testing.assert_allclose(two_pass.numpy(), imresize(full, 1 / 3).numpy(), atol=1e-13)


def test_output_size_is_matlab_ceil():
    assert imresize(torch.rand(3, 10, 11), 1 / 4).shape == (3, 3, 3)
    assert imresize(torch.rand(3, 10, 11), 1 / 3).shape == (3, 4, 4)
    assert imresize(torch.rand(1, 7, 5), 2.5).shape == (1, 18, 13)
    assert output_size(1356, 1 / 3) == 452 and output_size(2040, 1 / 3) == 680
    assert output_size(678, 3) == 2034


def test_batched_dtypes_and_identity():
    x = torch.rand(2, 3, 24, 20, dtype=torch.float64)
    batched = imresize(x, 1 / 2)
    assert batched.shape == (2, 3, 12, 10)
    torch.testing.assert_close(batched[1], imresize(x[1], 1 / 2))
    f32 = imresize(x.float(), 1 / 2)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), batched, atol=1e-5, rtol=0)
    half = imresize(x.half(), 2)
    assert half.dtype == torch.float16 and half.shape == (2, 3, 48, 40)
    torch.testing.assert_close(imresize(x, 1), x, atol=1e-14, rtol=0)


def test_down_then_up_is_close_on_smooth_content():
    yy, xx = torch.meshgrid(torch.linspace(0, 3, 64), torch.linspace(0, 2, 48), indexing="ij")
    img = (0.5 + 0.4 * torch.sin(yy) * torch.cos(xx))[None].double()
    back = imresize(imresize(img, 1 / 4), 4)
    assert (back - img)[..., 8:-8, 8:-8].abs().max() < 0.01


def test_rejects_bad_input():
    with pytest.raises(TypeError):
        imresize(torch.zeros(3, 8, 8, dtype=torch.uint8), 0.5)
    with pytest.raises(TypeError):
        imresize(np.zeros((3, 8, 8)), 0.5)
    with pytest.raises(ValueError):
        imresize(torch.zeros(3, 8, 8), 0)
    with pytest.raises(ValueError):
        imresize(torch.zeros(8), 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.rand(2, 3, 40, 36, dtype=torch.float64)
    for scale in (1 / 4, 3):
        torch.testing.assert_close(imresize(x.cuda(), scale).cpu(), imresize(x, scale))
        torch.testing.assert_close(imresize(x.float().cuda(), scale).cpu(), imresize(x.float(), scale))
