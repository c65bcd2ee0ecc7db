"""What the page works on: uploaded files, folders on this machine, and their pictures.

- `Folders`: the folders a user may name by path (`--allow`, default the home folder and the current
  one); a path outside them, or one that does not exist, is refused with a one-line `PathError`.
- `Library`: uploads (kept in a private temporary folder, size-capped, each checked to decode before it
  is listed) and folders added by path, each listed as `Source`s.
- `read_picture`: the integer pixels of an image, or of a video's first frame, for thumbnails and the
  preview crop.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np

from repsr.image.io import IMAGE_SUFFIXES, Pixels, list_images, read_pixels
from repsr.inference.denoise import VIDEO_CHOICE, choose_for
from repsr.inference.video import VIDEO_EXTENSIONS, VideoError, is_video_path, require_av
from repsr.models.auto_denoise import DenoiseChoice
from repsr.util.errors import ImageError, RepsrError, first_line

CHUNK = 1 << 20
UPLOAD_SUFFIXES = sorted(IMAGE_SUFFIXES | set(VIDEO_EXTENSIONS))  # the page checks them before it uploads
MAX_PIXELS = 178_956_970  # Pillow's own refusal (2 x its MAX_IMAGE_PIXELS), held here without its global
NAME_MAX = 255  # bytes in one file name, as most file systems allow


class PathError(RepsrError):
    """A path typed on the page that is outside the allowed folders, missing, or of the wrong kind."""


class UploadError(RepsrError):
    """An upload that is too large, has no usable name, or is not an image or video."""


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


class Folders:
    """The folders whose contents the page may read and write (each resolved, links followed)."""

    def __init__(self, roots: list[str | Path]) -> None:
        self.roots = [Path(root).expanduser().resolve() for root in roots]

    def _resolve(self, text: str, what: str) -> Path:
        if not str(text).strip():
            raise PathError(f"{what}: give a folder path")
        if "\0" in str(text):  # the OS takes no NUL in a path (Python raises ValueError)
            raise PathError(f"{str(text)!r}: a path cannot contain a NUL character")
        path = Path(str(text).strip()).expanduser()
        if not path.is_absolute():
            raise PathError(f"{path}: give the {what} as an absolute path (/..., or ~/...)")
        try:
            resolved = path.resolve()
            resolved.exists()  # a name too long for the file system raises here, not in the checks below
        except OSError as error:
            raise PathError(f"{str(path)[:200]}: not a usable path ({error.strerror or error})") from None
        if not any(_is_under(resolved, root) for root in self.roots):
            allowed = ", ".join(map(str, self.roots))
            raise PathError(
                f"{path}: outside the folders this app may use ({allowed}); start repsr app with "
                "--allow FOLDER to add one"
            )
        return resolved

    def input_folder(self, text: str) -> Path:
        """An existing folder to read pictures from."""
        path = self._resolve(text, "input folder")
        if not path.exists():
            raise PathError(f"{text}: no such folder")
        if not path.is_dir():
            raise PathError(f"{text}: is a file, not a folder (add files with the file picker)")
        return path

    def output_folder(self, text: str) -> Path:
        """A folder to write results into: existing, or to be created inside an existing folder."""
        path = self._resolve(text, "output folder")
        if path.exists() and not path.is_dir():
            raise PathError(f"{text}: is an existing file; the output must be a folder")
        if not path.exists() and not path.parent.is_dir():
            raise PathError(f"{text}: its parent folder {path.parent} does not exist")
        return path

    def model_file(self, text: str) -> Path:
        """An existing model file (.safetensors, .pth, .pt, .onnx)."""
        path = self._resolve(text, "model file")
        if not path.is_file():
            raise PathError(f"{text}: no such model file")
        return path


@dataclass
class Source:
    """One picture or video on the page: where it lies and what it is."""

    id: str
    name: str  # shown on the page: the file name, or the path under its folder
    path: Path
    video: bool
    width: int = 0
    height: int = 0
    frames: int = 0  # videos: frames the container announces (0 when unknown)
    folder: str | None = None  # id of the folder entry it came from; None for an upload

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "video": self.video,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "folder": self.folder,
        }


@dataclass
class FolderEntry:
    """A folder added by path: upscaled as one input, as `repsr upscale FOLDER -o OUT` does."""

    id: str
    path: Path
    sources: list[str] = field(default_factory=list)


def video_info(path: Path) -> tuple[int, int, int]:
    """(width, height, frames) of the first video stream; `VideoError` when there is none."""
    av = require_av()
    try:
        container = av.open(str(path), "r")
    except Exception as error:
        raise VideoError(f"{path.name}: not a readable video ({first_line(error)})") from None
    try:
        if not container.streams.video:
            raise VideoError(f"{path.name}: no video stream in this file")
        stream = container.streams.video[0]
        frames = int(stream.frames or 0)
        if not frames and stream.duration and stream.average_rate:
            frames = int(round(float(stream.duration * stream.time_base * stream.average_rate)))
        return int(stream.codec_context.width), int(stream.codec_context.height), frames
    finally:
        container.close()


def check_pixels(path: Path) -> None:
    """`ImageError` when an image's header declares more than `MAX_PIXELS`, before anything is decoded.

    Pillow refuses such an image itself, but through a process-wide setting that `verify_image` lifts
    while a job checks a result it wrote: an upload or a preview decoded at that moment, in another
    thread of this server, had no limit (a 100-byte PNG of 30000x30000 is 2.7 GB decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # not an image Pillow opens (or over Pillow's own limit): read_pixels says why
        return
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{path.name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, more than the "
            f"{MAX_PIXELS / 1e6:.0f} an image may have here (a damaged file, or a decompression bomb)"
        )


def read_picture(path: Path) -> Pixels:
    """The integer pixels of an image, or the first frame of a video (8-bit RGB)."""
    if not is_video_path(path):
        check_pixels(path)
        return read_pixels(path)
    av = require_av()
    try:
        with av.open(str(path), "r") as container:
            for frame in container.decode(video=0):
                return Pixels(frame.to_ndarray(format="rgb24"), 8)
    except Exception as error:
        raise VideoError(f"{path.name}: cannot decode a frame ({first_line(error)})") from None
    raise VideoError(f"{path.name}: the video has no frames")


def describe_source(path: Path) -> tuple[int, int, int]:
    """(width, height, frames) of a file, decoding it fully (an image) or its header (a video): the
    check an upload passes before it is listed. `ImageError`/`VideoError` otherwise."""
    if is_video_path(path):
        return video_info(path)
    check_pixels(path)
    pixels = read_pixels(path)
    height, width = pixels.array.shape[:2]
    return width, height, 0


def thumbnail_png(pixels: Pixels, max_side: int = 480) -> bytes:
    """A small 8-bit RGB PNG of `pixels` for the page (gray shown as gray, alpha dropped)."""
    from PIL import Image

    array = pixels.array
    if pixels.bit_depth == 16:
        array = (array >> 8).astype(np.uint8)
    channels = array.shape[2]
    rgb = np.repeat(array[..., :1], 3, axis=2) if channels <= 2 else array[..., :3]
    image = Image.fromarray(np.ascontiguousarray(rgb))
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Library:
    """The uploads and folders of this server session.

    Uploads are written into a private temporary folder (removed by `close`), one sub-folder per upload
    so that each keeps its file name (which the output takes, as `repsr upscale FILE` names it).
    """

    def __init__(self, folders: Folders, max_upload_bytes: int, work_dir: str | Path | None = None) -> None:
        self.folders = folders
        self.max_upload_bytes = int(max_upload_bytes)
        self.work_dir = Path(tempfile.mkdtemp(prefix="repsr-app-", dir=work_dir))
        self.sources: dict[str, Source] = {}
        self.folder_entries: dict[str, FolderEntry] = {}
        self._lock = threading.Lock()
        self._pixels: OrderedDict[Path, Pixels] = OrderedDict()  # decoded pictures, most recent last
        self._choices: OrderedDict[Path, DenoiseChoice] = OrderedDict()  # --denoise auto per picture

    def close(self) -> None:
        """Remove the uploads folder."""
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def check_upload(self, name: str, length: int | None) -> str:
        """The file name to keep, or `UploadError` before any byte is read (size cap, kind)."""
        clean = Path(str(name).replace("\\", "/")).name.strip()
        if not clean or clean.startswith("."):
            raise UploadError(f"{name!r}: give the upload a file name")
        if any(ord(char) < 32 or ord(char) == 127 for char in clean):  # NUL, newlines, escapes
            raise UploadError(f"{clean!r}: a file name cannot contain control characters")
        if len(clean.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise UploadError(f"{clean[:40]}...: the file name is longer than {NAME_MAX} bytes")
        if Path(clean).suffix.lower() not in UPLOAD_SUFFIXES:
            raise UploadError(
                f"{clean}: not an image or video file name (one of {', '.join(UPLOAD_SUFFIXES)})"
            )
        if length is None:
            raise UploadError(f"{clean}: the upload has no length (Content-Length)")
        if length > self.max_upload_bytes:
            raise UploadError(
                f"{clean}: {_mb(length)} is over the upload limit of {_mb(self.max_upload_bytes)} "
                "(start repsr app with --max-upload-mb to raise it, or add its folder by path)"
            )
        return clean

    def add_upload(self, name: str, stream: BinaryIO, length: int | None) -> Source:
        """Store an upload of `length` bytes read from `stream`, check it decodes, and list it."""
        clean = self.check_upload(name, length)
        source_id = uuid.uuid4().hex[:12]
        folder = self.work_dir / source_id
        folder.mkdir()
        path = folder / clean
        remaining = int(length or 0)
        try:
            with open(path, "wb") as handle:
                while remaining > 0:
                    chunk = stream.read(min(CHUNK, remaining))
                    if not chunk:
                        raise UploadError(f"{clean}: the upload ended early ({remaining} bytes missing)")
                    handle.write(chunk)
                    remaining -= len(chunk)
            width, height, frames = describe_source(path)
        except (ImageError, VideoError) as error:
            shutil.rmtree(folder, ignore_errors=True)
            raise UploadError(str(error).replace(str(path), clean)) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        source = Source(source_id, clean, path, is_video_path(path), width, height, frames)
        with self._lock:
            self.sources[source_id] = source
        return source

    def add_folder(self, text: str) -> tuple[FolderEntry, list[Source]]:
        """List the images and videos of a folder given by path (recursive, as `repsr upscale FOLDER`)."""
        path = self.folders.input_folder(text)
        files = list_images(path, recursive=True, extra=VIDEO_EXTENSIONS)
        if not files:
            raise PathError(f"{text}: the folder has no images or videos")
        entry = FolderEntry(uuid.uuid4().hex[:12], path)
        sources = []
        for file in files:
            source = Source(uuid.uuid4().hex[:12], str(file.relative_to(path)), file, is_video_path(file))
            source.folder = entry.id
            entry.sources.append(source.id)
            sources.append(source)
        with self._lock:
            self.folder_entries[entry.id] = entry
            for source in sources:
                self.sources[source.id] = source
        return entry, sources

    def remove(self, source_id: str) -> None:
        """Drop an upload (its file too) or a folder entry (with its listed files) from the page."""
        with self._lock:
            entry = self.folder_entries.pop(source_id, None)
            if entry is not None:
                for sid in entry.sources:
                    self.sources.pop(sid, None)
                return
            source = self.sources.pop(source_id, None)
        if source is not None and source.folder is None:
            shutil.rmtree(source.path.parent, ignore_errors=True)

    def source(self, source_id: str) -> Source:
        with self._lock:
            source = self.sources.get(source_id)
        if source is None:
            raise PathError(f"{source_id}: no such file on this page (it was removed, or the app restarted)")
        return source

    def denoise_choice(self, source_id: str) -> DenoiseChoice:
        """What `--denoise auto` picks for a source (a batch run picks the same), cached with its pixels."""
        source = self.source(source_id)
        if source.video:
            return VIDEO_CHOICE
        with self._lock:
            cached = self._choices.get(source.path)
        if cached is None:
            pixels = self.pixels(source_id)
            cached = choose_for(pixels.array, pixels.jpeg_quality)
            with self._lock:
                self._choices[source.path] = cached
                while len(self._choices) > 64:
                    self._choices.popitem(last=False)
        return cached

    def pixels(self, source_id: str) -> Pixels:
        """The decoded picture of a source (a video's first frame), cached for the preview."""
        source = self.source(source_id)
        with self._lock:
            cached = self._pixels.get(source.path)
            if cached is not None:
                self._pixels.move_to_end(source.path)
                return cached
        pixels = read_picture(source.path)
        with self._lock:
            self._pixels[source.path] = pixels
            while len(self._pixels) > 4:
                self._pixels.popitem(last=False)
        return pixels
