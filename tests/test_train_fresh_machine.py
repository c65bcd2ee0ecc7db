"""A run continued on a fresh machine from what the repository keeps of it (issue 27): only the files
`training-runs/.gitignore` lets git keep, the photographs at another path, an empty data cache; the run
ends exactly where an uninterrupted one does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from repsr.cli import main
from repsr.data.samples import sample_images
from repsr.image.io import read_image, write_image
from repsr.models.files import load_model
from repsr.training import Trainer, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """\
model: {block: repsr, scale: 2, num_blocks: 1, channels: 4}
data: {patch_size: 8, workers: 0, channel_shuffle: true, smooth_share: 0.25}
degradation: {preset: general}
train: {iterations: 6, batch_size: 2, threads: 1}
bn: {switch_at: 0.5}
ema: {enabled: true, decay: 0.9}
val: {every: 0, sample: false}
checkpoint: {every: 2, keep: 1}
log: {every: 1, tensorboard: false}
"""


def _photos(folder: Path) -> Path:
    for path in sample_images()["train"][:2]:
        write_image(folder / f"{path.stem}.png", read_image(path).rgb[:, 100:164, 120:184])
    return folder


def _kept_by_git(run: Path, tmp_path: Path) -> list[Path]:
    """The files of `run` that git would add under the repository's training-runs/.gitignore."""
    repo = tmp_path / "repo"
    (repo / "training-runs").mkdir(parents=True)
    shutil.copy(ROOT / "training-runs" / ".gitignore", repo / "training-runs" / ".gitignore")
    shutil.copytree(run, repo / "training-runs" / run.name)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    listed = subprocess.run(
        ["git", "-C", str(repo), "add", "--dry-run", "-A", "training-runs"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names = [line.split("'")[1] for line in listed.splitlines() if line.startswith("add ")]
    prefix = f"training-runs/{run.name}/"
    return sorted(Path(name[len(prefix) :]) for name in names if name.startswith(prefix))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_run_continues_on_a_fresh_machine_from_what_git_keeps(tmp_path, monkeypatch):
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-a"))
    photos = _photos(tmp_path / "machine-a" / "photos")
    whole, split = tmp_path / "machine-a" / "whole", tmp_path / "machine-a" / "split"
    assert main(["train", str(config), "--data", str(photos), "--out", str(whole), "--no-progress"]) == 0

    Trainer(load_config(config), data=photos, out=split, progress=False).run(until=3)  # saved at 2
    kept = _kept_by_git(split, tmp_path)
    assert kept == [Path("checkpoints/ckpt_00000002.pt"), Path("config.yaml")]

    fresh = tmp_path / "machine-b"  # another machine: the kept files only, photos elsewhere, no cache
    for name in kept:
        (fresh / "run" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(split / name, fresh / "run" / name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(fresh / "cache"))
    photos_b = _photos(fresh / "corpus")
    command = [
        "train",
        str(fresh / "run" / "config.yaml"),
        "--data",
        str(photos_b),
        "--out",
        str(fresh / "run"),
    ]
    assert main([*command, "--resume", "--no-progress"]) == 0

    a = load_model(whole / "model.safetensors").state_dict()
    b = load_model(fresh / "run" / "model.safetensors").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
