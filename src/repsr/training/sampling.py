"""Patch keys: which training patches each batch holds, as a pure function of (seed, stream, rank, index).

Every random choice of the data (image, crop, flips) comes from a patch's key, and the keys of batch i
are drawn from a generator seeded with (seed, stream, rank, i). Resuming at iteration N therefore sees
exactly the batches the uninterrupted run saw, regardless of DataLoader workers and prefetching.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

TRAIN_STREAM, PRECISE_STREAM = 0, 1  # the training batches; the batches of precise BN statistics


def _stream_seed(seed: int, stream: int, rank: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{stream}/{rank}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def patch_keys(seed: int, stream: int, rank: int, index: int, batch_size: int) -> list[int]:
    """The patch keys of batch `index`: a pure function of its arguments (what makes resume exact)."""
    generator = torch.Generator().manual_seed(_stream_seed(seed, stream, rank, index))
    return torch.randint(0, 2**62, (batch_size,), generator=generator).tolist()


class KeyBatches(Sampler[list[int]]):
    """Batches of patch keys for batch indices [start, stop) of one (seed, stream, rank)."""

    def __init__(self, seed: int, stream: int, rank: int, batch_size: int, start: int, stop: int) -> None:
        self.seed, self.stream, self.rank = seed, stream, rank
        self.batch_size, self.start, self.stop = batch_size, start, stop

    def __iter__(self) -> Iterator[list[int]]:
        for index in range(self.start, self.stop):
            yield patch_keys(self.seed, self.stream, self.rank, index, self.batch_size)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
