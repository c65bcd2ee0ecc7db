"""The GAN losses and discriminators: each computes its formula, on hand-checkable inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from repsr.arch.discriminator import build_discriminator
from repsr.training.losses import (
    TERMS,
    LossInputs,
    artifact_map,
    discriminator_adversarial,
    feature_matching,
    fft_amplitude_loss,
    focal_frequency_loss,
    generator_adversarial,
    ldl_loss,
    phase_pattern_loss,
    texture_weights,
)


def _images(seed: int = 0, shape=(2, 3, 16, 16)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_frequency_losses_are_zero_on_equal_images_and_see_what_l1_hedges():
    hr = _images()
    assert float(fft_amplitude_loss(hr, hr)) == 0 and float(focal_frequency_loss(hr, hr)) == 0
    blurred = F.avg_pool2d(F.pad(hr, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    assert float(fft_amplitude_loss(blurred, hr)) > 0.01
    # amplitude only: a circular shift (same spectrum amplitude, other phase) costs nothing, L1 a lot
    shifted = torch.roll(hr, shifts=3, dims=-1)
    assert float(fft_amplitude_loss(shifted, hr)) < 1e-6 < float(F.l1_loss(shifted, hr))
    # focal: with alpha 0 every frequency weighs 1: mean |F(sr) - F(hr)|^2 = mean (sr - hr)^2 (Parseval)
    torch.testing.assert_close(focal_frequency_loss(blurred, hr, alpha=0.0), F.mse_loss(blurred, hr))


def test_adversarial_losses_follow_their_formulas():
    logits = torch.tensor([[-2.0, 0.0, 3.0]])
    bce_one = F.softplus(-logits).mean()  # -log(sigmoid(x))
    torch.testing.assert_close(generator_adversarial(logits, "vanilla"), bce_one)
    torch.testing.assert_close(discriminator_adversarial(logits, True, "vanilla"), bce_one)
    torch.testing.assert_close(discriminator_adversarial(logits, False, "vanilla"), F.softplus(logits).mean())
    assert float(generator_adversarial(logits, "hinge")) == pytest.approx(-1 / 3)
    assert float(discriminator_adversarial(logits, True, "hinge")) == pytest.approx((3 + 1 + 0) / 3)
    assert float(discriminator_adversarial(logits, False, "hinge")) == pytest.approx((0 + 1 + 4) / 3)
    assert float(discriminator_adversarial(logits, False, "lsgan")) == pytest.approx((4 + 0 + 9) / 3)
    with pytest.raises(ValueError, match="wgan"):
        generator_adversarial(logits, "wgan")


def test_the_artifact_map_weighs_only_where_the_generator_is_worse_than_its_ema():
    hr = torch.zeros(1, 3, 16, 16)
    ema = torch.full_like(hr, 0.05)  # the EMA: a small even error everywhere
    sr = hr.clone()
    noise = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.5
    sr[..., :8, :8] += noise  # the generator: noisy artifacts in one corner, exact elsewhere
    weight = artifact_map(sr, ema, hr)
    assert weight.shape == (1, 1, 16, 16)
    assert float(weight[..., 10:, 10:].abs().max()) == 0  # better than the EMA there: no weight
    assert float(weight[..., 1:7, 1:7].min()) > 0  # noisy residual, worse than the EMA: weighed
    loss = ldl_loss(sr.requires_grad_(), ema, hr)
    loss.backward()
    assert float(loss.detach()) > 0 and float(sr.grad[..., 10:, 10:].abs().max()) == 0


def test_feature_matching_compares_layer_by_layer_without_gradient_into_the_real_side():
    fake = [torch.ones(1, 2, 4, 4, requires_grad=True), torch.zeros(1, 2, 2, 2, requires_grad=True)]
    real = [torch.zeros(1, 2, 4, 4, requires_grad=True), torch.zeros(1, 2, 2, 2, requires_grad=True)]
    loss = feature_matching(fake, real)
    assert float(loss.detach()) == pytest.approx(0.5)  # (1 + 0) / 2 layers
    loss.backward()
    assert real[0].grad is None and fake[0].grad is not None


def test_terms_name_what_they_need():
    assert {name for name, term in TERMS.items() if term.needs} == {"ldl", "gan", "feature"}
    hr = _images()
    inputs = LossInputs(hr + 0.1, hr)
    assert float(TERMS["l1"].make()(inputs)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="ldl"):
        TERMS["ldl"].make()(inputs)  # no EMA output computed


def test_phase_pattern_loss_sees_a_fixed_grid_pattern_and_not_texture_or_a_shift():
    hr = _images(shape=(2, 3, 16, 16))
    assert float(phase_pattern_loss(hr, hr, 4)) == 0
    grid = torch.zeros(4, 4)
    grid[0, 0], grid[2, 3] = 4 / 255, -4 / 255  # a pattern of the x4 output grid, +-4 levels
    patterned = hr + grid.repeat(4, 4)
    assert float(phase_pattern_loss(patterned, hr, 4)) == pytest.approx(8 / 255 / 16, rel=1e-4)
    assert float(phase_pattern_loss(hr + 0.1, hr, 4)) < 1e-7  # a uniform offset is no pattern
    textured = hr + 0.05 * _images(seed=1, shape=(2, 3, 16, 16))  # texture not locked to the grid
    assert float(phase_pattern_loss(textured, hr, 4)) < float(F.l1_loss(textured, hr)) / 3
    from repsr.training.builders import build_loss_terms
    from tests.helpers.train import tiny_config

    (term,) = build_loss_terms(tiny_config(**{"train.losses": "[{type: phase}]", "model.scale": 4}))
    assert float(term.fn(LossInputs(patterned, hr))) == pytest.approx(8 / 255 / 16, rel=1e-4)  # period 4


def test_texture_weighted_adversarial_term_leaves_flat_areas_and_ramps_to_the_pixel_terms():
    flat = torch.full((1, 3, 32, 32), 0.2)
    ramp = flat + torch.linspace(0, 0.8, 32)  # 6.6 levels a pixel: steep, but no texture
    textured = flat + 0.1 * _images(shape=(1, 3, 32, 32))  # noise of std ~7 levels
    hr = torch.cat([flat, ramp, textured])
    logits = torch.zeros(3, 1, 2, 2, requires_grad=True)  # a PatchGAN-like map, 16x16 HR pixels a logit
    weights = texture_weights(hr, logits, texture=4.0)
    assert weights.shape == (3, 1, 2, 2)
    assert float(weights[:2].max()) < 1e-3 and float(weights[2].min()) > 0.9
    loss = TERMS["gan"].make(texture=4.0)(LossInputs(hr, hr, fake=logits))
    loss.backward()
    assert float(logits.grad[:2].abs().max()) < 1e-3 * float(logits.grad[2].abs().min())
    plain = TERMS["gan"].make()(LossInputs(hr, hr, fake=logits.detach()))
    assert float(plain) == pytest.approx(float(generator_adversarial(logits.detach(), "vanilla")))
    assert float(loss.detach()) < float(plain)


@pytest.mark.parametrize("kind", ["unet", "patch"])
def test_discriminators_give_logits_and_features_with_spectral_norm(kind):
    torch.manual_seed(0)
    d = build_discriminator(kind, channels=8).train()
    x = _images(shape=(2, 3, 32, 32))
    logits, features = d(x, features=True)
    assert logits.shape == ((2, 1, 32, 32) if kind == "unet" else (2, 1, 2, 2))
    assert len(features) >= 4 and all(f.shape[0] == 2 for f in features)
    for _ in range(30):  # power iterations (one per forward in training mode)
        d(x)
    d.eval()
    sn = [m for m in d.modules() if hasattr(m, "parametrizations")]
    assert len(sn) >= 3
    for module in sn:
        weight = module.weight.detach().flatten(1)
        assert float(torch.linalg.matrix_norm(weight, ord=2)) == pytest.approx(1.0, rel=0.05)
    plain = build_discriminator(kind, channels=8, spectral=False)
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())
    with pytest.raises(ValueError, match="unknown discriminator"):
        build_discriminator("vgg")
