"""The fused C kernel (`repsr.kernels`): the PyTorch plain network's function on every instruction-set
path this CPU runs, tile-independent, wired into `Upscaler`, and absent without a compiler."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch

from repsr import build_model, reparameterize_model
from repsr.image.pixels import quantize, to_integers
from repsr.inference import Upscaler, backends
from repsr.inference.backends import Candidate, Probe
from repsr.inference.forms import Bf16PlainSR
from repsr.inference.tiling import FUSED_MAX_TILE
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
    float output gives by the one pixel rule (`repsr.image.pixels`: x 255, clamped, half up), on every
    tile border."""
    plain = random_plain(scale, in_channels)
    x = torch.rand(2, in_channels, 19, 45, generator=torch.Generator().manual_seed(2))
    options = {"variant": variant, "calibration": [x]} if precision == "int8" else {"variant": variant}
    fused = FusedPlainSR(plain, precision, tile=(7, 9), **options)
    out = fused(x)
    got = fused.pixels(x)
    assert got.dtype == torch.uint8 and got.shape == (2, 19 * scale, 45 * scale, in_channels)
    assert ((out > 0) & (out < 1)).float().mean() > 0.5  # mostly rounded values, not clamped ones
    expected = to_integers(out.permute(0, 2, 3, 1))
    assert np.array_equal(got.numpy(), expected)


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
    assert (
        fused.backend == "fused"
        and 90 <= fused.tile <= FUSED_MAX_TILE
        and "fused kernel" in fused.precision_reason
    )
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


# ------------------------------------------------------------------------------ int8 on every instruction set
# The int8 paths: AVX512-VNNI (zmm vpdpbusd), AVX-VNNI (ymm vpdpbusd) and AVX2 (vpmaddubsw, 4 weights per
# int16 lane). Each test runs where this CPU has the path and says which flag is missing elsewhere.
INT8_VARIANTS = [v for v in kbuild.VARIANTS if "int8" in v.precisions]
INT8_PHOTO_TILES = [((7, 9), 1), ((64, 240), 2), ((13, 200), 3)]  # (rows, columns), threads
HARSH_MAX_LEVELS = 16  # the bar: no 8-bit output pixel further than this from fp32 on harsh photographs


def missing_flags(variant) -> list[str]:
    flags = kbuild.cpu_flags()
    return [alts[0] for alts in variant.cpu_flags if not any(f in flags for f in alts)]


def int8_variant(variant):
    """`variant` where this CPU runs it; else the test skips naming the missing CPU flags."""
    missing = missing_flags(variant)
    if missing:
        pytest.skip(f"the {variant.name} int8 path needs CPU flags this CPU lacks: {', '.join(missing)}")
    return variant.name


def photo(name: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A scikit-image photograph as (1, 3, H, W) in [0, 1] (top-left `size` crop)."""
    from repsr.data.samples import sample_images
    from repsr.image.io import read_image

    folder = sample_images()["train"][0].parent
    rgb = read_image(folder / name).rgb
    if size:
        rgb = rgb[:, : size[0], : size[1]]
    return rgb[None].contiguous()


def harsh(image: torch.Tensor, contrast: float = 3.0) -> torch.Tensor:
    """The photograph with its contrast stretched about mid-grey, clipped and re-quantized to 8 bits:
    saturated regions and hard edges (activations far outside the calibrated ranges)."""
    return quantize((image - 0.5) * contrast + 0.5)


def test_avx_vnni_is_offered_only_with_its_flags(tmp_path, monkeypatch):
    names = lambda flags: [v.name for v in kbuild.runnable_variants(flags)]  # noqa: E731
    assert names({"avx2", "fma"}) == ["avx2"]
    assert names({"avx2", "fma", "avx_vnni"}) == ["avx-vnni", "avx2"]
    assert names({"avx_vnni"}) == [] and names({"avx2", "avx_vnni"}) == []
    assert names({"avx2", "fma", "avx_vnni_int8"}) == ["avx2"]  # another flag, not AVX-VNNI
    flagged = {"avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
    assert names(flagged)[:2] == ["avx512-vnni", "avx512"]  # AVX-512 first where both exist
    # it compiles (gcc >= 11, clang >= 12) whatever this CPU runs; loading runs none of its instructions
    monkeypatch.setenv("REPSR_KERNEL_CACHE", str(tmp_path))
    variant = next(v for v in kbuild.VARIANTS if v.name == "avx-vnni")
    assert "-mavxvnni" in variant.cflags and variant.precisions == ("fp32", "int8")
    import ctypes

    library = ctypes.CDLL(str(kbuild.build(variant)))
    assert library.repsr_fused_lanes() == 8 and library.repsr_fused_has_int8() == 1
    assert library.repsr_fused_int8_lane_weights() == 0  # vpdpbusd sums in int32: the AVX512-VNNI weights


def test_avx2_int8_weights_keep_every_int16_lane_exact():
    """Every lane of 4 weights, times the largest u8 activation, fits int16 (no vpmaddubsw saturation), and
    where no lane needs it the weights are plain max |w| -> 127 per output channel."""
    from repsr.kernels.fused import ACTIVATION_MAX, INT16_MAX, int8_weight_scales, lane_sums

    generator = np.random.default_rng(0)
    wide = generator.normal(size=(3, 3, 16, 16)).astype(np.float32)
    wide[0, 0, :4, 0] = 3.0  # four large weights of one sign in one lane: that channel's scale must grow
    q, scale = int8_weight_scales(wide, 4)
    assert (lane_sums(q, 4) * ACTIVATION_MAX <= INT16_MAX).all()
    plain_q, plain_scale = int8_weight_scales(wide, 0)
    assert np.abs(plain_q).max(axis=(0, 1, 2)).tolist() == [127] * 16
    assert scale[0] > 1.5 * plain_scale[0]  # the bounded channel
    assert np.abs(q).max() <= 127 and (scale >= plain_scale).all()
    # a lane of small weights keeps full resolution
    small = np.zeros_like(wide)
    small[1, 1, 0, :] = 1.0
    assert np.array_equal(int8_weight_scales(small, 4)[0], int8_weight_scales(small, 0)[0])


def exact_int8(plain, fused: FusedPlainSR, x: torch.Tensor) -> torch.Tensor:
    """The int8 kernel's function computed in float64 from its own packed weights and quantization: u8
    activations (round half to even, clamped), integer sums (exact), float32 epilogue values; and the
    outlier path: what clamping cut off a layer's input (past layer 0, the image) is added back through its
    float weights."""
    import torch.nn.functional as F

    dims, blob, scalars, quant = fused._dims, fused._weights, fused._scalars, fused._quant
    nl, lanes = int(dims[0]), int(fused._lib.repsr_fused_lanes())
    y, woff, soff = x.double(), 0, 0
    for layer in range(nl):
        cin, cout = int(dims[3 + 2 * layer]), int(dims[4 + 2 * layer])
        cpad, quads = -(-cout // lanes) * lanes, -(-cin // 4)
        size = 9 * quads * 4 * cpad
        w = blob[woff : woff + size].view(np.int8).reshape(3, 3, quads, cpad, 4)
        woff += size
        w = torch.from_numpy(
            w.transpose(3, 2, 4, 0, 1).reshape(cpad, quads * 4, 3, 3)[:cout, :cin].astype(np.float64)
        )
        wf = blob[woff : woff + 9 * cin * cpad * 4].view(np.float32).reshape(3, 3, cin, cpad)
        woff += 9 * cin * cpad * 4
        wf = torch.from_numpy(wf.transpose(3, 2, 0, 1)[:cout].astype(np.float64))
        mul, bias, alpha = (
            torch.from_numpy(scalars[soff + i * cpad : soff + (i + 1) * cpad][:cout].astype(np.float64))
            for i in range(3)
        )
        soff += 3 * cpad
        qinv, qzero = float(quant[2 * layer]), float(quant[2 * layer + 1])
        unclamped = torch.round((y.float() * np.float32(qinv) + np.float32(qzero)).double())
        q = unclamped.clamp(0, 255)
        acc = F.conv2d(q - qzero, w, padding=1)  # integers: exact in float64
        outliers = (unclamped != q) if layer > 0 else torch.zeros_like(q, dtype=torch.bool)
        residual = torch.where(outliers, y - (q - qzero) * float(np.float32(1) / np.float32(qinv)), 0.0)
        # the kernel folds the zero point into the bias: acc_with_zero * mul + (bias - mul qzero sum w)
        z = (
            acc * mul[:, None, None]
            + bias[:, None, None]
            + mul[:, None, None] * qzero * w.sum(dim=(1, 2, 3))[:, None, None]
            + F.conv2d(residual, wf, padding=1)
        )
        if layer < nl - 1:
            z = torch.where(z < 0, z * alpha[:, None, None], z)
        y = z
    s = plain.spec.scale
    return torch.nn.functional.pixel_shuffle(y, s).float() + torch.nn.functional.interpolate(
        x, scale_factor=s
    )


def assert_matches_emulation(out: torch.Tensor, emulated: torch.Tensor) -> None:
    """The kernel equals `exact_int8` up to rounding flips: the emulation's float64 epilogue and the kernel's
    float32 one (and its float32 outlier sums, in another order) differ in the last bits, so a value lying
    within that of a .5 boundary rounds to the neighbouring u8 level at the next layer's input. Each flip
    moves a few output values by a fraction of one level; anything the integer path gets wrong (a
    saturated or wrapped int16 lane, a lost outlier, a wrong channel group) moves many values, by far
    more."""
    diff = (out - emulated).abs()
    assert diff.max().item() <= 1e-3, f"largest difference {diff.max().item():.3g}"
    assert (diff > 1e-5).float().mean().item() <= 0.1, "too many values differ: not rounding flips"


@pytest.mark.parametrize("variant", INT8_VARIANTS, ids=lambda v: v.name)
@pytest.mark.parametrize("scale", [2, 4])
def test_int8_is_the_exact_integer_computation_on_harsh_photographs(variant, scale):
    """No int16 lane saturates or wraps (AVX2) and nothing else differs: the kernel equals its exact
    emulation on a photograph whose activations pile up at 0 and 255."""
    name = int8_variant(variant)
    plain = shipped(scale)
    x = harsh(photo("coffee.png", (60, 90)))
    fused = FusedPlainSR(plain, "int8", variant=name, tile=(16, 40))
    assert_matches_emulation(fused(x), exact_int8(plain, fused, x))


@pytest.mark.parametrize("variant", INT8_VARIANTS, ids=lambda v: v.name)
def test_int8_outliers_of_every_channel_group_are_exact(variant):
    """The outlier path where an intermediate layer has more output channels than one register group (40:
    two groups on 8 lanes) and ranges calibrated on a dim copy make many values outliers: the kernel equals
    its exact emulation, on every tiling, and is far closer to fp32 than clamping would be."""
    name = int8_variant(variant)
    plain = random_plain(2, 3, channels=40)
    x = torch.rand(2, 3, 29, 43, generator=torch.Generator().manual_seed(3))
    fused = FusedPlainSR(plain, "int8", variant=name, tile=(7, 9), calibration=[0.25 * x])
    qinv, qzero = float(fused._quant[2]), float(fused._quant[3])
    with torch.no_grad():
        head = plain.body[1](plain.body[0](x))  # layer 1's input
        reference = plain(x)
    assert ((head * qinv + qzero).round() > 255).float().mean() > 0.05  # outliers in many pixels
    out = fused(x)
    assert_matches_emulation(out, exact_int8(plain, fused, x))
    whole = FusedPlainSR(plain, "int8", variant=name, tile=(29, 43), threads=2, calibration=[0.25 * x])
    assert torch.equal(out, whole(x))
    residual = reference - torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    span = (residual.max() - residual.min()).item()
    assert (out - reference).abs().max().item() <= INT8_TOLERANCE_RANDOM * span


@pytest.mark.parametrize("variant", INT8_VARIANTS, ids=lambda v: v.name)
def test_int8_photographs_do_not_depend_on_tiles_or_threads(variant):
    name = int8_variant(variant)
    plain = shipped(2)
    x = torch.cat([photo("chelsea.png", (70, 130)), harsh(photo("rocket.jpg", (70, 130)))])
    outs = [FusedPlainSR(plain, "int8", variant=name, tile=t, threads=n)(x) for t, n in INT8_PHOTO_TILES]
    assert all(torch.equal(outs[0], out) for out in outs[1:])
    pixels = FusedPlainSR(plain, "int8", variant=name, tile=(9, 31), threads=2).pixels(x)
    assert np.array_equal(pixels.numpy(), to_integers(outs[0].permute(0, 2, 3, 1)))


@pytest.mark.parametrize("variant", INT8_VARIANTS, ids=lambda v: v.name)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_int8_quality_on_whole_held_out_photographs(variant, scale):
    """Y-PSNR against HR on the whole held-out photographs (chelsea, rocket): at most
    MAX_PSNR_COST_DB["int8"] below the fp32 kernel on average; and against torch fp32 on them."""
    from repsr.data.datasets import make_lr
    from repsr.data.samples import sample_images
    from repsr.image.io import read_pixels
    from repsr.image.metrics import psnr

    name = int8_variant(variant)
    plain = shipped(scale)
    fp32, int8 = FusedPlainSR(plain, "fp32"), FusedPlainSR(plain, "int8", variant=name)
    costs = []
    for path in sample_images()["val"]:
        hr = read_pixels(path).array[:, :, :3]
        lr = (
            torch.from_numpy(make_lr(hr, scale).astype(np.float32) / 255.0)
            .permute(2, 0, 1)[None]
            .contiguous()
        )
        target = torch.from_numpy(hr.astype(np.float32) / 255.0).permute(2, 0, 1)
        target = target[:, : lr.shape[2] * scale, : lr.shape[3] * scale]
        reference, low = fp32(lr), int8(lr)
        with torch.no_grad():
            assert (reference - plain(lr)).abs().max().item() <= FP32_TOLERANCE
        assert (low - reference).abs().mean().item() <= INT8_MEAN_TOLERANCE_SHIPPED
        costs.append(psnr(reference[0].clamp(0, 1), target, scale) - psnr(low[0].clamp(0, 1), target, scale))
    assert float(np.mean(costs)) <= MAX_PSNR_COST_DB["int8"], costs


@pytest.mark.parametrize("variant", INT8_VARIANTS, ids=lambda v: v.name)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_int8_worst_pixel_on_harsh_photographs(variant, scale):
    """The bar: no 8-bit output pixel more than HARSH_MAX_LEVELS from fp32 on `harsh_photos` (the gate
    photographs, each also dark and more saturated) nor on contrast-stretched photographs. Static 99.9%
    ranges clip there (60-95 levels before the outlier path: docs/results/avx2-int8.md); the outlier path
    adds what clamping cut off back in float."""
    from repsr.data.samples import harsh_photos
    from repsr.deploy.int8 import check_against_fp32

    name = int8_variant(variant)
    plain = shipped(scale)
    int8 = FusedPlainSR(plain, "int8", variant=name)
    stretched = {f"{n} x3 contrast": harsh(photo(n, (96, 128))) for n in ("rocket.jpg", "coffee.png")}
    images = {**harsh_photos(), **stretched}
    _, worst, where = check_against_fp32(int8, plain, images)
    assert worst <= HARSH_MAX_LEVELS, (worst, where)


EMULATED_DPBUSD = """
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
/* vpdpbusd on ymm in plain AVX2 C: acc + the four u8 x s8 products of each 32-bit lane, in int32 */
static inline __m256i emulated_dpbusd(__m256i acc, __m256i a, __m256i b) {
    uint8_t u[32]; int8_t s[32]; int32_t r[8];
    memcpy(u, &a, 32); memcpy(s, &b, 32); memcpy(r, &acc, 32);
    for (int i = 0; i < 32; i++) r[i / 4] += (int32_t)u[i] * (int32_t)s[i];
    memcpy(&acc, r, 32);
    return acc;
}
#define _mm256_dpbusd_avx_epi32 emulated_dpbusd
"""


@pytest.mark.parametrize("scale", [2, 4])
def test_avx_vnni_code_with_vpdpbusd_emulated_is_the_exact_integer_computation(tmp_path, scale):
    """The AVX-VNNI variant's C (its 8-lane accumulators, requantization, layer-0 input, unbounded weights)
    runs on any AVX2 CPU when vpdpbusd is replaced by exact C: it must equal the integer emulation."""
    import ctypes
    import subprocess

    from repsr.kernels.fused import pack_layers

    cc = kbuild.compiler()
    if (
        cc is None
        or not kbuild.runnable_variants()
        or "avx2" not in [v.name for v in kbuild.runnable_variants()]
    ):
        pytest.skip("needs a C compiler and an AVX2+FMA CPU")
    (tmp_path / "emulated.h").write_text(EMULATED_DPBUSD)
    library_path = tmp_path / "emulated-avx-vnni.so"
    flags = [*kbuild.CFLAGS, "-mavx2", "-mfma", "-D__AVXVNNI__=1", "-include", str(tmp_path / "emulated.h")]
    subprocess.run([cc, *flags, "-o", str(library_path), str(kbuild.SOURCE)], check=True, capture_output=True)
    library = ctypes.CDLL(str(library_path))
    assert library.repsr_fused_lanes() == 8 and library.repsr_fused_int8_lane_weights() == 0
    library.repsr_fused_run.restype = ctypes.c_int
    library.repsr_fused_run.argtypes = kbuild.load()[1].repsr_fused_run.argtypes
    plain = shipped(scale)
    x = torch.cat([photo("chelsea.png", (37, 53)), harsh(photo("coffee.png", (37, 53)))])
    fused = FusedPlainSR(plain, "int8", tile=(9, 20), threads=2)
    fused._lib = library
    fused._dims, fused._weights, fused._scalars = pack_layers(plain, 8, "int8", fused._quant, lane_weights=0)
    out = fused(x)
    assert_matches_emulation(out, exact_int8(plain, fused, x))
    fused.tile = (37, 53)
    assert torch.equal(out, fused(x))


def test_every_variant_compiles_here_even_those_this_cpu_cannot_run(tmp_path, monkeypatch):
    """The AVX-512 and AVX-VNNI paths are edited on machines without them: each must at least build."""
    monkeypatch.setenv("REPSR_KERNEL_CACHE", str(tmp_path))
    built = [kbuild.build(variant) for variant in kbuild.VARIANTS]
    assert len(set(built)) == len(kbuild.VARIANTS) and all(path.stat().st_size > 0 for path in built)


# ------------------------------------------------------------------------- a damaged kernel cache (issue 28)
def _damaged(good: bytes, kind: str) -> bytes:
    """A truncated copy (it crashed `dlopen` with SIGBUS), random bytes, or another ELF library."""
    import _ctypes

    if kind == "truncated":
        return good[:5000]
    if kind == "garbage":
        return bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    return Path(_ctypes.__file__).read_bytes()  # a valid shared library without the kernel's symbols


@pytest.fixture
def cached_build(tmp_path) -> tuple[kbuild.Variant, Path]:
    """The best variant's library (from the suite's cache: no compile) copied into a fresh cache folder."""
    variant, _ = kbuild.load()
    built = kbuild.build(variant)
    (tmp_path / "cache").mkdir()
    copy = tmp_path / "cache" / built.name
    copy.write_bytes(built.read_bytes())
    return variant, copy


def test_a_damaged_cached_library_is_rebuilt_before_it_is_loaded(monkeypatch, tmp_path, cached_build):
    _, path = cached_build
    good = path.read_bytes()
    assert kbuild.intact(path)
    for kind in ("garbage", "truncated", "other library"):
        path.write_bytes(_damaged(good, kind))
        assert not kbuild.intact(path), kind
    monkeypatch.setenv("REPSR_KERNEL_CACHE", str(tmp_path / "small"))
    variant = runnable_variants()[-1]  # the quickest to compile
    target = kbuild.library_path(variant, kbuild.compiler())
    target.parent.mkdir()
    target.write_bytes(_damaged(good, "truncated"))
    assert kbuild.build(variant) == target and kbuild.intact(target)  # rebuilt over, atomically
    assert ctypes.CDLL(str(target)).repsr_fused_lanes() > 0  # loads, and is the kernel


def test_a_damaged_library_that_cannot_be_rebuilt_leaves_the_torch_path_and_one_line(
    monkeypatch, tmp_path, capsys, cached_build
):
    from PIL import Image

    from repsr.cli import main
    from repsr.util.errors import WriteError

    _, path = cached_build
    monkeypatch.setenv("REPSR_KERNEL_CACHE", str(path.parent))
    path.write_bytes(_damaged(path.read_bytes(), "truncated"))

    def read_only(target, write, **kwargs):  # a read-only cache folder (root ignores chmod)
        raise WriteError(f"{target}: cannot write (Read-only file system)", 30)

    monkeypatch.setattr(kbuild, "atomic_write", read_only)
    kbuild.load.cache_clear()
    monkeypatch.setattr(backends, "_PROBES", {})
    try:
        Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(tmp_path / "in.png")
        assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if "fast kernel" in line]
        assert len(lines) == 1 and "is damaged and rebuilding it failed" in lines[0], lines
        assert "Read-only" in lines[0] and (tmp_path / "out" / "in.png").is_file()
    finally:
        kbuild.load.cache_clear()


def test_a_kernel_cache_that_is_a_file_is_named_as_such(monkeypatch, tmp_path):
    (tmp_path / "cache").write_text("a file, not a folder")
    monkeypatch.setenv("REPSR_KERNEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(KernelUnavailable, match="is a file, not a folder"):
        kbuild.build(runnable_variants()[-1])
    assert (tmp_path / "cache").read_text() == "a file, not a folder"


def test_packed_weights_and_scalars_start_on_a_cache_line() -> None:
    """The kernel reads weight vectors as memory operands: numpy's 16-byte alignment split 32-byte loads
    across cache lines (AVX2 int8 18% slower); `pack_layers` copies both blobs to 64-byte boundaries."""
    from repsr.kernels.fused import ALIGNMENT, aligned, pack_layers

    for size, dtype in ((1, np.int8), (37, np.float32), (1000, np.int16)):
        source = np.arange(size, dtype=dtype)
        for _ in range(4):  # several allocations: a lucky placement must not pass
            copy = aligned(source)
            assert copy.ctypes.data % ALIGNMENT == 0 and np.array_equal(copy, source)
    plain = reparameterize_model(build_model("repsr", scale=2, num_blocks=2, channels=8).eval())
    _, weights, scalars = pack_layers(plain, 8, "fp32", None)
    assert weights.ctypes.data % ALIGNMENT == 0 and scalars.ctypes.data % ALIGNMENT == 0
