"""Counting is right, timing is sane, backends agree, and the report prints every column."""

from __future__ import annotations

import pytest
import torch

from repsr import build_model, reparameterize_model
from repsr.apps.benchmark import (
    BenchReport,
    BenchRow,
    benchmark,
    count_macs,
    count_parameters,
    format_report,
    load_target,
    measure_peak_gflops,
    model_from_config,
    time_interleaved,
    time_runs,
)
from repsr.inference.backends import candidates
from repsr.util.errors import ConfigError
from repsr.util.precision import Precision


def test_macs_of_the_plain_network_follow_the_formula():
    b, c, s, h, w = 3, 8, 4, 10, 12
    plain = reparameterize_model(build_model("repsr", scale=s, num_blocks=b, channels=c))
    per_pixel = 9 * (3 * c + b * c * c + c * 3 * s * s)
    assert count_macs(plain, h, w) == per_pixel * h * w
    assert count_parameters(plain) == per_pixel + (c + b * c + 3 * s * s) + (b + 1) * c  # + biases, PReLUs


def test_training_form_costs_more_than_the_plain_form():
    model = build_model("repsr", scale=2, num_blocks=2, channels=8)
    plain = reparameterize_model(model)
    assert count_macs(model, 8, 8) > 2 * count_macs(plain, 8, 8)
    assert count_parameters(model) > count_parameters(plain)


def test_time_runs_respects_minimum_runs_and_budget():
    calls = []
    times = time_runs(lambda: calls.append(1), warmup=2, min_runs=4, max_runs=6, budget_s=0.0)
    assert len(times) == 4 and len(calls) == 6
    times = time_runs(lambda: None, warmup=0, min_runs=1, max_runs=7, budget_s=10.0)
    assert len(times) == 7


def test_interleaved_timing_alternates_workload_and_probe():
    order = []
    work, probe = time_interleaved(
        lambda: order.append("w"), lambda: order.append("p"), warmup=1, min_runs=3, max_runs=3
    )
    assert len(work) == len(probe) == 3
    assert "".join(order) == "wp" * 4


def test_peak_probe_measures_a_positive_rate():
    assert measure_peak_gflops("cpu", size=128, budget_s=0.05) > 0.01


def test_benchmark_rows_for_each_form_and_backend():
    model = build_model("repsr", scale=2, num_blocks=1, channels=4).eval()
    report = benchmark(
        [("tiny", model)],
        size=(24, 16),
        device="cpu",
        backends=["eager", "channels-last", "onnxruntime"],
        threads=1,
        budget_s=0.05,
        peak_size=256,
    )
    assert report.threads == 1 and report.size == (24, 16)
    forms = [(row.form, row.backend, row.precision) for row in report.rows]
    reduced = [  # the reduced precisions `auto` weighs on this CPU (bf16 where it is native, ...)
        ("plain", c.backend, c.precision.value)
        for c in candidates(torch.device("cpu"))
        if c.backend in ("eager", "channels-last", "onnxruntime") and c.precision is not Precision.FP32
    ]
    assert forms == [
        ("train", "eager", "fp32"),
        ("plain", "eager", "fp32"),
        ("plain", "channels-last", "fp32"),
        ("plain", "onnxruntime", "fp32"),
        *reduced,
    ]
    for row in report.rows:
        assert row.latency_ms > 0 and row.runs >= 5, row
        assert row.mpix_s == pytest.approx(24 * 16 * 4 / (row.latency_ms / 1e3) / 1e6)
        assert row.gflops == pytest.approx(2 * row.macs / (row.latency_ms / 1e3) / 1e9)
        assert row.peak_fraction == pytest.approx(row.gflops / row.peak_gflops)
        if row.precision == "fp32":
            assert row.note == "", row.note  # every backend reproduces eager PyTorch
        else:  # a reduced precision reports its distance to fp32 (its tolerances: tests/test_kernels.py)
            assert row.note.startswith(f"max |{row.precision} - fp32|"), row.note
    assert report.fastest_plain("tiny").form == "plain"
    text = format_report(report)
    for column in ("params", "GMAC/frame", "latency ms", "frames/s", "MP/s", "GFLOP/s", "% peak", "vs train"):
        assert column in text
    assert torch.get_num_threads() >= 1


def test_unavailable_backend_is_reported_not_raised(monkeypatch):
    import repsr.apps.benchmark as bench

    def no_onnx():
        raise ConfigError("ONNX support needs onnxruntime: install it with pip install 'repsr[onnx]'")

    monkeypatch.setattr("repsr.models.onnx.require_onnx", no_onnx)
    model = build_model("repsr", scale=2, num_blocks=0, channels=4)
    report = bench.benchmark(
        [("m", model)],
        size=(8, 8),
        device="cpu",
        backends=["onnxruntime"],
        budget_s=0.01,
        train_form=False,
        peak_size=64,
    )
    (row,) = report.rows
    assert row.latency_ms is None and "repsr[onnx]" in row.note
    assert "unavailable" in format_report(report)


def test_bad_arguments_are_config_errors():
    model = build_model("repsr", scale=2, num_blocks=0, channels=4)
    with pytest.raises(ConfigError):
        benchmark([("m", model)], backends=["tensorrt"], device="cpu")
    with pytest.raises(ConfigError):
        benchmark([("m", model)], threads=0, device="cpu")


def test_config_and_model_file_targets(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text("model:\n  block: acb\n  scale: 3\n  num_blocks: 2\n  channels: 6\n")
    model = model_from_config(config)
    assert (model.spec.block, model.spec.scale, model.spec.num_blocks, model.spec.channels) == (
        "acb",
        3,
        2,
        6,
    )
    label, loaded = load_target(config)
    assert "acb-M2C6-x3" in label
    (tmp_path / "bad.yaml").write_text("model: [1, 2]\n")
    with pytest.raises(ConfigError):
        load_target(tmp_path / "bad.yaml")


def test_report_formats_missing_values():
    report = BenchReport(
        "cpu", 2, (4, 4), 10.0, [BenchRow("m", "plain", "compile", 10, 100, note="unavailable")]
    )
    assert "-" in format_report(report) and "unavailable" in format_report(report)
