"""One equivalence check: exact merge math in float64, the delivered network in float32, named failures."""

from __future__ import annotations

import pytest
import torch

from repsr import build_model, reparameterize_model
from repsr.arch.equivalence import EXACT_TOLERANCE, deviation, random_inputs, verify_equivalence
from repsr.util.errors import EquivalenceError, ModelFileError
from tests.helpers import randomize


def training_model():
    return randomize(build_model("repsr", scale=2, num_blocks=2, channels=6)).eval()


def test_a_faithful_merge_passes_and_reports_its_float32_error():
    model = training_model()
    error = verify_equivalence(model, reparameterize_model(model))
    assert 0 <= error <= 1e-3
    assert error < verify_equivalence(model, reparameterize_model(model), tolerance=1.0, dtype=torch.float16)


def test_a_perturbed_plain_network_is_named_with_its_error():
    model = training_model()
    plain = reparameterize_model(model)
    with torch.no_grad():
        plain.body[0].bias.add_(5e-3)
    with pytest.raises(
        EquivalenceError, match=r"plain network \(float32\) differs .* by [0-9.e-]+ \(> 0.001\)"
    ):
        verify_equivalence(model, plain)
    assert issubclass(EquivalenceError, ModelFileError)


def test_a_broken_merge_fails_the_float64_check(monkeypatch):
    import repsr.arch.network as network

    model = training_model()
    plain = reparameterize_model(model)
    real = network.reparameterize_model

    def off_by_a_little(source):
        merged = real(source)
        with torch.no_grad():
            merged.body[0].bias.add_(1e-6)  # invisible at float32's 1e-3, not at float64's 1e-8
        return merged

    monkeypatch.setattr(network, "reparameterize_model", off_by_a_little)
    with pytest.raises(EquivalenceError, match="float64 merge"):
        verify_equivalence(model, plain)
    assert verify_equivalence(model, plain, exact_tolerance=None) <= 1e-3
    assert EXACT_TOLERANCE == 1e-8


def test_models_are_left_untouched_and_inputs_are_seeded():
    model = training_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    verify_equivalence(model, reparameterize_model(model), (1, 9, 11))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(random_inputs(3, (1, 4, 5), seed=1), random_inputs(3, (1, 4, 5), seed=1))
    assert random_inputs(3).dtype == torch.float64


def test_deviation_sees_nan_and_shape_mismatch():
    a = torch.zeros(1, 3, 4, 4)
    assert deviation(a, a + 0.5) == 0.5
    nan = a.clone()
    nan[0, 0, 0, 0] = float("nan")
    assert deviation(a, nan) != deviation(a, nan)
    with pytest.raises(EquivalenceError, match="shape"):
        deviation(a, torch.zeros(1, 3, 4, 5))
