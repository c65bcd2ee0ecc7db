"""The one pixel rule (`repsr.image.pixels`): half up, clamped, NaN to 0, in the input's float type; and
every writer of pixels follows it, so a video frame, an image file and the fused kernel's 8-bit output
of the same input are identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repsr.image.io import read_pixels, to_pixels, write_pixels
from repsr.image.pixels import quantize, round_levels, to_integers, to_levels
from repsr.inference import Upscaler, upscale_files
from tests.helpers import tiny_plain


def test_ties_round_half_up_as_matlab_and_pillow():
    halves = np.array([0.5, 1.5, 2.5, 127.5, 254.5], dtype=np.float64) / 255.0
    # half up (MATLAB im2uint8, Pillow), not half to even (which would give 0, 2, 2, 128, 254)
    assert to_integers(halves).tolist() == [1, 2, 3, 128, 255]
    assert to_integers(torch.from_numpy(halves)).tolist() == [1, 2, 3, 128, 255]
    assert round_levels(np.array([0.5, 2.5, -3.0, 300.0])).tolist() == [1.0, 3.0, 0.0, 255.0]


def test_clamps_and_maps_nan_to_zero_for_tensors_and_arrays_alike():
    values = [-0.2, 0.0, 1.0, 1.7, float("nan"), float("inf"), float("-inf")]
    expected = [0, 0, 255, 255, 0, 255, 0]
    assert to_integers(np.array(values, dtype=np.float32)).tolist() == expected
    assert to_integers(torch.tensor(values)).tolist() == expected
    assert to_integers(torch.tensor(values), 16).tolist() == [v * 257 for v in expected]
    with pytest.raises(ValueError, match="bit_depth"):
        to_levels(torch.zeros(1), 12)


def test_torch_and_numpy_agree_bit_for_bit_in_each_float_type():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(100_000, generator=generator) * 1.2 - 0.1
    for values in (x, x.double()):
        for depth in (8, 16):
            assert np.array_equal(to_integers(values, depth), to_integers(values.numpy(), depth))
    assert torch.equal(quantize(x), to_levels(x) / 255)


def test_an_image_file_holds_the_rule_of_the_float_output(tmp_path):
    rgb = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(1))
    write_pixels(tmp_path / "a.png", to_pixels(rgb))
    assert np.array_equal(read_pixels(tmp_path / "a.png").array, to_integers(rgb.permute(1, 2, 0)))


def test_video_frames_equal_the_same_frames_written_as_image_files(tmp_path):
    """`repsr upscale clip.mkv` (lossless) and `repsr upscale frame.png` give the same pixels."""
    pytest.importorskip("av", reason="video needs PyAV: pip install 'repsr[video]'")
    from PIL import Image

    from repsr.inference.video import upscale_video
    from tests.helpers.video import decoded_frames, make_clip

    source = tmp_path / "clip.mkv"
    make_clip(source, frames=3, size=(40, 26), codec="ffv1", pix_fmt="bgr0", audio=None)
    for backend in ("channels-last", "fused"):
        if backend == "fused":
            from repsr.kernels import availability

            if availability() is not None:
                continue  # the torch backend alone, where the kernel cannot build (said in test_kernels)
        upscaler = Upscaler(tiny_plain(scale=2), device="cpu", tile=None, backend=backend)
        target = tmp_path / f"up-{backend}.mkv"
        upscale_video(upscaler, source, target, codec="ffv1", batch=1)
        frames, _ = decoded_frames(source)
        outputs, _ = decoded_frames(target)
        assert len(outputs) == len(frames) == 3
        for index, (frame, output) in enumerate(zip(frames, outputs, strict=True)):
            still = tmp_path / f"{backend}-{index}.png"
            Image.fromarray(frame).save(still)
            report = upscale_files(upscaler, [still], tmp_path / f"out-{backend}", progress=False)
            image = read_pixels(report.written[0]).array
            assert image.shape == output.shape and np.array_equal(image, output), (backend, index)


def test_the_fused_kernels_own_pixels_follow_the_rule():
    from repsr.kernels import FusedPlainSR, availability

    if availability() is not None:
        pytest.skip(f"fused kernel: {availability()}")
    kernel = FusedPlainSR(tiny_plain(scale=3))
    x = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(2)) * 1.4 - 0.2  # clamps too
    expected = to_integers(kernel(x).permute(0, 2, 3, 1))
    assert np.array_equal(kernel.pixels(x).numpy(), expected)
