"""`--denoise auto`: the measures (`repsr.image.assess`), the choice (`repsr.models.auto_denoise`) and the
per-file runner (`repsr.inference.AutoDenoise`) that `repsr upscale` uses by default."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from repsr.cli import main
from repsr.data.samples import sample_images
from repsr.image.assess import Assessment, assess, jpeg_quality
from repsr.image.io import read_pixels
from repsr.inference import AutoDenoise, Upscaler, upscale_files, wants_auto
from repsr.models.auto_denoise import BLOCKINESS_RAMP, JPEG_RAMP, NOISE_RAMP, Ramp, auto_strength
from repsr.models.loader import load_model
from repsr.quality.degraded import CONDITIONS, degrade_lr, degraded_file
from repsr.util.errors import ConfigError

GENERAL_X2 = "repsr-general-m4c16-x2"


def photo(name: str = "chelsea.png") -> np.ndarray:
    path = next(p for paths in sample_images().values() for p in paths if p.name == name)
    return np.asarray(Image.open(path).convert("RGB"))


def jpeg_file(array: np.ndarray, quality: int, **options) -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality, **options)
    buffer.seek(0)
    return Image.open(buffer)


@pytest.mark.parametrize("quality", [5, 20, 35, 50, 51, 64, 75, 88, 95, 100])
@pytest.mark.parametrize("subsampling", [0, 2])
def test_jpeg_quality_is_read_back_from_the_tables_pillow_wrote(quality, subsampling) -> None:
    im = jpeg_file(photo()[:64, :64], quality, subsampling=subsampling)
    assert jpeg_quality(im.quantization) == quality


def test_jpeg_quality_comes_with_the_pixels_of_a_jpeg_file_only(tmp_path) -> None:
    Image.fromarray(photo()).save(tmp_path / "a.jpg", quality=62)
    Image.fromarray(photo()).save(tmp_path / "a.png")
    assert read_pixels(tmp_path / "a.jpg").jpeg_quality == 62
    assert read_pixels(tmp_path / "a.png").jpeg_quality is None
    assert jpeg_quality(None) is None and jpeg_quality({0: [1, 2, 3]}) is None


@pytest.mark.parametrize("sigma", [2.0, 5.0, 10.0])
def test_noise_sigma_reads_the_added_noise_on_a_photograph(sigma) -> None:
    rng = np.random.default_rng(int(sigma))
    clean = photo("coffee.png").astype(np.float64)
    for gray in (False, True):
        noise = rng.normal(0, sigma, clean.shape[:2] + ((1,) if gray else (3,)))
        noisy = np.clip(clean + noise, 0, 255).round().astype(np.uint8)
        measured = assess(noisy).noise
        assert 0.8 * sigma < measured < 1.25 * sigma + 0.5, (sigma, gray, measured)


def test_noise_sigma_is_low_on_clean_photographs_and_ignores_clipped_areas() -> None:
    for name in ("chelsea.png", "coffee.png", "motorcycle_left.png"):
        assert assess(photo(name)).noise < NOISE_RAMP.zero, name
    rng = np.random.default_rng(0)
    image = np.full((256, 256, 3), 255.0)
    image[:, :96] = 128 + rng.normal(0, 4, (256, 96, 3))  # a noisy strip beside a blown-out sky
    measured = assess(np.clip(image, 0, 255).round().astype(np.uint8)).noise
    assert 3.2 < measured < 5.0  # the clipped blocks are left out, not read as noise-free
    assert assess(np.full((64, 64, 3), 90, np.uint8)).noise == 0.0  # flat: no noise at all
    tiny = assess(photo()[:10, :7])  # too small to measure: read as clean, not as blocky or noisy
    assert tiny.noise == 0.0 and tiny.blockiness == 1.0 and auto_strength(tiny).strength == 0.0


def test_blockiness_sees_jpeg_blocks_in_the_pixels_even_after_saving_as_png() -> None:
    clean = photo()
    assert assess(clean).blockiness < BLOCKINESS_RAMP.zero + 0.02
    decoded = np.asarray(jpeg_file(clean, 40).convert("RGB"))  # what a PNG of that JPEG holds
    assert assess(decoded).blockiness > BLOCKINESS_RAMP.full


def test_a_large_image_is_measured_on_bands_with_the_same_figures() -> None:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:2560, 0:2048]
    smooth = 128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0) + 20 * np.sin((xx + yy) / 7.0)
    big = np.repeat(smooth[..., None], 3, axis=2)  # 5.2 megapixels: measured on bands of rows
    noisy = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).round().astype(np.uint8)
    assert abs(assess(noisy).noise - assess(noisy[:1024]).noise) < 0.05 * 6  # [:1024]: measured whole
    blocky = np.asarray(jpeg_file(np.clip(big, 0, 255).astype(np.uint8), 40).convert("RGB"))
    whole, banded = assess(blocky[:1024]).blockiness, assess(blocky).blockiness
    assert whole > BLOCKINESS_RAMP.full and abs(banded - whole) < 0.03 * whole


def test_auto_strength_is_the_largest_any_measure_asks_for() -> None:
    clean = Assessment(jpeg_quality=None, noise=0.3, blockiness=1.0)
    assert auto_strength(clean).strength == 0.0 and auto_strength(clean).reason == "clean input"
    low_jpeg = auto_strength(Assessment(jpeg_quality=50, noise=0.2, blockiness=1.0))
    assert low_jpeg.strength == 1.0 and low_jpeg.reason == "JPEG quality 50"
    noisy = auto_strength(Assessment(jpeg_quality=98, noise=12.0, blockiness=1.0))
    assert noisy.strength == 1.0 and noisy.reason.startswith("noise 12")
    blocky_png = auto_strength(Assessment(jpeg_quality=None, noise=0.2, blockiness=1.6))
    assert blocky_png.strength == 1.0 and blocky_png.reason.startswith("blockiness")
    # monotonic in each measure, on the grid of 0.1
    qualities = [auto_strength(Assessment(q, 0.0, 1.0)).strength for q in range(100, 0, -1)]
    noises = [auto_strength(Assessment(None, s / 4, 1.0)).strength for s in range(0, 60)]
    assert qualities == sorted(qualities) and noises == sorted(noises)
    assert all(round(s * 10, 6) == int(round(s * 10)) for s in qualities + noises)
    assert Ramp(2.0, 4.0)(3.0) == 0.5 and Ramp(90.0, 80.0)(85.0) == 0.5 and Ramp(90.0, 80.0)(95.0) == 0.0
    assert JPEG_RAMP(100) == 0.0


def test_upscale_files_picks_each_files_strength_and_runs_that_blend(tmp_path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    crop = photo()[:64, :80]
    Image.fromarray(crop).save(inputs / "clean.png")
    Image.fromarray(crop).save(inputs / "q45.jpg", quality=45)
    auto = AutoDenoise(GENERAL_X2, precision="fp32", backend="eager", tile=None)
    seen = {}
    report = upscale_files(auto, [inputs], tmp_path / "out", progress=False, on_denoise=seen.__setitem__)
    assert not report.failed and len(report.written) == 2
    assert report.denoise == seen
    strengths = {path.name: choice.strength for path, choice in report.denoise.items()}
    assert strengths == {"clean.png": 0.0, "q45.jpg": 1.0}
    for name, strength in strengths.items():
        reference = Upscaler(
            load_model(GENERAL_X2, denoise=strength), precision="fp32", backend="eager", tile=None
        )
        expected = tmp_path / f"expected-{name}"
        upscale_files(reference, [inputs / name], expected, progress=False)
        got = read_pixels(tmp_path / "out" / name).array
        assert np.array_equal(got, read_pixels(expected / name).array), name


def test_auto_is_the_default_only_for_a_model_with_a_partner() -> None:
    assert wants_auto(GENERAL_X2, None) and wants_auto(GENERAL_X2, "auto")
    assert not wants_auto(GENERAL_X2, 0.5) and not wants_auto("repsr-m4c16-x2", None)
    assert wants_auto("model.safetensors", None, denoise_from="repsr-m4c16-x2")
    with pytest.raises(ConfigError, match="no registered detail partner"):
        AutoDenoise("repsr-m4c16-x2")


def test_cli_prints_what_auto_measured_and_chose_per_file(tmp_path, capsys) -> None:
    Image.fromarray(photo()[:48, :48]).save(tmp_path / "q30.jpg", quality=30)
    args = ["upscale", str(tmp_path / "q30.jpg"), "--precision", "fp32", "--no-progress", "-m", GENERAL_X2]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "denoise auto: " in out
    assert f"{tmp_path / 'q30.jpg'}: denoise auto 1 (JPEG quality 30): JPEG quality 30, noise" in out
    assert main([*args, "-o", str(tmp_path / "b"), "--denoise", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "denoise strength 0.4" in out and "denoise auto" not in out
    assert main([*args, "-o", str(tmp_path / "c"), "-m", "repsr-m4c16-x2", "--denoise", "auto"]) == 2
    assert "no registered detail partner" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "d"), "-m", "repsr-m4c16-x2"]) == 0  # no partner: the model
    assert "denoise" not in capsys.readouterr().out


def test_a_video_gets_one_strength_the_denoising_end(tmp_path) -> None:
    auto = AutoDenoise(GENERAL_X2, precision="fp32", tile=None)
    upscaler, choice = auto.choose_video()
    assert upscaler is auto.default and choice.strength == 1.0 and "video" in choice.describe()


def test_strengths_reuse_the_first_decision_and_are_kept_few(tmp_path) -> None:
    auto = AutoDenoise(GENERAL_X2, precision="fp32", backend="eager", tile=None)
    ups = [auto.upscaler_at(s) for s in (0.0, 0.1, 0.2, 0.3, 0.4)]
    assert all(u.precision == auto.precision and u.backend == auto.backend for u in ups)
    assert auto.upscaler_at(0.4) is ups[-1] and auto.upscaler_at(1.0) is auto.default
    assert len(auto._ready) <= 4 and 1.0 in auto._ready


@pytest.mark.parametrize("condition", ["clean", "jpeg50", "noise6", "graynoise5-jpeg75"])
def test_degraded_file_decodes_to_the_benchmarks_lr(condition) -> None:
    """The file benchmark of `--denoise auto` gives `repsr upscale` the very LR of the degraded benchmark."""
    hr = torch.from_numpy(photo()[:96, :128].copy()).permute(2, 0, 1).float() / 255
    data, suffix = degraded_file(hr, 4, CONDITIONS[condition], (3, 7))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == ("JPEG" if CONDITIONS[condition].jpeg else "PNG") and suffix in (".jpg", ".png")
        decoded = np.asarray(im.convert("RGB"))
    expected = degrade_lr(hr, 4, CONDITIONS[condition], (3, 7))
    assert np.array_equal(decoded, (expected * 255).round().byte().permute(1, 2, 0).numpy())
