"""The VGG-style SR network in its two forms, and the model-level operations on it.

- `RepNet`, the training form: conv3x3 + PReLU, `num_blocks` x (re-parameterizable block + PReLU),
  conv3x3 to in_channels * scale^2, PixelShuffle, plus the nearest-upsampled input as global skip.
- `PlainSR`, the deployed form: the same network with every block merged into one 3x3 conv, laid out
  exactly like Real-ESRGAN's `SRVGGNetCompact` (`body.0` first conv, `body.1` PReLU, ..., last key the
  final conv), so its state dict loads unchanged in tools that read that layout.

Both carry a `ModelSpec` as `.spec`: what a loaded model is (block, scale, size, channels).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repsr.arch.blocks import BLOCKS, BlockOptions, RepBlock
from repsr.arch.phase import set_bn_mode, set_merged_training
from repsr.util.errors import ConfigError, RepsrError
from repsr.util.precision import NUMERIC_PRECISIONS

__all__ = [
    "ALL_PRECISIONS",
    "FusedTailPlainSR",
    "ModelDescriptor",
    "ModelSpec",
    "PlainSR",
    "RepNet",
    "build_model",
    "describe",
    "reparameterize_model",
    "set_bn_mode",  # re-exported: lower-level steps of repsr.arch.phase.set_phase
    "set_merged_training",
    "shuffle_add_skip",
]

SCALES = (2, 3, 4)
IN_CHANNELS = (1, 3)


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: enough to rebuild it from a file's metadata alone. Hashable.

    `options` are the block's own arguments, a `Block.Options` dataclass (a plain dict is converted,
    e.g. `{"bn_mode": "none", "expand": 1}`; a `rep_head_tail` key in it sets that field, as the
    serialized form of older versions kept it there). `rep_head_tail` makes head and tail blocks too.
    """

    block: str
    scale: int
    num_blocks: int
    channels: int
    in_channels: int = 3
    options: BlockOptions | None = None
    rep_head_tail: bool = False

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ConfigError(f"unknown block {self.block!r}; choose one of {', '.join(BLOCKS)}")
        options_class = BLOCKS[self.block].Options
        options = self.options
        if options is None or isinstance(options, Mapping):
            data = dict(options or {})
            if "rep_head_tail" in data:
                object.__setattr__(
                    self, "rep_head_tail", bool(data.pop("rep_head_tail")) or self.rep_head_tail
                )
            try:
                options = options_class.from_dict(data)
            except TypeError as error:
                raise ConfigError(f"block {self.block!r} does not take these options: {error}") from None
            except ValueError as error:
                raise ConfigError(f"block {self.block!r}: {error}") from None
        elif type(options) is not options_class:
            raise ConfigError(
                f"block {self.block!r} takes {options_class.__qualname__}, got {type(options).__qualname__}"
            )
        object.__setattr__(self, "options", options)

    @property
    def name(self) -> str:
        """Conventional size name, e.g. `repsr-M4C16-x4`."""
        return f"{self.block}-M{self.num_blocks}C{self.channels}-x{self.scale}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, in the layout files have always used (`rep_head_tail` inside `options`)."""
        options = {**self.options.to_dict(), "rep_head_tail": self.rep_head_tail}
        return {
            "block": self.block,
            "scale": self.scale,
            "num_blocks": self.num_blocks,
            "channels": self.channels,
            "in_channels": self.in_channels,
            "options": options,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {"block", "scale", "num_blocks", "channels", "in_channels", "options", "rep_head_tail"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model spec key(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_metadata(self) -> dict[str, str]:
        """String-only form for a safetensors header."""
        return {k: json.dumps(v) if k == "options" else str(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ModelSpec:
        try:
            return cls(
                block=metadata["block"],
                scale=int(metadata["scale"]),
                num_blocks=int(metadata["num_blocks"]),
                channels=int(metadata["channels"]),
                in_channels=int(metadata["in_channels"]),
                options=json.loads(metadata.get("options", "{}")),
            )
        except (KeyError, ValueError) as error:
            raise ConfigError(f"model metadata is incomplete or malformed ({error})") from None


ALL_PRECISIONS = NUMERIC_PRECISIONS  # every precision a network can run in


@dataclass(frozen=True)
class ModelDescriptor:
    """What any runnable form of a model is, for the code that runs it (tiling, precision, commands).

    Every form implements `descriptor()`: the training form, the plain network, the fused-tail and bf16
    forms, the ONNX Runtime runner (and any new backend's form). `precisions` are those the form can run
    in (`repsr.inference.precision.Precision` values); `form` names it for messages.
    """

    form: str  # training | plain | fused-tail | bf16 | onnx | ...
    scale: int
    in_channels: int
    channels: int  # width of the body (what activations cost per LR pixel)
    receptive_radius: int  # LR pixels an output pixel can see: one per 3x3 conv
    precisions: tuple[str, ...]
    spec: ModelSpec

    @classmethod
    def of_spec(
        cls, spec: ModelSpec, form: str, precisions: tuple[str, ...] = ALL_PRECISIONS
    ) -> ModelDescriptor:
        """The descriptor of a network described by `spec`: `num_blocks + 2` 3x3 convs deep (the
        nearest-upsampled skip and the pixel shuffle add no reach)."""
        return cls(form, spec.scale, spec.in_channels, spec.channels, spec.num_blocks + 2, precisions, spec)


def describe(model: Any) -> ModelDescriptor:
    """`model.descriptor()`: the one question code asks a model it runs; `TypeError` for anything that
    is not a repsr form (a plain `nn.Module`, a foreign network)."""
    descriptor = getattr(model, "descriptor", None)
    if not callable(descriptor):
        raise TypeError(f"expected a repsr model (with .descriptor()), got {type(model).__name__}")
    return descriptor()


def _validate(spec: ModelSpec) -> None:
    if spec.scale not in SCALES:
        raise ConfigError(f"scale must be one of {SCALES}, got {spec.scale}")
    if spec.in_channels not in IN_CHANNELS:
        raise ConfigError(f"in_channels must be 1 (Y) or 3 (RGB), got {spec.in_channels}")
    if spec.num_blocks < 0 or spec.channels < 1:
        raise ConfigError(
            f"num_blocks must be >= 0 and channels >= 1, got {spec.num_blocks}, {spec.channels}"
        )


def _make_block(spec: ModelSpec, in_channels: int, out_channels: int) -> RepBlock:
    return BLOCKS[spec.block](in_channels, out_channels, spec.options)


def _upsample_skip(x: Tensor, scale: int) -> Tensor:
    return F.interpolate(x, scale_factor=scale, mode="nearest")


class RepNet(nn.Module):
    """Training form: multi-branch blocks between a head and a tail conv (optionally blocks too)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        _validate(spec)
        self.spec = spec
        c, out = spec.channels, spec.in_channels * spec.scale**2
        if spec.rep_head_tail:
            self.head: nn.Module = _make_block(spec, spec.in_channels, c)
            self.tail: nn.Module = _make_block(spec, c, out)
        else:
            self.head = nn.Conv2d(spec.in_channels, c, 3, padding=1)
            self.tail = nn.Conv2d(c, out, 3, padding=1)
        self.head_act = nn.PReLU(c)
        self.blocks = nn.ModuleList(_make_block(spec, c, c) for _ in range(spec.num_blocks))
        self.acts = nn.ModuleList(nn.PReLU(c) for _ in range(spec.num_blocks))
        self.upsampler = nn.PixelShuffle(spec.scale)

    def forward(self, x: Tensor) -> Tensor:
        y = self.head_act(self.head(x))
        for block, act in zip(self.blocks, self.acts, strict=True):
            y = act(block(y))
        return self.upsampler(self.tail(y)) + _upsample_skip(x, self.spec.scale)

    def descriptor(self) -> ModelDescriptor:
        """Runs in every precision (through its re-parameterized plain network)."""
        return ModelDescriptor.of_spec(self.spec, "training")


class PlainSR(nn.Module):
    """Deployed form: plain 3x3 convs and PReLUs in `SRVGGNetCompact`'s state-dict layout."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        _validate(spec)
        self.spec = spec
        c = spec.channels
        layers: list[nn.Module] = [nn.Conv2d(spec.in_channels, c, 3, padding=1), nn.PReLU(c)]
        for _ in range(spec.num_blocks):
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.PReLU(c)]
        layers.append(nn.Conv2d(c, spec.in_channels * spec.scale**2, 3, padding=1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(spec.scale)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for layer in self.body:
            y = layer(y)
        return self.upsampler(y) + _upsample_skip(x, self.spec.scale)

    def descriptor(self) -> ModelDescriptor:
        return ModelDescriptor.of_spec(self.spec, "plain")


def shuffle_add_skip(features: Tensor, lr: Tensor, scale: int, *, dtype: torch.dtype | None = None) -> Tensor:
    """`pixel_shuffle(features, scale) + nearest_upsample(lr, scale)` in a single strided pass: the one
    fused tail (fp32 plain networks, and the bf16 form with `dtype=torch.float32`).

    `features` (N, C*s*s, H, W) in any memory format, `lr` (N, C, H, W); the result is a new contiguous
    NCHW tensor in `dtype` (default: `features`'s). Same additions as the eager tail, without
    materialising either intermediate.
    """
    n, c, h, w = lr.shape
    dtype = dtype or features.dtype
    # channel index of `features` is c * s*s + i * s + j for output pixel (y*s + i, x*s + j)
    shuffled = features.unflatten(1, (c, scale, scale)).permute(0, 1, 4, 2, 5, 3)
    skip = lr[:, :, :, None, :, None]
    if torch.compiler.is_compiling():  # inductor fuses the functional form itself (and rejects `out=`)
        return (shuffled.to(dtype) + skip.to(dtype)).reshape(n, c, h * scale, w * scale)
    out = torch.empty((n, c, h * scale, w * scale), dtype=dtype, device=features.device)
    torch.add(shuffled, skip, out=out.view(n, c, h, scale, w, scale))
    return out


class FusedTailPlainSR(nn.Module):
    """A `PlainSR` run with the fused pixel-shuffle + skip tail (`shuffle_add_skip`): same function,
    faster on CPU (the eager tail spends as long as the convs on a small net)."""

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

    def descriptor(self) -> ModelDescriptor:
        return ModelDescriptor.of_spec(self.spec, "fused-tail", ("fp32", "fp16"))


def build_model(
    block: str = "repsr",
    *,
    scale: int,
    num_blocks: int,
    channels: int,
    in_channels: int = 3,
    **block_options: Any,
) -> RepNet:
    """The training-form network, e.g. `build_model("repsr", scale=4, num_blocks=4, channels=16)`.

    `block_options` go to every block (`bn_mode`, `expand`, `paths`, `identity`, `squeeze_bn`, ...: the
    fields of `BLOCKS[block].Options`); `rep_head_tail=True` also makes the head and tail convs
    re-parameterizable blocks.
    """
    return RepNet(ModelSpec(block, scale, num_blocks, channels, in_channels, dict(block_options)))


def _as_conv(module: nn.Module) -> nn.Conv2d:
    return module.fuse() if isinstance(module, RepBlock) else module


@overload
def reparameterize_model(model: RepNet | PlainSR) -> PlainSR: ...
@overload
def reparameterize_model(model: nn.Module) -> nn.Module: ...


@torch.no_grad()
def reparameterize_model(model: nn.Module) -> nn.Module:
    """A NEW network equal to `model.eval()`; `model` itself is left untouched and can keep training.

    A `RepNet` (or `PlainSR`) gives a `PlainSR`. Any other module (as timm's function of this name
    accepts) gives a deep copy in eval mode in which every `RepBlock` it contains is replaced by its
    fused 3x3 convolution (a `RepBlock` itself gives that convolution).
    """
    if not isinstance(model, nn.Module):
        raise RepsrError(f"reparameterize_model expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, PlainSR):
        plain = PlainSR(model.spec)
        plain.load_state_dict(model.state_dict())
        return plain.to(next(model.parameters())).eval()
    if isinstance(model, RepBlock):
        return model.fuse().eval()
    if not isinstance(model, RepNet):
        fused = copy.deepcopy(model)
        _fuse_children(fused)
        return fused.eval()
    was_training = model.training
    model.eval()  # BN folds use population statistics either way; eval() keeps forward consistent
    try:
        layers = [_as_conv(model.head), model.head_act]
        for block, act in zip(model.blocks, model.acts, strict=True):
            layers += [_as_conv(block), act]
        layers.append(_as_conv(model.tail))
        plain = PlainSR(model.spec).to(next(model.parameters()))
        for target, source in zip(plain.body, layers, strict=True):
            target.load_state_dict(source.state_dict())
    finally:
        model.train(was_training)
    return plain.eval()


def _fuse_children(module: nn.Module) -> None:
    """Replace, in place, every `RepBlock` below `module` by its fused convolution."""
    for name, child in list(module.named_children()):
        if isinstance(child, RepBlock):
            setattr(module, name, child.fuse())
        else:
            _fuse_children(child)
