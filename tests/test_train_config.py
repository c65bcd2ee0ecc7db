"""The training config: strict keys and types, overrides, the shipped configs, the CLI's one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from repsr.cli import main
from repsr.training import TrainConfig, load_config
from repsr.training.builders import build_network
from repsr.training.config import save_config
from repsr.training.schedule import lr_factor
from repsr.util.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, data: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_keys_scripts_rely_on_exist_and_override(tmp_path):
    path = write(tmp_path, {"train": {"lr": "5e-4"}})  # YAML 1.1 reads 5e-4 as a string: accepted
    config = load_config(
        path,
        [
            "seed=7",
            "train.iterations=1234",
            "train.batch_size=8",
            "data.patch_size=48",
            "bn.mode=batch",
            "bn.switch_at=0.5",
            "bn.precise_batches=20",
            "checkpoint.every=100",
            "model.block=acb",
            "val.sets={Set5: /data/Set5}",
        ],
    )
    assert config.name == "exp"  # from the file name
    assert config.train.lr == 5e-4
    assert (config.seed, config.train.iterations, config.train.batch_size) == (7, 1234, 8)
    assert (config.data.patch_size, config.bn.mode, config.bn.switch_at) == (48, "batch", 0.5)
    assert (config.bn.precise_batches, config.checkpoint.every) == (20, 100)
    assert config.model.block == "acb" and config.val.sets == {"Set5": "/data/Set5"}


def test_auto_spells_none_only_for_optional_switches(tmp_path):
    overrides = ["train.amp=auto", "train.channels_last=auto", "data.root=auto"]
    config = load_config(write(tmp_path, {}), overrides)
    assert config.train.amp is None and config.train.channels_last is None  # decided from the device
    assert config.data.root == "auto"  # a folder may be called "auto"
    assert load_config(write(tmp_path, {}), ["train.amp=true"]).train.amp is True
    assert TrainConfig().train.amp is None  # the default: bf16 autocast where the device has bf16 units


@pytest.mark.parametrize(
    "data,overrides,message",
    [
        ({"train": {"iteratons": 5}}, [], "train.iteratons"),
        ({"model": {"blok": "repsr"}}, [], "model.blok"),
        ({"train": {"iterations": "many"}}, [], "train.iterations: expected an integer"),
        ({"train": {"iterations": 2.5}}, [], "train.iterations: expected an integer"),
        ({"bn": {"merged_training": "yes please"}}, [], "bn.merged_training: expected true or false"),
        ({"bn": "switch"}, [], "bn: expected a mapping"),
        ({}, ["bn.mode=sometimes"], "bn.mode: must be one of"),
        ({}, ["bn.switch_at=1.5"], "bn.switch_at"),
        ({}, ["model.block=resnet"], "model.block"),
        ({}, ["model.scale=5"], "model.scale"),
        ({}, ["train.iterations"], "key=value"),
        ({"seed": 1}, ["seed.value=1"], "seed is not a section"),
        ({}, ["seed.value=1"], "seed: expected an integer"),
        ({}, ["data.smooth_share=1.5"], "data.smooth_share: must be within"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, data, overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        load_config(write(tmp_path, data), overrides)


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_resolved_config_round_trips(tmp_path):
    config = load_config(write(tmp_path, {"model": {"expand": 1.5}}), ["ema.enabled=true"])
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load_and_build(path):
    config = load_config(path)
    model = build_network(config)
    assert config.name == path.stem
    if path.stem.startswith("general-"):  # the general models' CPU recipes: fine-tunes of a clean model
        assert model.spec.name == path.stem.replace("general-", "repsr-")
        assert config.train.init == model.spec.name.lower() and not config.degradation.is_clean
        assert config.data.channel_shuffle and config.data.workers >= 1
    elif path.stem.startswith("clean-"):  # CPU recipes of runs that span sessions (training-runs/)
        assert model.spec.name == path.stem.replace("clean-", "repsr-")
        assert config.degradation.is_clean and config.data.channel_shuffle
        assert config.checkpoint.keep == 1  # the folder keeps one checkpoint in the repository
    elif path.stem.startswith("claim-"):  # the paper's claim at the photo size: a clean recipe, another block
        clean = load_config(CONFIGS / f"clean-{path.stem.split('-', 2)[2]}.yaml")  # claim-BLOCK-SIZE
        assert model.spec.name == path.stem.replace("claim-", "")
        same = ("train", "data", "seed", "degradation", "val", "ema", "checkpoint", "device")
        assert [getattr(config, k) for k in same] == [getattr(clean, k) for k in same]
        assert config.model.block != clean.model.block and config.checkpoint.keep == 1
        assert dataclasses.replace(config.model, block=clean.model.block) == clean.model  # only the block
    elif path.stem.startswith("sharp-"):  # GAN fine-tunes of a general model (docs/results/gan-losses.md)
        assert model.spec.name == path.stem.replace("sharp-", "repsr-")
        assert config.train.init == model.spec.name.lower().replace("repsr-", "repsr-general-")
        assert config.discriminator.enabled and "gan" in {t.type for t in config.train.losses}
        assert config.ema.enabled and not config.degradation.is_clean
    elif path.stem != "quick":
        assert model.spec.name == path.stem  # e.g. repsr-M4C16-x2
        assert config.train.iterations >= 100_000 and config.device == "auto"


def test_shipped_sizes_and_baselines_exist():
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    for size in ("M4C16", "M10C32", "M16C64"):
        for scale in (2, 3, 4):
            assert f"repsr-{size}-x{scale}" in names
    for block in ("plain", "repvgg", "acb", "dbb", "ecb"):
        assert f"{block}-M4C16-x4" in names
    assert "quick" in names


def test_lr_schedules():
    config = TrainConfig().with_overrides(["train.iterations=100", "train.warmup=10"])
    assert lr_factor(config, 0) == pytest.approx(0.1)
    assert lr_factor(config, 10) == pytest.approx(1.0)
    assert lr_factor(config, 100) == pytest.approx(config.train.min_lr / config.train.lr)
    step = config.with_overrides(["train.scheduler=step", "train.warmup=0", "train.milestones=[0.5, 0.8]"])
    assert [lr_factor(step, i) for i in (49, 50, 80)] == [1.0, 0.5, 0.25]


def test_cli_prints_config_errors_in_one_line(tmp_path, capsys):
    path = write(tmp_path, {"train": {"batch": 4}})
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "repsr: error: unknown config key train.batch; known keys here: "
        + ", ".join(sorted(TrainConfig().to_dict()["train"]))
    )
