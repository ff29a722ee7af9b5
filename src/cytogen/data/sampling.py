"""Resumable, epoch-aware sampling for training loaders.

Item ``k`` handed to :class:`~cytogen.data.datasets.RandomPatches` encodes both the epoch and
the position in it (``k = epoch * length + i``), so every worker draws the same patch for the
same step whether or not the run was interrupted. After a restart in the middle of an epoch,
the sampler skips the samples that were already consumed, so a resumed run sees exactly the
batches an uninterrupted one would have seen.

Under distributed training (DDP) each rank takes every ``world``-th item of the epoch, starting
at its rank, so the ranks see disjoint patches; every rank gets the same number of items
(``length // world``) so that none waits for another at the end of an epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSampler(Sampler[int]):
    """Yields ``epoch * length + i`` for the ``i`` in ``[0, length)`` of this rank, after ``skip``.

    ``set_epoch`` is called by Lightning before every epoch (including a restarted one).
    ``rank`` / ``world`` default to the initialised process group (one process otherwise).
    """

    def __init__(self, length: int, rank: int | None = None, world: int | None = None) -> None:
        self.length = int(length)
        self.epoch = 0
        self._resume: tuple[int, int] | None = None
        self._shard = (rank, world) if rank is not None and world is not None else None

    def shard(self) -> tuple[int, int]:
        """(rank, world size) this sampler draws for."""
        return self._shard if self._shard is not None else _rank_world()

    def set_epoch(self, epoch: int) -> None:
        """Draw the items of ``epoch`` next (Lightning calls this on the loader's sampler)."""
        self.epoch = int(epoch)

    def resume(self, epoch: int, skip: int) -> None:
        """Skip the first ``skip`` samples of ``epoch`` (once)."""
        self._resume = (int(epoch), int(skip))

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1]
            self._resume = None
        rank, world = self.shard()
        base = self.epoch * self.length + rank
        return iter(range(base + skip * world, base + len(self) * world, world))

    def __len__(self) -> int:
        return self.length // self.shard()[1]


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning treats as resumable mid-epoch.

    The position itself is restored from the loop progress stored in the checkpoint (see
    ``workflows.train``), which counts the batches actually trained on, not those prefetched.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"sampler_epoch": getattr(self.sampler, "epoch", 0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
