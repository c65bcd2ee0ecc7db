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
