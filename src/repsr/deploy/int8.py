"""int8: static post-training quantization in ONNX Runtime, checked before the file is written.

`export_int8_onnx(model, out)` starts from the verified fp32 ONNX export (`repsr.deploy.onnx.export_onnx`,
dynamic batch/height/width), calibrates activation ranges on photographs (by default the built-in
training sample photographs), quantizes in QDQ format (int8 weights per output channel, uint8
activations per tensor) and keeps the file only if ONNX Runtime's int8 output, on this machine, is
within `MIN_INT8_PSNR` dB and `MAX_INT8_PIXEL_LEVELS` 8-bit levels of the fp32 network on every check
image: held-out photographs and the harsh photographs (the gate's, also dark and more saturated).
Synthetic graphics (colour bars, a checkerboard) are measured and reported, not required: static
ranges calibrated on photographs clip on them (x4: 116 levels on the checkerboard), and calibrating on
them too cost the photographs 8-10 dB. int8 is for photographs; graphics want fp32.

Weights are quantized to 7 bits (`reduce_range`). On CPUs without VNNI (AVX2, AVX-512 before VNNI) ONNX
Runtime multiplies u8 activations by s8 weights with `vpmaddubsw`, whose pair sums saturate int16 with
8-bit weights: on a 2-core AMD EPYC (Zen 3, AVX2) the shipped x2 model lost 1.5 dB Y-PSNR on average
(7.3 dB on one photograph) and pixels were up to 100 levels off; with 7-bit weights 0.09 dB and 8
levels. One file runs on every CPU, so every file gets 7-bit weights.

Where the error enters (measured on a trained M4C16 x4, Y-PSNR against HR on six held-out photos):
8-bit activations cost 0.17-0.2 dB, most of it at the input of the tail conv (its output is the residual
itself, so its input's rounding goes straight into the pixels). `float_tail=True` (the default)
therefore leaves the last body conv, its PReLU and the tail conv in float32 (the last body conv's output
range is dominated by negatives that the PReLU then squashes), and the head conv too (its 3 input
channels are a small share of the work; on the AVX2 EPYC it took the x4 cost from 0.21 to 0.14 dB). The
global skip is rewired to read the float32 input, not its uint8 rounding.

The activation ranges of an RGB model are calibrated on the photographs and on the same crops with more
saturated colours (`repsr.data.samples.more_saturated`). The built-in calibration photographs are none of
the check's (`calibration_images`): calibrated on three of the check photographs, the shipped M4C16 x4's
worst pixel read 15 levels on the Zen 3 EPYC; out of sample it is 37 levels without the saturated crops
and 29 with them (x2: 15 and 14), so the x4 file is refused there and the x2 one kept. Networks whose
activations span a wide range fail the check and are refused:
`repsr-m10c32-x4` has PReLU outputs up to 628 where 99.9% lie within 3.3, which one 8-bit step per
tensor cannot hold (24 dB from fp32). The fused kernel's int8 (clipped ranges plus float residuals for
what they cut off) is the int8 for such networks.

`OnnxRunner(path)` runs such a file with the call contract of a torch model: (N, C, H, W) float32
tensor in, (N, C, H*s, W*s) float32 out, `.spec` from the file's metadata, so `Upscaler`'s tiling, alpha
and bit-depth handling drive it unchanged.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from repsr.arch.equivalence import MAX_PIXEL_LEVELS, check_against_fp32
from repsr.data.samples import (
    CALIBRATION_CROP,
    CALIBRATION_CROPS_PER_IMAGE,
    calibration_images,
    harsh_photos,
    more_saturated,
    photo_crops,
    synthetic_patterns,
)
from repsr.models.onnx import OnnxRunner
from repsr.util.atomic import check_target
from repsr.util.errors import ConfigError, DataError, DependencyError, ModelFileError, RepsrError, first_line
from repsr.util.hardware import cpu_capabilities

# Refuse an int8 file whose output is further than this from the fp32 network's (PSNR over RGB on the
# 0..255 scale, on held-out photographs). Measured: 41-46 dB for early M4C16 x4 checkpoints (a 0.14 dB
# Y-PSNR cost against HR), 46-50 dB for the shipped models (0.02-0.04 dB); a broken calibration or an
# unsupported graph gives well under 30 dB.
MIN_INT8_PSNR = 38.0
# ... and one whose output is further than this many 8-bit levels from fp32 at any pixel of the check
# photographs (held-out ones, `repsr.data.samples.harsh_photos`): a mean hides a
# few visibly broken pixels (u8 x s8 saturation on CPUs without VNNI gave 100 levels at 40 dB).
MAX_INT8_PIXEL_LEVELS = MAX_PIXEL_LEVELS
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
VERIFY_CROP = 128


def require_quantization() -> Any:
    """`onnxruntime.quantization`, or a one-line `DependencyError` naming what to install."""
    from repsr.models.onnx import require_onnx

    require_onnx()
    try:
        import onnxruntime.quantization as quantization
    except ImportError as error:
        raise DependencyError(
            f"int8 export needs onnxruntime's quantization tools ({first_line(error)}): "
            "pip install 'repsr[onnx]'"
        ) from None
    return quantization


# ------------------------------------------------------------------------------------------- graph


def _float_nodes(model_proto: Any) -> list[str]:
    """Names of the nodes kept in float32: the head conv and its PReLU, the last body conv, the PReLU
    after it and the tail conv (see the module docstring)."""
    convs = [node for node in model_proto.graph.node if node.op_type == "Conv"]
    prelus = [node for node in model_proto.graph.node if node.op_type == "PRelu"]
    names = [node.name for node in convs[-2:]]
    if prelus and len(convs) >= 2:
        names.append(prelus[-1].name)
    if len(convs) >= 4:  # a body between head and tail: the head's input is the image itself
        names += [convs[0].name] + ([prelus[0].name] if len(prelus) >= 2 else [])
    return names


def _skip_from_float_input(model_proto: Any) -> int:
    """Rewire non-quantized consumers of a dequantized graph input (the nearest-upsample skip) to the
    float input itself; returns how many inputs were rewired."""
    graph_inputs = {value.name for value in model_proto.graph.input}
    quantized_from = {
        n.output[0]: n.input[0] for n in model_proto.graph.node if n.op_type == "QuantizeLinear"
    }
    dequantized_from = {
        n.output[0]: n.input[0] for n in model_proto.graph.node if n.op_type == "DequantizeLinear"
    }
    rewired = 0
    for node in model_proto.graph.node:
        if node.op_type in ("Resize", "Add", "Upsample"):
            for index, name in enumerate(node.input):
                source = quantized_from.get(dequantized_from.get(name, ""), "")
                if source in graph_inputs:
                    node.input[index] = source
                    rewired += 1
    return rewired


# ------------------------------------------------------------------------------------------- export


@dataclass
class Int8ExportReport:
    """What `export_int8_onnx` wrote, how it was calibrated, and how close it is to fp32."""

    path: Path
    calibration: str
    calibration_crops: int
    saturated_crops: int  # the same crops with more saturated colours (RGB models)
    method: str
    float_nodes: list[str]
    psnr: float  # lowest int8 vs fp32 network output PSNR, RGB, dB, over the check images
    min_psnr: float
    verify_images: int
    worst_levels: int = 0  # largest 8-bit pixel difference from fp32 over the check images
    worst_image: str = ""
    graphics_levels: int = 0  # the same on synthetic graphics (colour bars, a checkerboard): reported only


def export_int8_onnx(
    model: nn.Module,
    out_path: str | Path,
    calibration: str | Path | None = None,
    *,
    method: str = "minmax",
    float_tail: bool = True,
    min_psnr: float = MIN_INT8_PSNR,
    max_pixel_levels: int = MAX_INT8_PIXEL_LEVELS,
    seed: int = 0,
    overwrite: bool = False,
) -> Int8ExportReport:
    """Write `model` as a statically quantized int8 ONNX file (QDQ), verified in ONNX Runtime.

    `calibration`: folder of photographs (recursive) or None for the built-in training samples that the
    check does not use; an RGB model also calibrates on their crops with more saturated colours.
    `method`: activation-range calibration, `minmax` (default, fastest), `percentile` (99.999%) or
    `entropy`. `float_tail`: keep the head and tail convs (see the module docstring) in float32. The
    file is written only if the int8 output, run here in ONNX Runtime, is within `min_psnr` dB and
    `max_pixel_levels` 8-bit levels of the fp32 network on every check image (held-out photographs and
    `harsh_photos`: dark, saturated); otherwise `ModelFileError` naming the image, and
    nothing is written.
    """
    from repsr.deploy.onnx import export_onnx
    from repsr.models.onnx import require_onnx

    quantization = require_quantization()
    onnx, _ = require_onnx()
    from repsr.arch.network import reparameterize_model

    if method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )
    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        raise ConfigError(f"{out_path}: ONNX files must end in .onnx")
    check_target(out_path, what="int8 ONNX file", overwrite=overwrite)
    plain = reparameterize_model(model).cpu().float().eval()
    channels = plain.spec.in_channels
    crops = photo_crops(
        calibration_images(calibration), channels, CALIBRATION_CROP, CALIBRATION_CROPS_PER_IMAGE, seed
    )
    if not crops:
        raise DataError(f"{calibration}: none of its images could be read for calibration")
    photographs = len(crops)
    if channels == 3:  # vivid colours widen the ranges the static quantization clips at (module docstring)
        crops += [more_saturated(torch.from_numpy(crop[0]))[None].numpy() for crop in crops]
    from repsr.data.samples import sample_images

    checks = photo_crops(list(sample_images()["val"]), channels, VERIFY_CROP, 1, seed + 1)

    class _Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"input": crop} for crop in crops])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    calibrate = {
        "minmax": quantization.CalibrationMethod.MinMax,
        "percentile": quantization.CalibrationMethod.Percentile,
        "entropy": quantization.CalibrationMethod.Entropy,
    }[method]
    extra: dict[str, Any] = {"CalibPercentile": 99.999} if method == "percentile" else {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, prepared, draft = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        export_onnx(plain, fp32_path, dynamic=True)
        try:
            quantization.shape_inference.quant_pre_process(
                str(fp32_path), str(prepared), skip_symbolic_shape=True
            )
            float_nodes = _float_nodes(onnx.load(str(prepared))) if float_tail else []
            quantization.quantize_static(
                str(prepared),
                str(draft),
                _Reader(),
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,  # 7-bit weights: no int16 saturation on CPUs without VNNI (see above)
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=calibrate,
                op_types_to_quantize=["Conv", "PRelu"],
                nodes_to_exclude=float_nodes,
                extra_options=extra,
            )
        except RepsrError:
            raise
        except Exception as error:  # the quantizer raises many types; name it in one line
            raise ModelFileError(f"{out_path}: int8 quantization failed ({first_line(error)})") from None
        proto = onnx.load(str(draft))
        _skip_from_float_input(proto)
        del proto.metadata_props[:]
        for key, value in {"producer": "repsr", "precision": "int8", **plain.spec.to_metadata()}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save_model(proto, str(draft))
        runner = OnnxRunner(draft)
        images = {f"held-out photo {i + 1}": torch.from_numpy(x) for i, x in enumerate(checks)}
        images.update(harsh_photos(channels))
        score, worst, where = check_against_fp32(runner, plain, images)
        graphics = check_against_fp32(runner, plain, synthetic_patterns(channels))
        if not score >= min_psnr:  # also catches NaN
            raise ModelFileError(
                f"{out_path}: int8 output is {score:.1f} dB from fp32 on {where} and the other check "
                f"images (< {min_psnr:g} dB); not kept"
            )
        if worst > max_pixel_levels:
            raise ModelFileError(
                f"{out_path}: int8 output is {worst} levels from fp32 at a pixel of {where} (limit "
                f"{max_pixel_levels}, ONNX Runtime on {cpu_capabilities().name}); not kept"
            )
        data = draft.read_bytes()
    from repsr.util.atomic import atomic_write

    atomic_write(out_path, lambda tmp: Path(tmp).write_bytes(data))
    return Int8ExportReport(
        path=out_path,
        calibration=str(calibration) if calibration is not None else "built-in sample photographs",
        calibration_crops=photographs,
        saturated_crops=len(crops) - photographs,
        method=method,
        float_nodes=float_nodes,
        psnr=score,
        min_psnr=min_psnr,
        verify_images=len(images),
        worst_levels=worst,
        worst_image=where,
        graphics_levels=graphics[1],
    )


__all__ = [
    "MAX_INT8_PIXEL_LEVELS",
    "MIN_INT8_PSNR",
    "check_against_fp32",
    "Int8ExportReport",
    "OnnxRunner",
    "calibration_images",
    "export_int8_onnx",
    "require_quantization",
]
