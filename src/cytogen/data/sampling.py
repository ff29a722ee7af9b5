"""Resumable, epoch-aware sampling for training loaders.

Item ``k`` handed to :class:`~cytogen.data.datasets.RandomPatches` encodes both the epoch and
the position in it (``k = epoch * length + i``), so every worker draws the same patch for the
same step whether or not the run was interrupted. After a restart in the middle of an epoch,
the sampler skips the samples that were already consumed, so a resumed run sees exactly the
batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Sampler


class EpochSampler(Sampler[int]):
    """Yields ``epoch * length + i`` for ``i`` in ``[skip, length)``.

    ``set_epoch`` is called by Lightning before every epoch (including a restarted one).
    """

    def __init__(self, length: int) -> None:
        self.length = int(length)
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume(self, epoch: int, skip: int) -> None:
        """Skip the first ``skip`` samples of ``epoch`` (once)."""
        self._resume = (int(epoch), int(skip))

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1]
            self._resume = None
        base = self.epoch * self.length
        return iter(range(base + skip, base + self.length))

    def __len__(self) -> int:
        return self.length


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning treats as resumable mid-epoch.

    The position itself is restored from the loop progress stored in the checkpoint (see
    ``workflows.train``), which counts the batches actually trained on, not those prefetched.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"sampler_epoch": getattr(self.sampler, "epoch", 0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
