"""Two CPU processes with Gloo, set up as `torchrun` would: identical weights and BN statistics at the end."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from repsr.blocks import RepBN
from repsr.training import train
from repsr.training.config import TrainConfig
from repsr.training.distributed import Distributed, SyncRepBN, combine_moments, enable_sync_bn

from .test_train import SyntheticPatches, synthetic_val, tiny_config

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    dist.init_process_group("gloo")  # as train() would; kept open for the moment check below
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
    finally:
        dist.destroy_process_group()


def test_two_processes_end_with_identical_weights_and_bn_statistics(tmp_path):
    config = tiny_config(**{"bn.sync": True, "checkpoint.every": 4}).to_dict()
    mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path), config), nprocs=WORLD, start_method="spawn"
    )
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
