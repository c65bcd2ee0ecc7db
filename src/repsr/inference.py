"""Upscaling with a trained model: tensors of any size (tiled, exact) and image files.

Tiling keeps memory bounded on large images without seams: each tile is cut with a margin of at least the
network's receptive radius (one LR pixel per 3x3 conv: `num_blocks + 2`), and only the tile's core is
kept; all tiles of an image have one input shape (see `tile_windows`). Every kept output pixel then
saw exactly the input the untiled network would have shown it, so
the tiled result equals the untiled one up to float rounding.

Backends (`Upscaler(backend=...)`):
- `eager`: the model's own `forward`, NCHW (the reference).
- `channels-last`: NHWC activations, and for a plain network a fused tail that writes pixel shuffle and
  nearest-upsampled skip in one strided add (the eager tail spends as long as the convs on a small net).
  Same arithmetic as `eager`, about 1.5-2x faster on CPU; `auto` picks it (see `repsr bench`).
- `compile`: `torch.compile` of the channels-last network; as fast as `channels-last` on CPU in our
  measurements but pays a compile (tens of seconds) per process, so it is opt-in.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from repsr.errors import ConfigError, DataError, ImageError, RepsrError
from repsr.network import PlainSR, RepNet

BACKENDS = ("auto", "eager", "channels-last", "compile")
# What `auto` runs: on CPU the fastest path `repsr bench` finds that needs no warm-up (compile matches it
# at 1 thread but costs 5-20 s of compiling per process and input shape); on CUDA NHWC is also the
# layout cuDNN's fp16 tensor-core kernels want.
AUTO_BACKEND = "channels-last"
OUTPUT_FORMATS = ("png", "jpg", "webp")
MIN_TILE = 16
MAX_TILE = 2048
# On CPU, tiles beyond a few hundred pixels buy nothing (measured: 192-384 px tiles ran 15-20% faster
# than one 768x512 piece for M4C16, activations staying in cache), so `auto` stops there.
CPU_MAX_TILE = 512
# Fraction of free memory a tile may use; the rest is left to the allocator, the OS and other programs.
MEMORY_FRACTION = 0.25


# ------------------------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else is checked to be usable here."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a device name (use auto, cpu or cuda)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    return resolved


def free_memory_bytes(device: torch.device) -> int:
    """Free memory on `device` now: CUDA's free memory, or the OS's available RAM for the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30  # no way to ask: assume a modest machine


# ------------------------------------------------------------------------------------------- the net


def model_scale(model: nn.Module) -> int:
    """Upscaling factor of a repsr model (read from its `.spec`)."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise TypeError(f"expected a repsr model with a .spec, got {type(model).__name__}")
    return int(spec.scale)


def receptive_radius(model: nn.Module) -> int:
    """How many LR pixels away an output pixel can see: one per 3x3 conv, `num_blocks + 2` in all.

    Holds for the plain network and for the training form in eval mode (every block is equivalent to
    one 3x3 conv there); the nearest-upsampled skip and the pixel shuffle add nothing.
    """
    spec = getattr(model, "spec", None)
    if spec is None:
        raise TypeError(f"expected a repsr model with a .spec, got {type(model).__name__}")
    return int(spec.num_blocks) + 2


def shuffle_add_skip(features: Tensor, lr: Tensor, scale: int) -> Tensor:
    """`pixel_shuffle(features, scale) + nearest_upsample(lr, scale)` in a single strided pass.

    `features` (N, C*s*s, H, W) in any memory format, `lr` (N, C, H, W); the result is a new contiguous
    NCHW tensor. Same additions as the eager tail, without materialising either intermediate.
    """
    n, c, h, w = lr.shape
    # channel index of `features` is c * s*s + i * s + j for output pixel (y*s + i, x*s + j)
    shuffled = features.unflatten(1, (c, scale, scale)).permute(0, 1, 4, 2, 5, 3)
    if torch.compiler.is_compiling():  # inductor fuses the functional form itself (and rejects `out=`)
        return (shuffled + lr[:, :, :, None, :, None]).reshape(n, c, h * scale, w * scale)
    out = torch.empty((n, c, h * scale, w * scale), dtype=features.dtype, device=features.device)
    torch.add(shuffled, lr[:, :, :, None, :, None], out=out.view(n, c, h, scale, w, scale))
    return out


class FusedTailPlainSR(nn.Module):
    """A `PlainSR` run with the fused pixel-shuffle + skip tail: same function, faster on CPU."""

    def __init__(self, plain: PlainSR) -> None:
        super().__init__()
        self.body = plain.body
        self.spec = plain.spec
        self.scale = plain.spec.scale

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for layer in self.body:
            y = layer(y)
        return shuffle_add_skip(y, x, self.scale)


def prepare_model(model: nn.Module, backend: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The module that computes `model` on `device` in `dtype` with `backend` (without touching `model`)."""
    if backend not in BACKENDS or backend == "auto":
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS[1:])}, got {backend!r}")
    if not isinstance(model, RepNet | PlainSR):
        raise TypeError(f"expected a RepNet or PlainSR, got {type(model).__name__}")
    import copy

    module = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    if backend == "eager":
        return module
    if isinstance(module, PlainSR):
        module = FusedTailPlainSR(module)
    module = module.to(memory_format=torch.channels_last)
    if backend == "compile":
        return torch.compile(module, dynamic=None)
    return module


# ------------------------------------------------------------------------------------------- tiling


def tile_windows(length: int, tile: int, pad: int) -> list[tuple[int, int, int, int]]:
    """Cover 0..length with cores of at most `tile` pixels, each inside an input window of ONE size.

    Returns (core_start, core_stop, window_start, window_stop). Every window is
    `min(tile + 2 * pad, length)` long, shifted inward at the image borders, so each core keeps at least
    `pad` pixels of real context on every side that is not an image border. One window size means one
    input shape for the whole image: convolution backends (oneDNN, cuDNN) plan their kernels once per
    image instead of once per edge-tile shape, and `torch.compile` does not recompile for edge tiles.
    """
    window = min(tile + 2 * pad, length)
    count = max(1, math.ceil(length / tile))
    bounds = [round(i * length / count) for i in range(count + 1)]
    spans = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        window_start = min(max(0, start - pad), length - window)
        spans.append((start, stop, window_start, window_start + window))
    return spans


def auto_tile_size(model: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32) -> int:
    """Largest square tile (LR pixels) whose activations fit in a quarter of the free memory (capped:
    2048 on CUDA, 512 on CPU where larger tiles are no faster).

    Per LR pixel the widest step holds a conv's input and output plus the scale^2-times larger output
    and skip; twice that covers convolution workspaces.
    """
    spec = model.spec
    bytes_per_value = torch.finfo(dtype).bits // 8
    out_values = spec.in_channels * spec.scale**2
    values_per_pixel = 2 * max(spec.channels, out_values) + 2 * out_values
    bytes_per_pixel = 2 * values_per_pixel * bytes_per_value
    budget = free_memory_bytes(device) * MEMORY_FRACTION
    side = int(math.sqrt(max(budget, 0) / bytes_per_pixel))
    cap = MAX_TILE if device.type == "cuda" else CPU_MAX_TILE
    return max(MIN_TILE, min(cap, side // 8 * 8))


class Upscaler:
    """A model made ready to upscale: device, precision, backend and tiling chosen once, reused per image.

    `upscaler(lr)` takes (C, H, W) or (N, C, H, W) float in [0, 1] on any device and returns the output
    on the same device, in float32 and not clamped (the tiled result equals the untiled one).
    `tile`: core tile side in LR pixels, `None` for no tiling, `"auto"` to size tiles from free memory.
    `half` runs fp16 (CUDA only); a tile whose fp16 output overflows is recomputed in float32.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = "auto",
        half: bool = False,
        tile: int | str | None = "auto",
        backend: str = "auto",
    ) -> None:
        self.device = resolve_device(device)
        if half and self.device.type != "cuda":
            raise ConfigError("--half (fp16) needs a CUDA device; CPU inference runs in float32")
        if tile is not None and tile != "auto" and (not isinstance(tile, int) or tile < MIN_TILE):
            raise ConfigError(f"tile must be 'auto', None or an integer >= {MIN_TILE}, got {tile!r}")
        self.dtype = torch.float16 if half else torch.float32
        self.backend = AUTO_BACKEND if backend == "auto" else backend
        self.spec = model.spec
        self.scale = model_scale(model)
        self.radius = receptive_radius(model)
        self.module = prepare_model(model, self.backend, self.device, self.dtype)
        self._model = model if half else None  # kept only for the fp16 overflow fallback
        self._float_module: nn.Module | None = None
        self.tile = auto_tile_size(model, self.device, self.dtype) if tile == "auto" else tile

    @property
    def in_channels(self) -> int:
        return int(self.spec.in_channels)

    def _run(self, lr: Tensor) -> Tensor:
        out = self._forward(self.module, lr, self.dtype)
        if self.dtype == torch.float16 and not bool(torch.isfinite(out).all()):
            # fp16 overflow (large activations in deep nets): redo this piece in float32
            if self._float_module is None:
                self._float_module = prepare_model(self._model, self.backend, self.device, torch.float32)
            out = self._forward(self._float_module, lr, torch.float32)
        return out

    def _forward(self, module: nn.Module, lr: Tensor, dtype: torch.dtype) -> Tensor:
        x = lr.to(self.device, dtype, non_blocking=True)
        if self.backend != "eager":
            x = x.contiguous(memory_format=torch.channels_last)
        return module(x).float()

    @torch.no_grad()  # not inference_mode: callers may modify the result in place
    def __call__(self, lr: Tensor) -> Tensor:
        if lr.ndim not in (3, 4) or lr.shape[-3] != self.in_channels:
            raise ValueError(
                f"expected ({self.in_channels}, H, W) or (N, {self.in_channels}, H, W), got {tuple(lr.shape)}"
            )
        batched = lr if lr.ndim == 4 else lr[None]
        height, width = batched.shape[-2:]
        s, pad = self.scale, self.radius
        if self.tile is None or (height <= self.tile and width <= self.tile):
            out = self._run(batched).to(lr.device)
            return out if lr.ndim == 4 else out[0]
        out = torch.empty((*batched.shape[:-2], height * s, width * s), dtype=torch.float32, device=lr.device)
        for y0, y1, iy0, iy1 in tile_windows(height, self.tile, pad):
            for x0, x1, ix0, ix1 in tile_windows(width, self.tile, pad):
                result = self._run(batched[..., iy0:iy1, ix0:ix1])
                core = result[..., (y0 - iy0) * s : (y1 - iy0) * s, (x0 - ix0) * s : (x1 - ix0) * s]
                out[..., y0 * s : y1 * s, x0 * s : x1 * s] = core.to(lr.device)
        return out if lr.ndim == 4 else out[0]


def upscale_tensor(model: nn.Module, lr: Tensor, *, tile: int | str | None = None, **options) -> Tensor:
    """One-off convenience: `Upscaler(model, tile=tile, **options)(lr)` (CPU unless `device` says)."""
    options.setdefault("device", lr.device)
    return Upscaler(model, tile=tile, **options)(lr)


# ------------------------------------------------------------------------------------------- images


@dataclass
class UpscaledImage:
    """What goes back to disk: colour (3, H, W) in [0, 1], optional alpha, and how to write it."""

    rgb: Tensor
    alpha: Tensor | None
    bit_depth: int
    gray: bool


def upscale_rgb(upscaler: Upscaler, rgb: Tensor) -> Tensor:
    """Upscale an RGB image (3, H, W); a Y-channel model upscales Y and takes Cb/Cr by bicubic."""
    if upscaler.in_channels == 3:
        return upscaler(rgb)
    from repsr.color import rgb_to_ycbcr, ycbcr_to_rgb
    from repsr.resize import imresize

    ycc = rgb_to_ycbcr(rgb)
    y = upscaler(ycc[:1])
    chroma = imresize(ycc[1:], upscaler.scale)
    return ycbcr_to_rgb(torch.cat([y, chroma], dim=0))


def upscale_image(upscaler: Upscaler, image) -> UpscaledImage:
    """Upscale a `repsr.io.LoadedImage`; alpha is resized by bicubic and re-attached, kind is kept."""
    from repsr.resize import imresize

    rgb = upscale_rgb(upscaler, image.rgb).clamp_(0.0, 1.0)
    alpha = None
    if image.alpha is not None:
        alpha = imresize(image.alpha, upscaler.scale).clamp_(0.0, 1.0)
    return UpscaledImage(rgb=rgb, alpha=alpha, bit_depth=image.bit_depth, gray=image.mode == "gray")


def output_path(source: Path, relative: Path, out_dir: Path, fmt: str | None) -> Path:
    """`out_dir / relative`, with the suffix of `fmt`, or of the source when it is writable, else .png."""
    if fmt is not None:
        suffix = "." + fmt
    elif source.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        suffix = source.suffix
    else:
        suffix = ".png"
    return out_dir / relative.with_suffix(suffix)


def upscale_file(upscaler: Upscaler, source: Path, target: Path) -> Path:
    """Read `source`, upscale, write `target` (16 bit kept in PNG, 8 bit otherwise); returns `target`."""
    from repsr.io import read_image, write_image

    image = read_image(source)
    result = upscale_image(upscaler, image)
    bit_depth = result.bit_depth if target.suffix.lower() == ".png" else 8
    write_image(target, result.rgb, result.alpha, bit_depth=bit_depth, gray=result.gray)
    return target


def _glob_base(pattern: str) -> Path:
    """The leading part of a glob pattern without wildcards: matches are named relative to it."""
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Expand files, folders (recursive) and globs to (source, name relative to the output folder).

    A file keeps its name, a folder's images keep their path under the folder, a glob's matches their
    path under the pattern's wildcard-free prefix. Returns (found, missing): `found` without duplicates,
    `missing` the inputs that matched nothing, with the reason.
    """
    from repsr.io import list_images

    found: list[tuple[Path, Path]] = []
    missing: list[tuple[Path, str]] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            images = list_images(path, recursive=True)
            if not images:
                missing.append((path, "folder has no images"))
            found += [(image, image.relative_to(path)) for image in images]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(item):
            base = _glob_base(item)
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                missing.append((path, "pattern matched no files"))
            found += [(match, match.relative_to(base)) for match in matches]
        else:
            missing.append((path, "no such file or folder"))
    unique = list({source.resolve(): (source, relative) for source, relative in found}.values())
    return unique, missing


@dataclass
class UpscaleReport:
    """Outcome of a batch: what was written and which inputs failed, with the one-line reason."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def upscale_files(
    upscaler: Upscaler,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    fmt: str | None = None,
    progress: bool = True,
    on_done: Callable[[Path, Path], None] | None = None,
) -> UpscaleReport:
    """Upscale every image named by `inputs` into `out_dir`, mirroring names; one bad file spoils nothing.

    Problems with a single file (unreadable, not an image, would overwrite its source) are collected in
    the report instead of raised; raises `DataError` only when the inputs name no file at all.
    """
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    out_dir = Path(out_dir)
    jobs, missing = collect_inputs(inputs)
    report = UpscaleReport(failed=[(path, reason) for path, reason in missing])
    if not jobs:
        raise DataError(f"no input images found in {', '.join(map(str, inputs))}")
    targets: dict[Path, Path] = {}
    for source, relative in jobs:
        target = output_path(source, relative, out_dir, fmt)
        if target in targets:
            raise ConfigError(f"{source} and {targets[target]} would both be written to {target}")
        targets[target] = source
    for target, source in _progress(list(targets.items()), progress):
        try:
            if target.resolve() == source.resolve():
                raise ImageError(f"{source}: output would overwrite the input; choose another -o folder")
            upscale_file(upscaler, source, target)
        except (RepsrError, OSError) as error:
            report.failed.append((source, str(error)))
            continue
        report.written.append(target)
        if on_done is not None:
            on_done(source, target)
    return report


def _progress(jobs: list[tuple[Path, Path]], enabled: bool) -> Iterable[tuple[Path, Path]]:
    if not enabled:
        return jobs
    from tqdm import tqdm

    return tqdm(jobs, desc="upscale", unit="img", leave=False)
