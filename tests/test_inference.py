"""Tiled upscaling equals untiled, backends agree, and image files keep their kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from repsr import build_model, reparameterize_model, save_model
from repsr.arch.network import shuffle_add_skip
from repsr.image.io import read_image, read_pixels, write_image
from repsr.inference import (
    Upscaler,
    auto_tile_size,
    collect_inputs,
    prepare_model,
    receptive_radius,
    resolve_device,
    tile_windows,
    upscale_files,
)
from repsr.util.errors import ConfigError, DataError
from tests.helpers import ACROSS_PATHS, randomize


def plain_model(scale: int = 3, num_blocks: int = 3, channels: int = 8, in_channels: int = 3, seed: int = 0):
    model = build_model(
        "repsr", scale=scale, num_blocks=num_blocks, channels=channels, in_channels=in_channels
    )
    return reparameterize_model(randomize(model, seed).eval())


def test_receptive_radius_is_one_pixel_per_conv():
    assert receptive_radius(plain_model(num_blocks=3)) == 5
    assert receptive_radius(build_model("repsr", scale=2, num_blocks=0, channels=4)) == 2


@pytest.mark.parametrize("backend", ["eager", "channels-last"])
@pytest.mark.parametrize(("scale", "in_channels"), [(3, 3), (2, 1)])
def test_tiled_equals_untiled_on_an_image_several_tiles_wide(backend, scale, in_channels):
    model = plain_model(scale=scale, in_channels=in_channels)
    lr = torch.rand(2, in_channels, 45, 83, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model(lr)
    tiled = Upscaler(model, device="cpu", tile=16, backend=backend)
    assert len(tile_windows(83, 16, 5)) >= 5 and len(tile_windows(45, 16, 5)) >= 3
    out = tiled(lr)
    assert out.shape == reference.shape
    assert (out - reference).abs().max() <= ACROSS_PATHS


@pytest.mark.parametrize(
    ("length", "tile", "pad"), [(83, 16, 5), (45, 16, 5), (20, 16, 5), (16, 16, 3), (7, 16, 2)]
)
def test_tile_windows_cover_once_with_context_and_one_shape(length, tile, pad):
    windows = tile_windows(length, tile, pad)
    assert len({stop - start for _, _, start, stop in windows}) == 1
    covered = [0] * length
    for core_start, core_stop, start, stop in windows:
        assert core_stop - core_start <= tile and 0 <= start and stop <= length
        assert core_start - start >= pad or start == 0
        assert stop - core_stop >= pad or stop == length
        for i in range(core_start, core_stop):
            covered[i] += 1
    assert covered == [1] * length


def test_tiles_with_too_little_overlap_show_seams():
    """The exactness test can fail: one pixel less margin than the receptive radius breaks it."""
    model = plain_model()
    lr = torch.rand(1, 3, 40, 70, generator=torch.Generator().manual_seed(2))
    upscaler = Upscaler(model, device="cpu", tile=16)
    exact = upscaler(lr)
    upscaler.radius -= 1
    assert (upscaler(lr) - exact).abs().max() > 1e-4


def test_training_form_in_eval_mode_tiles_exactly():
    model = randomize(build_model("repsr", scale=2, num_blocks=2, channels=8, bn_mode="frozen")).eval()
    lr = torch.rand(1, 3, 37, 50, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        reference = model(lr)
    assert (Upscaler(model, device="cpu", tile=16)(lr) - reference).abs().max() <= 1e-5


def test_unbatched_input_and_tile_none():
    model = plain_model(scale=2)
    lr = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(3))
    out = Upscaler(model, device="cpu", tile=None)(lr)
    with torch.inference_mode():
        assert (out - model(lr[None])[0]).abs().max() <= 1e-5


def test_fused_tail_equals_pixel_shuffle_plus_nearest_skip():
    features = torch.randn(2, 3 * 9, 5, 7)
    lr = torch.rand(2, 3, 5, 7)
    expected = F.pixel_shuffle(features, 3) + F.interpolate(lr, scale_factor=3, mode="nearest")
    assert torch.equal(shuffle_add_skip(features, lr, 3), expected)
    channels_last = features.contiguous(memory_format=torch.channels_last)
    assert torch.equal(shuffle_add_skip(channels_last, lr, 3), expected)


def test_auto_tile_size_is_bounded(monkeypatch):
    import repsr.inference.devices as devices

    model = plain_model()
    monkeypatch.setattr(devices, "free_memory_bytes", lambda device: 64 << 20)
    small = auto_tile_size(model, torch.device("cpu"))
    monkeypatch.setattr(devices, "free_memory_bytes", lambda device: 1 << 40)
    large = auto_tile_size(model, torch.device("cpu"))
    assert 16 <= small < large <= 512 and small % 8 == 0


def test_fp16_overflow_is_recomputed_in_float32():
    """fp16 is CUDA-only in the API; the fallback logic is exercised here with CPU fp16 kernels."""
    torch.manual_seed(0)  # the model's and the input's draws: independent of the tests run before
    model = plain_model(scale=2, num_blocks=1, channels=4)
    with torch.no_grad():
        model.body[0].weight.mul_(1e7)  # activations far beyond fp16's 65504 whatever the random weights
    upscaler = Upscaler(model, device="cpu", tile=None)
    lr = torch.rand(1, 3, 12, 12)
    reference = upscaler(lr)
    upscaler.dtype, upscaler._model = torch.float16, model
    upscaler.module = prepare_model(model, upscaler.backend, upscaler.device, torch.float16)
    assert not torch.isfinite(upscaler._forward(upscaler.module, lr, torch.float16)).all()
    out = upscaler(lr)
    assert torch.isfinite(out).all() and torch.equal(out, reference)


def test_bad_device_and_half_on_cpu_are_config_errors():
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="CUDA"), pytest.warns(DeprecationWarning):
        Upscaler(plain_model(), device="cpu", half=True)
    with pytest.raises(ConfigError):
        Upscaler(plain_model(), device="cpu", tile=3)


# ----------------------------------------------------------------------------------------------- files


@pytest.fixture
def rgb_model(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_model(plain_model(scale=2, num_blocks=1, channels=4), path)
    return path


def upscaler_for(path: Path, tile=None) -> Upscaler:
    from repsr.models.files import load_model

    return Upscaler(load_model(path), device="cpu", tile=tile)


def _noise(height: int, width: int, channels: int, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(seed)
    return rng.integers(0, top + 1, size=(height, width, channels)).astype(dtype)


def test_gray_rgba_and_16bit_images_keep_their_kind(tmp_path, rgb_model):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_noise(10, 12, 1)[:, :, 0], mode="L").save(src / "gray.png")
    Image.fromarray(_noise(10, 12, 4), mode="RGBA").save(src / "rgba.png")
    sixteen = torch.from_numpy(_noise(10, 12, 3, np.uint16).astype(np.float32) / 65535).permute(2, 0, 1)
    write_image(src / "deep.png", sixteen, bit_depth=16)
    report = upscale_files(upscaler_for(rgb_model), [src], tmp_path / "out", progress=False)
    assert not report.failed and len(report.written) == 3
    gray = read_image(tmp_path / "out" / "gray.png")
    assert gray.mode == "gray" and gray.rgb.shape == (3, 20, 24)
    rgba = read_image(tmp_path / "out" / "rgba.png")
    assert rgba.mode == "rgba" and rgba.alpha.shape == (1, 20, 24)
    # alpha is bicubic-upscaled: compare with resizing the source alpha directly
    from repsr.image.resize import imresize

    expected_alpha = imresize(read_image(src / "rgba.png").alpha, 2).clamp(0, 1)
    assert (rgba.alpha - expected_alpha).abs().max() <= 0.5 / 255 + 1e-6
    deep = read_pixels(tmp_path / "out" / "deep.png")
    assert deep.bit_depth == 16 and deep.array.shape == (20, 24, 3)


def test_y_model_upscales_y_and_takes_chroma_by_bicubic(tmp_path):
    from repsr.image.color import rgb_to_ycbcr
    from repsr.image.resize import imresize

    model_path = tmp_path / "y.safetensors"
    model = plain_model(scale=2, num_blocks=1, channels=4, in_channels=1)
    save_model(model, model_path)
    image = torch.rand(3, 16, 18, generator=torch.Generator().manual_seed(4))
    write_image(tmp_path / "a.png", image)
    report = upscale_files(upscaler_for(model_path), [tmp_path / "a.png"], tmp_path / "out", progress=False)
    assert report.written == [tmp_path / "out" / "a.png"]
    result = rgb_to_ycbcr(read_image(tmp_path / "out" / "a.png").rgb)
    source = rgb_to_ycbcr(read_image(tmp_path / "a.png").rgb)
    with torch.inference_mode():
        y = model(source[None, :1])[0]
    chroma = imresize(source[1:], 2)
    inside = (slice(None), slice(2, -2), slice(2, -2))  # away from where clamping to [0, 1] bites
    assert (result[:1] - y.clamp(0, 1))[inside].abs().mean() < 2 / 255
    assert (result[1:] - chroma)[inside].abs().mean() < 2 / 255


def test_bad_file_among_good_ones_is_listed_and_the_rest_written(tmp_path, rgb_model):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    write_image(src / "a.png", torch.rand(3, 8, 8))
    write_image(src / "sub" / "b.jpg", torch.rand(3, 8, 8))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    report = upscale_files(
        upscaler_for(rgb_model), [src, tmp_path / "missing.png"], tmp_path / "out", progress=False
    )
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in report.written) == [
        "a.png",
        "sub/b.jpg",
    ]
    failed = {path.name: reason for path, reason in report.failed}
    assert set(failed) == {"broken.png", "missing.png"}
    assert "broken.png" in failed["broken.png"]


def test_globs_mirror_names_and_collisions_are_refused(tmp_path, rgb_model):
    for name in ("x/one.png", "x/two.png", "y/one.png"):
        write_image(tmp_path / name, torch.rand(3, 6, 6))
    found, missing = collect_inputs([str(tmp_path / "x" / "*.png"), str(tmp_path / "none*.png")])
    assert [relative.as_posix() for _, relative in found] == ["one.png", "two.png"]
    assert len(missing) == 1
    with pytest.raises(ConfigError, match="both be written"):
        upscale_files(
            upscaler_for(rgb_model), [tmp_path / "x", tmp_path / "y"], tmp_path / "out", progress=False
        )
    with pytest.raises(DataError):
        upscale_files(upscaler_for(rgb_model), [tmp_path / "nothing"], tmp_path / "out", progress=False)


def test_format_option_and_tiled_files_equal_untiled(tmp_path, rgb_model):
    write_image(tmp_path / "big.png", torch.rand(3, 40, 70, generator=torch.Generator().manual_seed(5)))
    upscale_files(upscaler_for(rgb_model), [tmp_path / "big.png"], tmp_path / "full", progress=False)
    upscale_files(
        upscaler_for(rgb_model, tile=16),
        [tmp_path / "big.png"],
        tmp_path / "tiled",
        fmt="webp",
        progress=False,
    )
    upscale_files(upscaler_for(rgb_model, tile=16), [tmp_path / "big.png"], tmp_path / "tpng", progress=False)
    assert (tmp_path / "tiled" / "big.webp").is_file()
    full = read_pixels(tmp_path / "full" / "big.png").array
    assert np.array_equal(full, read_pixels(tmp_path / "tpng" / "big.png").array)
