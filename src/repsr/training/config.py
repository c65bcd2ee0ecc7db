"""The typed training configuration: dataclasses loaded from YAML, strict about keys and types.

`load_config("configs/quick.yaml", ["train.iterations=200"])` reads the file, applies the `key=value`
overrides (values parsed as YAML), and checks every key and type: an unknown key or a wrong type raises
`ConfigError` naming the dotted key. `TrainConfig.to_dict()` gives plain data (written as the run's
`config.yaml` and stored in checkpoints).

The recipe defaults follow the public ECBSR recipe of BasicSR (`options/train/ECBSR/*.yml`: L1 loss,
Adam lr 5e-4 with betas (0.9, 0.99), batch 32, HR patch 128 at x2, i.e. LR patch 64) with a cosine decay
as in BasicSR's later recipes; configs/README.md gives the source of each choice.

`bn.mode` is held parsed, as a `BNSchedule`; `model.*` block options are checked by the block's own
`Options` (`repsr.arch.blocks`), so a new block's options need no change here. Losses and optimizers are the
names of `training.losses.LOSSES` / `TERMS` and `training.optim.OPTIMIZERS`.

GAN training: `train.losses` (a list of `LossTerm`s: `{type, weight, options}`) replaces the single
`train.loss` with a weighted sum, and a `discriminator` section (`type: unet | patch`) makes the step a
GAN step (discriminator and generator in turn). Without either, a config trains exactly as before.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from repsr.arch.blocks import BLOCKS
from repsr.arch.discriminator import DISCRIMINATORS
from repsr.arch.network import IN_CHANNELS, SCALES
from repsr.data.degradations import Degradation
from repsr.training.losses import ADVERSARIAL, LOSSES, TERMS
from repsr.training.optim import OPTIMIZERS
from repsr.util.errors import ConfigError, first_line


class BNSchedule(str, Enum):
    """What training does with BN (`bn.mode`): batch statistics throughout, the RepSR switch, no BN."""

    BATCH = "batch"
    SWITCH = "switch"
    NONE = "none"

    def __str__(self) -> str:
        return self.value


SCHEDULERS = ("cosine", "step", "constant")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelConfig:
    """The network: block type, size and block options (None = the block's own default)."""

    block: str = "repsr"
    scale: int = 4
    num_blocks: int = 4
    channels: int = 16
    in_channels: int = 3  # 1 trains a Y-channel model, 3 an RGB model
    expand: float | None = None  # repsr: width of each expand path, in multiples of `channels`
    paths: int | None = None  # repsr: number of expand-and-squeeze paths
    identity: bool | None = None  # repsr/ecb: the identity branch
    squeeze_bn: bool | None = None  # repsr: BN after the 1x1 squeeze too
    depth_multiplier: float | None = None  # ecb: width of its 1x1-3x3 branch
    rep_head_tail: bool = False  # head and tail convs are re-parameterizable blocks too
    options: dict[str, Any] = field(default_factory=dict)  # any other option of the block's `Options`

    def block_options(self) -> dict[str, Any]:
        """The options given to the block constructor (only those set), plus `rep_head_tail`."""
        names = ("expand", "paths", "identity", "squeeze_bn", "depth_multiplier")
        options = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        options.update(self.options)
        if self.rep_head_tail:
            options["rep_head_tail"] = True
        return options


@dataclass
class DataConfig:
    """Training patches. `root` None (and no `--data`) trains on the built-in sample images."""

    root: str | None = None  # folder (or file) of HR images
    lr_root: str | None = None  # optional matching LR images; None = MATLAB bicubic from HR
    patch_size: int = 64  # LR patch side; the HR patch is patch_size * scale
    augment: bool = True  # random flips and 90-degree rotations
    # random order of the R, G, B channels per patch (RGB models): colours the photographs lack, such as
    # saturated green and blue (none in the `repsr corpus` photographs), are seen in training too
    channel_shuffle: bool = False
    # share of patches replaced by synthetic flat colours and ramps (repsr.data.smooth): GAN training,
    # where the adversarial term otherwise paints texture on skies and walls (docs/results/gan-losses.md)
    smooth_share: float = 0.0
    cache_dir: str | None = None  # on-disk cache of decoded/downscaled images (None = the data default)
    workers: int = 4  # DataLoader worker processes (0 = load in the training process)


@dataclass
class LossTerm:
    """One weighted term of `train.losses`: a name in `training.losses.TERMS` (l1, l2, charbonnier, fft,
    focal, ldl, gan, feature), its weight in the sum, and the term's own options (e.g. ldl's `kernel`)."""

    type: str = "l1"
    weight: float = 1.0
    options: dict[str, float] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimisation: iterations, batch, Adam, LR schedule, loss and speed options."""

    iterations: int = 500_000
    batch_size: int = 32  # per process: with N processes the global batch is N * batch_size
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    scheduler: str = "cosine"  # cosine | step | constant
    min_lr: float = 1e-6  # cosine: final learning rate
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions of iterations
    gamma: float = 0.5  # step: LR factor at each milestone
    warmup: int = 0  # iterations of linear warm-up
    loss: str = "l1"  # a name in training.losses.LOSSES: l1 | l2 | charbonnier
    # weighted loss terms (GAN training: e.g. [{type: l1, weight: 1}, {type: gan, weight: 0.1}]); when
    # given they replace `loss`; empty = `loss` alone with weight 1 (the pixel step of before)
    losses: list[LossTerm] = field(default_factory=list)
    optimizer: str = "adam"  # a name in training.optim.OPTIMIZERS: adam | adamw
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    # bfloat16 autocast of the forward pass (CPU and CUDA); loss, BN statistics and optimizer stay in
    # float32. None ("auto"): on where the device has native bf16 units (AMX or AVX512-BF16, CUDA sm80+)
    amp: bool | None = None
    channels_last: bool | None = None  # channels-last memory format; None ("auto") = on for CPU, off for CUDA
    compile: bool = False  # torch.compile the training forward
    threads: int = 0  # CPU intra-op threads, 0 = PyTorch's default
    init: str | None = None  # starting weights: a shipped model's name or a training-form model file


@dataclass
class BNConfig:
    """The BN switch (the paper's contribution) and training in merged form after it."""

    mode: BNSchedule = BNSchedule.SWITCH  # batch | switch | none
    switch_at: float = 0.8  # switch: fraction of train.iterations after which statistics freeze
    precise_batches: int = 100  # batches for precise population statistics at the switch (0 = keep EMA)
    freeze_affine: bool = False  # also stop training gamma/beta after the switch
    merged_training: bool = True  # once all BN statistics are fixed, train each block as one 3x3 conv
    sync: bool = False  # SyncBatchNorm across processes before the switch


@dataclass
class DiscriminatorConfig:
    """The discriminator of GAN training (`type: none`: no GAN, the pixel step). It trains with its own
    optimizer (`train.optimizer`'s kind) at `lr`, under the same schedule shape as the generator."""

    type: str = "none"  # none | unet (Real-ESRGAN's U-Net design) | patch (PatchGAN)
    channels: int = 32  # base width (Real-ESRGAN's U-Net: 64; the CPU cost grows with its square)
    spectral_norm: bool = True  # spectral normalization of the inner convolutions
    loss: str = "vanilla"  # the adversarial loss, both sides: vanilla (BCE with logits) | hinge | lsgan
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.type != "none"


@dataclass
class EMAConfig:
    """Exponential moving average of the weights (and BN buffers); the EMA is what gets deployed."""

    enabled: bool = False
    decay: float = 0.999


@dataclass
class CheckpointConfig:
    every: int = 5000  # iterations between checkpoints (one is always written at the end)
    keep: int = 3  # how many recent checkpoints to keep


@dataclass
class ValConfig:
    """Validation of the deployed form (population statistics, merged) during training."""

    every: int = 5000  # iterations between validations (also at the end); 0 = only at the end
    sets: dict[str, str] = field(default_factory=dict)  # name -> folder; `--val NAME=DIR` adds to it
    sample: bool = True  # without any set, validate on the built-in sample images (set "sample")
    crop_border: int | None = None  # pixels cropped before PSNR/SSIM; None = the scale
    y_channel: bool = True  # metrics on the Y channel (the literature's protocol)


@dataclass
class LogConfig:
    every: int = 100  # iterations between loss/LR records (console, CSV, TensorBoard)
    tensorboard: bool = True


@dataclass
class TrainConfig:
    """Everything a training run needs; `repsr train CONFIG.yaml` builds one from the file."""

    name: str = "run"  # run folder name under runs/ when --out is not given
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # how training LR is made from HR: `preset: none` (MATLAB bicubic) or real-world degradations
    degradation: Degradation = field(default_factory=Degradation)
    train: OptimConfig = field(default_factory=OptimConfig)
    bn: BNConfig = field(default_factory=BNConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    val: ValConfig = field(default_factory=ValConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (dicts, lists, numbers, strings, None): YAML- and checkpoint-safe."""
        return dataclasses.asdict(self, dict_factory=_plain_dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build and validate a config; unknown keys and wrong types raise `ConfigError`."""
        config = _build(cls, data, prefix="")
        validate(config)
        return config

    def with_overrides(self, overrides: typing.Iterable[str]) -> TrainConfig:
        """A new config with `key=value` overrides applied (e.g. `model.block=acb`)."""
        data = self.to_dict()
        for override in overrides:
            _apply_override(data, override)
        return TrainConfig.from_dict(data)

    @property
    def switch_iteration(self) -> int | None:
        """The iteration count after which BN statistics freeze (None unless `bn.mode` is switch)."""
        if self.bn.mode != BNSchedule.SWITCH:
            return None
        return min(self.train.iterations, round(self.bn.switch_at * self.train.iterations))


def load_config(path: str | Path, overrides: typing.Iterable[str] = ()) -> TrainConfig:
    """Read a YAML config, apply `key=value` overrides, and check it.

    `name` defaults to the file's stem, so `configs/quick.yaml` runs in `runs/quick`.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{path}: is a folder, not a config file (give a YAML file, e.g. configs/quick.yaml)"
        )
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({first_line(error)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    data.setdefault("name", path.stem)
    for override in overrides:
        _apply_override(data, override)
    return TrainConfig.from_dict(data)


def save_config(config: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (loadable again with `load_config`)."""
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like key=value (e.g. train.iterations=1000)")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _plain_dict(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v.value if isinstance(v, Enum) else v for k, v in items}


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]}; known keys here: {', '.join(sorted(names))}"
        )
    values = {name: _coerce(data[name], hints[name], prefix + name) for name in names if name in data}
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type hint `hint`, converting only where it is lossless."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, {} if value is None else value, key + ".")
    if isinstance(hint, type) and issubclass(hint, Enum):
        choices = ", ".join(str(m.value) for m in hint)
        try:
            return hint(value)
        except ValueError:
            raise ConfigError(f"{key}: must be one of {choices}, got {_kind(value)}") from None
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (value == "auto" and bool in args)):
            return None  # an optional switch's None is its automatic choice; YAML may spell it "auto"
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {_kind(value)}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_kind(value)}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads `5e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {_kind(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _check(condition: bool, key: str, problem: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {problem}")


def validate(config: TrainConfig) -> None:
    """Value checks that types alone cannot express; raises `ConfigError` naming the key."""
    model, optim, bn = config.model, config.train, config.bn
    _check(config.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}, got {config.device!r}")
    _check(bool(config.name) and "/" not in config.name, "name", "must be a non-empty folder name")
    _check(model.block in BLOCKS, "model.block", f"must be one of {', '.join(BLOCKS)}, got {model.block!r}")
    _check(model.scale in SCALES, "model.scale", f"must be one of {SCALES}, got {model.scale}")
    _check(model.in_channels in IN_CHANNELS, "model.in_channels", "must be 1 (Y) or 3 (RGB)")
    _check(model.num_blocks >= 0, "model.num_blocks", "must be >= 0")
    _check(model.channels >= 1, "model.channels", "must be >= 1")
    _check_block_options(model)
    _check(config.data.patch_size >= 4, "data.patch_size", "must be at least 4 (LR pixels)")
    _check(config.data.workers >= 0, "data.workers", "must be >= 0")
    _check(0.0 <= config.data.smooth_share <= 1.0, "data.smooth_share", "must be within [0, 1]")
    config.degradation.resolved()  # unknown preset, bad probability or range: ConfigError naming the key
    _check(optim.iterations >= 1, "train.iterations", "must be >= 1")
    _check(optim.batch_size >= 1, "train.batch_size", "must be >= 1")
    _check(optim.lr > 0, "train.lr", "must be > 0")
    _check(len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas), "train.betas", "needs 2 in [0,1)")
    _check(optim.scheduler in SCHEDULERS, "train.scheduler", f"must be one of {', '.join(SCHEDULERS)}")
    _check(0 <= optim.min_lr <= optim.lr, "train.min_lr", "must be between 0 and train.lr")
    _check(all(0 < m < 1 for m in optim.milestones), "train.milestones", "must be fractions in (0, 1)")
    _check(optim.gamma > 0, "train.gamma", "must be > 0")
    _check(optim.warmup >= 0, "train.warmup", "must be >= 0")
    _check(optim.loss in LOSSES, "train.loss", f"must be one of {', '.join(LOSSES)}, got {optim.loss!r}")
    _check_losses(config)
    _check(
        optim.optimizer in OPTIMIZERS,
        "train.optimizer",
        f"must be one of {', '.join(OPTIMIZERS)}, got {optim.optimizer!r}",
    )
    _check(optim.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = off)")
    _check(optim.threads >= 0, "train.threads", "must be >= 0 (0 = default)")
    _check(0 < bn.switch_at <= 1, "bn.switch_at", "must be a fraction of the iterations in (0, 1]")
    _check(bn.precise_batches >= 0, "bn.precise_batches", "must be >= 0")
    _check(0 < config.ema.decay < 1, "ema.decay", "must be in (0, 1)")
    _check(config.checkpoint.every >= 1, "checkpoint.every", "must be >= 1")
    _check(config.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
    _check(config.val.every >= 0, "val.every", "must be >= 0 (0 = only at the end)")
    crop = config.val.crop_border
    _check(crop is None or crop >= 0, "val.crop_border", "must be >= 0")
    _check(config.log.every >= 1, "log.every", "must be >= 1")


def _check_losses(config: TrainConfig) -> None:
    """`train.losses` terms and the `discriminator` section: known names, what each term needs."""
    disc, terms = config.discriminator, config.train.losses
    kinds = ", ".join(["none", *DISCRIMINATORS])
    _check(
        disc.type == "none" or disc.type in DISCRIMINATORS, "discriminator.type", f"must be one of {kinds}"
    )
    _check(disc.channels >= 1, "discriminator.channels", "must be >= 1")
    _check(disc.loss in ADVERSARIAL, "discriminator.loss", f"must be one of {', '.join(ADVERSARIAL)}")
    _check(disc.lr > 0, "discriminator.lr", "must be > 0")
    _check(
        len(disc.betas) == 2 and all(0 <= b < 1 for b in disc.betas),
        "discriminator.betas",
        "needs 2 in [0,1)",
    )
    needs: set[str] = set()
    for i, term in enumerate(terms):
        key = f"train.losses[{i}]"
        _check(term.type in TERMS, f"{key}.type", f"must be one of {', '.join(TERMS)}, got {term.type!r}")
        _check(term.weight >= 0, f"{key}.weight", "must be >= 0")
        known = TERMS[term.type].options
        for name in term.options:
            takes = ", ".join(known) or "no options"
            _check(
                name in known,
                f"{key}.options.{name}",
                f"loss {term.type!r} does not take it (it takes {takes})",
            )
        needs |= TERMS[term.type].needs
        if "ema" in TERMS[term.type].needs:
            _check(
                config.ema.enabled, f"{key}.type", f"{term.type} compares with the EMA: set ema.enabled: true"
            )
        if "discriminator" in TERMS[term.type].needs:
            _check(disc.enabled, f"{key}.type", f"{term.type} needs a discriminator: set discriminator.type")
    _check(
        not disc.enabled or "discriminator" in needs,
        "discriminator.type",
        "a discriminator trains only with an adversarial term: add {type: gan, weight: ...} to train.losses",
    )


def _check_block_options(model: ModelConfig) -> None:
    """`model.*` block options checked by the block's own `Options` (the one source of their names)."""
    options_class = BLOCKS[model.block].Options
    options = {k: v for k, v in model.block_options().items() if k != "rep_head_tail"}
    if "bn_mode" in options:
        raise ConfigError("model.options.bn_mode: set by bn.mode, not by the model section")
    known = options_class.field_names()
    for name in options:
        if name not in known:
            where = f"model.{name}" if name not in model.options else f"model.options.{name}"
            takes = ", ".join(n for n in known if n != "bn_mode") or "no options"
            raise ConfigError(f"{where}: block {model.block!r} does not take it (it takes {takes})")
    try:
        options_class.from_dict(options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model: block {model.block!r}: {first_line(error)}") from None
