"""The VGG-style SR network in its two forms, and the model-level operations on it.

- `RepNet`, the training form: conv3x3 + PReLU, `num_blocks` x (re-parameterizable block + PReLU),
  conv3x3 to in_channels * scale^2, PixelShuffle, plus the nearest-upsampled input as global skip.
- `PlainSR`, the deployed form: the same network with every block merged into one 3x3 conv, laid out
  exactly like Real-ESRGAN's `SRVGGNetCompact` (`body.0` first conv, `body.1` PReLU, ..., last key the
  final conv), so its state dict loads unchanged in tools that read that layout.

Both carry a `ModelSpec` as `.spec`: what a loaded model is (block, scale, size, channels).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repsr.blocks import BLOCKS, BN_MODES, RepBlock, RepBN
from repsr.errors import ConfigError

SCALES = (2, 3, 4)
IN_CHANNELS = (1, 3)


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: enough to rebuild it from a file's metadata alone."""

    block: str
    scale: int
    num_blocks: int
    channels: int
    in_channels: int = 3
    # Block constructor options (bn_mode, expand, ...) and `rep_head_tail`.
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Conventional size name, e.g. `repsr-M4C16-x4`."""
        return f"{self.block}-M{self.num_blocks}C{self.channels}-x{self.scale}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {"block", "scale", "num_blocks", "channels", "in_channels", "options"}
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


def _validate(spec: ModelSpec) -> None:
    if spec.block not in BLOCKS:
        raise ConfigError(f"unknown block {spec.block!r}; choose one of {', '.join(BLOCKS)}")
    if spec.scale not in SCALES:
        raise ConfigError(f"scale must be one of {SCALES}, got {spec.scale}")
    if spec.in_channels not in IN_CHANNELS:
        raise ConfigError(f"in_channels must be 1 (Y) or 3 (RGB), got {spec.in_channels}")
    if spec.num_blocks < 0 or spec.channels < 1:
        raise ConfigError(
            f"num_blocks must be >= 0 and channels >= 1, got {spec.num_blocks}, {spec.channels}"
        )
    bn_mode = spec.options.get("bn_mode")
    if bn_mode is not None and bn_mode not in BN_MODES:
        raise ConfigError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")


def _make_block(spec: ModelSpec, in_channels: int, out_channels: int) -> RepBlock:
    options = {k: v for k, v in spec.options.items() if k != "rep_head_tail"}
    block_class = BLOCKS[spec.block]
    if not block_class.has_bn and options.get("bn_mode", "none") == "none":
        options.pop("bn_mode", None)
    try:
        return block_class(in_channels, out_channels, **options)
    except TypeError as error:
        raise ConfigError(f"block {spec.block!r} does not take these options: {error}") from None
    except ValueError as error:
        raise ConfigError(f"block {spec.block!r}: {error}") from None


def _upsample_skip(x: Tensor, scale: int) -> Tensor:
    return F.interpolate(x, scale_factor=scale, mode="nearest")


class RepNet(nn.Module):
    """Training form: multi-branch blocks between a head and a tail conv (optionally blocks too)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        _validate(spec)
        self.spec = spec
        c, out = spec.channels, spec.in_channels * spec.scale**2
        if spec.options.get("rep_head_tail", False):
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

    `block_options` go to every block (`bn_mode`, `expand`, `paths`, `identity`, `squeeze_bn`, ...);
    `rep_head_tail=True` also makes the head and tail convs re-parameterizable blocks.
    """
    return RepNet(ModelSpec(block, scale, num_blocks, channels, in_channels, dict(block_options)))


def _as_conv(module: nn.Module) -> nn.Conv2d:
    return module.fuse() if isinstance(module, RepBlock) else module


@torch.no_grad()
def reparameterize_model(model: nn.Module) -> PlainSR:
    """A NEW plain network equal to `model.eval()`; `model` itself is left untouched and can keep training."""
    if isinstance(model, PlainSR):
        plain = PlainSR(model.spec)
        plain.load_state_dict(model.state_dict())
        return plain.to(next(model.parameters())).eval()
    if not isinstance(model, RepNet):
        raise TypeError(f"expected a RepNet or PlainSR, got {type(model).__name__}")
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


def set_bn_mode(model: nn.Module, mode: str) -> int:
    """Set every `RepBN` in `model` to `batch` or `frozen`; returns how many were set."""
    count = 0
    for module in model.modules():
        if isinstance(module, RepBN):
            module.set_mode(mode)
            count += 1
    return count


def set_merged_training(model: nn.Module, enabled: bool = True) -> None:
    """Make every block compute its forward as its merged 3x3 conv (still differentiable).

    Only valid once no BN uses mini-batch statistics (after the switch, or without BN): then each block
    is a linear function of its input and the merged conv is the same function at a fraction of the cost.
    """
    if enabled:
        live = [name for name, m in model.named_modules() if isinstance(m, RepBN) and m.mode == "batch"]
        if live:
            raise ValueError(f"merged training needs frozen BN; still in batch mode: {', '.join(live[:3])}")
    for module in model.modules():
        if isinstance(module, RepBlock):
            module.merged_training = enabled
