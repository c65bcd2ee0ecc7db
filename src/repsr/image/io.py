"""Image reading and writing: PNG, JPEG, WebP, BMP, TIFF; 8 and 16 bit; gray, RGB, RGBA, palette.

Inside the library an image is a float32 tensor (3, H, W) in [0, 1], RGB. Alpha is returned apart, so
that an upscaler can resize it on its own and put it back. Every problem with a file (missing, empty,
truncated, not an image) raises :class:`repsr.util.errors.ImageError` with a one-line message naming the file.

Pillow reads 16-bit RGB(A) PNGs and TIFFs as 8 bit, losing the low byte; this module reads them at full
depth (PNG: Pillow's own decoder run once per byte, TIFF: ``tifffile``) and writes 16-bit PNGs with a
small encoder of its own.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from repsr.image.assess import jpeg_quality
from repsr.image.pixels import levels_of, to_integers
from repsr.util.atomic import atomic_write
from repsr.util.errors import DataError, ImageError, WriteError, describe_os_error, first_line

__all__ = [
    "IMAGE_SUFFIXES",
    "LoadedImage",
    "Pixels",
    "check_output_size",
    "list_images",
    "read_image",
    "read_pixels",
    "to_pixels",
    "verify_image",
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
    meta: dict = field(default_factory=dict)  # what `write_pixels` carries over: `read_metadata`
    jpeg_quality: int | None = None  # a JPEG file's quality, from its tables (`repsr.image.assess`)


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


def _as_tuple(value: object) -> tuple:
    return value if isinstance(value, tuple) else (value,)


# Float images must hold values in [0, 1]; this much beyond is float rounding, more is another scale.
_FLOAT_SLACK = 1e-3


def _float_to_uint16(arr: np.ndarray, path: Path) -> np.ndarray:
    """Float samples in [0, 1] -> uint16. Anything else (0..255 floats, HDR values above 1, NaN) is
    refused rather than clipped: a float image on another scale would come out white."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size and not np.isfinite(arr).all():
        raise ImageError(f"{path}: float image with NaN or infinite values; repsr reads float images in 0..1")
    low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if low < -_FLOAT_SLACK or high > 1.0 + _FLOAT_SLACK:
        hint = " (it looks like 0..255: divide by 255)" if high <= 255.0 and low >= 0.0 else ""
        raise ImageError(
            f"{path}: float image with values {low:g}..{high:g}; repsr reads float images as 0..1 and "
            f"would clip the rest{hint}; convert it to 8/16-bit or rescale to 0..1 first"
        )
    return to_integers(arr, 16)


def _read_float_tiff(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError as exc:  # pragma: no cover - tifffile comes with scikit-image
        raise ImageError(f"{path}: reading float TIFF needs the tifffile package") from exc
    arr = np.asarray(tifffile.imread(path, key=0))
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar configuration
    if arr.dtype.kind != "f":
        raise ImageError(f"{path}: unsupported TIFF sample type {arr.dtype}")
    return _float_to_uint16(arr, path)


# EXIF orientation -> how to turn the stored pixels (H, W, C) upright (Pillow's exif_transpose table).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _decode(im: Image.Image, path: Path) -> Pixels:
    pixels = _decode_any(im, path)  # first: reading EXIF may load the image and drop its tile info
    exif = im.getexif()
    orientation = exif.get(0x0112, 1)
    if pixels.array.ndim == 2:
        pixels.array = pixels.array[:, :, None]
    if orientation in _ORIENT:  # show pixels the way viewers do, at every bit depth
        pixels.array = np.ascontiguousarray(_ORIENT[orientation](pixels.array))
    pixels.meta = read_metadata(im, exif, converted=pixels.meta.get("converted", False))
    return pixels


def read_metadata(im: Image.Image, exif: Image.Exif, *, converted: bool = False) -> dict:
    """What an output should carry: ICC profile, EXIF (orientation set to upright), DPI, PNG text.

    `converted`: the pixels were converted from another colour space (CMYK, LAB, ...) into sRGB with
    the profile applied, so the profile is not carried."""
    meta: dict = {}
    icc = im.info.get("icc_profile")
    if icc and not converted:
        meta["icc_profile"] = bytes(icc)
    if len(exif):
        if 0x0112 in exif:
            exif[0x0112] = 1
        try:
            meta["exif"] = exif.tobytes()
        except Exception:  # a damaged EXIF block is left out rather than failing the image
            pass
    dpi = im.info.get("dpi")
    if isinstance(dpi, tuple) and len(dpi) == 2 and all(float(v) > 0 for v in dpi):
        meta["dpi"] = (float(dpi[0]), float(dpi[1]))
    text = getattr(im, "text", None) if im.format == "PNG" else None
    if text:
        meta["text"] = {str(k): str(v) for k, v in text.items()}
    return meta


def _decode_any(im: Image.Image, path: Path) -> Pixels:
    rawmode = _tile_rawmode(im)
    if im.format == "PNG" and rawmode in ("RGB;16B", "RGBA;16B", "LA;16B"):
        try:
            return Pixels(_read_png16_color(path, rawmode), 16)
        except (ValueError, KeyError, AttributeError, TypeError) as exc:  # a Pillow without these unpackers
            raise ImageError(f"{path}: cannot read this 16-bit PNG at full depth ({exc})") from exc
    if im.format == "TIFF" and 3 in _as_tuple(im.tag_v2.get(339)):  # SampleFormat: IEEE float
        return Pixels(_read_float_tiff(path), 16)
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
        return Pixels(_float_to_uint16(np.asarray(im, dtype=np.float64), path), 16)
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
        converted = _to_srgb(im)  # CMYK, YCbCr, LAB, HSV, RGBX
        return Pixels(np.ascontiguousarray(np.asarray(converted), dtype=np.uint8), 8, {"converted": True})
    return Pixels(np.ascontiguousarray(np.asarray(im), dtype=np.uint8), 8)


def _to_srgb(im: Image.Image) -> Image.Image:
    """RGB of an image in another colour space: through its ICC profile into sRGB when it has one."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            import io as _io

            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(_io.BytesIO(icc))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # an unusable profile: Pillow's plain conversion
            pass
    return im.convert("RGB")


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
            if im.format == "JPEG":
                pixels.jpeg_quality = jpeg_quality(getattr(im, "quantization", None))
    except ImageError:
        raise
    except PermissionError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: image too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _tiff_fallback(path, exc)
        raise ImageError(f"{path}: not an image, or a format Pillow cannot read") from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow and tifffile raise many types for damaged files (fuzz-tested)
        raise ImageError(f"{path}: truncated or corrupt image ({first_line(exc)})") from exc
    arr = pixels.array
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"{path}: unsupported image layout {arr.shape}")
    return pixels


def _tiff_fallback(path: Path, error: Exception) -> Pixels:
    """A TIFF Pillow cannot open (float RGB, ...): tifffile reads float and 16-bit samples."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            dtype = tif.pages[0].dtype
        if dtype is not None and np.dtype(dtype).kind == "f":
            arr = _read_float_tiff(path)
        elif dtype is not None and np.dtype(dtype) == np.uint16:
            arr = _read_tiff16(path)
        else:
            raise ImageError(f"{path}: a TIFF with {dtype} samples, which repsr cannot read")
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{path}: not an image, or a TIFF repsr cannot read ({first_line(exc)})") from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or 0 in arr.shape:
        raise ImageError(f"{path}: unsupported image layout {arr.shape}")
    return Pixels(np.ascontiguousarray(arr), 16)


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


def to_pixels(
    rgb: torch.Tensor | np.ndarray,
    alpha: torch.Tensor | np.ndarray | None = None,
    bit_depth: int = 8,
    gray: bool = False,
) -> np.ndarray:
    """Float (C, H, W) in [0, 1] (+ alpha (1, H, W)) -> integer (H, W, C) array by the one pixel rule
    (`repsr.image.pixels`: clamped, rounded half up, in the input's float type)."""
    levels_of(bit_depth)  # checks the depth
    color = torch.as_tensor(rgb).detach().cpu()
    if color.dtype not in (torch.float32, torch.float64):
        color = color.float()
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
        a = torch.as_tensor(alpha).detach().to("cpu", color.dtype).reshape(-1, *color.shape[-2:])
        if a.shape[0] != 1:
            raise ValueError(f"alpha must be (1, H, W) matching the image, got shape {tuple(a.shape)}")
        planes.append(a)
    return to_integers(torch.cat(planes, dim=0).permute(1, 2, 0), bit_depth)


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


def _png16_meta_chunks(meta: dict) -> bytes:
    """iCCP, pHYs, eXIf and tEXt/iTXt chunks carrying `meta` (see `read_metadata`) in a 16-bit PNG."""
    chunks = b""
    if meta.get("icc_profile"):
        chunks += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(meta["icc_profile"]))
    if meta.get("dpi"):
        x, y = (round(v / 0.0254) for v in meta["dpi"])
        chunks += _png_chunk(b"pHYs", struct.pack(">IIB", x, y, 1))
    exif = meta.get("exif")
    if exif:
        chunks += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    for key, value in (meta.get("text") or {}).items():
        keyword = key.encode("latin-1", "replace")[:79] or b"Comment"
        try:
            chunks += _png_chunk(b"tEXt", keyword + b"\x00" + value.encode("latin-1"))
        except UnicodeEncodeError:
            chunks += _png_chunk(b"iTXt", keyword + b"\x00\x00\x00\x00\x00" + value.encode("utf-8"))
    return chunks


def _write_png16(handle, arr: np.ndarray, meta: dict | None = None) -> None:
    """Minimal 16-bit PNG encoder (Pillow cannot write 16-bit RGB): Paeth filter on every row, zlib,
    streamed in bands of rows so that memory does not grow with the image; `meta` as `read_metadata`."""
    height, width, channels = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bpp = 2 * channels
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    handle.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png16_meta_chunks(meta or {}))
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


# Largest width/height each output format holds (PNG: 2**31 - 1; our 16-bit writer the same).
MAX_SIDE = {".jpg": 65535, ".jpeg": 65535, ".webp": 16383, ".png": 2**31 - 1}


def check_output_size(path: str | Path, width: int, height: int) -> None:
    """Raise `ImageError` now (before any work) if `path`'s format cannot hold a width x height image."""
    path = Path(path)
    limit = MAX_SIDE.get(path.suffix.lower())
    if limit is not None and max(width, height) > limit:
        kind = path.suffix.lower().lstrip(".").upper().replace("JPG", "JPEG")
        raise ImageError(
            f"{path}: {kind} holds at most {limit} pixels per side, the output would be {width}x{height}; "
            "use --format png"
        )


def verify_image(path: str | Path, width: int, height: int, *, label: str | Path | None = None) -> None:
    """Decode the written file `path` in full; raise `ImageError` unless it is width x height."""
    label = label or path
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # our own output: Pillow's decompression-bomb guard does not apply
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                size = im.size
                im.load()
    except Exception as exc:
        raise ImageError(f"{label}: the written file does not decode ({first_line(exc)}); not kept") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if size != (width, height):
        raise ImageError(
            f"{label}: the written file is {size[0]}x{size[1]}, expected {width}x{height}; not kept"
        )


def write_pixels(
    path: str | Path, arr: np.ndarray, *, quality: int = 95, meta: dict | None = None, replace: bool = True
) -> None:
    """Write integer pixels (H, W, C) (uint8, or uint16 for .png; C = 1, 2, 3 or 4 with alpha last)
    to .png, .jpg/.jpeg or .webp. A JPEG drops alpha with a warning. `meta` (`Pixels.meta`, see
    `read_metadata`): ICC profile, EXIF, DPI and PNG text written where the format holds them. The file
    is decoded again before it takes its name (`verify_image`). Raises ImageError naming the file for an
    unsupported suffix, a size the format cannot hold, a failed write (a full disk says so) or a
    written file that does not decode at the expected size. `replace=False`: ImageError rather than
    replace a file that has the name by the time this one is complete."""
    path = Path(path)
    suffix = path.suffix.lower()
    meta = meta or {}
    if suffix not in WRITE_SUFFIXES:
        raise ImageError(f"{path}: cannot write '{suffix or path.name}' files (use .png, .jpg or .webp)")
    sixteen = arr.dtype == np.uint16
    if sixteen and suffix != ".png":
        raise ImageError(f"{path}: 16-bit output needs a .png file")
    height, width = arr.shape[:2]
    check_output_size(path, width, height)
    if suffix in (".jpg", ".jpeg") and arr.shape[2] in (2, 4):
        warnings.warn(f"{path}: JPEG has no alpha channel; alpha dropped", stacklevel=2)
        arr = arr[:, :, :-1]

    def save(tmp: str) -> None:
        if sixteen:
            with open(tmp, "wb") as handle:
                _write_png16(handle, arr, meta)
        else:
            mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
            im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode=mode)
            extra = {k: meta[k] for k in ("icc_profile", "exif") if meta.get(k)}
            if meta.get("dpi") and suffix != ".webp":
                extra["dpi"] = meta["dpi"]
            if suffix == ".png":
                if meta.get("text"):
                    from PIL.PngImagePlugin import PngInfo

                    info = PngInfo()
                    for key, value in meta["text"].items():
                        info.add_itxt(key, value) if not value.isascii() else info.add_text(key, value)
                    extra["pnginfo"] = info
                im.save(tmp, format="PNG", compress_level=6, **extra)
            elif suffix == ".webp":
                im.save(tmp, format="WEBP", quality=quality, lossless=quality >= 100, **extra)
            else:
                im.save(tmp, format="JPEG", quality=quality, subsampling=0, **extra)
            del im  # the encoder's copy goes before the check decodes the file again (peak memory)
        verify_image(tmp, width, height, label=path)

    try:
        atomic_write(path, save, replace=replace)  # a failed or interrupted write leaves no half image
    except WriteError as exc:
        raise ImageError(str(exc)) from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot write ({describe_os_error(exc)})") from exc


# ----------------------------------------------------------------------------------------------- listing


def list_images(
    folder_or_file: str | Path, recursive: bool = True, extra: tuple[str, ...] = ()
) -> list[Path]:
    """Sorted image files (by suffix, case-insensitive) under a folder; a file is returned as is.

    Hidden files and folders (name starting with '.') are skipped; `extra` adds suffixes (videos).
    Raises DataError if the path is missing.
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
        if (p.suffix.lower() in IMAGE_SUFFIXES or p.suffix.lower() in extra)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    ]
    return sorted(found)
