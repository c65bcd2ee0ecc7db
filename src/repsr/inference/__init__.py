"""Upscaling with a trained model: tensors of any size (tiled, exact) and image files.

One module per job:
- `devices`: device choice (`resolve_device`) and free-memory probing;
- `backends`: every backend (torch eager / channels-last / compile, the fused kernel, ONNX Runtime) in one
  registry, and `decide`, the one place that picks what runs (`precision="auto"` by one timing);
- `forms`: `Bf16PlainSR`, the bf16 form a backend builds;
- `tiling`: exact tiles (`tile_windows`, `receptive_radius`) and the automatic tile size;
- `upscaler`: the tiled `Upscaler`, `upscale_tensor`, and RGB/alpha/Y-channel image handling;
- `denoise`: `AutoDenoise`, each image at the denoise strength its degradation asks for;
- `files`: collecting inputs (files, folders, globs), output naming and the batch loop `upscale_files`;
- `video`: streaming video upscaling (decoder thread, model, encoder thread).

Everything public is importable from `repsr.inference` itself.
"""

from repsr.inference.backends import (
    BACKENDS,
    BENCH_BACKENDS,
    REGISTRY,
    UPSCALE_BACKENDS,
    Backend,
    Candidate,
    PreparedNet,
    candidates,
    check_backend,
    decide,
    prepare_input,
    prepare_model,
)
from repsr.inference.denoise import AutoDenoise, make_upscaler, wants_auto
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
    "BACKENDS",
    "BENCH_BACKENDS",
    "CPU_MAX_TILE",
    "MAX_TILE",
    "MEMORY_FRACTION",
    "MIN_TILE",
    "OUTPUT_FORMATS",
    "REGISTRY",
    "UPSCALE_BACKENDS",
    "AutoDenoise",
    "Backend",
    "Candidate",
    "PreparedNet",
    "candidates",
    "check_backend",
    "decide",
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
    "resolve_device",
    "tile_windows",
    "upscale_file",
    "upscale_files",
    "upscale_image",
    "upscale_rgb",
    "upscale_tensor",
    "make_upscaler",
    "wants_auto",
]
