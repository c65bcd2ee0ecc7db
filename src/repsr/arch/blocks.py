"""Re-parameterizable blocks in their training form.

Each block is a set of parallel linear branches (with BN) on the same input. It knows its equivalent
3x3 convolution, built by composing the pure functions of `repsr.arch.merge`, and `fuse()` returns that
convolution as an `nn.Conv2d`. `forward` runs the branches; after the BN switch the trainer may set
`merged_training`, and `forward` then runs the equivalent convolution, merged differentiably from the
same parameters (gradients still reach every branch).

BN modes (`BNMode`): `batch` is ordinary BN; `frozen` normalizes with the population statistics even in
`model.train()`; `none` builds the block without BN (convolutions get biases instead).

Each block's own constructor arguments are a frozen dataclass registered on the block as `Block.Options`
(e.g. `RepSRBlock.Options(expand=2, squeeze_bn=True)`): the single source of their names and defaults,
carried by `ModelSpec`. A block takes a BN mode exactly when its `Options` has a `bn_mode` field
(`Block.has_bn`). Switching models between phases is `repsr.arch.phase.set_phase`'s job.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repsr.arch import merge
from repsr.arch.merge import KernelBias


class BNMode(str, Enum):
    """The BN of a block: mini-batch statistics, frozen population statistics, or no BN at all."""

    BATCH = "batch"
    FROZEN = "frozen"
    NONE = "none"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | BNMode) -> BNMode:
        """`value` as a `BNMode`; ValueError naming the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ValueError(f"bn_mode must be one of {choices}; got {value!r}") from None


class RepBN(nn.BatchNorm2d):
    """BatchNorm2d whose `frozen` state survives `model.train()` and travels in the state dict.

    `frozen` is a plain Python attribute (no tensor read in `forward`: no graph break under
    `torch.compile`, no device-to-host sync on CUDA); the state dict carries it as the module's extra
    state (a boolean tensor under `..._extra_state`). Files written before that held a `frozen` buffer
    instead; `_load_from_state_dict` maps it.
    """

    LEGACY_KEY: ClassVar[str] = "frozen"

    def __init__(self, channels: int, mode: str | BNMode = BNMode.BATCH) -> None:
        super().__init__(channels)
        self.frozen = False
        self.set_mode(mode)

    @property
    def mode(self) -> BNMode:
        return BNMode.FROZEN if self.frozen else BNMode.BATCH

    def set_mode(self, mode: str | BNMode) -> None:
        """Switch between mini-batch statistics (`batch`) and population statistics (`frozen`)."""
        if mode not in (BNMode.BATCH, BNMode.FROZEN):
            raise ValueError(f"BN mode must be 'batch' or 'frozen' here, got {mode!r}")
        self.frozen = mode == BNMode.FROZEN

    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.frozen)

    def set_extra_state(self, state: Any) -> None:
        self.frozen = bool(state)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        legacy, key = prefix + self.LEGACY_KEY, prefix + nn.modules.module._EXTRA_STATE_KEY_SUFFIX
        if legacy in state_dict and key not in state_dict:  # written before `frozen` became extra state
            state_dict[key] = state_dict.pop(legacy)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def forward(self, x: Tensor) -> Tensor:
        if self.frozen:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)

    def fold(self, kernel_bias: KernelBias) -> KernelBias:
        """Fold this BN (with its population statistics) into the preceding (kernel, bias)."""
        kernel, bias = kernel_bias
        return merge.fuse_bn(
            kernel, bias, self.running_mean, self.running_var, self.weight, self.bias, self.eps
        )


def upgrade_legacy_state(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with the `...frozen` buffers of older files renamed to the RepBN extra-state key."""
    suffix = "." + RepBN.LEGACY_KEY
    extra = nn.modules.module._EXTRA_STATE_KEY_SUFFIX
    return {(k[: -len(suffix)] + "." + extra if k.endswith(suffix) else k): v for k, v in state.items()}


def make_bn(channels: int, bn_mode: str | BNMode) -> RepBN | None:
    """A `RepBN` for `batch`/`frozen`, nothing for `none`."""
    bn_mode = BNMode.parse(bn_mode)
    return None if bn_mode == BNMode.NONE else RepBN(channels, bn_mode)


def fold_bn(bn: RepBN | None, kernel_bias: KernelBias) -> KernelBias:
    """Fold `bn` into (kernel, bias) when there is a BN; unchanged for `none`."""
    return bn.fold(kernel_bias) if bn is not None else kernel_bias


def conv_bn_pair(conv: nn.Conv2d, bn: RepBN | None) -> KernelBias:
    """The (kernel, bias) of a conv, with its BN folded in when there is one."""
    return fold_bn(bn, (conv.weight, _bias_of(conv)))


def _bias_of(conv: nn.Conv2d) -> Tensor:
    if conv.bias is not None:
        return conv.bias
    return torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device)


def _apply_bn(x: Tensor, bn: RepBN | None) -> Tensor:
    return bn(x) if bn is not None else x


@dataclass(frozen=True)
class BlockOptions:
    """A block's own constructor arguments (beyond the channel counts); subclassed per block."""

    def __post_init__(self) -> None:
        if "bn_mode" in self.field_names():
            object.__setattr__(self, "bn_mode", BNMode.parse(self.bn_mode))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockOptions:
        """Options from plain data; an unknown name raises TypeError, a bad value ValueError.

        `bn_mode: none` is accepted (and dropped) for blocks without BN, as older files wrote it.
        """
        data = dict(data)
        if "bn_mode" not in cls.field_names() and data.get("bn_mode") in ("none", BNMode.NONE):
            del data["bn_mode"]
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and weights-only-safe): enums as their values."""
        return {k: v.value if isinstance(v, Enum) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class BNOptions(BlockOptions):
    """Options of a block whose only argument is its BN mode."""

    bn_mode: BNMode = BNMode.BATCH


class RepBlock(nn.Module):
    """Base class: parallel branches from `in_channels` to `out_channels`, equivalent to one 3x3 conv.

    Subclasses set `Options` (a `BlockOptions` dataclass); `has_bn` follows from it.
    """

    Options: ClassVar[type[BlockOptions]] = BlockOptions
    has_bn: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.has_bn = "bn_mode" in cls.Options.field_names()

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.merged_training = False

    def forward_branches(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def equivalent_kernel_bias(self) -> KernelBias:
        """The (3x3 kernel, bias) this block computes in eval mode; differentiable."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.merged_training:
            kernel, bias = self.equivalent_kernel_bias()
            return F.conv2d(x, kernel, bias, padding=1)
        return self.forward_branches(x)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """A new 3x3 convolution equal to this block in eval mode."""
        kernel, bias = self.equivalent_kernel_bias()
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, padding=1)
        conv = conv.to(device=kernel.device, dtype=kernel.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        return conv

    def _identity(self, like: Tensor) -> KernelBias:
        return merge.identity_kernel(self.out_channels, dtype=like.dtype, device=like.device)


class PlainBlock(RepBlock):
    """A single 3x3 convolution: the baseline, nothing to merge."""

    Options = BlockOptions

    def __init__(self, in_channels: int, out_channels: int, options: BlockOptions | None = None) -> None:
        super().__init__(in_channels, out_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.conv(x)

    def equivalent_kernel_bias(self) -> KernelBias:
        return self.conv.weight, self.conv.bias


class RepSRBlock(RepBlock):
    """The RepSR block: identity + `paths` expand-and-squeeze paths, conv3x3 -> BN -> conv1x1 [-> BN].

    All paths are stored side by side as one wide conv3x3 (in -> paths*mid), one BN and one conv1x1, which
    is the same function as separate paths summed (BN is per channel) but runs as a few large kernels.
    With `squeeze_bn`, the squeeze is a grouped 1x1 (one group per path) followed by a BN, and the paths
    are summed after it. The squeeze is initialised as if each path were its own conv (fan-in `mid`).
    """

    @dataclass(frozen=True)
    class Options(BlockOptions):
        bn_mode: BNMode = BNMode.BATCH
        expand: float = 2.0  # width of each path, in multiples of out_channels
        paths: int = 2
        identity: bool = True
        squeeze_bn: bool = False  # BN after the squeeze too

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.paths < 1:
                raise ValueError(f"paths must be at least 1, got {self.paths}")

    def __init__(self, in_channels: int, out_channels: int, options: Options | None = None) -> None:
        super().__init__(in_channels, out_channels)
        options = options or self.Options()
        bn_mode, expand, paths = options.bn_mode, options.expand, options.paths
        identity, squeeze_bn = options.identity, options.squeeze_bn
        self.paths = paths
        self.mid = max(1, round(expand * out_channels))
        self.identity = identity and in_channels == out_channels
        self.squeeze_bn = squeeze_bn
        width = paths * self.mid
        self.expand = nn.Conv2d(in_channels, width, 3, padding=1)
        self.expand_bn = make_bn(width, bn_mode)
        if squeeze_bn:
            self.squeeze = nn.Conv2d(width, paths * out_channels, 1, groups=paths)
            self.squeeze_bn_layer = make_bn(paths * out_channels, bn_mode)
        else:
            self.squeeze = nn.Conv2d(width, out_channels, 1)
            self.squeeze_bn_layer = None
        bound = 1 / math.sqrt(self.mid)
        nn.init.uniform_(self.squeeze.weight, -bound, bound)
        nn.init.uniform_(self.squeeze.bias, -bound, bound)

    def forward_branches(self, x: Tensor) -> Tensor:
        y = self.squeeze(_apply_bn(self.expand(x), self.expand_bn))
        if self.squeeze_bn:
            y = _apply_bn(y, self.squeeze_bn_layer)
            y = y.unflatten(1, (self.paths, self.out_channels)).sum(1)
        return y + x if self.identity else y

    def equivalent_kernel_bias(self) -> KernelBias:
        expand = conv_bn_pair(self.expand, self.expand_bn)
        squeeze_kernel, squeeze_bias = self.squeeze.weight, self.squeeze.bias
        if self.squeeze_bn:
            # grouped 1x1 -> block-diagonal dense 1x1, fold its BN, then sum the paths' outputs
            blocks = squeeze_kernel.flatten(1).unflatten(0, (self.paths, self.out_channels))
            dense = torch.block_diag(*blocks)[..., None, None]
            dense_kernel, dense_bias = fold_bn(self.squeeze_bn_layer, (dense, squeeze_bias))
            squeeze_kernel = dense_kernel.unflatten(0, (self.paths, self.out_channels)).sum(0)
            squeeze_bias = dense_bias.unflatten(0, (self.paths, self.out_channels)).sum(0)
        merged = merge.compose_kxk_1x1(expand, (squeeze_kernel, squeeze_bias))
        return merge.add_branches(merged, self._identity(merged[0])) if self.identity else merged


class RepVGGBlock(RepBlock):
    """RepVGG: conv3x3+BN, conv1x1+BN and a BN-only identity (when in == out channels)."""

    Options = BNOptions

    def __init__(self, in_channels: int, out_channels: int, options: BNOptions | None = None) -> None:
        super().__init__(in_channels, out_channels)
        bn_mode = (options or self.Options()).bn_mode
        with_bias = bn_mode == BNMode.NONE
        self.conv3 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=with_bias)
        self.bn3 = make_bn(out_channels, bn_mode)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, bias=with_bias)
        self.bn1 = make_bn(out_channels, bn_mode)
        self.has_identity = in_channels == out_channels
        self.bn_identity = make_bn(out_channels, bn_mode) if self.has_identity else None

    def forward_branches(self, x: Tensor) -> Tensor:
        y = _apply_bn(self.conv3(x), self.bn3) + _apply_bn(self.conv1(x), self.bn1)
        return y + _apply_bn(x, self.bn_identity) if self.has_identity else y

    def equivalent_kernel_bias(self) -> KernelBias:
        k3 = conv_bn_pair(self.conv3, self.bn3)
        k1, b1 = conv_bn_pair(self.conv1, self.bn1)
        branches = [k3, (merge.pad_to(k1), b1)]
        if self.has_identity:
            branches.append(fold_bn(self.bn_identity, self._identity(k3[0])))
        return merge.add_branches(*branches)


class ACBlock(RepBlock):
    """Asymmetric Convolution Block: conv3x3+BN, conv3x1+BN, conv1x3+BN."""

    Options = BNOptions

    def __init__(self, in_channels: int, out_channels: int, options: BNOptions | None = None) -> None:
        super().__init__(in_channels, out_channels)
        bn_mode = (options or self.Options()).bn_mode
        with_bias = bn_mode == BNMode.NONE
        self.square = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=with_bias)
        self.square_bn = make_bn(out_channels, bn_mode)
        self.ver = nn.Conv2d(in_channels, out_channels, (3, 1), padding=(1, 0), bias=with_bias)
        self.ver_bn = make_bn(out_channels, bn_mode)
        self.hor = nn.Conv2d(in_channels, out_channels, (1, 3), padding=(0, 1), bias=with_bias)
        self.hor_bn = make_bn(out_channels, bn_mode)

    def forward_branches(self, x: Tensor) -> Tensor:
        return (
            _apply_bn(self.square(x), self.square_bn)
            + _apply_bn(self.ver(x), self.ver_bn)
            + _apply_bn(self.hor(x), self.hor_bn)
        )

    def equivalent_kernel_bias(self) -> KernelBias:
        square = conv_bn_pair(self.square, self.square_bn)
        kv, bv = conv_bn_pair(self.ver, self.ver_bn)
        kh, bh = conv_bn_pair(self.hor, self.hor_bn)
        return merge.add_branches(square, (merge.pad_to(kv), bv), (merge.pad_to(kh), bh))


class _PointwiseStage(nn.Module):
    """conv1x1 [+ BN] whose output is padded with what it yields for a zero input pixel.

    Used in front of a 3x3 (or pooling) stage that has no padding of its own, so that the whole
    1x1 -> 3x3 sequence equals its merged 3x3 conv with zero padding, borders included.
    """

    def __init__(self, in_channels: int, out_channels: int, bn_mode: BNMode) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=bn_mode == BNMode.NONE)
        self.bn = make_bn(out_channels, bn_mode)

    def kernel_bias(self) -> KernelBias:
        return conv_bn_pair(self.conv, self.bn)

    def forward(self, x: Tensor) -> Tensor:
        return merge.pad_with_values(_apply_bn(self.conv(x), self.bn), self.kernel_bias()[1])


class DBBlock(RepBlock):
    """Diverse Branch Block: kxk+BN, 1x1+BN, 1x1-BN-avgpool-BN and 1x1-BN-kxk-BN (k = 3).

    As in the original, the 1x1 of the 1x1-kxk branch starts as the identity, and padding after each
    1x1 stage uses that stage's value for a zero input (population statistics), which keeps the merge
    exact at the borders.
    """

    Options = BNOptions

    def __init__(self, in_channels: int, out_channels: int, options: BNOptions | None = None) -> None:
        super().__init__(in_channels, out_channels)
        bn_mode = (options or self.Options()).bn_mode
        with_bias = bn_mode == BNMode.NONE
        self.square = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=with_bias)
        self.square_bn = make_bn(out_channels, bn_mode)
        self.point = nn.Conv2d(in_channels, out_channels, 1, bias=with_bias)
        self.point_bn = make_bn(out_channels, bn_mode)
        self.avg_in = _PointwiseStage(in_channels, out_channels, bn_mode)
        self.avg_bn = make_bn(out_channels, bn_mode)
        self.seq_in = _PointwiseStage(in_channels, in_channels, bn_mode)
        with torch.no_grad():
            self.seq_in.conv.weight.copy_(torch.eye(in_channels)[:, :, None, None])
        self.seq = nn.Conv2d(in_channels, out_channels, 3, bias=with_bias)
        self.seq_bn = make_bn(out_channels, bn_mode)

    def forward_branches(self, x: Tensor) -> Tensor:
        square = _apply_bn(self.square(x), self.square_bn)
        point = _apply_bn(self.point(x), self.point_bn)
        avg = _apply_bn(F.avg_pool2d(self.avg_in(x), 3, stride=1), self.avg_bn)
        seq = _apply_bn(self.seq(self.seq_in(x)), self.seq_bn)
        return square + point + avg + seq

    def equivalent_kernel_bias(self) -> KernelBias:
        square = conv_bn_pair(self.square, self.square_bn)
        kp, bp = conv_bn_pair(self.point, self.point_bn)
        like = square[0]
        pool = merge.avgpool_kernel(self.out_channels, dtype=like.dtype, device=like.device)
        pool_bias = torch.zeros(self.out_channels, dtype=like.dtype, device=like.device)
        avg = merge.compose_1x1_kxk(self.avg_in.kernel_bias(), fold_bn(self.avg_bn, (pool, pool_bias)))
        seq = merge.compose_1x1_kxk(self.seq_in.kernel_bias(), conv_bn_pair(self.seq, self.seq_bn))
        return merge.add_branches(square, (merge.pad_to(kp), bp), avg, seq)


_ECB_MASKS = {
    "sobel_x": [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],
    "sobel_y": [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]],
    "laplacian": [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]],
}


class _MaskedDepthwise(nn.Module):
    """conv1x1 (with bias-valued padding) -> depthwise fixed-mask 3x3 with a learned per-channel scale."""

    def __init__(self, in_channels: int, out_channels: int, mask: list[list[float]]) -> None:
        super().__init__()
        self.point = _PointwiseStage(in_channels, out_channels, BNMode.NONE)
        self.scale = nn.Parameter(torch.randn(out_channels, 1, 1, 1) * 1e-3)
        self.bias = nn.Parameter(torch.randn(out_channels) * 1e-3)
        self.register_buffer("mask", torch.tensor(mask), persistent=False)

    def depthwise_kernel(self) -> Tensor:
        return self.scale * self.mask.to(self.scale.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(self.point(x), self.depthwise_kernel(), self.bias, groups=self.scale.shape[0])

    def kernel_bias(self) -> KernelBias:
        dense = merge.depthwise_to_full(self.depthwise_kernel())
        return merge.compose_1x1_kxk(self.point.kernel_bias(), (dense, self.bias))


class ECBlock(RepBlock):
    """ECBSR's Edge-oriented Convolution Block: conv3x3, 1x1->3x3, 1x1->Sobel-x, 1x1->Sobel-y, 1x1->Laplacian.

    No BN, as in ECBSR. The masks are fixed buffers; only their per-channel scales and biases learn.
    `identity` adds the input (ECBSR's `with_idt`), possible when in == out channels.
    """

    @dataclass(frozen=True)
    class Options(BlockOptions):
        depth_multiplier: float = 2.0  # width of the 1x1-3x3 branch, in multiples of out_channels
        identity: bool = False

    def __init__(self, in_channels: int, out_channels: int, options: Options | None = None) -> None:
        super().__init__(in_channels, out_channels)
        options = options or self.Options()
        depth_multiplier, identity = options.depth_multiplier, options.identity
        mid = max(1, round(depth_multiplier * out_channels))
        self.square = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.expand_in = _PointwiseStage(in_channels, mid, BNMode.NONE)
        self.expand = nn.Conv2d(mid, out_channels, 3)
        self.edges = nn.ModuleList(
            _MaskedDepthwise(in_channels, out_channels, m) for m in _ECB_MASKS.values()
        )
        self.identity = identity and in_channels == out_channels

    def forward_branches(self, x: Tensor) -> Tensor:
        y = self.square(x) + self.expand(self.expand_in(x))
        for edge in self.edges:
            y = y + edge(x)
        return y + x if self.identity else y

    def equivalent_kernel_bias(self) -> KernelBias:
        square = (self.square.weight, self.square.bias)
        expand = merge.compose_1x1_kxk(self.expand_in.kernel_bias(), (self.expand.weight, self.expand.bias))
        branches = [square, expand, *(edge.kernel_bias() for edge in self.edges)]
        if self.identity:
            branches.append(self._identity(square[0]))
        return merge.add_branches(*branches)


BLOCKS: dict[str, type[RepBlock]] = {
    "plain": PlainBlock,
    "repsr": RepSRBlock,
    "repvgg": RepVGGBlock,
    "acb": ACBlock,
    "dbb": DBBlock,
    "ecb": ECBlock,
}
