"""The loss and optimizer tables, and the config checks that name their entries and block options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from repsr.training.builders import build_loss, build_optimizer
from repsr.training.config import BNSchedule, TrainConfig
from repsr.training.losses import LOSSES, CharbonnierLoss
from repsr.training.optim import OPTIMIZERS
from repsr.util.errors import ConfigError
from tests.helpers.train import make_trainer, tiny_config


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 8, 8, generator=generator), torch.rand(2, 3, 8, 8, generator=generator)


def test_each_loss_computes_its_formula():
    sr, hr = _pair()
    assert torch.equal(build_loss(tiny_config(**{"train.loss": "l1"}))(sr, hr), F.l1_loss(sr, hr))
    assert torch.equal(build_loss(tiny_config(**{"train.loss": "l2"}))(sr, hr), F.mse_loss(sr, hr))
    charbonnier = build_loss(tiny_config(**{"train.loss": "charbonnier"}))
    expected = torch.sqrt((sr - hr).double() ** 2 + 1e-6).mean()
    torch.testing.assert_close(charbonnier(sr, hr).double(), expected, rtol=1e-6, atol=0)
    # a smooth L1: within eps of it, and with a gradient at zero error (L1 has none there)
    assert abs(float(charbonnier(sr, hr)) - float(F.l1_loss(sr, hr))) < 1e-3
    x = torch.zeros(4, requires_grad=True)
    CharbonnierLoss()(x, torch.zeros(4)).backward()
    assert torch.equal(x.grad, torch.zeros(4))


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains(tmp_path, loss):
    config = tiny_config(**{"train.loss": loss, "train.iterations": 100, "train.scheduler": "constant"})
    trainer = make_trainer(tmp_path, config)
    batch = (torch.stack(t) for t in zip(*(trainer.train_set[k] for k in range(4)), strict=True))
    lr_patch, hr_patch = (trainer.step.to_device(t) for t in batch)
    trainer.start()
    trainer.model.train()
    losses = [float(trainer.train_step(lr_patch, hr_patch)) for _ in range(30)]
    trainer.close()
    assert losses[-1] < 0.7 * losses[0]


def test_optimizer_table_and_weight_decay():
    for name, kind in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        config = tiny_config(**{"train.optimizer": name, "train.weight_decay": 0.1})
        optimizer = build_optimizer(config, [torch.nn.Parameter(torch.ones(3))])
        assert type(optimizer) is kind and optimizer.defaults["betas"] == (0.9, 0.99)
    assert sorted(OPTIMIZERS) == ["adam", "adamw"]
    # Adam adds the decay to the gradient, which its normalisation turns into a step of lr; AdamW
    # decays the weights directly, by lr * weight_decay (train.lr is 2e-3 in tiny_config)
    moved = {}
    for name in OPTIMIZERS:
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = build_optimizer(
            tiny_config(**{"train.optimizer": name, "train.weight_decay": 0.5}), [weight]
        )
        weight.grad = torch.zeros(3)
        optimizer.step()
        moved[name] = float((weight.detach() - 1).abs().max())
    assert moved["adam"] == pytest.approx(2e-3, rel=1e-3)
    assert moved["adamw"] == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.loss=huber", "train.loss"),
        ("train.optimizer=sgd", "train.optimizer"),
        ("bn.mode=sometimes", "bn.mode"),
    ],
)
def test_table_names_are_checked(override, key):
    with pytest.raises(ConfigError, match=f"^{key}: must be one of"):
        tiny_config().with_overrides([override])


def test_block_options_are_checked_by_the_blocks_own_options():
    with pytest.raises(ConfigError, match=r"^model.expand: block 'ecb' does not take it \(it takes"):
        tiny_config(**{"model.block": "ecb", "model.expand": 2})
    with pytest.raises(ConfigError, match="paths must be at least 1"):
        tiny_config(**{"model.paths": 0})
    with pytest.raises(ConfigError, match="^model.options.bn_mode: set by bn.mode"):
        tiny_config(**{"model.options": {"bn_mode": "frozen"}})
    with pytest.raises(ConfigError, match="^model.options.colour: block 'repsr' does not take it"):
        tiny_config(**{"model.options": {"colour": 1}})
    # an option no named key covers goes through model.options into the block
    config = tiny_config(**{"model.block": "ecb", "model.options": {"depth_multiplier": 1.0}})
    trainer_spec = config.model.block_options()
    assert trainer_spec == {"depth_multiplier": 1.0}


def test_bn_mode_is_held_parsed_and_written_plain(tmp_path):
    config = tiny_config(**{"bn.mode": "batch"})
    assert config.bn.mode is BNSchedule.BATCH and config.switch_iteration is None
    data = config.to_dict()
    assert type(data["bn"]["mode"]) is str and data["bn"]["mode"] == "batch"
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(data))) == config
