"""What a training config builds: the network, the training patches and fine-tuning's starting weights.

The layers below (`repsr.arch.network`, `repsr.data.datasets`) know nothing of `TrainConfig`; this module
reads the config and calls their plain constructors.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from repsr.arch.blocks import BLOCKS
from repsr.arch.discriminator import build_discriminator as _discriminator
from repsr.arch.network import RepNet, build_model
from repsr.data.datasets import EvalPair, TrainPatches
from repsr.data.samples import sample_images
from repsr.models.files import load_model
from repsr.models.pretrained import resolve_model
from repsr.training.config import TrainConfig
from repsr.training.losses import LOSSES, TERMS, LossInputs
from repsr.training.optim import OPTIMIZERS
from repsr.training.schedule import config_has_bn, lr_factor
from repsr.training.signals import worker_stop_rule
from repsr.training.validation import build_eval_sets
from repsr.util.errors import ConfigError

__all__ = [
    "WeightedTerm",
    "build_discriminator",
    "build_loss",
    "build_loss_terms",
    "build_network",
    "build_optimizer",
    "build_scheduler",
    "build_train_set",
    "build_val_sets",
    "config_has_bn",
    "initial_weights",
    "make_loader",
]

log = logging.getLogger("repsr.training")
TAIL = "tail."  # the state-dict prefix of the last conv, the one layer whose shape depends on the scale


def build_network(config: TrainConfig) -> RepNet:
    """The training-form network a training config describes (BN in batch mode unless `bn.mode` is none)."""
    m = config.model
    options = m.block_options()
    if BLOCKS[m.block].has_bn:
        options["bn_mode"] = "batch" if config_has_bn(config) else "none"
    return build_model(
        m.block,
        scale=m.scale,
        num_blocks=m.num_blocks,
        channels=m.channels,
        in_channels=m.in_channels,
        **options,
    )


def build_loss(config: TrainConfig) -> nn.Module:
    """The loss `train.loss` names (an entry of `losses.LOSSES`; the config checked the name)."""
    return LOSSES[config.train.loss]()


@dataclass(frozen=True)
class WeightedTerm:
    """One term of the generator's loss: `weight * fn(inputs)`, logged as `loss/NAME`."""

    name: str
    weight: float
    fn: Callable[[LossInputs], Tensor]
    needs: frozenset[str]


def build_loss_terms(config: TrainConfig) -> list[WeightedTerm]:
    """The weighted terms `train.losses` lists (`losses.TERMS`), or `train.loss` alone with weight 1.

    Names are the term types, numbered when a type repeats (`l1`, `l1_2`). A term's `period` (`phase`)
    is the model's scale unless the config sets it."""
    terms = config.train.losses
    if not terms:
        term = TERMS[config.train.loss]
        return [WeightedTerm(config.train.loss, 1.0, term.make(), term.needs)]
    built, seen = [], {}
    for t in terms:
        seen[t.type] = seen.get(t.type, 0) + 1
        name = t.type if seen[t.type] == 1 else f"{t.type}_{seen[t.type]}"
        term = TERMS[t.type]
        options = dict(t.options)
        if "period" in term.options:
            options.setdefault("period", config.model.scale)
        built.append(WeightedTerm(name, float(t.weight), term.make(**options), term.needs))
    return built


def build_discriminator(config: TrainConfig) -> nn.Module:
    """The discriminator the `discriminator` section describes (config checked: its type is not none)."""
    d = config.discriminator
    return _discriminator(d.type, config.model.in_channels, d.channels, d.spectral_norm)


def build_optimizer(
    config: TrainConfig, params: Iterable[nn.Parameter], *, network: str = "generator"
) -> torch.optim.Optimizer:
    """The optimizer `train.optimizer` names (`optim.OPTIMIZERS`) over `params`: for the generator with
    `train.lr`, `train.betas` and `train.weight_decay`, for the discriminator with its section's."""
    t = config.train
    lr, betas, decay = t.lr, t.betas, t.weight_decay
    if network == "discriminator":
        d = config.discriminator
        lr, betas, decay = d.lr, d.betas, d.weight_decay
    return OPTIMIZERS[t.optimizer](params, lr, (float(betas[0]), float(betas[1])), decay)


def build_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR schedule: the optimizer's rate times `schedule.lr_factor` (warm-up, then cosine/step/constant);
    the generator and the discriminator follow the same shape."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))


def build_train_set(
    config: TrainConfig, data: Path | torch.utils.data.Dataset | None
) -> torch.utils.data.Dataset:
    """Training patches from `data` (a folder/file, or a ready dataset), `data.root`, or the samples."""
    if isinstance(data, torch.utils.data.Dataset):
        return data
    root: Any = data if data is not None else config.data.root
    hr = Path(root) if root is not None else sample_images()["train"]
    return TrainPatches(
        hr,
        config.model.scale,
        config.data.patch_size,
        lr=config.data.lr_root,
        cache_dir=config.data.cache_dir,
        augment=config.data.augment,
        channel_shuffle=config.data.channel_shuffle,
        degradation=config.degradation,
        y_channel=config.model.in_channels == 1,
        smooth_share=config.data.smooth_share,
    )


def make_loader(dataset: Dataset, sampler: Sampler, workers: int, device: torch.device) -> DataLoader:
    """The training loader over `dataset` with a batch sampler (`sampling.KeyBatches`).

    The loader's own generator gives its base seed, so opening a loader leaves the global RNG alone (the
    data come from patch keys and never use that seed): a resumed run's RNG state is then the same as an
    uninterrupted run's, though it opens one more loader."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=worker_stop_rule if workers else None,
    )


def build_val_sets(
    config: TrainConfig, val: dict[str, Path | Iterable[EvalPair]] | None
) -> dict[str, Iterable[EvalPair]]:
    """Folders from `val.sets` (which include `val`'s folders), ready sets from `val`, else samples."""
    sets: dict[str, Iterable[EvalPair]] = dict(
        build_eval_sets(
            {name: Path(root) for name, root in config.val.sets.items()},
            config.model.scale,
            sample=config.val.sample and val is None,
            crop_border=config.val.crop_border,
        )
    )
    sets.update({k: v for k, v in (val or {}).items() if not isinstance(v, str | Path)})
    return sets


def initial_weights(reference: str | Path, model: RepNet) -> dict[str, Tensor]:
    """The training-form weights `train.init` names (fine-tuning), as a state dict for `model`: a shipped
    model's training form (`repsr-m4c16-x4`) or a training-form file (checkpoint, `final.pt`,
    `NAME.train.safetensors`).

    The file's spec must equal `model`'s, except that it may be another scale: then its body starts this
    run and the tail (the last conv, whose outputs are channels x scale^2) keeps `model`'s own seeded
    initialization, so a trained x2 network starts an x4 run. A deployed plain network cannot start
    training (its branches are gone). Each refusal is a `ConfigError` naming the file.
    """
    path = resolve_model(reference, training_form=True)
    source = load_model(path)
    if not isinstance(source, RepNet):
        raise ConfigError(
            f"train.init {path}: a deployed plain network cannot start training; give a training-form "
            "model (a checkpoint, final.pt, NAME.train.safetensors or a shipped model's name)"
        )
    spec = model.spec
    if dataclasses.replace(source.spec, scale=spec.scale) != spec:
        raise ConfigError(
            f"train.init {path}: holds model {source.spec.to_dict()} but the config describes "
            f"{spec.to_dict()}; set model.* to match it (only model.scale may differ)"
        )
    weights = source.state_dict()
    if source.spec.scale != spec.scale:
        own = model.state_dict()
        weights = {k: own[k] if k.startswith(TAIL) else v for k, v in weights.items()}
        log.info(
            "train.init %s: an x%d model; its body starts this x%d run, the tail starts fresh",
            path, source.spec.scale, spec.scale,
        )  # fmt: skip
    return weights
