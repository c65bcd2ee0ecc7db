"""GAN training on the one trainer: named networks in the state, weighted loss terms, the GAN step's order,
per-term logging, exact resume, and single-network checkpoints (written by the code before GAN training)
that keep loading.

Runs are tiny (the trainer tests' 2-block, 8-channel x2 network on 12x12 LR patches, a 4-channel
discriminator), one thread.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from repsr.training import checkpoint as ckpt
from repsr.training.config import TrainConfig
from repsr.util.errors import ConfigError
from tests.helpers.train import make_trainer, tiny_config

FIXTURES = Path(__file__).parent / "fixtures" / "single_network"  # written by main at 429fb50 (before GAN)

GAN = {
    "discriminator.type": "unet",
    "discriminator.channels": 4,
    "discriminator.lr": 1e-3,
    "ema.enabled": True,
    "ema.decay": 0.9,
}
ALL_TERMS = (
    "[{type: l1, weight: 1.0}, {type: fft, weight: 0.05}, {type: ldl, weight: 1.0},"
    " {type: feature, weight: 0.1}, {type: gan, weight: 0.1}]"
)


def gan_config(**overrides: Any) -> TrainConfig:
    return tiny_config(**{**GAN, "train.losses": ALL_TERMS, **overrides})


def assert_all_equal(a: Any, b: Any, path: str = "") -> None:
    """Every tensor, number and string of two checkpoint dicts equal (wall-clock `seconds` aside)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        keys = {k for k in a if k != "seconds"}
        assert keys == {k for k in b if k != "seconds"}, path
        for key in keys:
            assert_all_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_all_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_gan_training_resumes_bit_exact(tmp_path):
    """8 iterations straight equal 4 + resume + 4: generator, EMA, discriminator (spectral-norm vectors
    included), both optimizers and schedules, phase, best, RNG state, history (every term), tensor for
    tensor."""
    config = gan_config(**{"train.iterations": 8, "bn.switch_at": 0.5})
    whole = make_trainer(tmp_path, config, name="whole")
    whole.run()
    first = make_trainer(tmp_path, config, name="split")
    assert first.run(until=5) is None  # "killed" after iteration 5; last checkpoint at 4
    first.close()
    second = make_trainer(tmp_path, config, name="split", resume=True)
    assert second.iteration == 4
    second.run()
    a = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "whole" / "checkpoints", 8))
    b = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "split" / "checkpoints", 8))
    assert set(a["networks"]) == {"discriminator"} and a["networks"]["discriminator"]["optimizer"]["state"]
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in a.pop("history")]
    assert history == [{k: v for k, v in row.items() if k != "seconds"} for row in b.pop("history")]
    assert_all_equal(a, b)


def test_every_term_is_logged_per_step_and_the_loss_is_their_weighted_sum(tmp_path):
    config = gan_config(**{"train.iterations": 4, "log.every": 1, "val.every": 0})
    result = make_trainer(tmp_path, config).run()
    rows = list(csv.DictReader(open(result.run_dir / "metrics.csv")))
    names = ["loss/l1", "loss/fft", "loss/ldl", "loss/feature", "loss/gan", "d/real", "d/fake"]
    assert all(name in rows[0] for name in names)
    weights = {"loss/l1": 1.0, "loss/fft": 0.05, "loss/ldl": 1.0, "loss/feature": 0.1, "loss/gan": 0.1}
    for row in rows[:4]:
        values = {name: float(row[name]) for name in names}
        assert all(math.isfinite(v) for v in values.values())
        assert values["d/real"] > 0 and values["d/fake"] > 0 and values["loss/gan"] > 0
        total = sum(w * values[name] for name, w in weights.items())
        assert float(row["loss"]) == pytest.approx(total, rel=1e-5)
    log_text = (result.run_dir / "train.log").read_text()
    assert "loss/gan" in log_text and "d/fake" in log_text


def test_a_single_loss_run_logs_as_before(tmp_path):
    result = make_trainer(tmp_path, tiny_config(**{"train.iterations": 2})).run()
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert header == "iteration,loss,lr,phase,seconds,synth/psnr,synth/ssim"


def test_the_gan_step_freezes_d_for_g_then_trains_d_on_real_and_detached_fake(tmp_path):
    """One step against a hand-written BasicSR SRGANModel step on copies of both networks."""
    config = tiny_config(
        **{"discriminator.type": "unet", "discriminator.channels": 4, "discriminator.lr": 1e-3},
        **{"train.losses": "[{type: l1, weight: 1.0}, {type: gan, weight: 0.1}]"},
        **{"train.scheduler": "constant", "bn.mode": "batch"},
    )
    trainer = make_trainer(tmp_path, config)
    trainer.start()
    trainer.model.train()
    d_net = trainer.state.networks["discriminator"].module.train()
    g, d = copy.deepcopy(trainer.model), copy.deepcopy(d_net)
    opt_g = torch.optim.Adam(g.parameters(), lr=config.train.lr, betas=(0.9, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.9, 0.99))
    lr_patch, hr_patch = (torch.stack(t) for t in zip(*(trainer.train_set[k] for k in range(4)), strict=True))
    lr_patch, hr_patch = trainer.step.to_device(lr_patch), trainer.step.to_device(hr_patch)

    loss = trainer.train_step(lr_patch, hr_patch)

    for p in d.parameters():
        p.requires_grad_(False)
    sr = g(lr_patch)
    fake = d(sr)
    expected = F.l1_loss(sr, hr_patch) + 0.1 * F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    opt_g.zero_grad()
    expected.backward()
    opt_g.step()
    for p in d.parameters():
        p.requires_grad_(True)
    real_logits, fake_logits = d(hr_patch), d(sr.detach())
    d_loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    d_loss = d_loss + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    trainer.close()

    torch.testing.assert_close(loss, expected.detach(), rtol=1e-6, atol=0)
    for name, (a, b) in {"G": (trainer.model, g), "D": (d_net, d)}.items():
        state_a, state_b = a.state_dict(), b.state_dict()
        for key in state_a:
            torch.testing.assert_close(state_a[key], state_b[key], rtol=1e-5, atol=1e-7, msg=f"{name} {key}")
    assert all(p.requires_grad for p in d_net.parameters())


def _resume_fixture(tmp_path: Path, config: TrainConfig, **kwargs: Any):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / "ckpt_00000004.pt", tmp_path / "run" / "checkpoints")
    return make_trainer(tmp_path, config, resume=True, **kwargs)


def test_a_single_network_checkpoint_of_the_code_before_gan_training_resumes_to_the_same_weights(tmp_path):
    """main (429fb50) wrote ckpt 4 of a run and ckpt 8 of the same run uninterrupted: resumed from 4 by this
    code, the run ends where main's did (same kernels on the same machine: equal; elsewhere within 1e-5)."""
    old = torch.load(FIXTURES / "ckpt_00000004.pt", weights_only=True)
    assert "networks" not in old and "losses" not in old["config"]["train"]  # the old layout
    config = TrainConfig.from_dict(old["config"])
    trainer = _resume_fixture(tmp_path, config)
    assert trainer.iteration == 4 and trainer.state.networks == {}
    trainer.run()
    mine = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "run" / "checkpoints", 8))
    theirs = torch.load(FIXTURES / "ckpt_00000008.pt", weights_only=True)
    for part in ("model", "ema"):
        for key, value in theirs[part].items():
            torch.testing.assert_close(mine[part][key], value, rtol=1e-5, atol=1e-6, msg=f"{part} {key}")
    assert mine["networks"] == {}


def test_a_gan_run_resumed_from_a_single_network_checkpoint_starts_its_discriminator_fresh(tmp_path, caplog):
    old = torch.load(FIXTURES / "ckpt_00000004.pt", weights_only=True)
    config = TrainConfig.from_dict(old["config"]).with_overrides(
        [f"{k}={v}" for k, v in {**GAN, "train.losses": "[{type: l1}, {type: gan, weight: 0.1}]"}.items()]
    )
    with caplog.at_level(logging.WARNING, logger="repsr.training"):
        trainer = _resume_fixture(tmp_path, config)
    assert "holds no discriminator" in caplog.text
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in old["model"].items())
    result = trainer.run()
    assert result.history[-1]["iteration"] == 8 and "loss/gan" in result.history[-1]


def test_a_gan_checkpoint_refuses_another_discriminator(tmp_path):
    config = gan_config(**{"train.iterations": 8})
    partial = make_trainer(tmp_path, config)
    partial.run(until=4)
    partial.close()
    with pytest.raises(ConfigError, match="discriminator"):
        make_trainer(tmp_path, config.with_overrides(["discriminator.channels=6"]), resume=True)


def test_gan_fine_tuning_starts_from_a_checkpoint_given_as_train_init(tmp_path):
    pixel = make_trainer(tmp_path, tiny_config(**{"train.iterations": 4}), name="pixel").run()
    config = gan_config(**{"train.init": str(pixel.checkpoint_path), "train.iterations": 2})
    trainer = make_trainer(tmp_path, config, name="gan")
    assert all(
        torch.equal(a, b) for a, b in zip(trainer.model.parameters(), pixel.model.parameters(), strict=True)
    )
    # the EMA starts from those weights too (it used to keep the random initial ones: a run delivering the
    # EMA then blended decay^iterations of random weights into its model)
    ema = trainer.state.ema.module.state_dict()
    weights = {k: v for k, v in trainer.model.state_dict().items() if not k.endswith("_extra_state")}
    assert all(torch.equal(ema[k], v) for k, v in weights.items())  # (the BN mode follows at each update)
    trainer.close()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.losses": "[{type: vgg}]"}, r"train.losses\[0\].type: must be one of"),
        ({"train.losses": "[{type: l1}, {type: gan}]"}, r"train.losses\[1\].type: gan needs a discriminator"),
        ({**GAN, "train.losses": "[{type: l1}]"}, "discriminator.type: a discriminator trains only with"),
        ({"train.losses": "[{type: ldl}]"}, r"train.losses\[0\].type: ldl compares with the EMA"),
        (
            {"train.losses": "[{type: fft, options: {kernel: 3}}]"},
            r"options.kernel: loss 'fft' does not take",
        ),
        ({"train.losses": "[{type: l1, weight: -1}]"}, r"train.losses\[0\].weight: must be >= 0"),
        ({"train.losses": "[{type: l1, wieght: 1}]"}, r"unknown config key train.losses\[0\].wieght"),
        ({"discriminator.kind": "unet"}, "unknown config key discriminator.kind"),
        ({"discriminator.type": "vgg"}, "discriminator.type: must be one of none, unet, patch"),
        (
            {**GAN, "train.losses": "[{type: gan}]", "discriminator.loss": "wgan"},
            "discriminator.loss: must be",
        ),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


def test_resuming_a_single_network_checkpoint_reports_no_config_change(tmp_path, caplog):
    """Its config has no `train.losses` or `discriminator`: they were at their defaults, nothing changed."""
    old = torch.load(FIXTURES / "ckpt_00000004.pt", weights_only=True)
    with caplog.at_level(logging.WARNING, logger="repsr.training"):
        _resume_fixture(tmp_path, TrainConfig.from_dict(old["config"])).close()
    assert "config differs" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="repsr.training"):
        changed = TrainConfig.from_dict(old["config"]).with_overrides(
            ["train.losses=[{type: l1, weight: 2}]"]
        )
        _resume_fixture(tmp_path / "b", changed).close()
    assert "config differs from the checkpoint's in train.losses" in caplog.text


def test_replan_moves_the_discriminator_to_the_new_lr_curve_too(tmp_path):
    from repsr.training.schedule import lr_factor

    config = gan_config(**{"train.iterations": 8, "val.every": 0, "checkpoint.every": 100})
    trainer = make_trainer(tmp_path, config)
    assert trainer.run(until=3) is None
    trainer.replan(40)
    d = trainer.state.networks["discriminator"]
    factor = lr_factor(trainer.config, 3)  # the next step's rate on a 40-iteration cosine
    assert factor > lr_factor(config, 3)  # a longer run decays later
    assert d.optimizer.param_groups[0]["lr"] == pytest.approx(config.discriminator.lr * factor)
    assert trainer.state.optimizer.param_groups[0]["lr"] == pytest.approx(config.train.lr * factor)
    trainer.close()
