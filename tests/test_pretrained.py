"""The shipped models: load by name everywhere, merge exactly, beat bicubic, are the upscale default."""

from __future__ import annotations

import re

import pytest
import torch

import repsr
from repsr.arch.network import PlainSR, RepNet
from repsr.cli import main
from repsr.data.samples import sample_images
from repsr.image.io import read_image, write_image
from repsr.image.metrics import psnr
from repsr.image.pixels import quantize
from repsr.models.pretrained import DEFAULT_MODEL, PRETRAINED, STYLES, resolve_model, shipped
from repsr.quality.degraded import CONDITIONS, degrade_lr
from repsr.util.errors import ConfigError, ModelFileError

NAMES = sorted(PRETRAINED)
FAITHFUL = [name for name in NAMES if PRETRAINED[name].style == "faithful"]
SHARP = [name for name in NAMES if PRETRAINED[name].style == "sharp"]


def test_every_registered_model_ships() -> None:
    assert [m.name for m in shipped()] == list(PRETRAINED)
    for model in shipped():
        assert model.training_form.is_file() and model.card.is_file()
        if model.style == "faithful":  # a sharp model trades PSNR for a look (its gate: the next test)
            assert model.scores()["psnr"] > model.scores()["bicubic_psnr"]
    assert set(STYLES.values()) <= set(PRETRAINED) and SHARP


@pytest.mark.parametrize("name", SHARP)
def test_a_sharp_model_passes_the_gan_gate_and_is_sharper_than_the_general_model(name: str) -> None:
    from repsr.quality.gan_gate import run_gan_gate

    report = run_gan_gate(repsr.load_model(name))
    assert report.passed, report.summary()
    general = run_gan_gate(repsr.load_model(name.replace("-sharp-", "-general-")))  # its start
    for mine, theirs in zip(report.figures, general.figures, strict=True):
        assert mine.model["sharpness"] > theirs.model["sharpness"]  # crisper edges in every condition
        assert mine.model["niqe"] < theirs.model["niqe"]  # and more natural by the corpus-fitted NIQE


@pytest.mark.parametrize("name", NAMES)
def test_load_by_name_gives_the_deployed_network(name: str) -> None:
    model = repsr.load_model(name)
    assert isinstance(model, PlainSR)
    assert model.spec.scale == PRETRAINED[name].scale
    size = re.search(r"-m(\d+)c(\d+)-", name)  # the name says the size: repsr-[style-]mMcC-xS
    assert size is not None
    blocks, channels = map(int, size.groups())
    assert (model.spec.num_blocks, model.spec.channels, model.spec.in_channels) == (blocks, channels, 3)


@pytest.mark.parametrize("name", NAMES)
def test_training_form_merges_into_the_shipped_network(name: str) -> None:
    training = repsr.load_model(resolve_model(name, training_form=True))
    assert isinstance(training, RepNet)
    deployed = repsr.load_model(name)
    x = torch.rand(1, 3, 21, 17, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (training.eval()(x) - deployed(x)).abs().max().item() < 1e-4
        merged = repsr.reparameterize_model(training)
        assert (merged(x) - deployed(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", FAITHFUL)
def test_shipped_model_beats_bicubic_on_a_held_out_photograph(name: str) -> None:
    """A clean model on clean LR of chelsea; a general model on what it is for, a noisy photograph
    (rocket with colour noise), where it must also beat its clean partner (which loses to bicubic)."""
    scale = PRETRAINED[name].scale
    photo = "rocket" if PRETRAINED[name].denoise_partner else "chelsea"
    hr = read_image(next(p for p in sample_images()["val"] if p.stem == photo)).rgb[:, :192, :240]
    if PRETRAINED[name].denoise_partner:
        lr = degrade_lr(hr, scale, CONDITIONS["noise6"], (0, 0))
    else:
        lr = quantize(repsr.imresize(hr.double(), 1 / scale)).float()

    def score(model_name: str) -> float:
        with torch.no_grad():
            return psnr(repsr.load_model(model_name)(lr[None])[0].clamp(0, 1), hr, scale)

    bicubic = psnr(repsr.imresize(lr, scale).clamp(0, 1), hr, scale)
    assert score(name) > bicubic + 0.2
    if PRETRAINED[name].denoise_partner:
        assert score(name) > score(PRETRAINED[name].denoise_partner) + 0.5


def test_unknown_name_lists_the_shipped_models() -> None:
    with pytest.raises(ModelFileError, match="not a shipped model.*repsr-m4c16-x4"):
        repsr.load_model("repsr-m99c1-x7")
    with pytest.raises(ModelFileError, match="no such file"):
        repsr.load_model("missing/model.safetensors")


def test_upscale_without_model_uses_the_default(tmp_path, capsys) -> None:
    image = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(1))
    write_image(tmp_path / "in.png", image)
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    out = read_image(tmp_path / "out" / "in.png").rgb
    assert out.shape == (3, 20 * PRETRAINED[DEFAULT_MODEL].scale, 24 * PRETRAINED[DEFAULT_MODEL].scale)


def test_style_sharp_picks_the_sharp_model_and_refuses_a_model_too(tmp_path, capsys) -> None:
    image = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(2))
    write_image(tmp_path / "in.png", image)
    by_style, by_name = tmp_path / "style", tmp_path / "name"
    assert (
        main(["upscale", str(tmp_path / "in.png"), "-o", str(by_style), "--style", "sharp", "--no-progress"])
        == 0
    )
    assert (
        main(
            ["upscale", str(tmp_path / "in.png"), "-o", str(by_name), "-m", STYLES["sharp"], "--no-progress"]
        )
        == 0
    )
    assert torch.equal(read_image(by_style / "in.png").rgb, read_image(by_name / "in.png").rgb)
    capsys.readouterr()
    command = [
        "upscale",
        str(tmp_path / "in.png"),
        "-o",
        str(tmp_path / "x"),
        "--style",
        "sharp",
        "-m",
        "repsr-m4c16-x4",
    ]
    assert main(command) != 0
    err = capsys.readouterr().err
    assert "give -m or --style, not both" in err and "Traceback" not in err and not (tmp_path / "x").exists()


def test_models_command_lists_scores(capsys) -> None:
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for name in NAMES:
        assert name in listing
    assert f"{DEFAULT_MODEL} (default)" in listing


M4C16_X4 = "repsr-general-m4c16-x4"  # a shipped model small enough to train in a test


def test_init_starts_training_from_the_shipped_training_form(tmp_path) -> None:
    from tests.helpers.train import SyntheticPatches, make_trainer, tiny_config

    config = tiny_config(
        **{"model.scale": 4, "model.num_blocks": 4, "model.channels": 16, "train.init": M4C16_X4}
    )
    trainer = make_trainer(tmp_path, config)
    shipped_form = repsr.load_model(resolve_model(M4C16_X4, training_form=True))
    got = trainer.model.state_dict()
    for key, value in shipped_form.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(got[key].float(), value), key
    assert isinstance(trainer.train_set, SyntheticPatches)


def test_init_refuses_another_spec_or_a_deployed_network(tmp_path) -> None:
    from tests.helpers.train import make_trainer, tiny_config

    with pytest.raises(ConfigError, match="train.init .*config describes"):
        make_trainer(tmp_path, tiny_config(**{"model.scale": 4, "train.init": M4C16_X4}))
    plain = tmp_path / "plain.safetensors"
    repsr.save_model(repsr.load_model(M4C16_X4), plain)
    config = tiny_config(**{"model.scale": 4, "model.num_blocks": 4, "model.channels": 16})
    with pytest.raises(ConfigError, match="deployed plain network cannot start training"):
        make_trainer(tmp_path, config.with_overrides([f"train.init={plain}"]))


def test_init_from_another_scale_takes_the_body_and_keeps_a_fresh_tail(tmp_path) -> None:
    """A trained x2 network starts an x4 run: every layer but the tail is the x2 model's, the tail is the
    x4 run's own seeded start (the same as without init), and another block count is still refused."""
    from tests.helpers.train import make_trainer, tiny_config

    m4c16 = {"model.num_blocks": 4, "model.channels": 16}
    x2 = repsr.load_model(resolve_model("repsr-m4c16-x2", training_form=True)).state_dict()
    fresh = make_trainer(tmp_path, tiny_config(**m4c16, **{"model.scale": 4}), name="fresh")
    config = tiny_config(**m4c16, **{"model.scale": 4, "train.init": "repsr-m4c16-x2"})
    started = make_trainer(tmp_path, config, name="init").model.state_dict()
    own = fresh.model.state_dict()
    body = [k for k in x2 if not k.startswith("tail.") and x2[k].is_floating_point()]
    assert body and all(torch.equal(started[k].float(), x2[k]) for k in body)
    assert all(torch.equal(started[k], own[k]) for k in ("tail.weight", "tail.bias"))
    assert started["tail.weight"].shape[0] == 3 * 16 and x2["tail.weight"].shape[0] == 3 * 4
    with pytest.raises(ConfigError, match="only model.scale may differ"):
        make_trainer(tmp_path, tiny_config(**{"model.scale": 4, "train.init": "repsr-m4c16-x2"}), name="no")
