"""Data-parallel helpers: process-group setup from `torchrun`'s environment, reductions, SyncBN.

`torchrun --nproc_per_node=N -m repsr train ...` sets RANK/WORLD_SIZE/LOCAL_RANK; `Distributed.from_env`
reads them and initialises the process group (NCCL on CUDA, Gloo on CPU). A single process gets a
`Distributed` with world size 1 whose collectives do nothing, so the trainer has one code path.

SyncBN: `nn.SyncBatchNorm.convert_sync_batchnorm` would replace `RepBN` by a plain SyncBatchNorm and
lose its `frozen` state (and it needs a GPU). `enable_sync_bn` instead switches each `RepBN` in place to
`SyncRepBN`, a subclass whose batch-mode statistics are reduced across processes; parameters, buffers,
state-dict keys and the frozen behaviour are unchanged, and `disable_sync_bn` switches back.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from repsr.arch.blocks import RepBN
from repsr.util.errors import ConfigError


@dataclass
class Distributed:
    """Where this process stands: rank, world size, its device, and whether it owns the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, logs and draws the progress bar."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> Distributed:
        """Join the process group `torchrun` describes (if any) and pick this process's device."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' requested but no CUDA device is available")
        torch_device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(torch_device)
        owns_group = False
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30)
            )
            owns_group = True
        if dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        return cls(rank, world_size, local_rank, torch_device, owns_group)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum `tensor` over all processes, in place; returns it."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value` on every process."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @torch.no_grad()
    def broadcast_tensors(self, tensors: list[Tensor]) -> None:
        """Rank 0's values of `tensors` on every process, in place (one broadcast per dtype)."""
        if not self.enabled:
            return
        groups: dict[torch.dtype, list[Tensor]] = {}
        for tensor in tensors:
            groups.setdefault(tensor.dtype, []).append(tensor)
        for group in groups.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.broadcast(flat, src=0)
            for tensor, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
                tensor.copy_(part.view_as(tensor))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this object created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def combine_moments(count: Tensor, mean: Tensor, m2: Tensor, dist_info: Distributed) -> tuple[Tensor, Tensor]:
    """Population mean and unbiased variance over all processes from per-process (n, mean, M2).

    M2 is the sum of squared deviations from the process's own mean. Combined exactly (Chan et al.):
    global mean = sum(n mean) / N; M2 = sum(M2_r + n_r (mean_r - mean)^2). Averaging per-process
    variances instead would drop the spread between the processes' means.
    """
    total = dist_info.all_reduce_sum(count.clone())
    global_mean = dist_info.all_reduce_sum(count * mean) / total
    global_m2 = dist_info.all_reduce_sum(m2 + count * (mean - global_mean) ** 2)
    return global_mean, global_m2 / (total - 1).clamp_min(1)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of the processes' gradients (each one's output
    feeds every process's loss)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class SyncRepBN(RepBN):
    """`RepBN` whose batch-mode statistics are computed over all processes (any backend, CPU too).

    Frozen mode and evaluation behave exactly as `RepBN`. Gradients flow through the all-reduce, so each
    process gets the gradient of the global normalization.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.frozen or not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        channels = x.shape[1]
        local_count = x.numel() // channels
        xf = x if x.dtype == torch.float64 else x.float()  # statistics in at least float32 (autocast)
        stats = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3))])
        count = torch.tensor([float(local_count)], dtype=xf.dtype, device=x.device)
        reduced = _AllReduceSum.apply(torch.cat([stats, count]))
        total = reduced[-1]
        mean = reduced[:channels] / total
        var = (reduced[channels : 2 * channels] / total - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1 / int(self.num_batches_tracked)
            unbiased = var * (total / (total - 1).clamp_min(1))
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
            self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
        shape = (1, channels, 1, 1)
        normalized = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return (normalized * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)


def enable_sync_bn(model: nn.Module) -> int:
    """Make every `RepBN` in `model` a `SyncRepBN` in place; returns how many were switched."""
    count = 0
    for module in model.modules():
        if type(module) is RepBN:
            module.__class__ = SyncRepBN
            count += 1
    return count


def disable_sync_bn(model: nn.Module) -> None:
    """Undo `enable_sync_bn` (used at the switch: frozen statistics need no synchronisation)."""
    for module in model.modules():
        if type(module) is SyncRepBN:
            module.__class__ = RepBN
