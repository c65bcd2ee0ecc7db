"""The GAN gate: it passes the shipped general model and catches what GAN-trained models get wrong
(texture on flat areas, colour shifts, amplified noise and JPEG grids, no sharpening)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import repsr
from repsr.image.resize import imresize
from repsr.quality.gan_gate import (
    blockiness,
    flat_noise,
    look_checks,
    look_figures,
    noisy_flat_checks,
    ramp_texture_checks,
    run_gan_gate,
    sharpness,
)
from repsr.quality.gate import flat_colour_checks


class Altered(nn.Module):
    """A model's output with something done to it (levels in 0..255 terms), keeping its `.spec`."""

    def __init__(self, model: nn.Module | None, change, spec=None) -> None:
        super().__init__()
        self.model, self.change = model, change
        self.spec = spec if spec is not None else model.spec

    def forward(self, lr: Tensor) -> Tensor:
        return self.change(lr, self.model(lr) if self.model is not None else None)


def _texture(lr: Tensor, out: Tensor) -> Tensor:
    """A fixed +-3 level pseudo-random texture added everywhere: GAN hallucination on flat areas."""
    g = torch.Generator().manual_seed(0)
    pattern = (torch.rand(out.shape[-2:], generator=g) * 2 - 1) * 3.0 / 255.0
    return out + pattern


def _red_shift(lr: Tensor, out: Tensor) -> Tensor:
    out = out.clone()
    out[:, 0] += 4.0 / 255.0
    return out


@pytest.fixture(scope="module")
def general() -> nn.Module:
    return repsr.load_model("repsr-general-m4c16-x4")


def test_the_general_model_passes_and_the_report_has_every_kind(general):
    report = run_gan_gate(general)
    assert report.passed, report.summary()
    kinds = {c.kind for c in report.checks}
    assert kinds == {
        "flat colour", "phase bias", "ringing", "ramp texture", "noisy flat texture", "noisy flat colour",
        "sharpness", "flat noise", "blockiness",
    }  # fmt: skip
    assert [f.condition for f in report.figures] == ["clean", "jpeg50", "noise6"]
    assert all(f.model["sharpness"] > f.bicubic["sharpness"] for f in report.figures)
    assert "Y-PSNR" in report.summary()


def test_a_model_that_sharpens_noise_and_jpeg_fails():
    """The clean x4 model (trained on bicubic LR only): amplified noise on flats, stronger JPEG grid."""
    report = run_gan_gate(repsr.load_model("repsr-m4c16-x4"))
    assert not report.passed
    failed = {c.kind for c in report.failures}
    assert {"noisy flat texture", "flat noise", "blockiness"} <= failed
    assert "sharpness" not in failed and "flat colour" not in failed  # it is sharp, and flat on clean input


def test_hallucinated_texture_fails_flat_colours_ramps_and_noisy_flats(general):
    model = Altered(general, _texture)
    assert not any(c.passed for c in flat_colour_checks(model))
    assert not all(c.passed for c in ramp_texture_checks(model))
    assert not all(c.passed for c in noisy_flat_checks(model) if c.kind == "noisy flat texture")
    assert all(c.passed for c in ramp_texture_checks(general))


def test_a_colour_shift_fails_flat_colours_and_noisy_flats(general):
    model = Altered(general, _red_shift)
    assert not all(c.passed for c in flat_colour_checks(model))
    colour = [c for c in noisy_flat_checks(model) if c.kind == "noisy flat colour"]
    assert colour and not any(c.passed for c in colour)
    assert min(c.figure for c in colour) == pytest.approx(4.0, abs=1.5)


def test_bicubic_is_not_sharper_than_bicubic(general):
    bicubic = Altered(None, lambda lr, _: imresize(lr.double(), 4).float(), spec=general.spec)
    checks = look_checks(look_figures(bicubic, ("clean",)))
    sharp = [c for c in checks if c.kind == "sharpness"]
    assert sharp and not sharp[0].passed and abs(sharp[0].figure) < 0.01


def test_the_measures_on_known_images():
    side = 64
    x = torch.linspace(0, 1, side).expand(side, side)
    edge = (x > 0.5).double().expand(3, -1, -1)  # a hard vertical edge
    soft = torch.sigmoid((x - 0.5) * 20).double().expand(3, -1, -1)
    assert sharpness(edge, edge, 2) == pytest.approx(1.0)
    assert 0.1 < sharpness(soft, edge, 2) < 0.5  # a 10-pixel transition: its slope, not the step
    flat = torch.full((3, side, side), 0.5, dtype=torch.float64)
    noisy = (
        flat
        + torch.randn(3, side, side, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 255
    )
    assert flat_noise(flat, flat, 2) == 0 and 0.5 < flat_noise(noisy, flat, 2) < 1.5  # about 1 level
    grid = flat.clone()
    for block in range(0, side, 8 * 2):  # x2: an LR block is 16 output pixels
        grid[:, :, block : block + 8 * 2] += (block // 16 % 2) * 4 / 255
    assert blockiness(noisy, 2) == pytest.approx(0.0, abs=0.1) and blockiness(grid + (noisy - flat), 2) > 0.5
