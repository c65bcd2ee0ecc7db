"""Data: training patches with an on-disk cache, evaluation sets.

Training (:class:`TrainPatches`): every HR image is decoded once, its LR made once with MATLAB-compatible
bicubic ``imresize`` from the modcropped HR and rounded to the source's integer levels (how DIV2K's LR
PNGs were made), and both are kept as memory-mapped ``.npy`` files in a cache, keyed by the file's content,
the scale and the resize method. Epoch two and every later run decode nothing. Patches are cut from the
memory maps, so a loader worker costs a few memory copies per patch.

Evaluation (:class:`EvalSet`): a folder of HR images (LR generated the same way) or the common paired
layout ``HR/`` + ``LR_bicubic/X{scale}/`` with names like ``babyx4.png``. Standard sets (Set5, Set14,
B100, Urban100, Manga109, DIV2K valid) are only folders the user points to; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import torch

from repsr.data.degradations import Degradation, degrade, stage_rng
from repsr.data.smooth import smooth_pair
from repsr.image import io as rio
from repsr.image.color import rgb_to_y
from repsr.image.resize import bicubic_lr, make_lr
from repsr.util.atomic import atomic_write_stream
from repsr.util.errors import DataError, ImageError, RepsrError

__all__ = [
    "EvalPair",
    "EvalSet",
    "CacheError",
    "TrainPatches",
    "default_cache_dir",
    "make_lr",
    "modcrop",
]

log = logging.getLogger(__name__)

RESIZE_METHOD = "matlab-bicubic"
_CACHE_VERSION = "v2"  # v2: LR by image.resize.bicubic_lr (one rule for every LR)
_MAX_LISTED = 20
_OPEN_IMAGES = 64  # memory-mapped images kept open per process (each map holds a file descriptor)

Img = TypeVar("Img", torch.Tensor, np.ndarray)


# ------------------------------------------------------------------------------------------ small helpers


def modcrop(img: Img, scale: int) -> Img:
    """Crop the bottom/right so height and width are multiples of ``scale`` (MATLAB ``modcrop``).

    Torch tensors are cropped on the last two dims (..., H, W); numpy arrays on the first two (H, W, ...),
    the layout they have when decoded. Returns a view.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if isinstance(img, torch.Tensor):
        h, w = img.shape[-2], img.shape[-1]
        return img[..., : h - h % scale, : w - w % scale]
    h, w = img.shape[0], img.shape[1]
    return img[: h - h % scale, : w - w % scale]


def _to_rgb3(arr: np.ndarray) -> np.ndarray:
    """(H, W, C) with C in 1..4 -> (H, W, 3): gray expanded, alpha dropped."""
    channels = arr.shape[2]
    if channels <= 2:
        return np.repeat(arr[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, C) integer view (possibly flipped, on a memory map) -> new (C, H, W) float32 in [0, 1]."""
    top = np.float32(np.iinfo(arr.dtype).max)
    x = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)  # one strided copy + conversion
    x /= top
    return torch.from_numpy(x)


def _normalized_stem(path: Path, scale: int) -> str:
    stem = path.stem
    return re.sub(rf"x{scale}$", "", stem, flags=re.IGNORECASE)


def _index_lr(folder: Path, scale: int) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in rio.list_images(folder):
        key = _normalized_stem(path, scale)
        if key in index:
            raise DataError(f"{folder}: two LR images for '{key}': {index[key].name} and {path.name}")
        index[key] = path
    return index


def _summarize(skipped: list[tuple[Path, str]], total: int, what: str) -> str:
    listed = "; ".join(f"{p} ({why})" for p, why in skipped[:_MAX_LISTED])
    more = f"; and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
    return f"skipped {len(skipped)} of {total} {what}: {listed}{more}"


# ------------------------------------------------------------------------------------------------ cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/repsr`` or ``~/.cache/repsr``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "repsr"


class CacheError(DataError):
    """The data cache folder cannot be written (full disk, permissions)."""


def _atomic_write(path: Path, write) -> None:
    """`repsr.util.atomic.atomic_write_stream` (write(handle), fsync, rename); failures are `CacheError`s."""
    try:
        atomic_write_stream(path, write)
    except OSError as exc:
        raise CacheError(f"{path.parent}: cannot write the data cache ({exc.strerror or exc})") from exc


class _Cache:
    """Content-addressed store of decoded pixels.

    ``stat/<key>``: content hash of a source, keyed by (absolute path, size, mtime), so unchanged files are
    not re-hashed; ``img/<hash>.npy``: decoded pixels (H, W, 3) uint8/uint16; ``img/<hash>.bad``: why a
    file could not be decoded; ``lr/<hash>-<method>-x<scale>.npy``: generated LR. Files are written under a
    temporary name and renamed, so two processes can build the same cache at once. Changing a source
    changes its hash and so its entries; old entries stay until the folder is deleted.
    """

    def __init__(self, root: Path):
        self.root = root / f"data-{_CACHE_VERSION}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{root}: cannot create the data cache ({exc.strerror or exc})") from exc

    def content_hash(self, path: Path) -> str:
        st = path.stat()
        ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}".encode()
        stat_file = self.root / "stat" / hashlib.sha1(ident).hexdigest()
        try:
            digest = stat_file.read_text().strip()
            if len(digest) == 32:
                return digest
        except OSError:
            pass
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        _atomic_write(stat_file, lambda f: f.write(digest.encode()))
        return digest

    def image_file(self, digest: str) -> Path:
        return self.root / "img" / digest[:2] / f"{digest}.npy"

    def lr_file(self, digest: str, scale: int) -> Path:
        return self.root / "lr" / digest[:2] / f"{digest}-{RESIZE_METHOD}-x{scale}.npy"

    @staticmethod
    def shape(path: Path) -> tuple[int, ...] | None:
        """Shape from the .npy header without reading the data; None when missing or unreadable."""
        try:
            return tuple(np.load(path, mmap_mode="r").shape)
        except (OSError, ValueError):
            return None

    @staticmethod
    def save(path: Path, arr: np.ndarray) -> None:
        _atomic_write(path, lambda f: np.save(f, arr))

    def decoded(self, source: Path) -> tuple[Path, tuple[int, ...] | None, np.ndarray | None]:
        """(cache file, its shape, pixels if just decoded) for one source; raises ImageError if unreadable."""
        digest = self.content_hash(source)
        target = self.image_file(digest)
        shape = self.shape(target)
        if shape is not None:
            return target, shape, None
        bad = target.with_suffix(".bad")
        if bad.is_file():  # the verdict is keyed by content: name the file being read, not the first one
            raise ImageError(f"{source}: {bad.read_text().strip() or 'unreadable image'}")
        try:
            arr = _to_rgb3(rio.read_pixels(source).array)
        except ImageError as exc:
            text, prefix = str(exc), f"{source}: "
            reason = (text[len(prefix) :] if text.startswith(prefix) else text).encode()
            _atomic_write(bad, lambda f: f.write(reason))
            raise
        self.save(target, arr)
        return target, arr.shape, arr


# --------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class _Entry:
    source: Path
    hr_file: Path
    lr_file: Path
    lr_shape: tuple[int, int]


class TrainPatches(torch.utils.data.Dataset):
    """Aligned random LR/HR patch pairs from a folder of HR images (LR made by MATLAB bicubic, cached).

    ``hr``: a folder (searched recursively), an image file, or a sequence of them. ``patch_size`` is the
    LR side; the HR patch is ``patch_size * scale``. ``lr``: an LR folder for the paired layout (names
    equal to the HR stems, optionally with an ``x{scale}`` suffix, e.g. DIV2K's ``0001x4.png``) instead of
    generating LR. ``cache_dir``: defaults to :func:`default_cache_dir`. ``augment``: random horizontal and
    vertical flips and transposition (the 8 flips/90-degree rotations). ``channel_shuffle``: a random
    order of the R, G, B channels per patch (bicubic LR commutes with it), so that colours the photographs
    lack are trained on too. ``degradation``: a `repsr.data.degradations.Degradation` recipe; its share
    `clean_prob` of patches keep the cached bicubic LR, the others get LR degraded from the HR patch on
    the fly (after flips and channel order), with choices from a generator of their own seeded by the
    key, so patches without degradation are the same as without the recipe. ``y_channel``: return the Y of
    :func:`repsr.image.color.rgb_to_y` (1 channel) instead of RGB. ``smooth_share``: the share of
    patches replaced by a synthetic flat colour or ramp (:mod:`repsr.data.smooth`), flipped, shuffled and
    degraded like the others; which patches, and their content, come from a generator of their own, so
    the other patches are the same as without it.

    Indexing is deterministic for exact resume: ``dataset[key]`` uses image ``key % len(dataset)`` and takes
    every random choice from ``numpy.random.default_rng(key)``, so the same key always gives the same
    patch. The sampler must therefore draw keys from a large range (e.g. its own seeded generator); a
    plain ``range(len(dataset))`` gives the same patches every epoch.

    Unreadable images, images whose LR is smaller than the patch, and HR images without an LR partner are
    skipped with one logged warning (one line) listing them and the count; DataError if nothing usable
    remains.
    """

    def __init__(
        self,
        hr: Path | str | Sequence[Path | str],
        scale: int,
        patch_size: int,
        *,
        lr: Path | str | None = None,
        cache_dir: Path | str | None = None,
        augment: bool = True,
        channel_shuffle: bool = False,
        degradation: Degradation | None = None,
        y_channel: bool = False,
        smooth_share: float = 0.0,
    ):
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        if int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size}")
        self.scale = int(scale)
        self.patch_size = int(patch_size)
        self.augment = augment
        self.channel_shuffle = channel_shuffle
        recipe = degradation.resolved() if degradation is not None else None
        self.degradation = None if recipe is None or recipe.clean_prob >= 1.0 else recipe
        self.y_channel = y_channel
        if not 0.0 <= smooth_share <= 1.0:
            raise ValueError(f"smooth_share must be within [0, 1], got {smooth_share}")
        self.smooth_share = float(smooth_share)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        sources = self._list_sources(hr)
        lr_index = _index_lr(Path(lr), self.scale) if lr is not None else None
        cache = _Cache(self.cache_dir)

        skipped: list[tuple[Path, str]] = []
        entries: list[_Entry | None] = [None] * len(sources)

        def prepare(i: int) -> None:
            try:
                entries[i] = self._prepare(cache, sources[i], lr_index, lr)
            except _Skip as exc:
                skipped.append((sources[i], str(exc)))
            except CacheError:
                raise
            except RepsrError as exc:
                reason = str(exc)
                prefix = f"{sources[i]}: "
                skipped.append((sources[i], reason[len(prefix) :] if reason.startswith(prefix) else reason))
            except OSError as exc:  # vanished or unreadable between listing and reading
                skipped.append((sources[i], f"cannot read ({exc.strerror or exc})"))

        log.info("preparing %d training images (cache %s)", len(sources), cache.root)
        workers = max(1, min(4, os.cpu_count() or 1, len(sources)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(prepare, range(len(sources))))
        self.entries: list[_Entry] = [e for e in entries if e is not None]
        self.skipped: list[tuple[Path, str]] = sorted(skipped)
        if self.skipped:
            message = _summarize(self.skipped, len(sources), "training images")
            if not self.entries:
                raise DataError(f"{hr}: no usable training images ({message})")
            log.warning("%s", message)
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @staticmethod
    def _list_sources(hr) -> list[Path]:
        items = [hr] if isinstance(hr, (str, Path)) else list(hr)
        sources: list[Path] = []
        for item in items:
            sources.extend(rio.list_images(item))
        if not sources:
            raise DataError(f"{hr}: no images found (looked for {', '.join(sorted(rio.IMAGE_SUFFIXES))})")
        return sources

    def _prepare(self, cache: _Cache, source: Path, lr_index: dict[str, Path] | None, lr_root) -> _Entry:
        s, p = self.scale, self.patch_size
        hr_file, hr_shape, hr_pixels = cache.decoded(source)
        if lr_index is None:
            lr_file = cache.lr_file(cache.content_hash(source), s)
            lr_shape = cache.shape(lr_file)
            if lr_shape is None:
                if hr_pixels is None:
                    hr_pixels = np.load(hr_file)
                if hr_shape[0] < s or hr_shape[1] < s:
                    raise _Skip(f"smaller than the scale, {hr_shape[1]}x{hr_shape[0]}")
                small = make_lr(hr_pixels, s)
                cache.save(lr_file, small)
                lr_shape = small.shape
        else:
            partner = lr_index.get(_normalized_stem(source, s))
            if partner is None:
                raise _Skip(f"no LR image for it in {lr_root}")
            lr_file, lr_shape, _ = cache.decoded(partner)
            if (lr_shape[0], lr_shape[1]) != (hr_shape[0] // s, hr_shape[1] // s):
                raise _Skip(
                    f"LR {partner.name} is {lr_shape[1]}x{lr_shape[0]}, expected "
                    f"{hr_shape[1] // s}x{hr_shape[0] // s} for x{s}"
                )
        if lr_shape[0] < p or lr_shape[1] < p:
            raise _Skip(f"LR {lr_shape[1]}x{lr_shape[0]} is smaller than the patch {p}x{p}")
        return _Entry(source, hr_file, lr_file, (lr_shape[0], lr_shape[1]))

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # memory maps are reopened in each worker process
        return state

    def _arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self._open.get(index)
        if pair is None:
            entry = self.entries[index]
            pair = (np.load(entry.lr_file, mmap_mode="r"), np.load(entry.hr_file, mmap_mode="r"))
            self._open[index] = pair
            if len(self._open) > _OPEN_IMAGES:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(index)
        return pair

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = operator.index(key)
        if key < 0:
            raise IndexError(f"patch keys are non-negative integers, got {key}")
        index = key % len(self.entries)
        rng = np.random.default_rng(key)
        lr, hr = self._arrays(index)
        s, p = self.scale, self.patch_size
        lh, lw = self.entries[index].lr_shape
        top = int(rng.integers(0, lh - p + 1))
        left = int(rng.integers(0, lw - p + 1))
        lr_patch = np.asarray(lr[top : top + p, left : left + p])
        hr_patch = np.asarray(hr[top * s : (top + p) * s, left * s : (left + p) * s])
        if self.smooth_share > 0.0:
            smooth_rng = np.random.default_rng((key, 2))
            if smooth_rng.random() < self.smooth_share:
                lr_patch, hr_patch = smooth_pair(smooth_rng, p, s)
                if lr.dtype != np.uint8:  # a 16-bit source: the same levels on its scale
                    lr_patch, hr_patch = lr_patch.astype(lr.dtype) * 257, hr_patch.astype(hr.dtype) * 257
        hflip, vflip, transpose = rng.random(3) < 0.5
        if self.augment:
            if hflip:
                lr_patch, hr_patch = lr_patch[:, ::-1], hr_patch[:, ::-1]
            if vflip:
                lr_patch, hr_patch = lr_patch[::-1], hr_patch[::-1]
            if transpose:
                lr_patch, hr_patch = lr_patch.transpose(1, 0, 2), hr_patch.transpose(1, 0, 2)
        if self.channel_shuffle:  # drawn after the other choices: patches without it stay as they were
            order = rng.permutation(3)
            lr_patch, hr_patch = lr_patch[:, :, order], hr_patch[:, :, order]
        if self.degradation is not None:
            seed = (key, 1)  # every stage of the degradation draws from its own generator of this seed
            if stage_rng(seed, "clean").random() >= self.degradation.clean_prob:
                lr_patch = degrade(np.ascontiguousarray(hr_patch), s, self.degradation, seed)
        lr_t, hr_t = _to_tensor(lr_patch), _to_tensor(hr_patch)
        if self.y_channel:
            lr_t, hr_t = rgb_to_y(lr_t), rgb_to_y(hr_t)
        return lr_t, hr_t


class _Skip(Exception):
    """Internal: an image that is readable but not usable for training."""


# ------------------------------------------------------------------------------------------- evaluation


class TooSmallError(DataError):
    """An evaluation image too small to be measured at this scale (skipped when iterating a set)."""


class EvalPair(NamedTuple):
    """One evaluation image: ``lr`` and ``hr`` float32 (C, h, w) / (C, h*scale, w*scale) in [0, 1]."""

    name: str
    lr: torch.Tensor
    hr: torch.Tensor


class EvalSet:
    """Evaluation images from a folder, iterated as :class:`EvalPair` (HR modcropped to the scale).

    Layouts, detected in this order: ``root/HR`` + ``root/LR_bicubic/X{scale}`` (EDSR's benchmark layout, LR
    names ``{stem}x{scale}.png``); ``root/HR`` alone; ``root`` itself as a folder of HR images (searched
    recursively) or a single image. An explicit ``lr`` folder overrides the detection. Where no LR is given it
    is made with MATLAB bicubic from the modcropped HR and rounded to the source's integer levels, which
    reproduces the published LR. ``y_channel`` returns Y (1 channel) for Y-channel models; note that
    :func:`repsr.image.metrics.psnr` rounds a 1-channel float input to uint8 levels, i.e. it measures rounded
    Y. Unreadable images raise ImageError when reached: an evaluation set with a missing image is not the
    standard set any more.
    """

    def __init__(
        self,
        root: Path | str,
        scale: int,
        *,
        name: str | None = None,
        y_channel: bool = False,
        lr: Path | str | None = None,
    ):
        root = Path(root)
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        if not root.exists():
            raise DataError(f"{root}: no such evaluation folder")
        self.root = root
        self.scale = int(scale)
        self.y_channel = y_channel
        hr_dir = root / "HR"
        default_lr: Path | None = None
        if root.is_dir() and hr_dir.is_dir():
            self.hr_files = rio.list_images(hr_dir)
            default_lr = root / "LR_bicubic" / f"X{self.scale}"
            self.name = name or root.name
        else:
            self.hr_files = rio.list_images(root)
            self.name = name or (root.stem if root.is_file() else root.name)
        if not self.hr_files:
            raise DataError(f"{root}: no images found (looked for {', '.join(sorted(rio.IMAGE_SUFFIXES))})")
        lr_dir = Path(lr) if lr is not None else default_lr
        if lr is not None and not lr_dir.is_dir():
            raise DataError(f"{lr_dir}: no such LR folder")
        self.lr_files: list[Path] | None = None
        if lr_dir is not None and lr_dir.is_dir():
            index = _index_lr(lr_dir, self.scale)
            missing = [p for p in self.hr_files if _normalized_stem(p, self.scale) not in index]
            if missing:
                names = ", ".join(p.name for p in missing[:_MAX_LISTED])
                raise DataError(f"{lr_dir}: no LR image for {len(missing)} HR images: {names}")
            self.lr_files = [index[_normalized_stem(p, self.scale)] for p in self.hr_files]

    @property
    def layout(self) -> str:
        """ "paired" when LR files are read, "generated" when LR is made by imresize."""
        return "paired" if self.lr_files is not None else "generated"

    def __len__(self) -> int:
        return len(self.hr_files)

    def __getitem__(self, i: int) -> EvalPair:
        s = self.scale
        source = self.hr_files[i]
        loaded = rio.read_image(source)
        hr = modcrop(loaded.rgb, s)
        if self.lr_files is None:
            if hr.shape[-1] == 0 or hr.shape[-2] == 0:
                raise TooSmallError(f"{source}: smaller than the scale x{s}")
            lr = bicubic_lr(hr, s, loaded.bit_depth).float()
        else:
            lr = rio.read_image(self.lr_files[i]).rgb
            lh, lw = lr.shape[-2:]
            if lh * s > hr.shape[-2] or lw * s > hr.shape[-1] or lh == 0 or lw == 0:
                raise DataError(
                    f"{self.lr_files[i]}: LR {lw}x{lh} does not fit HR {source.name} "
                    f"{loaded.rgb.shape[-1]}x{loaded.rgb.shape[-2]} at x{s}"
                )
            hr = hr[:, : lh * s, : lw * s]
        hr = hr.contiguous()
        if self.y_channel:
            lr, hr = rgb_to_y(lr), rgb_to_y(hr)
        return EvalPair(source.stem, lr, hr)

    def __iter__(self) -> Iterator[EvalPair]:
        """The pairs in order; an HR image smaller than the scale is skipped with a one-line warning."""
        for i in range(len(self)):
            try:
                yield self[i]
            except TooSmallError as error:
                log.warning("%s; skipped", error)
