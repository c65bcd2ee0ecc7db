"""Image I/O: formats, bit depths, modes, alpha, errors, listing."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repsr.image.io import IMAGE_SUFFIXES, list_images, read_image, read_pixels, write_image
from repsr.image.pixels import quantize
from repsr.util.errors import DataError, ImageError, RepsrError

SKIMAGE_DATA = Path(__import__("skimage.data").data.__file__).parent


def _levels(shape, depth, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    top = 2**depth - 1
    return torch.from_numpy(rng.integers(0, top + 1, size=shape).astype(np.float32) / top)


def _png16_sub_filter(path: Path, arr: np.ndarray, color_type: int) -> None:
    """Independent 16-bit PNG writer (Sub filter on odd rows, None on even) to test the reader."""
    h, w, c = arr.shape
    bpp = 2 * c
    data = arr.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int32)
    rows = []
    for i in range(h):
        if i % 2:
            left = np.concatenate([np.zeros(bpp, np.int32), data[i, :-bpp]])
            rows.append(b"\x01" + ((data[i] - left) % 256).astype(np.uint8).tobytes())
        else:
            rows.append(b"\x00" + data[i].astype(np.uint8).tobytes())

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_png8_rgb_roundtrip_exact(tmp_path):
    img = _levels((3, 17, 23), 8)
    write_image(tmp_path / "a.png", img)
    loaded = read_image(tmp_path / "a.png")
    assert loaded.mode == "rgb" and loaded.bit_depth == 8 and loaded.alpha is None
    assert loaded.rgb.dtype == torch.float32 and loaded.rgb.shape == (3, 17, 23)
    torch.testing.assert_close(loaded.rgb, img, atol=0, rtol=0)


@pytest.mark.parametrize("channels,gray", [(3, False), (1, True)])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_png16_roundtrip_keeps_low_byte(tmp_path, channels, gray, with_alpha):
    img = _levels((channels, 9, 14), 16, seed=1)
    alpha = _levels((1, 9, 14), 16, seed=2) if with_alpha else None
    write_image(tmp_path / "a.png", img, alpha=alpha, bit_depth=16, gray=gray)
    loaded = read_image(tmp_path / "a.png")
    assert loaded.bit_depth == 16
    assert loaded.mode == ("gray" if gray else ("rgba" if with_alpha else "rgb"))
    torch.testing.assert_close(loaded.rgb, img.expand(3, -1, -1), atol=1e-7, rtol=0)
    if with_alpha:
        torch.testing.assert_close(loaded.alpha, alpha, atol=1e-7, rtol=0)
    # Independent decoders agree: Pillow sees the same high byte.
    with Image.open(tmp_path / "a.png") as im:
        assert im.size == (14, 9)


@pytest.mark.parametrize("channels,color_type", [(3, 2), (4, 6), (2, 4)])
def test_png16_reader_against_independent_writer(tmp_path, channels, color_type):
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 65536, size=(7, 11, channels)).astype(np.uint16)
    _png16_sub_filter(tmp_path / "x.png", arr, color_type)
    pixels = read_pixels(tmp_path / "x.png")
    assert pixels.bit_depth == 16
    np.testing.assert_array_equal(pixels.array, arr)


def test_tiff16_and_8bit_formats(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(4)
    arr16 = rng.integers(0, 65536, size=(6, 8, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", arr16, photometric="rgb")
    pixels = read_pixels(tmp_path / "a.tif")
    assert pixels.bit_depth == 16
    np.testing.assert_array_equal(pixels.array, arr16)
    arr8 = rng.integers(0, 256, size=(6, 8, 3)).astype(np.uint8)
    for name in ("b.bmp", "b.tiff", "b.png"):
        Image.fromarray(arr8).save(tmp_path / name)
        np.testing.assert_array_equal(read_pixels(tmp_path / name).array, arr8)


def test_gray16_from_pillow(tmp_path):
    arr = np.arange(0, 65536, 4099, dtype=np.uint16).reshape(2, 8)
    Image.fromarray(arr).save(tmp_path / "g.png")
    loaded = read_image(tmp_path / "g.png")
    assert loaded.mode == "gray" and loaded.bit_depth == 16
    torch.testing.assert_close(loaded.rgb[1], torch.from_numpy(arr / 65535.0).float())


def test_gray_palette_rgba_la(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    g = read_image(tmp_path / "g.png")
    assert g.mode == "gray" and g.alpha is None
    assert torch.equal(g.rgb[0], g.rgb[1]) and torch.equal(g.rgb[0], g.rgb[2])
    torch.testing.assert_close(g.rgb[0] * 255, torch.from_numpy(gray).float())

    pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    pal.save(tmp_path / "p.png")
    p = read_image(tmp_path / "p.png")
    assert p.mode == "rgb" and p.alpha is None
    assert p.rgb[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and p.rgb[:, 1, 0].tolist() == [0.0, 0.0, 1.0]
    pal.save(tmp_path / "pt.png", transparency=1)
    pt = read_image(tmp_path / "pt.png")
    assert pt.mode == "rgba" and pt.alpha[0].tolist() == [[1.0, 0.0], [1.0, 0.0]]

    rgba = np.random.default_rng(5).integers(0, 256, size=(5, 6, 4)).astype(np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    a = read_image(tmp_path / "a.png")
    assert a.mode == "rgba"
    torch.testing.assert_close(a.alpha[0] * 255, torch.from_numpy(rgba[..., 3]).float())
    torch.testing.assert_close(a.rgb * 255, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float())

    Image.fromarray(rgba[..., [0, 3]], mode="LA").save(tmp_path / "la.png")
    la = read_image(tmp_path / "la.png")
    assert la.mode == "gray" and la.alpha is not None
    torch.testing.assert_close(la.alpha[0] * 255, torch.from_numpy(rgba[..., 3]).float())


def test_lossy_formats_and_alpha(tmp_path):
    img = read_image(SKIMAGE_DATA / "chelsea.png").rgb[:, :64, :96]
    alpha = torch.linspace(0, 1, 96).expand(1, 64, 96)
    write_image(tmp_path / "c.webp", img, alpha=alpha, quality=100)
    w = read_image(tmp_path / "c.webp")
    assert w.mode == "rgba" and (w.alpha - alpha).abs().max() < 1 / 255 + 1e-6
    write_image(tmp_path / "c.webp", img, quality=90)
    assert (read_image(tmp_path / "c.webp").rgb - img).abs().mean() < 0.03
    with pytest.warns(UserWarning, match="alpha dropped"):
        write_image(tmp_path / "sub" / "c.jpg", img, alpha=alpha)
    j = read_image(tmp_path / "sub" / "c.jpg")
    assert j.mode == "rgb" and (j.rgb - img).abs().mean() < 0.02


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(tmp_path / "o.jpg", exif=exif, quality=95)
    assert read_image(tmp_path / "o.jpg").rgb.shape == (3, 20, 10)


def test_quantize_rounds_half_up_and_clamps():
    x = torch.tensor([-0.2, 0.5 / 255, 1.49 / 255, 1.51 / 255, 1.3])
    assert (quantize(x) * 255).tolist() == [0.0, 1.0, 1.0, 2.0, 255.0]
    y = torch.tensor([0.5 / 65535, 0.49 / 65535, 65534.6 / 65535], dtype=torch.float64)
    assert (quantize(y, 16) * 65535).round().tolist() == [1.0, 0.0, 65535.0]


def test_read_errors_are_one_line_and_name_the_file(tmp_path):
    good = tmp_path / "good.png"
    write_image(good, _levels((3, 40, 40), 8))
    data = good.read_bytes()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image at all\n")
    (tmp_path / "folder.png").mkdir()
    for name in ("missing.png", "empty.png", "trunc.png", "text.png", "folder.png"):
        with pytest.raises(ImageError) as info:
            read_image(tmp_path / name)
        message = str(info.value)
        assert name in message and "\n" not in message
        assert isinstance(info.value, RepsrError)
    with pytest.raises(ImageError, match="empty"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="truncated"):
        read_image(tmp_path / "trunc.png")
    write_image(tmp_path / "deep.png", _levels((3, 40, 40), 16), bit_depth=16)
    deep = (tmp_path / "deep.png").read_bytes()
    (tmp_path / "deep_cut.png").write_bytes(deep[: len(deep) // 2])
    with pytest.raises(ImageError, match="deep_cut.png"):
        read_image(tmp_path / "deep_cut.png")


def test_write_errors(tmp_path):
    img = torch.rand(3, 4, 4)
    with pytest.raises(ImageError, match="x.gif"):
        write_image(tmp_path / "x.gif", img)
    with pytest.raises(ImageError, match="16-bit"):
        write_image(tmp_path / "x.jpg", img, bit_depth=16)
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", torch.rand(2, 4, 4))


def test_list_images(tmp_path):
    files = ("b.png", "a.JPG", "sub/c.webp", "sub/deep/d.tiff", ".hidden/e.png", "sub/.f.png", "notes.txt")
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a.JPG", "b.png", "sub/c.webp", "sub/deep/d.tiff"]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["a.JPG", "b.png"]
    assert list_images(tmp_path / "b.png") == [tmp_path / "b.png"]
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"} <= IMAGE_SUFFIXES
    with pytest.raises(DataError, match="nowhere"):
        list_images(tmp_path / "nowhere")


def test_reads_shipped_photographs():
    astro = read_image(SKIMAGE_DATA / "astronaut.png")
    assert astro.rgb.shape == (3, 512, 512) and astro.mode == "rgb"
    assert 0.2 < float(astro.rgb.mean()) < 0.8
    rocket = read_image(SKIMAGE_DATA / "rocket.jpg")
    assert rocket.rgb.shape == (3, 427, 640)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(SKIMAGE_DATA / "camera.png").mode == "gray"
