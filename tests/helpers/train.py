"""Tiny training runs on synthetic images, shared by the trainer's tests."""

from __future__ import annotations

import socket

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from repsr.data.datasets import EvalPair
from repsr.training import Trainer
from repsr.training.config import TrainConfig


class SyntheticPatches(Dataset):
    """TrainPatches' interface on smooth random images: `ds[key]` is a pure function of `key`."""

    def __init__(self, scale: int = 2, patch: int = 12, images: int = 3, size: int = 48) -> None:
        generator = torch.Generator().manual_seed(1234)
        noise = torch.rand(images, 3, size // 4, size // 4, generator=generator)
        self.hr = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        self.scale, self.patch = scale, patch

    def __len__(self) -> int:
        return self.hr.shape[0]

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(key)
        image = self.hr[key % len(self)]
        side = self.patch * self.scale
        top, left = (int(v) for v in rng.integers(0, image.shape[-1] - side + 1, size=2))
        hr = image[:, top : top + side, left : left + side]
        if rng.random() < 0.5:
            hr = hr.flip(-1)
        lr = F.avg_pool2d(hr[None], self.scale)[0]
        return lr.contiguous(), hr.contiguous()


def synthetic_val(scale: int = 2) -> list[EvalPair]:
    hr = SyntheticPatches(scale, size=32).hr[:2]
    return [EvalPair(f"img{i}", F.avg_pool2d(h[None], scale)[0], h) for i, h in enumerate(hr)]


def tiny_config(**overrides) -> TrainConfig:
    settings = {
        "name": "tiny",
        "seed": 3,
        "device": "cpu",
        "model": {"block": "repsr", "scale": 2, "num_blocks": 2, "channels": 8},
        "data": {"patch_size": 12, "workers": 0},
        # tiny ops: 1 thread; amp pinned so the suite runs the same on CPUs with and without bf16 units
        "train": {"iterations": 8, "batch_size": 4, "lr": 2e-3, "threads": 1, "amp": False},
        "bn": {"mode": "switch", "switch_at": 0.5, "precise_batches": 2},
        "checkpoint": {"every": 4, "keep": 2},
        "val": {"every": 4},
        "log": {"every": 2, "tensorboard": False},
    }
    config = TrainConfig.from_dict(settings)
    return config.with_overrides([f"{k}={v}" for k, v in overrides.items()])


def make_trainer(tmp_path, config: TrainConfig, name: str = "run", **kwargs) -> Trainer:
    return Trainer(
        config,
        data=SyntheticPatches(config.model.scale),
        val={"synth": synthetic_val(config.model.scale)},
        out=tmp_path / name,
        progress=False,
        **kwargs,
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now: the rendezvous of test processes started as torchrun would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
