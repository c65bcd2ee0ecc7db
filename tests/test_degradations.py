"""Real-world degradations, op by op, the recipe's presets and checks, and their place in training data."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repsr.data import degradations as dg
from repsr.data.datasets import TrainPatches
from repsr.image.io import write_image
from repsr.image.resize import imresize
from repsr.util.errors import ConfigError

SKIMAGE_DATA = Path(__import__("skimage.data").data.__file__).parent


def _photo(name: str = "astronaut.png", size: int = 128) -> np.ndarray:
    with Image.open(SKIMAGE_DATA / name) as im:
        arr = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(arr[100 : 100 + size, 150 : 150 + size])


def _moments(kernel: np.ndarray) -> np.ndarray:
    """Covariance matrix (x, y) of a kernel seen as a distribution over its grid."""
    x, y = dg._grid(kernel.shape[0])
    k = kernel.astype(np.float64)
    cxx, cyy, cxy = (k * x * x).sum(), (k * y * y).sum(), (k * x * y).sum()
    return np.array([[cxx, cxy], [cxy, cyy]])


@pytest.mark.parametrize("kind", ["gaussian", "generalized", "plateau"])
@pytest.mark.parametrize("size", [7, 13, 21])
def test_kernels_sum_to_one_with_the_asked_shape(kind, size):
    kernel = dg.blur_kernel(size, 1.3, 0.6, 0.7, kind=kind, beta=1.5)
    assert kernel.shape == (size, size) and kernel.dtype == np.float32
    assert math.isclose(float(kernel.sum(dtype=np.float64)), 1.0, abs_tol=1e-5)
    assert (kernel >= 0).all() and kernel[size // 2, size // 2] == kernel.max()  # peak at the centre


def test_gaussian_kernel_has_the_asked_covariance_and_rotation():
    sx, sy, theta = 2.0, 0.8, 0.5
    measured = _moments(dg.blur_kernel(31, sx, sy, theta))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    expected = rot @ np.diag([sx**2, sy**2]) @ rot.T
    np.testing.assert_allclose(measured, expected, atol=0.02)
    iso = _moments(dg.blur_kernel(31, 1.5, 1.5))
    np.testing.assert_allclose(iso, np.diag([2.25, 2.25]), atol=0.01)


def test_generalized_kernel_with_beta_one_is_the_gaussian_and_beta_changes_it():
    gaussian = dg.blur_kernel(15, 1.2, 0.9, 0.3)
    np.testing.assert_allclose(
        dg.blur_kernel(15, 1.2, 0.9, 0.3, kind="generalized", beta=1.0), gaussian, atol=1e-7
    )
    assert np.abs(dg.blur_kernel(15, 1.2, 0.9, 0.3, kind="generalized", beta=3.0) - gaussian).max() > 1e-3


def test_sinc_kernel_sums_to_one_and_is_a_low_pass_with_the_asked_cutoff():
    kernel = dg.sinc_kernel(21, math.pi / 3)
    assert kernel.shape == (21, 21) and math.isclose(float(kernel.sum(dtype=np.float64)), 1.0, abs_tol=1e-5)
    assert kernel.min() < 0  # the ringing lobes
    response = np.abs(np.fft.fft2(kernel, s=(256, 256)))
    freqs = np.fft.fftfreq(256) * 2 * math.pi
    passed, stopped = (
        response[0, np.abs(freqs) < math.pi / 6].mean(),
        response[0, np.abs(freqs) > math.pi / 2].mean(),
    )
    assert passed > 0.9 and stopped < 0.1


def test_blur_keeps_flat_images_and_a_delta_kernel_is_the_identity():
    flat = np.full((20, 30, 3), 0.4, dtype=np.float32)
    np.testing.assert_allclose(dg.blur(flat, dg.blur_kernel(9, 2.0, 1.0, 0.4)), flat, atol=1e-5)
    photo = _photo(size=40).astype(np.float32) / 255
    delta = np.zeros((5, 5), dtype=np.float32)
    delta[2, 2] = 1
    np.testing.assert_allclose(dg.blur(photo, delta), photo, atol=1e-5)
    blurred = dg.blur(photo, dg.blur_kernel(9, 2.0, 2.0))
    assert (
        blurred.shape == photo.shape
        and np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(photo, axis=1)).mean()
    )


@pytest.mark.parametrize("mode", dg.RESIZE_MODES)
def test_resize_gives_the_asked_size_and_keeps_flat_colour(mode):
    flat = np.full((40, 30, 3), 0.25, dtype=np.float32)
    out = dg.resize(flat, 17, 23, mode)
    assert out.shape == (17, 23, 3)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


@pytest.mark.parametrize("gray", [False, True])
def test_gaussian_noise_has_the_asked_std(gray):
    img = np.full((256, 256, 3), 0.5, dtype=np.float32)
    noisy = dg.add_gaussian_noise(img, 10.0, np.random.default_rng(0), gray=gray)
    noise = noisy - img
    assert math.isclose(float(noise.std()) * 255, 10.0, rel_tol=0.02) and abs(float(noise.mean())) < 1e-3
    same = np.allclose(noise[..., 0], noise[..., 1]) and np.allclose(noise[..., 1], noise[..., 2])
    assert same == gray


@pytest.mark.parametrize("gray", [False, True])
def test_poisson_noise_std_follows_the_signal(gray):
    rng = np.random.default_rng(1)
    for level in (0.1, 0.6):
        img = np.full((256, 256, 3), level, dtype=np.float32)
        noise = dg.add_poisson_noise(img, 2.0, rng, gray=gray) - img
        assert math.isclose(float(noise.std()), 2.0 * math.sqrt(level / 255), rel_tol=0.03)
        assert np.allclose(noise[..., 0], noise[..., 2]) == gray


def test_jpeg_honours_the_quality():
    img = _photo().astype(np.float32) / 255
    errors = [float(np.abs(dg.jpeg(img, q) - img).mean()) for q in (20, 50, 95)]
    assert errors[0] > errors[1] > errors[2] > 0
    buffer = io.BytesIO()  # the same bytes as Pillow's encoder at that quality, decoded
    Image.fromarray(_photo()).save(buffer, format="JPEG", quality=50)
    reference = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_array_equal(dg.jpeg(img, 50), reference)


@pytest.mark.parametrize("preset", ["general", "realesrgan"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_degrade_is_a_pure_function_of_its_generator(preset, scale):
    recipe = dg.Degradation(preset=preset).resolved()
    hr = _photo(size=24 * scale)
    outs = [dg.degrade(hr, scale, recipe, (seed,)) for seed in (7, 7, 8)]
    assert all(o.shape == (24, 24, 3) and o.dtype == np.uint8 for o in outs)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_degraded_lr_still_shows_the_picture():
    hr = _photo(size=128)
    clean = dg.resize(hr.astype(np.float32) / 255, 32, 32, "area")
    recipe = dg.Degradation(preset="general").resolved()
    for seed in range(8):
        lr = dg.degrade(hr, 4, recipe, (seed,)).astype(np.float32) / 255
        assert np.corrcoef(lr.ravel(), clean.ravel())[0, 1] > 0.8


def test_presets_resolve_and_overrides_win():
    general = dg.Degradation(preset="general", noise_sigma=[1.0, 5.0]).resolved()
    assert general.noise_sigma == [1.0, 5.0] and general.jpeg_quality == dg.PRESETS["general"]["jpeg_quality"]
    assert dg.Degradation().is_clean and not dg.Degradation(preset="general").is_clean


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"preset": "strong"}, "degradation.preset"),
        ({"blur_prob": 1.5}, "degradation.blur_prob"),
        ({"noise_sigma": [5.0, 1.0]}, "degradation.noise_sigma"),
        ({"resize_probs": [0.5, 0.2, 0.2]}, "degradation.resize_probs"),
        ({"jpeg_quality": [0.0, 50.0]}, "degradation.jpeg_quality"),
        ({"kernel_probs": [1.0]}, "degradation.kernel_probs"),
        # issue 28: values that passed the checks and then failed inside numpy/torch in a worker
        ({"kernel_size": [7.0, float("nan")]}, "degradation.kernel_size"),
        ({"kernel_size": [7.0, float("inf")]}, "degradation.kernel_size"),
        ({"kernel_size": [8.0, 8.0]}, "degradation.kernel_size"),
        ({"kernel_size": [0.0, 0.0]}, "degradation.kernel_size"),
        ({"kernel_size": [7.0, 100001.0]}, "degradation.kernel_size"),
        ({"blur_sigma": [0.0, 0.0]}, "degradation.blur_sigma"),
        ({"blur2_sigma": [float("nan"), 1.0]}, "degradation.blur2_sigma"),
        ({"resize_range": [1.0, 1e9]}, "degradation.resize_range"),
        ({"resize2_range": [0.5, float("inf")]}, "degradation.resize2_range"),
        ({"noise_sigma": [1.0, float("nan")]}, "degradation.noise_sigma"),
        ({"poisson_scale": [float("inf"), float("inf")]}, "degradation.poisson_scale"),
        ({"beta_generalized": [1.0, float("inf")]}, "degradation.beta_generalized"),
        ({"kernel_probs": [float("nan"), 0, 0, 0, 0, 1.0]}, "degradation.kernel_probs"),
        ({"resize_probs": [float("nan"), 0.5, 0.5]}, "degradation.resize_probs"),
        ({"noise_prob": "often"}, "degradation.noise_prob"),
    ],
)
def test_bad_recipes_are_refused_naming_the_key(fields, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as caught:
        dg.Degradation(**{"preset": "general", **fields}).resolved()
    assert "\n" not in str(caught.value)


def test_extreme_but_finite_recipes_still_degrade():
    """The checks refuse only what fails; huge noise, tiny sigmas and degenerate shapes still run."""
    hr = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    for fields in (
        {"blur_sigma": [1e-30, 1e-30], "blur_prob": 1.0},
        {"noise_sigma": [1e30, 1e30], "noise_prob": 1.0},
        {"beta_generalized": [0.0, 0.0], "beta_plateau": [1e6, 1e6]},
        {"resize_range": [0.0, 0.0], "kernel_size": [63.0, 63.0]},
    ):
        recipe = dg.Degradation(preset="realesrgan", **fields).resolved()
        with np.errstate(all="ignore"):
            assert dg.degrade(hr, 4, recipe, (1,)).shape == (8, 8, 3)


@pytest.fixture
def hr_folder(tmp_path) -> Path:
    folder = tmp_path / "hr"
    write_image(folder / "a.png", torch.from_numpy(_photo(size=96)).permute(2, 0, 1).float() / 255)
    write_image(folder / "b.png", torch.from_numpy(_photo("coffee.png", 80)).permute(2, 0, 1).float() / 255)
    return folder


def test_none_preset_reproduces_the_bicubic_patches_exactly(hr_folder, tmp_path):
    plain = TrainPatches(hr_folder, 4, 12, cache_dir=tmp_path / "cache")
    none = TrainPatches(
        hr_folder, 4, 12, cache_dir=tmp_path / "cache", degradation=dg.Degradation(preset="none")
    )
    for key in range(20):
        for a, b in zip(plain[key], none[key], strict=True):
            assert torch.equal(a, b)


def test_general_preset_degrades_most_patches_deterministically_and_keeps_hr(hr_folder, tmp_path):
    plain = TrainPatches(hr_folder, 4, 12, cache_dir=tmp_path / "cache")
    general = TrainPatches(
        hr_folder, 4, 12, cache_dir=tmp_path / "cache", degradation=dg.Degradation(preset="general")
    )
    changed = 0
    for key in range(60):
        (lr0, hr0), (lr1, hr1), (lr2, _) = plain[key], general[key], general[key]
        assert torch.equal(hr0, hr1) and torch.equal(lr1, lr2) and lr1.shape == lr0.shape
        changed += not torch.equal(lr0, lr1)
    clean_share = dg.PRESETS["general"]["clean_prob"]
    assert 60 * (1 - clean_share) * 0.6 < changed < 60  # most, not all: the clean share stays bicubic


# ------------------------------------------------------------------------------ the degraded benchmark


def test_conditions_are_seeded_and_named_conditions_apply_their_stages():
    from repsr.quality.degraded import CONDITIONS, degrade_lr

    hr = torch.from_numpy(_photo(size=96)).permute(2, 0, 1).float() / 255
    clean = degrade_lr(hr, 4, CONDITIONS["clean"], (0, 1))
    expected = torch.floor(imresize(hr.double(), 0.25).clamp(0, 1) * 255 + 0.5) / 255
    torch.testing.assert_close(clean, expected.float(), atol=0, rtol=0)
    for name in CONDITIONS:
        a = degrade_lr(hr, 4, CONDITIONS[name], (3, 9))
        assert a.shape == (3, 24, 24) and torch.equal(a, degrade_lr(hr, 4, CONDITIONS[name], (3, 9)))
        assert torch.equal(torch.round(a * 255), a * 255)  # 8-bit levels, as a decoded file
    noisy = degrade_lr(hr, 4, CONDITIONS["noise6"], (0, 1))
    assert abs(float((noisy - clean).std()) * 255 - 6.0) < 1.0
    assert not torch.equal(noisy, degrade_lr(hr, 4, CONDITIONS["noise6"], (0, 2)))


def test_unknown_condition_is_one_line():
    from repsr.quality.degraded import select_conditions

    with pytest.raises(ConfigError, match="unknown condition 'jpeg5'"):
        select_conditions(["jpeg5"])
    assert len(select_conditions(None)) >= 7


def test_a_new_draw_in_one_stage_leaves_every_other_stages_choices_alone(monkeypatch):
    """Each stage has its own generator (`stage_rng`): one more draw in the blur stage (as a new kernel
    parameter would add) must not move the resize, noise and JPEG choices of any patch."""
    recipe = dg.Degradation(preset="realesrgan", blur_prob=1.0, blur2_prob=1.0, noise_prob=1.0).resolved()
    hr = _photo(size=64)
    real_kernel, real_resize, real_jpeg = dg.random_kernel, dg.resize, dg.jpeg
    real_gauss, real_poisson = dg.add_gaussian_noise, dg.add_poisson_noise

    def choices(extra_draw: bool) -> list:
        seen: list = []

        def kernel(rng, *args):
            if extra_draw:
                rng.random()
            return real_kernel(rng, *args)

        monkeypatch.setattr(dg, "random_kernel", kernel)
        monkeypatch.setattr(
            dg,
            "resize",
            lambda img, h, w, mode: seen.append(("resize", h, w, mode)) or real_resize(img, h, w, mode),
        )
        monkeypatch.setattr(dg, "jpeg", lambda img, q: seen.append(("jpeg", q)) or real_jpeg(img, q))
        monkeypatch.setattr(
            dg,
            "add_gaussian_noise",
            lambda img, s, rng, gray: seen.append(("gauss", s, gray)) or real_gauss(img, s, rng, gray=gray),
        )
        monkeypatch.setattr(
            dg,
            "add_poisson_noise",
            lambda img, s, rng, gray: (
                seen.append(("poisson", s, gray)) or real_poisson(img, s, rng, gray=gray)
            ),
        )
        for seed in range(6):
            dg.degrade(hr, 4, recipe, (seed, 1))
        return seen

    before, after = choices(False), choices(True)
    assert len(before) > 12 and before == after
