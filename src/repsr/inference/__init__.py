"""Upscaling with a trained model: tensors of any size (tiled, exact) and image files.

One module per job:
- `devices`: device choice (`resolve_device`) and free-memory probing;
- `backends`: the one registry of backends (`eager`, `channels-last`, `compile` run by `Upscaler`;
  `onnxruntime` timed by `repsr bench` too) and preparing a model and its input for one;
- `tiling`: exact tiles (`tile_windows`, `receptive_radius`) and the automatic tile size;
- `upscaler`: the tiled `Upscaler`, `upscale_tensor`, and RGB/alpha/Y-channel image handling;
- `files`: collecting inputs (files, folders, globs), output naming and the batch loop `upscale_files`.

Everything public is importable from `repsr.inference` itself.
"""

from repsr.inference.backends import (
    AUTO_BACKEND,
    BACKENDS,
    BENCH_BACKENDS,
    REGISTRY,
    UPSCALE_BACKENDS,
    Backend,
    FusedTailPlainSR,
    prepare_input,
    prepare_model,
    resolve_backend,
    shuffle_add_skip,
)
from repsr.inference.devices import free_memory_bytes, resolve_device
from repsr.inference.files import (
    OUTPUT_FORMATS,
    Job,
    UpscaleReport,
    collect_inputs,
    output_path,
    plan_outputs,
    upscale_file,
    upscale_files,
)
from repsr.inference.tiling import (
    CPU_MAX_TILE,
    MAX_TILE,
    MEMORY_FRACTION,
    MIN_TILE,
    auto_tile_size,
    model_scale,
    receptive_radius,
    tile_windows,
)
from repsr.inference.upscaler import UpscaledImage, Upscaler, upscale_image, upscale_rgb, upscale_tensor

__all__ = [
    "AUTO_BACKEND",
    "BACKENDS",
    "BENCH_BACKENDS",
    "CPU_MAX_TILE",
    "MAX_TILE",
    "MEMORY_FRACTION",
    "MIN_TILE",
    "OUTPUT_FORMATS",
    "REGISTRY",
    "UPSCALE_BACKENDS",
    "Backend",
    "FusedTailPlainSR",
    "UpscaleReport",
    "UpscaledImage",
    "Upscaler",
    "auto_tile_size",
    "Job",
    "collect_inputs",
    "free_memory_bytes",
    "model_scale",
    "output_path",
    "plan_outputs",
    "prepare_input",
    "prepare_model",
    "receptive_radius",
    "resolve_backend",
    "resolve_device",
    "shuffle_add_skip",
    "tile_windows",
    "upscale_file",
    "upscale_files",
    "upscale_image",
    "upscale_rgb",
    "upscale_tensor",
]
