"""Fuzz test (issue 21): mutated small images, videos and model files. Every failure must be a
`RepsrError` (one line in the CLI), never another exception. Seeded, so a failure reproduces; bounded
in time (`BUDGET_S` per kind of file), so the suite's length does not depend on luck."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repsr import build_model, reparameterize_model, save_model
from repsr.image.io import read_pixels
from repsr.inference import Upscaler, upscale_files
from repsr.util.errors import RepsrError

SEED = 21
# seconds per kind of file (REPSR_FUZZ_SECONDS for a longer hunt); at least MIN_CASES run whatever the speed
BUDGET_S = float(os.environ.get("REPSR_FUZZ_SECONDS", "4"))
MIN_CASES = 12
MAX_PIXELS = 1 << 16  # mutated images larger than this are decoded but not upscaled (time bound)


pytestmark = pytest.mark.usefixtures("one_thread")


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: flip a few bytes (biased to the header), truncate, insert or delete a run of bytes."""
    out = bytearray(data)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        for _ in range(int(rng.integers(1, 8))):
            limit = len(out) if rng.random() < 0.5 else min(len(out), 64)
            out[int(rng.integers(0, limit))] = int(rng.integers(0, 256))
    elif kind == 1:
        del out[int(rng.integers(1, len(out))) :]
    elif kind == 2:
        at = int(rng.integers(0, len(out)))
        out[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    else:
        at = int(rng.integers(0, len(out)))
        del out[at : at + int(rng.integers(1, 64))]
    return bytes(out)


def fuzz(seeds: dict[str, bytes], check, tmp_path: Path, seed: int) -> int:
    """Run `check(path)` on mutations of every seed file until the budget is spent; returns the count."""
    rng = np.random.default_rng(seed)
    names = sorted(seeds)
    start, cases = time.monotonic(), 0
    while cases < MIN_CASES or time.monotonic() - start < BUDGET_S:
        name = names[cases % len(names)]
        path = tmp_path / f"case{cases:04d}{Path(name).suffix}"
        path.write_bytes(mutate(seeds[name], rng))
        try:
            check(path)
        except RepsrError as error:
            assert "\n" not in str(error), f"{name} case {cases}: {error!r}"
        except Exception as error:  # the point of the test: name the case so it reproduces
            raise AssertionError(
                f"{name}, case {cases} (seed {seed}): {type(error).__name__}: {error}"
            ) from error
        path.unlink(missing_ok=True)
        cases += 1
    return cases


def image_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    seeds = {}
    for name, fmt, image in [
        ("a.png", "PNG", Image.fromarray(rgb)),
        ("a.jpg", "JPEG", Image.fromarray(rgb)),
        ("a.webp", "WEBP", Image.fromarray(rgb)),
        ("a.bmp", "BMP", Image.fromarray(rgb)),
        ("a.tif", "TIFF", Image.fromarray(rgb)),
        ("g.tif", "TIFF", Image.fromarray((rng.random((9, 11)) * 60000).astype(np.uint16))),
        ("p.png", "PNG", Image.fromarray(rgb).convert("P")),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        seeds[name] = buffer.getvalue()
    from repsr.image.io import _encode_png16

    seeds["d.png"] = _encode_png16(rng.integers(0, 65536, (7, 5, 3)).astype(np.uint16))
    return seeds


def test_fuzzed_images_fail_only_with_repsr_errors(tmp_path):
    model = reparameterize_model(build_model("repsr", scale=2, num_blocks=1, channels=4).eval())
    upscaler = Upscaler(model, device="cpu", tile=None)
    out = tmp_path / "out"

    def check(path: Path) -> None:
        height, width = read_pixels(path).array.shape[:2]  # ImageError, or an image
        if height * width > MAX_PIXELS:
            return  # a mutated header naming a huge image (decoded above): upscaling it only costs time
        report = upscale_files(upscaler, [path], out, progress=False, overwrite=True)
        for target in report.written:  # whatever was written is a complete image of the reported size
            with Image.open(target) as im:
                im.load()
            target.unlink()
        assert not out.exists() or not any(p.name.startswith(".") for p in out.iterdir())

    assert fuzz(image_seeds(), check, tmp_path, SEED) >= MIN_CASES


def test_fuzzed_model_files_fail_only_with_repsr_errors(tmp_path):
    from repsr.models.files import load_model

    train_form = build_model("repsr", scale=2, num_blocks=1, channels=4)
    save_model(train_form, tmp_path / "t.safetensors")
    save_model(reparameterize_model(train_form.eval()), tmp_path / "p.safetensors")
    torch.save(reparameterize_model(train_form.eval()).state_dict(), tmp_path / "p.pth")
    torch.save({"spec": train_form.spec.to_dict(), "model": train_form.state_dict()}, tmp_path / "c.pt")
    seeds = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    x = torch.rand(1, 3, 5, 5)

    def check(path: Path) -> None:
        model = load_model(path)
        with torch.no_grad():
            model(x)

    (tmp_path / "cases").mkdir()
    assert fuzz(seeds, check, tmp_path / "cases", SEED) >= MIN_CASES


def test_fuzzed_videos_fail_only_with_repsr_errors(tmp_path):
    pytest.importorskip("av", reason="video fuzzing needs PyAV")
    from repsr.inference.video import upscale_video
    from tests.helpers.video import make_clip

    make_clip(tmp_path / "a.mp4", frames=3, size=(16, 16))
    make_clip(tmp_path / "b.mkv", frames=3, size=(16, 16), codec="ffv1", pix_fmt="bgr0", audio=None)
    seeds = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model = reparameterize_model(build_model("repsr", scale=2, num_blocks=1, channels=4).eval())
    upscaler = Upscaler(model, device="cpu", tile=None)
    (tmp_path / "cases").mkdir()

    def check(path: Path) -> None:
        target = path.with_name("out" + path.suffix)
        try:
            upscale_video(upscaler, path, target, codec="ffv1" if path.suffix == ".mkv" else "libx264")
        finally:
            target.unlink(missing_ok=True)
        assert not [p for p in path.parent.iterdir() if ".partial" in p.name]

    assert fuzz(seeds, check, tmp_path / "cases", SEED) >= MIN_CASES


# ---------------------------------------------------------- the new inputs (issue 28): recipes, blends, ONNX
def run_cases(make_case, check, seed: int) -> int:
    """`check(make_case(rng))` until the budget is spent (at least MIN_CASES); only RepsrError may fail."""
    rng = np.random.default_rng(seed)
    start, cases = time.monotonic(), 0
    while cases < MIN_CASES or time.monotonic() - start < BUDGET_S:
        case = make_case(rng)
        try:
            check(case)
        except RepsrError as error:
            assert "\n" not in str(error), f"case {cases}: {error!r}"
        except Exception as error:
            raise AssertionError(
                f"case {cases} (seed {seed}) {case!r}: {type(error).__name__}: {error}"
            ) from error
        cases += 1
    return cases


HOSTILE_NUMBERS = (float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e-30, 1e30, 2.0**63, 7.5, 1e9)


def hostile_value(rng: np.random.Generator, value):
    """A replacement for one recipe value: hostile numbers, wrong types, wrong lengths, or a nudge."""
    kind = int(rng.integers(0, 6))
    if kind == 0:
        return HOSTILE_NUMBERS[int(rng.integers(len(HOSTILE_NUMBERS)))]
    if kind == 1:
        return ["7", None, True, {"a": 1}, "", [[1, 2]]][int(rng.integers(6))]
    if isinstance(value, list):
        out = list(value)
        if kind == 2 and out:
            out[int(rng.integers(len(out)))] = HOSTILE_NUMBERS[int(rng.integers(len(HOSTILE_NUMBERS)))]
        elif kind == 3:
            out = out[: int(rng.integers(0, len(out) + 1))] + [float(rng.uniform(-2, 100))] * int(
                rng.integers(0, 2)
            )
        else:
            out = [float(v) * float(rng.choice([0.0, 0.5, 2.0, 10.0, 1000.0])) for v in out]
        return out
    return (
        float(value) * float(rng.choice([-1.0, 0.0, 0.5, 2.0, 1e6]))
        if kind < 5
        else float(rng.uniform(-1, 2))
    )


def test_fuzzed_degradation_recipes_fail_only_with_repsr_errors():
    """Random recipes through the config (`--set degradation.*` / a YAML section), then a degraded patch."""
    from repsr.data.degradations import PRESETS, degrade
    from repsr.training.config import TrainConfig

    hr = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)

    def make_case(rng: np.random.Generator) -> dict:
        preset = str(rng.choice(sorted(PRESETS)))
        fields = dict(PRESETS["realesrgan"])
        recipe: dict = {"preset": preset}
        for key in rng.choice(sorted(fields), size=int(rng.integers(1, 4)), replace=False):
            recipe[str(key)] = hostile_value(rng, fields[str(key)])
        if rng.random() < 0.05:
            recipe["no_such_key"] = 1
        return recipe

    def check(recipe: dict) -> None:
        resolved = TrainConfig.from_dict({"degradation": recipe}).degradation.resolved()
        with np.errstate(all="ignore"):
            lr = degrade(hr, 2, resolved, (3,))
        assert lr.shape == (8, 8, 3) and lr.dtype == np.uint8

    assert run_cases(make_case, check, SEED) >= MIN_CASES


def test_fuzzed_blends_fail_only_with_repsr_errors(tmp_path):
    """Mutated partner files at random strengths: `repsr upscale --denoise S --denoise-from FILE`."""
    from repsr.models.blend import load_blended

    def tiny(seed: int, **sizes) -> torch.nn.Module:
        torch.manual_seed(seed)
        return reparameterize_model(
            build_model("repsr", **{"scale": 2, "num_blocks": 1, "channels": 4, **sizes}).eval()
        )

    save_model(tiny(0), tmp_path / "denoise.safetensors")
    save_model(tiny(1), tmp_path / "detail.safetensors")
    save_model(tiny(2, channels=8), tmp_path / "wide.safetensors")
    torch.save(tiny(3).state_dict(), tmp_path / "detail.pth")
    seeds = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "denoise.safetensors"}
    strengths = (0.0, 0.3, 1.0, -0.1, 1.5, float("nan"), float("inf"), "half", None)
    rng = np.random.default_rng(SEED)
    x = torch.rand(1, 3, 5, 5)

    def check(path: Path) -> None:
        strength = strengths[int(rng.integers(len(strengths)))]
        model = load_blended(tmp_path / "denoise.safetensors", strength, detail=path)
        with torch.no_grad():
            assert model(x).shape == (1, 3, 10, 10)

    def check_safely(path: Path) -> None:  # a non-number strength is argparse's to refuse, never a crash
        try:
            check(path)
        except (TypeError, ValueError) as error:
            if "could not convert" in str(error) or "float() argument" in str(error):
                return
            raise

    (tmp_path / "cases").mkdir()
    assert fuzz(seeds, check_safely, tmp_path / "cases", SEED) >= MIN_CASES


def test_fuzzed_onnx_files_fail_only_with_repsr_errors(tmp_path):
    pytest.importorskip("onnxruntime")
    from repsr.models.onnx import OnnxRunner
    from tests.helpers.onnx_files import onnx_seed

    onnx_seed(tmp_path / "a.onnx")
    onnx_seed(tmp_path / "b.onnx", channels=16, external=True)
    assert OnnxRunner(tmp_path / "a.onnx")(torch.rand(1, 3, 5, 6)).shape == (1, 3, 10, 12)  # the seeds run
    seeds = {"a.onnx": (tmp_path / "a.onnx").read_bytes(), "b.onnx": (tmp_path / "b.onnx").read_bytes()}
    data = (tmp_path / "b.data").read_bytes()
    (tmp_path / "cases").mkdir()
    rng = np.random.default_rng(SEED + 1)
    x = torch.rand(1, 3, 5, 6)

    def check(path: Path) -> None:
        # the external data beside the case: intact, mutated, or truncated
        (path.parent / "b.data").write_bytes(data if rng.random() < 0.5 else mutate(data, rng))
        runner = OnnxRunner(path)
        assert runner(x).shape == (1, 3, 10, 12)

    assert fuzz(seeds, check, tmp_path / "cases", SEED) >= MIN_CASES
