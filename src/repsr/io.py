"""Image reading and writing: PNG, JPEG, WebP, BMP, TIFF; 8 and 16 bit; gray, RGB, RGBA, palette.

Inside the library an image is a float32 tensor (3, H, W) in [0, 1], RGB. Alpha is returned apart, so
that an upscaler can resize it on its own and put it back. Every problem with a file (missing, empty,
truncated, not an image) raises :class:`repsr.errors.ImageError` with a one-line message naming the file.

Pillow reads 16-bit RGB(A) PNGs and TIFFs as 8 bit, losing the low byte; this module reads them at full
depth (PNG: Pillow's own decoder run once per byte, TIFF: ``tifffile``) and writes 16-bit PNGs with a
small encoder of its own.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from repsr.atomic import atomic_write
from repsr.errors import DataError, ImageError, WriteError, describe_os_error, first_line

__all__ = [
    "IMAGE_SUFFIXES",
    "LoadedImage",
    "Pixels",
    "list_images",
    "quantize",
    "read_image",
    "read_pixels",
    "to_pixels",
    "write_image",
    "write_pixels",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
WRITE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp"})

# Luma weights used to turn a 3-channel result back into gray (ITU-R BT.601, as Pillow's convert("L")).
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class Pixels:
    """Decoded integer pixels: ``array`` is (H, W, C) uint8 or uint16 with C = 1 gray, 2 gray+alpha, 3 RGB,
    4 RGBA; ``bit_depth`` is 8 or 16."""

    array: np.ndarray
    bit_depth: int


@dataclass
class LoadedImage:
    """A decoded image: ``rgb`` (3, H, W) float32 in [0, 1] (gray expanded to 3 equal channels), ``alpha``
    (1, H, W) float32 or None, ``bit_depth`` 8 or 16 of the source, ``mode`` "gray", "rgb" or "rgba" (the
    source's colour; a gray image with alpha is "gray" with ``alpha`` set)."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    bit_depth: int
    mode: str


# ----------------------------------------------------------------------------------------------- reading


def _tile_rawmode(im: Image.Image) -> str | None:
    if len(im.tile) != 1:
        return None
    args = im.tile[0].args
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _decode_with_rawmode(path: Path, rawmode: str) -> np.ndarray:
    """Decode a PNG with Pillow but unpack its rows with another raw mode (same bits per pixel)."""
    with Image.open(path) as im:
        tile = im.tile[0]
        args = tile.args
        args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
        im.tile = [tile._replace(args=args)]
        im.load()
        return np.asarray(im)


def _read_png16_color(path: Path, rawmode: str) -> np.ndarray:
    """Full-depth RGB/RGBA/LA 16-bit PNG. Pillow's unpackers for these keep only one byte per sample, so
    the rows (unfiltered correctly, as the bits per pixel match) are unpacked twice: high then low byte."""
    if rawmode == "LA;16B":
        # 32 bits per pixel unpacked as RGBA gives the 4 raw bytes: Y high, Y low, A high, A low.
        raw = _decode_with_rawmode(path, "RGBA").astype(np.uint16)
        return np.stack([raw[..., 0] * 256 + raw[..., 1], raw[..., 2] * 256 + raw[..., 3]], axis=-1)
    high = _decode_with_rawmode(path, rawmode).astype(np.uint16)
    low = _decode_with_rawmode(path, rawmode.replace(";16B", ";16L")).astype(np.uint16)
    return high * 256 + low


def _read_tiff16(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError as exc:  # pragma: no cover - tifffile comes with scikit-image
        raise ImageError(f"{path}: reading 16-bit color TIFF needs the tifffile package") from exc
    arr = np.asarray(tifffile.imread(path, key=0))
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar configuration
    if arr.dtype != np.uint16:
        raise ImageError(f"{path}: unsupported TIFF sample type {arr.dtype}")
    return arr


def _decode(im: Image.Image, path: Path) -> Pixels:
    pixels = _decode_any(im, path)
    if pixels.array.ndim == 2:
        pixels.array = pixels.array[:, :, None]
    return pixels


def _decode_any(im: Image.Image, path: Path) -> Pixels:
    rawmode = _tile_rawmode(im)
    if im.format == "PNG" and rawmode in ("RGB;16B", "RGBA;16B", "LA;16B"):
        try:
            return Pixels(_read_png16_color(path, rawmode), 16)
        except (ValueError, KeyError, AttributeError, TypeError) as exc:  # a Pillow without these unpackers
            raise ImageError(f"{path}: cannot read this 16-bit PNG at full depth ({exc})") from exc
    if im.format == "TIFF" and im.mode in ("RGB", "RGBA", "LA"):
        bits = im.tag_v2.get(258)
        bits = bits if isinstance(bits, tuple) else (bits,)
        if 16 in bits:
            return Pixels(_read_tiff16(path), 16)
    im.load()
    mode = im.mode
    if mode.startswith("I;16"):
        return Pixels(np.asarray(im).astype(np.uint16), 16)
    if mode == "I":
        return Pixels(np.clip(np.asarray(im), 0, 65535).astype(np.uint16), 16)
    if mode == "F":
        arr = np.clip(np.nan_to_num(np.asarray(im, dtype=np.float64)), 0.0, 1.0)
        return Pixels(np.floor(arr * 65535 + 0.5).astype(np.uint16), 16)
    if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation: show pixels the way viewers do
        im = ImageOps.exif_transpose(im)
    has_key = "transparency" in im.info
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if has_key or mode == "PA" else "RGB")
    elif mode == "L" and has_key:
        im = im.convert("LA")
    elif mode == "La":
        im = im.convert("LA")
    elif (mode == "RGB" and has_key) or mode == "RGBa":
        im = im.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX
    return Pixels(np.ascontiguousarray(np.asarray(im), dtype=np.uint8), 8)


def read_pixels(path: str | Path) -> Pixels:
    """Decode ``path`` to integer pixels (H, W, C) without converting to float; raises ImageError."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file")
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1) if getattr(im, "is_animated", False) else 1
            if frames > 1:
                raise ImageError(
                    f"{path}: animated or multi-frame image ({frames} frames); repsr reads still images "
                    "only: extract the frames first"
                )
            pixels = _decode(im, path)
    except ImageError:
        raise
    except PermissionError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: image too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not an image, or a format Pillow cannot read") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError) as exc:
        raise ImageError(f"{path}: truncated or corrupt image ({first_line(exc)})") from exc
    arr = pixels.array
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"{path}: unsupported image layout {arr.shape}")
    return pixels


def read_image(path: str | Path) -> LoadedImage:
    """Read an image file as float32 RGB in [0, 1] plus optional alpha; raises ImageError."""
    pixels = read_pixels(path)
    arr = pixels.array
    scale = 255.0 if pixels.bit_depth == 8 else 65535.0
    chw = torch.from_numpy(arr.astype(np.float32) / np.float32(scale)).permute(2, 0, 1).contiguous()
    channels = chw.shape[0]
    color = chw[:1] if channels <= 2 else chw[:3]
    alpha = chw[channels - 1 :].clone() if channels in (2, 4) else None
    mode = "gray" if channels <= 2 else ("rgba" if channels == 4 else "rgb")
    rgb = color.expand(3, -1, -1).contiguous() if channels <= 2 else color.contiguous()
    return LoadedImage(rgb=rgb, alpha=alpha, bit_depth=pixels.bit_depth, mode=mode)


# ----------------------------------------------------------------------------------------------- writing


def quantize(img: torch.Tensor, bit_depth: int = 8) -> torch.Tensor:
    """Round a float image in [0, 1] to the nearest of 2**bit_depth levels (half up, like MATLAB's
    ``im2uint8``), clamped, still as float in [0, 1]: what saving and reloading it would give."""
    levels = float(2**bit_depth - 1)
    return torch.floor(img.clamp(0.0, 1.0) * levels + 0.5) / levels


def to_pixels(
    rgb: torch.Tensor | np.ndarray,
    alpha: torch.Tensor | np.ndarray | None = None,
    bit_depth: int = 8,
    gray: bool = False,
) -> np.ndarray:
    """Float (C, H, W) in [0, 1] (+ alpha (1, H, W)) -> integer (H, W, C) array, rounded half up, clamped."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    color = torch.as_tensor(rgb).detach().to("cpu", torch.float64)
    if color.ndim == 4 and color.shape[0] == 1:
        color = color[0]
    if color.ndim == 2:
        color = color[None]
    if color.ndim != 3 or color.shape[0] not in (1, 3):
        raise ValueError(f"expected an image (3, H, W) or (1, H, W), got shape {tuple(color.shape)}")
    if gray and color.shape[0] == 3:
        color = (_LUMA[0] * color[0] + _LUMA[1] * color[1] + _LUMA[2] * color[2])[None]
    planes = [color]
    if alpha is not None:
        a = torch.as_tensor(alpha).detach().to("cpu", torch.float64).reshape(-1, *color.shape[-2:])
        if a.shape[0] != 1:
            raise ValueError(f"alpha must be (1, H, W) matching the image, got shape {tuple(a.shape)}")
        planes.append(a)
    chw = torch.cat(planes, dim=0)
    levels = 2**bit_depth - 1
    ints = torch.floor(chw.nan_to_num(0.0).clamp(0.0, 1.0) * levels + 0.5)
    return ints.permute(1, 2, 0).numpy().astype(np.uint8 if bit_depth == 8 else np.uint16)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


_PNG16_ROWS = 256  # rows filtered and compressed at a time: memory stays a small multiple of one band


def _paeth_rows(cur: np.ndarray, up: np.ndarray, bpp: int) -> np.ndarray:
    """Paeth-filtered bytes of rows `cur` (int16, rows x bytes) whose previous rows are `up`."""
    left = np.zeros_like(cur)
    left[:, bpp:] = cur[:, :-bpp]
    upleft = np.zeros_like(cur)
    upleft[:, bpp:] = up[:, :-bpp]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    filtered = ((cur - pred) % 256).astype(np.uint8)
    return np.concatenate([np.full((cur.shape[0], 1), 4, dtype=np.uint8), filtered], axis=1)


def _write_png16(handle, arr: np.ndarray) -> None:
    """Minimal 16-bit PNG encoder (Pillow cannot write 16-bit RGB): Paeth filter on every row, zlib,
    streamed in bands of rows so that memory does not grow with the image."""
    height, width, channels = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bpp = 2 * channels
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    handle.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header))
    compressor = zlib.compressobj(6)
    previous = np.zeros((1, width * bpp), dtype=np.int16)
    for top in range(0, height, _PNG16_ROWS):
        band = np.ascontiguousarray(arr[top : top + _PNG16_ROWS], dtype=">u2")
        cur = band.view(np.uint8).reshape(band.shape[0], width * bpp).astype(np.int16)
        up = np.concatenate([previous, cur[:-1]], axis=0)
        data = compressor.compress(_paeth_rows(cur, up, bpp).tobytes())
        if data:
            handle.write(_png_chunk(b"IDAT", data))
        previous = cur[-1:]
    handle.write(_png_chunk(b"IDAT", compressor.flush()) + _png_chunk(b"IEND", b""))


def _encode_png16(arr: np.ndarray) -> bytes:
    """The bytes `_write_png16` writes (for callers that want them in memory)."""
    import io

    buffer = io.BytesIO()
    _write_png16(buffer, arr)
    return buffer.getvalue()


def write_image(
    path: str | Path,
    rgb: torch.Tensor | np.ndarray,
    alpha: torch.Tensor | np.ndarray | None = None,
    bit_depth: int = 8,
    gray: bool = False,
    *,
    quality: int = 95,
) -> None:
    """Write a float (3, H, W) or (1, H, W) image in [0, 1] to .png (8 or 16 bit), .jpg/.jpeg or .webp.

    Values are clamped and rounded half up. ``gray`` writes one channel (BT.601 luma of RGB). JPEG cannot
    hold alpha: it is dropped with a warning. ``quality`` is for JPEG/WebP; WebP at 100 is lossless.
    Parent folders are created. Raises ImageError for an unsupported suffix or a failed write.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ImageError(f"{path}: cannot write '{suffix or path.name}' files (use .png, .jpg or .webp)")
    if bit_depth == 16 and suffix != ".png":
        raise ImageError(f"{path}: 16-bit output needs a .png file")
    if suffix in (".jpg", ".jpeg") and alpha is not None:
        warnings.warn(f"{path}: JPEG has no alpha channel; alpha dropped", stacklevel=2)
        alpha = None
    write_pixels(path, to_pixels(rgb, alpha, bit_depth, gray), quality=quality)


def write_pixels(path: str | Path, arr: np.ndarray, *, quality: int = 95) -> None:
    """Write integer pixels (H, W, C) (uint8, or uint16 for .png; C = 1, 2, 3 or 4 with alpha last)
    to .png, .jpg/.jpeg or .webp. A JPEG drops alpha with a warning. Raises ImageError naming the file
    for an unsupported suffix or a failed write (a full disk says so)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ImageError(f"{path}: cannot write '{suffix or path.name}' files (use .png, .jpg or .webp)")
    sixteen = arr.dtype == np.uint16
    if sixteen and suffix != ".png":
        raise ImageError(f"{path}: 16-bit output needs a .png file")
    if suffix in (".jpg", ".jpeg") and arr.shape[2] in (2, 4):
        warnings.warn(f"{path}: JPEG has no alpha channel; alpha dropped", stacklevel=2)
        arr = arr[:, :, :-1]

    def save(tmp: str) -> None:
        if sixteen:
            with open(tmp, "wb") as handle:
                _write_png16(handle, arr)
            return
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
        im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode=mode)
        if suffix == ".png":
            im.save(tmp, format="PNG", compress_level=6)
        elif suffix == ".webp":
            im.save(tmp, format="WEBP", quality=quality, lossless=quality >= 100)
        else:
            im.save(tmp, format="JPEG", quality=quality, subsampling=0)

    try:
        atomic_write(path, save)  # a failed or interrupted write leaves no half image
    except WriteError as exc:
        raise ImageError(str(exc)) from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot write ({describe_os_error(exc)})") from exc


# ----------------------------------------------------------------------------------------------- listing


def list_images(folder_or_file: str | Path, recursive: bool = True) -> list[Path]:
    """Sorted image files (by suffix, case-insensitive) under a folder; a file is returned as is.

    Hidden files and folders (name starting with '.') are skipped. Raises DataError if the path is missing.
    """
    root = Path(folder_or_file)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = [
        p
        for p in candidates
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    ]
    return sorted(found)
