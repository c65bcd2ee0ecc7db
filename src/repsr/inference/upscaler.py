"""The tiled `Upscaler`: a model made ready once (device, precision, backend, tile size), run per image.

Tiles are exact (see `repsr.inference.tiling`): the tiled result equals the untiled one up to float
rounding. `upscale_rgb`/`upscale_image` add what images need on top of tensors: Y-channel models,
alpha channels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from repsr.errors import ConfigError
from repsr.inference.backends import prepare_input, prepare_model, resolve_backend
from repsr.inference.devices import resolve_device
from repsr.inference.tiling import MIN_TILE, auto_tile_size, model_scale, receptive_radius, tile_windows


class Upscaler:
    """A model made ready to upscale: device, precision, backend and tiling chosen once, reused per image.

    `upscaler(lr)` takes (C, H, W) or (N, C, H, W) float in [0, 1] on any device and returns the output
    on the same device, in float32 and not clamped (the tiled result equals the untiled one).
    `tile`: core tile side in LR pixels, `None` for no tiling, `"auto"` to size tiles from free memory.
    `precision` (see `repsr.precision`): `None` (default) is fp32 for a torch model and the file's own
    precision for an ONNX runner, so results never depend on a timing; `auto` (what `repsr upscale`
    uses) is bf16 where the device has native bf16 units and a short timing of this model finds it
    faster, else fp32; `fp32`; `bf16` (input, global skip and output stay float32); `fp16` (CUDA only; a
    tile whose fp16 output overflows is recomputed in float32); `int8` (ONNX Runtime on the CPU: pass a
    `repsr.quantize.OnnxInt8Runner` of a file `repsr export --int8` wrote, or a model, quantized on the
    spot). `precision_reason` says in one line what ran and why. `half=True` is the deprecated spelling
    of `precision="fp16"`.
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
        from repsr.precision import Precision, prepare_for_precision

        self.device = resolve_device(device)
        if half:
            warnings.warn(
                "Upscaler(half=True) is deprecated: use precision='fp16'", DeprecationWarning, stacklevel=2
            )
            precision = "fp16"
        if precision is None:
            precision = "auto" if getattr(model, "quantized", None) is not None else "fp32"
        if tile is not None and tile != "auto" and (not isinstance(tile, int) or tile < MIN_TILE):
            raise ConfigError(f"tile must be 'auto', None or an integer >= {MIN_TILE}, got {tile!r}")
        prepared = prepare_for_precision(model, self.device, precision, resolve_backend(backend))
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
