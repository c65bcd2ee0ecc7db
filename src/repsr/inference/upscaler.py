"""The tiled `Upscaler`: a model made ready once (device, precision, backend, tile size), run per image.

Tiles are exact (see `repsr.inference.tiling`): the tiled result equals the untiled one up to float
rounding. `upscale_rgb`/`upscale_image` add what images need on top of tensors: Y-channel models,
alpha channels. `upscale_pixels` does the same for decoded integer pixels, tile by tile, straight into
the integer output array: an image needs its input, one output in its final 8/16-bit form and one
tile's work, never a float copy of the whole output.

A training-form model (`RepNet`) is re-parameterized once when the `Upscaler` is made: every inference
path runs the merged plain network (the same function in eval mode, 3-9x faster).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from repsr.arch.network import RepNet, describe, reparameterize_model
from repsr.image.color import rgb_to_ycbcr, ycbcr_to_rgb
from repsr.image.io import to_pixels
from repsr.image.resize import imresize
from repsr.inference.backends import decide, prepare_input, prepare_model
from repsr.inference.devices import resolve_device
from repsr.inference.tiling import (
    MIN_TILE,
    auto_tile_size,
    fused_tile_size,
    model_scale,
    receptive_radius,
    tile_windows,
)
from repsr.util.errors import ConfigError
from repsr.util.precision import Precision


def check_tile(tile: object) -> None:
    """The one tile rule: `"auto"`, `None` (no tiling) or an integer >= `MIN_TILE`; else `ConfigError`."""
    if tile is None or tile == "auto":
        return
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE:
        raise ConfigError(f"tile must be auto, none or an integer >= {MIN_TILE} LR pixels, got {tile!r}")


# Inputs are images in [0, 1]; values this far outside are another scale (0..255), not overshoot.
INPUT_RANGE = (-1.0, 2.0)


def check_input(lr: object, channels: int) -> None:
    """What `Upscaler` accepts, checked like the CLI checks files: a float tensor (C, H, W) or
    (N, C, H, W) with C = `channels`, not empty, finite, values in [0, 1] (within `INPUT_RANGE`) and on a
    device that holds data. `TypeError` for the wrong kind or dtype, `ValueError` for the rest."""
    shape = f"({channels}, H, W) or (N, {channels}, H, W)"
    if not isinstance(lr, Tensor):
        hint = " (torch.from_numpy(a).permute(2, 0, 1).float() / 255 for an 8-bit HWC array)"
        raise TypeError(f"expected a torch.Tensor {shape} in [0, 1], got {type(lr).__name__}{hint}")
    if not lr.is_floating_point():
        raise TypeError(
            f"expected a float tensor in [0, 1], got dtype {lr.dtype} (for 8 bit: x.float() / 255)"
        )
    if lr.ndim not in (3, 4) or lr.shape[-3] != channels:
        raise ValueError(f"expected {shape}, got {tuple(lr.shape)}")
    if lr.numel() == 0:
        raise ValueError(f"expected a non-empty image {shape}, got {tuple(lr.shape)}")
    if lr.device.type == "meta":
        raise ValueError("the input is a meta tensor (no data); give a tensor on the CPU or a GPU")
    low, high = (float(v) for v in torch.aminmax(lr.detach().float()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("the input has NaN or infinite values")
    if low < INPUT_RANGE[0] or high > INPUT_RANGE[1]:
        hint = "; for 0..255 values divide by 255" if high > INPUT_RANGE[1] else ""
        raise ValueError(f"expected values in [0, 1], got {low:g}..{high:g}{hint}")


def _inference_form(model: nn.Module) -> nn.Module:
    """The plain network of a training-form model (merged once, eval mode); a plain model as it is."""
    if isinstance(model, RepNet):
        return reparameterize_model(model)
    return model


class Upscaler:
    """A model made ready to upscale: device, precision, backend and tiling chosen once, reused per image.

    `upscaler(lr)` takes (C, H, W) or (N, C, H, W) float in [0, 1] on any device and returns the output on the
    same device, in float32 and not clamped (the tiled result equals the untiled one). `tile`: core tile side
    in LR pixels, `None` for no tiling, `"auto"` to size tiles from free memory. `precision` (see
    `repsr.inference.backends.decide`): `None` (default) is fp32 for a torch model and the file's own
    precision for an ONNX runner, so results never depend on a timing; `auto` (what `repsr upscale` uses)
    times every candidate that runs here (torch channels-last and the fused C kernel, `repsr.kernels`, in
    fp32 and, where they run, bf16 and int8) and runs the fastest, a reduced precision only when it is
    clearly faster and keeps photographs within 16 levels of fp32; `fp32`; `bf16` (input, global skip and
    output stay float32); `fp16` (CUDA only; a tile whose fp16 output overflows is recomputed in float32);
    `int8` (the fused kernel where it has an int8 path, else ONNX Runtime: pass a `repsr.models.onnx.
    OnnxRunner` of a file `repsr export --int8` wrote, or a model, quantized on the spot). `backend`
    (`auto`, or one of `repsr.inference.BACKENDS`) narrows the choice. `precision_reason` says in one line
    what ran and why.
    `half=True` is the deprecated spelling of `precision="fp16"`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = "auto",
        precision: str | None = None,
        half: bool = False,
        tile: int | str | None = "auto",
        backend: str = "auto",
    ) -> None:
        self.device = resolve_device(device)
        if half:
            warnings.warn(
                "Upscaler(half=True) is deprecated: use precision='fp16'", DeprecationWarning, stacklevel=2
            )
            precision = "fp16"
        if precision is None:
            precision = "auto" if describe(model).form == "onnx" else "fp32"  # an ONNX file's own
        check_tile(tile)
        model = _inference_form(model)  # a training form runs as its merged plain network
        prepared = decide(model, self.device, precision, backend)
        self.precision, self.precision_reason = prepared.precision, prepared.reason
        self.backend = prepared.backend
        self.dtype = prepared.input_dtype  # what tiles are cast to before the network
        self.spec = model.spec
        self.scale = model_scale(model)
        self.radius = receptive_radius(model)
        self.module = prepared.module
        fp16 = self.precision is Precision.FP16
        self._model = model if fp16 else None  # kept only for the fp16 overflow fallback
        self._float_module: nn.Module | None = None
        compute = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}.get(self.precision)
        self.tile = auto_tile_size(model, self.device, compute or torch.float32) if tile == "auto" else tile
        self._fused_auto = tile == "auto" and self.backend == "fused"
        if self._fused_auto:  # the kernel tiles in L2 itself; the window bounds its float output
            self.tile = fused_tile_size(model.spec, self.device)

    def window_side(self) -> int | None:
        """The tile to cut the next image into: `tile`, or for the fused kernel with `tile="auto"` the
        window that free memory allows now (it may have shrunk since the Upscaler was made)."""
        if self._fused_auto:
            return min(self.tile, fused_tile_size(self.spec, self.device))
        return self.tile

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
        x = prepare_input(lr.to(self.device, dtype, non_blocking=True), self.backend)
        try:
            return module(x).float()
        except RuntimeError as error:  # torch's CPU allocator says so in a RuntimeError: one image's failure
            if "can't allocate memory" in str(error) or "not enough memory" in str(error):
                raise MemoryError(f"not enough memory for a {tuple(lr.shape)} window") from None
            raise

    @torch.no_grad()
    def untiled(self, lr: Tensor) -> Tensor:
        """The model on `lr` (N, C, H, W) in one piece (no tiling), float32, on `lr`'s device."""
        return self._run(lr).to(lr.device)

    def writes_pixels(self, height: int, width: int) -> bool:
        """True when `pixels` runs for (height, width) frames: the fused kernel on RGB frames that fit in
        one window writes 8-bit pixels itself."""
        fits = self.tile is None or (height <= self.tile and width <= self.tile)
        return self.backend == "fused" and self.in_channels == 3 and fits

    @torch.no_grad()
    def pixels(self, lr: Tensor) -> Tensor:
        """`lr` (N, 3, H, W) upscaled straight to 8-bit pixels (N, H*s, W*s, 3), uint8, equal to rounding
        `self(lr)` by `repsr.image.pixels`' rule (x 255, clamped, half up) but with no float output in
        between: what the video path hands its encoder. Only where `writes_pixels`; `RuntimeError`
        elsewhere."""
        if not self.writes_pixels(*lr.shape[-2:]):
            raise RuntimeError(f"{self.backend}, tile {self.tile}: no 8-bit output; call the Upscaler")
        check_input(lr, self.in_channels)
        return self.module.pixels(lr if lr.ndim == 4 else lr[None])

    @torch.no_grad()  # not inference_mode: callers may modify the result in place
    def __call__(self, lr: Tensor) -> Tensor:
        check_input(lr, self.in_channels)
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


@dataclass
class UpscaledImage:
    """What goes back to disk: colour (3, H, W) in [0, 1], optional alpha, and how to write it."""

    rgb: Tensor
    alpha: Tensor | None
    bit_depth: int
    gray: bool


def upscale_rgb(upscaler: Upscaler, rgb: Tensor, *, tiled: bool = True) -> Tensor:
    """Upscale an RGB image (3, H, W) or a batch (N, 3, H, W: video frames); a Y-channel model upscales
    Y and takes Cb/Cr by bicubic (in float64: the same in any window). The one RGB path of images and
    video. `tiled=False` runs the model in one piece (for a window that is already a tile)."""
    batched = rgb.ndim == 4
    run = upscaler if tiled else (lambda x: upscaler.untiled(x) if batched else upscaler.untiled(x[None])[0])
    if upscaler.in_channels == 3:
        return run(rgb)
    ycc = rgb_to_ycbcr(rgb)
    y = run(ycc[..., :1, :, :])
    chroma = ycc[..., 1:, :, :].double()
    if batched:
        chroma = torch.stack([imresize(image, upscaler.scale) for image in chroma])
    else:
        chroma = imresize(chroma, upscaler.scale)
    return ycbcr_to_rgb(torch.cat([y, chroma.float()], dim=-3))


def upscale_image(upscaler: Upscaler, image) -> UpscaledImage:
    """Upscale a `repsr.image.io.LoadedImage`; alpha is resized by bicubic and re-attached, kind is kept."""
    rgb = upscale_rgb(upscaler, image.rgb).clamp_(0.0, 1.0)
    alpha = None
    if image.alpha is not None:
        alpha = imresize(image.alpha.double(), upscaler.scale).float().clamp_(0.0, 1.0)
    return UpscaledImage(rgb=rgb, alpha=alpha, bit_depth=image.bit_depth, gray=image.mode == "gray")


# Context (LR pixels) a window needs besides the model's receptive radius: MATLAB bicubic (chroma of Y
# models, alpha) reads 2 pixels to each side; 4 leaves a margin.
BICUBIC_RADIUS = 4


def output_bytes(height: int, width: int, channels: int, scale: int, bit_depth: int) -> int:
    """Bytes of the integer output array of an (height, width) image upscaled by `scale`."""
    return height * scale * width * scale * channels * (bit_depth // 8)


def upscale_pixels(upscaler: Upscaler, pixels, *, bit_depth: int | None = None) -> np.ndarray:
    """Upscale decoded integer pixels (`repsr.image.io.Pixels`, (H, W, C) with C = 1, 2, 3 or 4) into an
    integer array (H*s, W*s, C) of `bit_depth` (default: the source's), tile by tile.

    Same result as `upscale_image` followed by `repsr.image.io.to_pixels` (colour clamped, gray kept gray,
    alpha by bicubic, rounded half up), but each tile is rounded and written into the output array as
    it is computed: memory is the input, the integer output and one tile. Raises `MemoryError` when the
    output array cannot be allocated.
    """
    array = pixels.array
    height, width, channels = array.shape
    bit_depth = bit_depth or pixels.bit_depth
    s = upscaler.scale
    levels = np.float32(255.0 if pixels.bit_depth == 8 else 65535.0)
    has_alpha = channels in (2, 4)
    gray = channels <= 2
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    out = np.empty((height * s, width * s, channels), dtype=dtype)
    tile = upscaler.window_side()
    pad = max(upscaler.radius, BICUBIC_RADIUS)
    rows = tile_windows(height, tile or height, pad)
    cols = tile_windows(width, tile or width, pad)
    for y0, y1, iy0, iy1 in rows:
        for x0, x1, ix0, ix1 in cols:
            window = torch.from_numpy(array[iy0:iy1, ix0:ix1].astype(np.float32) / levels).permute(2, 0, 1)
            color = window[:1].expand(3, -1, -1) if gray else window[:3]
            core = (slice(None), slice((y0 - iy0) * s, (y1 - iy0) * s), slice((x0 - ix0) * s, (x1 - ix0) * s))
            rgb = upscale_rgb(upscaler, color.contiguous(), tiled=False).clamp_(0.0, 1.0)[core]
            alpha = None
            if has_alpha:
                alpha = imresize(window[channels - 1 :].double(), s).float().clamp_(0.0, 1.0)[core]
            out[y0 * s : y1 * s, x0 * s : x1 * s] = to_pixels(rgb, alpha, bit_depth, gray)
    return out
