"""GAN training under DDP: two CPU processes with Gloo, set up as `torchrun` would (as in
`test_train_distributed`), each network behind its own DDP wrapper.

One spawn runs, on each rank, the tiny GAN run of `test_train_gan` (every generator term, a 4-channel
U-Net discriminator with spectral norm, the EMA) twice:
- in float64 with BN on synchronised batch statistics throughout (`bn.mode: batch`, `bn.sync`), 2
  patches per rank, its batches recorded: a single process fed both ranks' batches together (4 patches)
  must end where the two processes did (data parallelism changes nothing but who computes what);
- with each process's own BN statistics (no SyncBN, the default) until the switch after iteration 3
  (the generator's wrapper is rebuilt there, the discriminator's is not), whole and stopped after
  iteration 3 then resumed from the checkpoint of iteration 2 (rank 0 writes it), which must end where
  the whole run did, bit for bit; where it stopped, the EMA must be the same on both ranks.
"""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from repsr.training import Trainer
from repsr.training import checkpoint as ckpt
from repsr.training.config import TrainConfig
from tests.helpers.train import SyntheticPatches, free_port, make_trainer, synthetic_val, tiny_config

WORLD = 2
PER_RANK = (
    2  # patches per process and step; the single process of the equivalence check gets WORLD times that
)

GAN = {
    "discriminator.type": "unet",
    "discriminator.channels": 4,
    "discriminator.lr": 1e-3,
    "ema.enabled": True,
    "ema.decay": 0.9,
    "train.losses": (
        "[{type: l1, weight: 1.0}, {type: fft, weight: 0.05}, {type: ldl, weight: 1.0},"
        " {type: feature, weight: 0.1}, {type: gan, weight: 0.1}]"
    ),
    "bn.sync": True,
    "train.batch_size": PER_RANK,
}
EQUIVALENCE = {**GAN, "bn.mode": "batch", "train.iterations": 3, "val.every": 0}
# BN on each process's own statistics (the default) until the switch after iteration 3; checkpoints at 2, 4
SWITCH = {**GAN, "bn.sync": False, "train.iterations": 4, "bn.switch_at": 0.75, "checkpoint.every": 2}


def _tensors(state: dict[str, Any]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items() if isinstance(v, Tensor)}


def _snapshot(trainer: Trainer) -> dict[str, dict[str, Tensor]]:
    """The weights and buffers of the generator, its EMA and the discriminator (spectral-norm u, v)."""
    d = trainer.state.networks["discriminator"].module
    assert trainer.state.ema is not None
    return {
        "model": _tensors(trainer.model.state_dict()),
        "ema": _tensors(trainer.state.ema.state_dict()),
        "discriminator": _tensors(d.state_dict()),
    }


def _make(config: dict[str, Any], out: Path, **kwargs: Any) -> Trainer:
    data, val = SyntheticPatches(), {"synth": synthetic_val()}
    return Trainer(TrainConfig.from_dict(config), data=data, val=val, out=out, progress=False, **kwargs)


def _equivalence_run(rank: int, out: Path, config: dict[str, Any]) -> None:
    """The float64 run, its start, end and every step's batch, saved as `equivalence-rankR.pt`."""
    trainer = _make(config, out / "equivalence", dtype=torch.float64)
    start, batches, step = _snapshot(trainer), [], trainer.train_step

    def recorded(lr_patch: Tensor, hr_patch: Tensor) -> Tensor:
        batches.append((lr_patch.clone(), hr_patch.clone()))
        return step(lr_patch, hr_patch)

    trainer.train_step = recorded  # type: ignore[method-assign]
    assert trainer.run() is not None
    record = {"start": start, "end": _snapshot(trainer), "batches": batches}
    torch.save(record, out / f"equivalence-rank{rank}.pt")


def _switch_run(rank: int, out: Path, config: dict[str, Any]) -> None:
    """The run with the switch, whole, and stopped after iteration 3 then resumed under both processes."""
    whole = _make(config, out / "whole")
    assert whole.run() is not None
    partial = _make(config, out / "split")
    assert partial.run(until=3) is None
    stopped = _snapshot(partial)
    partial.close()
    resumed = _make(config, out / "split", resume=True)
    resumed_at = resumed.iteration
    assert resumed.run() is not None
    record = {
        "whole": _snapshot(whole),
        "stopped": stopped,
        "split": _snapshot(resumed),
        "resumed_at": resumed_at,
    }
    torch.save(record, out / f"switch-rank{rank}.pt")


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    # as train() would, but a collective that waits for a rank gone elsewhere fails in 60 s, not 30 min
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    try:
        _equivalence_run(rank, Path(out), tiny_config(**EQUIVALENCE).to_dict())
        _switch_run(rank, Path(out), tiny_config(**SWITCH).to_dict())
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_gan_runs(tmp_path_factory) -> Path:
    """One spawn of two Gloo processes running the GAN runs above."""
    out = tmp_path_factory.mktemp("gan-ddp")
    mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, start_method="spawn")
    return out


def _assert_equal(a: dict[str, dict[str, Tensor]], b: dict[str, dict[str, Tensor]], what: str) -> None:
    assert a.keys() == b.keys()
    for network in a:
        assert a[network].keys() == b[network].keys(), network
        for key in a[network]:
            assert torch.equal(a[network][key], b[network][key]), f"{what}: {network} {key}"


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_both_processes_train_the_same_generator_discriminator_and_ema_on_different_batches(
    two_process_gan_runs,
):
    out = two_process_gan_runs
    runs = [_load(out / f"equivalence-rank{r}.pt") for r in range(WORLD)]
    _assert_equal(runs[0]["end"], runs[1]["end"], "rank 0 vs rank 1")
    vectors = [k for k in runs[0]["end"]["discriminator"] if k.endswith(("._u", "._v"))]
    assert len(vectors) == 2 * 8  # u and v of the 8 spectral-normalised convolutions, equal on both ranks
    for network, state in runs[0]["end"].items():  # training happened: every weight and buffer moved
        start = runs[0]["start"][network]  # (u and v by the power iteration; the BN mode is extra state)
        moved = [k for k in state if not k.endswith("_extra_state") and not torch.equal(state[k], start[k])]
        assert len(moved) == len(state) - sum(k.endswith("_extra_state") for k in state), network
    for (lr0, hr0), (lr1, hr1) in zip(runs[0]["batches"], runs[1]["batches"], strict=True):
        assert lr0.shape[0] == lr1.shape[0] == PER_RANK and not torch.equal(hr0, hr1)  # its own data
    switch = [_load(out / f"switch-rank{r}.pt") for r in range(WORLD)]
    _assert_equal(switch[0]["whole"], switch[1]["whole"], "rank 0 vs rank 1 (BN switch)")


@pytest.mark.slow
def test_without_sync_bn_each_process_has_its_own_bn_statistics_but_all_have_rank_0s_ema(
    two_process_gan_runs,
):
    """Before the switch, without SyncBN, a process's BN running statistics are its own after its forward
    (DDP hands it rank 0's at the next); the EMA's are rank 0's everywhere (the one saved, and what the
    LDL term compares with on every process), the weights are the same everywhere."""
    runs = [_load(two_process_gan_runs / f"switch-rank{r}.pt")["stopped"] for r in range(WORLD)]
    statistics = [k for k in runs[0]["model"] if k.endswith(("running_mean", "running_var"))]
    assert statistics and all(not torch.equal(runs[0]["model"][k], runs[1]["model"][k]) for k in statistics)
    for key in runs[0]["model"].keys() - set(statistics):
        assert torch.equal(runs[0]["model"][key], runs[1]["model"][key]), key
    _assert_equal(
        {n: runs[0][n] for n in ("ema", "discriminator")},
        {n: runs[1][n] for n in ("ema", "discriminator")},
        "at 3",
    )


@pytest.mark.slow
def test_two_processes_train_as_one_process_on_both_batches_together(two_process_gan_runs, tmp_path):
    """DDP averages each network's gradients: with BN statistics synchronised, two processes on 2 patches
    each take the steps one process takes on the 4, up to summation order.

    In float64 almost everything agrees to 1e-15; a bias right before BN has no true gradient (BN
    subtracts it again), so Adam steps it on rounding noise, ~1e-10 here (and its BN's running mean
    follows). A network whose gradients were not averaged would be ~1e-3 off after these steps."""
    runs = [_load(two_process_gan_runs / f"equivalence-rank{r}.pt") for r in range(WORLD)]
    trainer = make_trainer(tmp_path, tiny_config(**EQUIVALENCE), dtype=torch.float64)
    _assert_equal(_snapshot(trainer), runs[0]["start"], "start")
    trainer.start()
    trainer.model.train()
    trainer.state.networks["discriminator"].module.train()
    for rank_batches in zip(*(run["batches"] for run in runs), strict=True):
        lr_patch, hr_patch = (torch.cat(parts) for parts in zip(*rank_batches, strict=True))
        trainer.train_step(lr_patch, hr_patch)
    trainer.close()
    alone, together = _snapshot(trainer), runs[0]["end"]
    for network in together:
        for key, value in together[network].items():
            torch.testing.assert_close(alone[network][key], value, rtol=0, atol=1e-8, msg=f"{network} {key}")


@pytest.mark.slow
def test_a_gan_run_resumed_under_two_processes_ends_where_the_whole_run_did(two_process_gan_runs, tmp_path):
    out = two_process_gan_runs
    runs = [_load(out / f"switch-rank{r}.pt") for r in range(WORLD)]
    assert [run["resumed_at"] for run in runs] == [2, 2]
    for rank, run in enumerate(runs):
        _assert_equal(run["split"], runs[0]["whole"], f"rank {rank} resumed vs whole")
    # the checkpoints rank 0 wrote hold the discriminator, and one process resumes from them
    assert sorted(p.name for p in (out / "whole" / "checkpoints").iterdir()) == [
        "ckpt_00000002.pt",
        "ckpt_00000004.pt",
    ]
    saved = ckpt.read_checkpoint(ckpt.checkpoint_path(out / "whole" / "checkpoints", 4))
    assert saved["networks"]["discriminator"]["optimizer"]["state"]
    shutil.copytree(out / "whole" / "checkpoints", tmp_path / "run" / "checkpoints")
    single = make_trainer(tmp_path, tiny_config(**SWITCH), resume=True)
    assert single.iteration == 4
    _assert_equal(_snapshot(single), runs[0]["whole"], "resumed in one process")
    single.close()
