"""A stateless, seeded visiting order over N items across epochs: item number k → index.

Every loader names its batches by global item numbers, so resuming is restoring a count and W ranks
can take disjoint slices of each step's items.
"""
from __future__ import annotations

import numpy as np
import torch


class EpochOrder:
    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n <= 0:
            raise ValueError("cannot order an empty collection")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._epoch, self._perm = -1, np.arange(0)

    def __getitem__(self, k: int) -> int:
        epoch, i = divmod(k, self.n)
        if not self.shuffle:
            return i
        if epoch != self._epoch:  # loaders read in order: one permutation is kept, made again only per epoch
            # a private generator seeded from (seed, epoch) alone: the order is a pure function of them,
            # untouched by the global RNG, so a resumed run reads what it would have; the prime keeps the
            # pairs distinct below a million epochs
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g).numpy(), epoch
        return int(self._perm[i])


def item_start(step: int, micro: int, batch_size: int, grad_accum: int, rank: int, world_size: int) -> int:
    """First global item number of a micro-batch: step s holds grad_accum·B items, rank r a contiguous
    slice."""
    if grad_accum % world_size:
        raise ValueError(f"grad_accum {grad_accum} is not divisible by the {world_size} ranks")
    per_rank = grad_accum // world_size
    return (step * grad_accum + rank * per_rank + micro) * batch_size
