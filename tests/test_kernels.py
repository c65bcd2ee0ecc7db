"""The fused C kernel (`repsr.kernels`): the PyTorch plain network's function on every instruction-set
path this CPU runs, tile-independent, wired into `Upscaler`, and absent without a compiler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repsr import build_model, reparameterize_model
from repsr.inference import Upscaler, backends
from repsr.inference.backends import Candidate, Probe
from repsr.inference.forms import Bf16PlainSR
from repsr.kernels import FusedPlainSR, KernelUnavailable, availability, runnable_variants
from repsr.kernels import build as kbuild
from repsr.models.files import load_model
from repsr.models.pretrained import resolve_model
from repsr.util.errors import ConfigError
from repsr.util.precision import Precision

FP32, BF16, INT8 = Precision.FP32, Precision.BF16, Precision.INT8

# Largest |fused - torch fp32| on outputs of [0, 1] images, per precision. fp32: the same products summed
# in another order. bf16: activations and weights rounded to 8 significant bits, as torch's bf16 path.
FP32_TOLERANCE = 1e-4
BF16_TOLERANCE_SHIPPED = 0.05  # shipped models, max over pixels (torch's own bf16 path: about 0.01-0.02)
BF16_MEAN_TOLERANCE_SHIPPED = 2e-3
# int8: 8-bit activations (99.9% calibrated ranges) and weights; max over pixels on the shipped models
# (measured 0.05-0.10), mean; on random networks, as a fraction of the residual's range.
INT8_TOLERANCE_SHIPPED = 0.2
INT8_MEAN_TOLERANCE_SHIPPED = 5e-3
INT8_TOLERANCE_RANDOM = 0.1
# Held-out quality cost against fp32 the issue allows (Y-PSNR, dB).
MAX_PSNR_COST_DB = {"bf16": 0.01, "int8": 0.05}



@pytest.fixture(autouse=True)
def _kernel_builds():
    """Every test here needs the kernel: built on first use (never at collection), skipped with the reason."""
    problem = availability()
    if problem is not None:
        pytest.skip(f"fused kernel: {problem}")

PATHS = [(v.name, p) for v in runnable_variants() for p in v.precisions]


def random_plain(scale: int, in_channels: int, blocks: int = 3, channels: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    plain = reparameterize_model(
        build_model("plain", scale=scale, num_blocks=blocks, channels=channels, in_channels=in_channels)
    ).eval()
    with torch.no_grad():  # PReLU slopes off their 0.25 default, so every lane's slope is checked
        for layer in plain.body:
            if isinstance(layer, torch.nn.PReLU):
                layer.weight.uniform_(-0.3, 0.6)
    return plain


def shipped(scale: int):
    return load_model(resolve_model(f"repsr-m4c16-x{scale}")).eval()


def test_every_path_this_cpu_runs_is_listed():
    names = [v.name for v in runnable_variants()]
    assert names, "availability() said the kernel runs, so some variant must"
    flags = kbuild.cpu_flags()
    for variant in kbuild.VARIANTS:  # each listed exactly when the CPU has all its flags
        assert (variant.name in names) == all(any(f in flags for f in alts) for alts in variant.cpu_flags)
    assert kbuild.runnable_variants(set()) == []


@pytest.mark.parametrize("variant,precision", PATHS)
@pytest.mark.parametrize(
    "scale,in_channels,channels,size", [(2, 3, 16, (23, 37)), (3, 1, 16, (19, 30)), (4, 3, 24, (17, 41))]
)
def test_random_networks_match_torch(variant, precision, scale, in_channels, channels, size):
    plain = random_plain(scale, in_channels, channels=channels)
    x = torch.rand(2, in_channels, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = plain(x)
        torch_bf16 = Bf16PlainSR(plain)(x)
    options = {"variant": variant, "calibration": [x]} if precision == "int8" else {"variant": variant}
    fused = FusedPlainSR(plain, precision, tile=(7, 9), **options)  # many tiles, every border case
    out = fused(x)
    assert out.shape == reference.shape and out.dtype == torch.float32
    error = (out - reference).abs().max().item()
    if precision == "fp32":
        assert error <= FP32_TOLERANCE
    elif precision == "bf16":  # no worse than torch's own bf16 network (same roundings, other order)
        assert error <= 1.5 * (torch_bf16 - reference).abs().max().item() + 1e-3
    else:
        residual = reference - torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
        assert error <= INT8_TOLERANCE_RANDOM * (residual.max() - residual.min()).item()
    # the kernel's own tiles change nothing: identical sums and roundings per pixel
    assert torch.equal(out, FusedPlainSR(plain, precision, tile=(64, 64), **options)(x))
    assert torch.equal(out[1:], fused(x[1:]))


@pytest.mark.parametrize("variant,precision", PATHS)
@pytest.mark.parametrize("scale,in_channels", [(2, 3), (3, 1), (4, 3)])
def test_pixels_are_the_rounded_float_output(variant, precision, scale, in_channels):
    """`pixels`: the last layer writes 8-bit NHWC itself (the video path), exactly what rounding the
    float output gives (x 255, clamped, half to even), on every tile border."""
    plain = random_plain(scale, in_channels)
    x = torch.rand(2, in_channels, 19, 45, generator=torch.Generator().manual_seed(2))
    options = {"variant": variant, "calibration": [x]} if precision == "int8" else {"variant": variant}
    fused = FusedPlainSR(plain, precision, tile=(7, 9), **options)
    out = fused(x)
    got = fused.pixels(x)
    assert got.dtype == torch.uint8 and got.shape == (2, 19 * scale, 45 * scale, in_channels)
    assert ((out > 0) & (out < 1)).float().mean() > 0.5  # mostly rounded values, not clamped ones
    expected = out.permute(0, 2, 3, 1).mul(255).clamp(0, 255).round().to(torch.uint8)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("variant,precision", PATHS)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_shipped_models_match_torch(variant, precision, scale):
    plain = shipped(scale)
    from repsr.data.samples import sample_images
    from repsr.image.io import read_image

    image = read_image(sample_images()["val"][0]).rgb[:, :61, :75][None].contiguous()
    with torch.no_grad():
        reference = plain(image)
    out = FusedPlainSR(plain, precision, variant=variant, tile=(24, 40))(image)
    error = (out - reference).abs()
    if precision == "fp32":
        assert error.max().item() <= FP32_TOLERANCE
    elif precision == "bf16":
        assert error.max().item() <= BF16_TOLERANCE_SHIPPED
        assert error.mean().item() <= BF16_MEAN_TOLERANCE_SHIPPED
    else:
        assert error.max().item() <= INT8_TOLERANCE_SHIPPED
        assert error.mean().item() <= INT8_MEAN_TOLERANCE_SHIPPED


LOW_PRECISIONS = ("bf16", "int8")
NEEDS = {"bf16": "AVX512-BF16", "int8": "an int8 kernel path (AVX512-VNNI, AVX-VNNI or AVX2)"}


def need_path(precision: str) -> None:
    """Skip, saying what the CPU lacks, unless some kernel variant here runs `precision`."""
    if not any(precision in v.precisions for v in runnable_variants()):
        pytest.skip(f"no {precision} path in this CPU's kernel variants ({NEEDS[precision]} needed)")


@pytest.mark.parametrize("precision", LOW_PRECISIONS)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_low_precision_quality_cost_on_held_out_photos(precision, scale):
    """Y-PSNR against HR on the held-out sample photographs (not the int8 calibration photographs)."""
    need_path(precision)
    from repsr.data.datasets import make_lr
    from repsr.data.samples import sample_images
    from repsr.image.io import read_pixels
    from repsr.image.metrics import psnr

    plain = shipped(scale)
    fp32, low = FusedPlainSR(plain, "fp32"), FusedPlainSR(plain, precision)
    costs = []
    for path in sample_images()["val"]:
        hr = read_pixels(path).array[:192, :192, :3]
        lr = make_lr(hr, scale).astype(np.float32) / 255.0
        lr = torch.from_numpy(lr).permute(2, 0, 1)[None].contiguous()
        target = torch.from_numpy(hr.astype(np.float32) / 255.0).permute(2, 0, 1)
        scores = [psnr(m(lr)[0].clamp(0, 1), target, scale) for m in (fp32, low)]  # Y-PSNR
        costs.append(scores[0] - scores[1])
    assert len(costs) >= 2 and float(np.mean(costs)) <= MAX_PSNR_COST_DB[precision]


def test_upscaler_fused_backend_tiles_exactly_and_auto_follows_the_probe(monkeypatch):
    plain = shipped(2)
    x = torch.rand(3, 70, 90, generator=torch.Generator().manual_seed(2))
    reference = Upscaler(plain, tile=None)(x)
    fused = Upscaler(plain, backend="fused")
    assert fused.backend == "fused" and fused.tile is None and "fused kernel" in fused.precision_reason
    assert (fused(x) - reference).abs().max().item() <= FP32_TOLERANCE
    tiled = Upscaler(plain, backend="fused", tile=32)
    assert torch.equal(tiled(x), fused(x))  # Upscaler tiles (exact windows) on top of the kernel's

    cl, ff = Candidate("channels-last", FP32), Candidate("fused", FP32)

    def fake(seconds):
        return lambda plain, device, pairs, **_: Probe(seconds, 32, 1)

    monkeypatch.setattr(backends, "probe", fake({cl: 2.0, ff: 1.0}))
    chosen = Upscaler(plain, precision="auto")
    assert chosen.backend == "fused" and str(chosen.precision) == "fp32"
    assert "fastest" in chosen.precision_reason and "fused fp32 1000.0 ms" in chosen.precision_reason
    monkeypatch.setattr(backends, "probe", fake({cl: 1.0, ff: 1.5}))
    assert Upscaler(plain, precision="auto").backend == "channels-last"
    # a reduced precision only where it beats the best fp32 by its MIN_SPEEDUP
    fb, fi = Candidate("fused", BF16), Candidate("fused", INT8)
    seconds = {cl: 2.0, ff: 1.0, fb: 0.95}
    assert Probe(seconds, 32, 1).fastest() == ff
    seconds[fb] = 0.5
    assert Probe(seconds, 32, 1).fastest() == fb
    seconds[fi] = 0.8  # int8 must beat the best fp32 by 1.5x
    assert Probe(seconds, 32, 1).fastest() == fb
    seconds[fi] = 0.3
    assert Probe(seconds, 32, 1).fastest() == fi
    # an explicit fp32 never depends on a timing, nor does the default
    assert Upscaler(plain, precision="fp32").backend == "channels-last"
    assert Upscaler(plain).backend == "channels-last"


def test_fused_backend_refuses_what_it_cannot_run():
    plain = shipped(2)
    with pytest.raises(ConfigError, match="fp16"):
        Upscaler(plain, backend="fused", precision="fp16")
    with pytest.raises(ValueError):
        FusedPlainSR(plain)(torch.rand(1, 1, 8, 8))


def test_int8_of_a_torch_model_runs_in_the_kernel_where_it_has_int8_units():
    need_path("int8")
    from repsr.data.samples import sample_images
    from repsr.image.io import read_image

    plain = shipped(2)
    x = read_image(sample_images()["val"][1]).rgb[:, :40, :50]  # a photograph: inside the calibration
    upscaler = Upscaler(plain, precision="int8")
    assert upscaler.backend == "fused" and str(upscaler.precision) == "int8"
    assert "fused kernel" in upscaler.precision_reason
    assert (upscaler(x) - Upscaler(plain)(x)).abs().max().item() <= INT8_TOLERANCE_SHIPPED


def test_without_a_compiler_the_torch_path_runs_and_the_cli_says_so(monkeypatch, tmp_path, capsys):
    from repsr.cli import main

    monkeypatch.setenv("REPSR_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    kbuild.load.cache_clear()
    monkeypatch.setattr(backends, "_PROBES", {})
    try:
        assert "no C compiler" in availability()
        with pytest.raises(KernelUnavailable):
            FusedPlainSR(shipped(2))
        upscaler = Upscaler(shipped(2), precision="auto")
        assert upscaler.backend == "channels-last"
        from PIL import Image

        Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(tmp_path / "in.png")
        assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out")]) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if "fast kernel" in line]
        assert len(lines) == 1 and "fast kernel unavailable: no C compiler" in lines[0]
        assert (tmp_path / "out" / "in.png").is_file()
    finally:
        kbuild.load.cache_clear()  # the next test loads the real build again


def test_a_build_is_atomic_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("REPSR_KERNEL_CACHE", str(tmp_path))
    variant = runnable_variants()[-1]
    path = kbuild.build(variant)
    assert path.parent == tmp_path and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert kbuild.build(variant) == path and path.stat().st_mtime_ns == stamp  # cached, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
