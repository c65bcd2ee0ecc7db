"""Precision: hardware detection, the `auto` choice, bf16 inference, int8 export in ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
import torch
import torch.nn.functional as F

from repsr import build_model, save_model
from repsr.arch.network import PlainSR, reparameterize_model
from repsr.inference import backends
from repsr.inference.backends import Candidate, Probe, candidates, decide, probe
from repsr.inference.forms import Bf16PlainSR
from repsr.util.errors import ConfigError, ModelFileError
from repsr.util.hardware import Capabilities, cpu_capabilities, detect_cpu, device_capabilities
from repsr.util.precision import Precision
from tests.helpers import BF16_RESOLUTION, randomize


def plain_model(num_blocks: int = 2, channels: int = 8, scale: int = 2, in_channels: int = 3) -> PlainSR:
    model = build_model(
        "repsr", scale=scale, num_blocks=num_blocks, channels=channels, in_channels=in_channels
    )
    return reparameterize_model(randomize(model).eval())


def caps(bf16: str) -> Capabilities:
    return Capabilities("cpu", "Test CPU", bf16, fp16=False, int8_units="", source="test")


# ------------------------------------------------------------------------------------------- detection


def test_cpu_capabilities_are_consistent():
    found = cpu_capabilities()
    assert found is cpu_capabilities()  # detected once
    assert found.device == "cpu" and found.name
    assert found.bf16_native == bool(found.bf16_units)
    assert device_capabilities("cpu") == found
    assert found.name in found.describe()
    flags = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else None
    if flags is not None and flags.get("architecture") == "x86_64":
        native = flags.get("amx_bf16", False) or flags.get("avx512_bf16", False)
        assert found.bf16_native == bool(native)


def test_cpu_detection_from_torch_flags_and_from_proc_cpuinfo(tmp_path):
    amx = detect_cpu(
        {"amx_bf16": True, "avx512_bf16": True, "amx_int8": True, "cpu_name": "Xeon"}, (set(), "")
    )
    assert (amx.bf16_units, amx.int8_units, amx.name) == ("AMX-BF16", "AMX-INT8", "Xeon")
    zen4 = detect_cpu({"avx512_bf16": True, "avx512_vnni": True}, (set(), "AMD EPYC 9B14"))
    assert (zen4.bf16_units, zen4.int8_units, zen4.name) == ("AVX512-BF16", "AVX512-VNNI", "AMD EPYC 9B14")
    old = detect_cpu({"avx2": True}, (set(), "old"))
    assert not old.bf16_native and old.int8_units == ""
    # no torch detection: /proc/cpuinfo flags decide
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n\n"
    )
    from repsr.util.hardware import proc_cpuinfo

    proc = detect_cpu(None, proc_cpuinfo(cpuinfo))
    assert (proc.bf16_units, proc.name, proc.source) == ("AMX-BF16", "Some Xeon", "/proc/cpuinfo")
    assert not detect_cpu(None, proc_cpuinfo(tmp_path / "missing")).bf16_native


# ------------------------------------------------------------------------------------------- choice


def test_precision_names_are_parsed_and_checked():
    assert Precision.parse("BF16") is Precision.BF16 and Precision.parse(Precision.INT8) is Precision.INT8
    with pytest.raises(ConfigError, match="precision must be one of"):
        Precision.parse("fp8")


CPU = torch.device("cpu")
CL32, CL16 = Candidate("channels-last", Precision.FP32), Candidate("channels-last", Precision.BF16)


def test_auto_weighs_bf16_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(backends, "device_capabilities", lambda device: caps(""))
    assert CL32 in candidates(CPU) and all(c.precision is not Precision.BF16 for c in candidates(CPU))
    monkeypatch.setattr(backends, "device_capabilities", lambda device: caps("AMX-BF16"))
    assert CL16 in candidates(CPU)
    assert candidates(CPU, "channels-last") == [CL32, CL16]  # one backend's own candidates
    assert all(c.backend != "eager" for c in candidates(CPU))  # the reference is never weighed


def test_auto_follows_the_measurement(monkeypatch):
    monkeypatch.setattr(backends, "device_capabilities", lambda device: caps("AMX-BF16"))
    model = plain_model()
    fast = {CL32: 0.02, CL16: 0.01}
    monkeypatch.setattr(backends, "probe", lambda plain, device, pairs, **_: Probe(fast, 32, 1))
    chosen = decide(model, CPU, "auto", "channels-last")
    assert chosen.precision is Precision.BF16 and "fastest" in chosen.reason and "10.0 ms" in chosen.reason
    slow = {CL32: 0.01, CL16: 0.0095}  # 1.05x: inside the noise, below MIN_SPEEDUP
    monkeypatch.setattr(backends, "probe", lambda plain, device, pairs, **_: Probe(slow, 32, 1))
    assert decide(model, CPU, "auto", "channels-last").precision is Precision.FP32
    assert "\n" not in chosen.reason


def test_auto_with_the_real_probe_is_cached_and_runs_what_it_measured_fastest():
    model = plain_model(num_blocks=1, channels=4)
    pairs = candidates(CPU)
    first = probe(model, CPU, pairs, budget_s=0.05)
    assert set(first.seconds) <= set(pairs) and all(s > 0 for s in first.seconds.values())
    assert probe(model, CPU, pairs) is first  # same spec, device, threads and candidates: cached
    chosen = decide(model, CPU, "auto")
    assert Candidate(chosen.backend, chosen.precision) == first.fastest()
    assert first.summary() in chosen.reason


def test_fp16_on_cpu_is_a_clear_error_and_explicit_bf16_says_emulated(monkeypatch):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        decide(plain_model(), CPU, "fp16")
    monkeypatch.setattr(backends, "device_capabilities", lambda device: caps(""))
    explicit = decide(plain_model(), CPU, "bf16")
    assert explicit.precision is Precision.BF16 and "emulated" in explicit.reason
    assert explicit.backend == "channels-last"  # an explicit precision never depends on a timing


# ------------------------------------------------------------------------------------------- bf16 net


@pytest.mark.parametrize("in_channels", [3, 1])
def test_bf16_output_is_close_to_fp32(in_channels):
    plain = plain_model(in_channels=in_channels)
    x = torch.rand(2, in_channels, 20, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = plain(x)
        out = Bf16PlainSR(plain)(x)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    error = (out - reference).abs()
    assert 0 < float(error.max()) < 0.03 and float(error.mean()) < 0.003  # bf16 rounding, not a bug
    # keeping head and tail in float32 takes them out of the error
    with torch.no_grad():
        mixed = Bf16PlainSR(plain, float_head=1, float_tail=1)(x)
    assert [d for d in Bf16PlainSR(plain, float_head=1, float_tail=1).dtypes[:2]] == [torch.float32] * 2
    assert float((mixed - reference).abs().max()) < 0.03


def test_bf16_global_skip_is_exact_float32():
    plain = plain_model()
    with torch.no_grad():
        plain.body[-1].weight.zero_()
        plain.body[-1].bias.zero_()
    x = torch.rand(1, 3, 9, 11, dtype=torch.float32) * 0.999 + 1e-4  # not representable in bf16
    with torch.no_grad():
        out = Bf16PlainSR(plain)(x)
    assert torch.equal(out, F.interpolate(x, scale_factor=2, mode="nearest"))


def test_bf16_leaves_the_model_untouched():
    plain = plain_model()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    Bf16PlainSR(plain)
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in plain.state_dict().items())


# ------------------------------------------------------------------------------------------- int8


def int8_plain() -> PlainSR:
    """A small plain network whose residual is small next to the skip, like a trained model's."""
    plain = plain_model(num_blocks=2, channels=8, scale=2)
    with torch.no_grad():
        for layer in plain.body:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.mul_(0.5)
    return plain


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    """One verified int8 export (`repsr export --int8`) shared by the int8 tests: exports take seconds."""
    pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime's quantization tools")
    pytest.importorskip("onnxscript", reason="needs onnxscript (the ONNX exporter)")
    from repsr.cli import main

    folder = tmp_path_factory.mktemp("int8")
    save_model(int8_plain(), folder / "plain.safetensors")
    path = folder / "model-int8.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(folder / "plain.safetensors"), "--onnx", str(path), "--int8"]) == 0
    return path, printed.getvalue()


def test_int8_export_verifies_and_runs(int8_file):
    from repsr.deploy.int8 import MAX_INT8_PIXEL_LEVELS, MIN_INT8_PSNR
    from repsr.models.onnx import OnnxRunner

    path, printed = int8_file
    plain = int8_plain()
    psnr = float(re.search(r"PSNR ([0-9.]+) dB", printed).group(1))
    assert path.is_file() and psnr >= MIN_INT8_PSNR and "on 17 photographs (held-out and harsh" in printed
    levels = int(re.search(r"worst pixel ([0-9]+) levels", printed).group(1))
    assert levels <= MAX_INT8_PIXEL_LEVELS
    assert printed.count("node_") == 5  # kept in float32: head conv and PReLU, last body conv and PReLU, tail
    runner = OnnxRunner(path, threads=1)
    assert runner.quantized and runner.spec == plain.spec
    x = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(3))  # dynamic size and batch
    with torch.no_grad():
        out, reference = runner(x), plain(x)
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert 0 < float((out - reference).abs().max()) < 0.1


def test_int8_export_refuses_below_the_threshold(tmp_path):
    pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime's quantization tools")
    pytest.importorskip("onnxscript", reason="needs onnxscript (the ONNX exporter)")
    from repsr.deploy.int8 import export_int8_onnx

    refused = tmp_path / "refused.onnx"
    with pytest.raises(ModelFileError, match="dB from fp32"):
        export_int8_onnx(int8_plain(), refused, min_psnr=200.0, float_tail=False)
    assert not refused.exists()
    # a mean can hide broken pixels: the worst pixel has a limit of its own, and the message names where
    with pytest.raises(ModelFileError, match=r"levels from fp32 at a pixel of .+ \(limit 0"):
        export_int8_onnx(int8_plain(), refused, max_pixel_levels=0)
    assert not refused.exists()
    with pytest.raises(ConfigError, match="calibration method"):
        export_int8_onnx(int8_plain(), refused, method="guess")


# ------------------------------------------------------------------------------------------- Upscaler


def test_upscaler_bf16_tiled_equals_untiled_and_stays_close_to_fp32():
    from repsr.inference import Upscaler

    model = plain_model(num_blocks=3, channels=8, scale=3)
    lr = torch.rand(2, 3, 45, 83, generator=torch.Generator().manual_seed(1))
    whole = Upscaler(model, device="cpu", precision="bf16", tile=None)
    tiled = Upscaler(model, device="cpu", precision="bf16", tile=16)
    assert whole.precision is Precision.BF16 and whole.precision_reason.startswith("bf16")
    out = tiled(lr)
    assert out.dtype == torch.float32 and (out - whole(lr)).abs().max() <= BF16_RESOLUTION
    reference = Upscaler(model, device="cpu", precision="fp32", tile=None)(lr)
    assert 0 < float((out - reference).abs().max()) < 0.05


def test_upscaler_half_is_a_deprecated_alias_of_fp16():
    from repsr.inference import Upscaler

    with pytest.warns(DeprecationWarning, match="precision='fp16'"), pytest.raises(ConfigError, match="CUDA"):
        Upscaler(plain_model(), device="cpu", half=True)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Upscaler(plain_model(), device="cpu", precision="fp16")


def test_upscaler_auto_says_what_it_chose():
    from repsr.inference import Upscaler

    model = plain_model(num_blocks=1, channels=4)
    exact = Upscaler(model, device="cpu", tile=None)  # default: fp32, no timing decides
    assert exact.precision is Precision.FP32 and exact.backend == "channels-last"
    assert (
        exact.precision_reason
        == f"fp32 as requested on {cpu_capabilities().name} (cpu) (torch channels-last fp32)"
    )
    upscaler = Upscaler(model, device="cpu", tile=None, precision="auto")
    # int8 only through the fused kernel, where the CPU has VNNI and the kernel's probe finds it faster
    assert upscaler.precision in (Precision.FP32, Precision.BF16, Precision.INT8)
    assert (
        upscaler.precision_reason.startswith(upscaler.precision.value)
        and "\n" not in upscaler.precision_reason
    )


def test_upscaler_int8_tiles_exactly_and_the_cli_runs_onnx_files(int8_file, tmp_path, capsys):
    from repsr.cli import main
    from repsr.image.io import write_image
    from repsr.inference import Upscaler
    from repsr.models.onnx import OnnxRunner

    path, _ = int8_file
    runner = OnnxRunner(path, threads=1)
    lr = torch.rand(1, 3, 40, 70, generator=torch.Generator().manual_seed(2))
    whole = Upscaler(runner, device="cpu", tile=None)
    assert whole.precision is Precision.INT8 and "ONNX Runtime" in whole.precision_reason
    tiled = Upscaler(runner, device="cpu", precision="int8", tile=16)
    assert (tiled(lr) - whole(lr)).abs().max() <= 1e-5
    with pytest.raises(ConfigError, match="cannot run in bf16"):
        Upscaler(runner, device="cpu", precision="bf16")
    # the CLI: an .onnx model, RGBA input (alpha handled by the same code as for torch models)
    rgba = torch.rand(4, 20, 30, generator=torch.Generator().manual_seed(4))
    write_image(tmp_path / "in.png", rgba[:3], rgba[3:])
    out = tmp_path / "out"
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(out), "-m", str(path), "--tile", "16"]) == 0
    printed = capsys.readouterr().out
    assert "precision int8: int8: ONNX file run by ONNX Runtime" in printed
    from repsr.image.io import read_image

    image = read_image(out / "in.png")
    assert image.alpha is not None and image.rgb.shape == (3, 40, 60)


def test_cli_upscale_prints_the_precision_and_rejects_fp16_on_cpu(tmp_path, capsys):
    from repsr.cli import main
    from repsr.image.io import write_image

    save_model(plain_model(num_blocks=1, channels=4), tmp_path / "m.safetensors")
    write_image(tmp_path / "in.png", torch.rand(3, 12, 14))
    args = [
        "upscale",
        str(tmp_path / "in.png"),
        "-o",
        str(tmp_path / "o"),
        "-m",
        str(tmp_path / "m.safetensors"),
    ]
    assert main([*args, "--device", "cpu", "--precision", "bf16"]) == 0
    assert "precision bf16: bf16 as requested" in capsys.readouterr().out
    assert main([*args, "--device", "cpu", "--half", "--overwrite"]) == 2  # o/in.png exists now
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["repsr-m4c16-x2", "repsr-m4c16-x4"])
def test_an_int8_file_of_a_shipped_model_is_good_on_this_cpu_or_not_written(tmp_path, name):
    """int8 ONNX cannot silently damage: on this CPU's ONNX Runtime either the file keeps the issue's bars
    (<= 0.15 dB Y-PSNR below fp32 on held-out photographs, no pixel of the gate's photographs more than
    16 levels off), measured here independently of the export's own check, or it is refused, naming why."""
    pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime's quantization tools")
    from repsr import load_model
    from repsr.arch.equivalence import check_against_fp32
    from repsr.data.samples import harsh_photos, sample_images
    from repsr.deploy.int8 import export_int8_onnx
    from repsr.image.io import read_image
    from repsr.image.metrics import psnr
    from repsr.image.resize import bicubic_lr
    from repsr.models.onnx import OnnxRunner

    plain = load_model(name)
    path = tmp_path / "m.onnx"
    try:
        export_int8_onnx(plain, path)
    except ModelFileError as refusal:
        assert not path.exists() and re.search(r"(levels|dB) from fp32 .*(on|of) \w", str(refusal))
        return
    runner = OnnxRunner(path, threads=1)
    gate = {k: v for k, v in harsh_photos().items() if " " not in k}  # the gate's photographs as they are
    assert check_against_fp32(runner, plain, gate)[1] <= 16
    scale, costs = plain.spec.scale, []
    for photo in sample_images()["val"]:
        hr = read_image(photo).rgb[:, :256, :256]
        lr = bicubic_lr(hr, scale).float()[None]
        with torch.inference_mode():
            fp32, int8 = plain(lr)[0].clamp(0, 1), runner(lr)[0].clamp(0, 1)
        costs.append(psnr(fp32, hr, scale) - psnr(int8, hr, scale))
    assert sum(costs) / len(costs) <= 0.15


def test_auto_passes_over_a_faster_reduced_precision_that_breaks_pixels(monkeypatch):
    model = plain_model()
    fast_int8 = Candidate("fused", Precision.INT8)
    seconds = {CL32: 0.02, fast_int8: 0.005}  # 4x faster: past MIN_SPEEDUP, so only quality can stop it
    monkeypatch.setattr(backends, "probe", lambda plain, device, pairs, **_: Probe(seconds, 32, 1))
    monkeypatch.setattr(backends, "candidates", lambda device, backend="auto": [CL32, fast_int8])
    monkeypatch.setattr(
        backends, "quality_problem", lambda plain, device, c: f"{c} skipped: 40 levels from fp32 on coffee"
    )
    chosen = decide(model, CPU, "auto")
    assert chosen.precision is Precision.FP32 and "fused int8 skipped: 40 levels" in chosen.reason
    monkeypatch.setattr(backends, "quality_problem", lambda plain, device, c: None)
    monkeypatch.setattr(backends, "_prepared", lambda plain, device, choice, reason: choice)
    assert decide(model, CPU, "auto") == fast_int8


def test_the_quality_check_measures_pixels_against_fp32():
    """bf16 keeps photographs within the limit; an int8 kernel whose ranges clip does not (measured here
    where the CPU has an int8 kernel path)."""
    backends._QUALITY.clear()
    assert backends.quality_problem(plain_model(), CPU, CL16) is None
    from repsr.kernels import availability, runnable_variants

    if availability() is not None or "int8" not in runnable_variants()[0].precisions:
        return
    from repsr import load_model
    from repsr.arch.equivalence import check_against_fp32
    from repsr.data.samples import harsh_photos
    from repsr.kernels import FusedPlainSR

    plain = load_model("repsr-m4c16-x2")
    problem = backends.quality_problem(plain, CPU, Candidate("fused", Precision.INT8))
    levels = check_against_fp32(FusedPlainSR(plain, "int8"), plain, harsh_photos(3, backends.QUALITY_SIDE))[1]
    assert (problem is None) == (levels <= 16)
    if problem is not None:
        assert re.fullmatch(rf"fused int8 skipped: {levels} levels from fp32 on .+ \(limit 16\)", problem)
