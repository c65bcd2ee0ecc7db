"""Two CPU processes with Gloo, set up as `torchrun` would: identical weights and BN statistics at the end,
and a stop signal reaching one process stops both at the same iteration, resumably."""

from __future__ import annotations

import datetime
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from repsr.arch.blocks import RepBN
from repsr.training import Trainer, TrainingInterrupted, train
from repsr.training.config import TrainConfig
from repsr.training.distributed import Distributed, SyncRepBN, combine_moments, enable_sync_bn
from tests.helpers.train import SyntheticPatches, free_port, synthetic_val, tiny_config

WORLD = 2


def _rank_data(rank: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(100 + rank)
    return torch.randn(4 + 3 * rank, 5, generator=generator, dtype=torch.float64) * (1 + rank) + 2 * rank


def _images(rank: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(200 + rank)
    return torch.rand(1 + rank, 3, 4, 5, generator=generator, dtype=torch.float64) * (rank + 1)


def _check_sync_bn(rank: int) -> None:
    """SyncRepBN on each rank's part equals BN on all parts together, outputs and input gradients."""
    bn = RepBN(3).double()
    assert enable_sync_bn(torch.nn.Sequential(bn)) == 1 and isinstance(bn, SyncRepBN)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
    x = _images(rank).requires_grad_()
    weights = torch.arange(x.numel(), dtype=torch.float64).view_as(x) / x.numel()
    (bn(x) * weights).sum().backward()
    parts = [_images(r).requires_grad_() for r in range(WORLD)]
    full = torch.nn.functional.batch_norm(
        torch.cat(parts), None, None, bn.weight.detach(), bn.bias.detach(), True
    )
    all_weights = [torch.arange(p.numel(), dtype=torch.float64).view_as(p) / p.numel() for p in parts]
    (full * torch.cat(all_weights)).sum().backward()
    expected = full.detach().split([p.shape[0] for p in parts])[rank]
    torch.testing.assert_close(bn(x.detach()), expected)
    torch.testing.assert_close(x.grad, parts[rank].grad)
    torch.testing.assert_close(bn.running_mean, 0.19 * torch.cat(parts).detach().mean((0, 2, 3)))


def _worker(rank: int, port: int, out: str, config: dict) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    # as train() would, but a collective that waits for a rank gone elsewhere fails in 60 s, not 30 min
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    try:
        # the moments of different amounts of data on each rank combine to those of all data together
        x = _rank_data(rank)
        count = torch.full((5,), float(x.shape[0]), dtype=torch.float64)
        mean = x.mean(0)
        m2 = ((x - mean) ** 2).sum(0)
        global_mean, global_var = combine_moments(count, mean, m2, Distributed.from_env("cpu"))
        everything = torch.cat([_rank_data(r) for r in range(WORLD)])
        torch.testing.assert_close(global_mean, everything.mean(0))
        torch.testing.assert_close(global_var, everything.var(0))

        _check_sync_bn(rank)

        result = train(
            TrainConfig.from_dict(config),
            data=SyntheticPatches(),
            val={"synth": synthetic_val()},
            out=Path(out) / "run",
            progress=False,
        )
        state = {k: v.clone() for k, v in result.model.state_dict().items()}
        torch.save({"model": state, "history": result.history}, Path(out) / f"rank{rank}.pt")
        _interrupted_and_resumed(rank, Path(out), config)
    finally:
        dist.destroy_process_group()


def _interrupted_and_resumed(rank: int, out: Path, config: dict) -> None:
    """The same run again, but SIGTERM reaches only rank 1 (during its 3rd step), as when a scheduler
    stops one node; then both ranks resume. Records where each rank stopped and the final weights."""
    step = Trainer.train_step

    def signalled_step(self: Trainer, lr_patch: torch.Tensor, hr_patch: torch.Tensor) -> torch.Tensor:
        if rank == 1 and self.iteration == 2:  # 2 steps done: the signal arrives during the 3rd
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, lr_patch, hr_patch)

    Trainer.train_step = signalled_step
    arguments = {"data": SyntheticPatches(), "val": {"synth": synthetic_val()}, "progress": False}
    try:
        train(TrainConfig.from_dict(config), out=out / "split", **arguments)
        stopped = -1  # not interrupted: the test fails on it
    except TrainingInterrupted as interrupted:
        stopped = interrupted.iteration
    finally:
        Trainer.train_step = step
    result = train(TrainConfig.from_dict(config), out=out / "split", resume=True, **arguments)
    state = {k: v.clone() for k, v in result.model.state_dict().items()}
    torch.save({"model": state, "stopped": stopped}, out / f"rank{rank}-split.pt")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """One spawn of two Gloo processes (a few seconds): the checks above, a whole run, a signalled one."""
    out = tmp_path_factory.mktemp("ddp")
    config = tiny_config(**{"bn.sync": True, "checkpoint.every": 4}).to_dict()
    mp.start_processes(_worker, args=(free_port(), str(out), config), nprocs=WORLD, start_method="spawn")
    return out


@pytest.mark.slow
def test_two_processes_end_with_identical_weights_and_bn_statistics(two_process_run):
    tmp_path = two_process_run
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["model"] for r in range(WORLD)]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert any("running_var" in key for key in states[0])
    assert bool(states[0]["blocks.0.expand_bn._extra_state"])  # RepBN.frozen travels as extra state
    # only rank 0 wrote the run folder, and it holds the deployed model
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "ckpt_00000004.pt",
        "ckpt_00000008.pt",
    ]


@pytest.mark.slow
def test_a_signal_to_one_process_stops_all_at_one_iteration_and_resumes(two_process_run):
    """Rank 1 alone got SIGTERM during step 3; the ranks agree at the log interval (2), so both stopped
    after iteration 4, rank 0 saved it, and the resumed run ends exactly where the uninterrupted one did."""
    tmp_path = two_process_run
    whole = torch.load(tmp_path / "rank0.pt", weights_only=True)["model"]
    split = [torch.load(tmp_path / f"rank{r}-split.pt", weights_only=True) for r in range(WORLD)]
    assert [s["stopped"] for s in split] == [4, 4]
    for key in whole:
        assert torch.equal(split[0]["model"][key], whole[key]), key
        assert torch.equal(split[1]["model"][key], whole[key]), key
