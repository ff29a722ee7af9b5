"""Batches of single-cell crops for the Statistical Cell models.

:class:`CellDataset` serves the cells of a :class:`~cytogen.data.cellset.CellSet` (memory-mapped
crops, converted one cell at a time); :class:`ShuffledEpochs` turns it into the epoch-aware
dataset that :class:`~cytogen.data.sampling.EpochSampler` expects (item ``epoch * n + i`` is the
``i``-th cell of a permutation seeded by ``(seed, epoch)``), so every epoch visits each training
cell once in a new order, identically in a resumed run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cytogen.data.cellset import CellSet

__all__ = ["CellDataset", "ShuffledEpochs"]


class CellDataset(Dataset):
    """The cells ``indices`` of a cell set as training items.

    Item ``k`` is the cell ``indices[k]``::

        {"reference": float32 (len(reference_channels), *size),
         "target": float32 (1, *size),      # zeros when the set has no target channel
         "structure": int64 scalar,         # index into cellset.structures
         "index": int64 scalar}             # the row of cells.csv / crops.npy

    Parameters
    ----------
    cellset : CellSet
        An opened CELLS folder (:func:`~cytogen.data.cellset.read_cellset`).
    indices : array-like of int
        Rows of the set to serve (e.g. ``cellset.indices("train")``).

    Notes
    -----
    The crops stay memory-mapped; a data-loader worker process re-opens ``crops.npy`` instead
    of receiving a pickled copy of the whole array.
    """

    def __init__(self, cellset: CellSet, indices: Any) -> None:
        self.root = Path(cellset.root)
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(cellset.rows)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n):
            raise IndexError(f"{self.root}: cell indices must lie in [0, {n})")
        self.reference_channels = list(cellset.reference_channels)
        self.target_channel = cellset.target_channel
        self.structure = cellset.structure_index()
        self.size = tuple(cellset.size)
        self._images: np.ndarray | None = cellset.images

    def __len__(self) -> int:
        return int(self.indices.size)

    @property
    def images(self) -> np.ndarray:
        """The crops array (re-opened memory-mapped after unpickling in a worker)."""
        if self._images is None:
            self._images = np.load(self.root / "crops.npy", mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        row = int(self.indices[int(k)])
        crop = np.asarray(self.images[row], dtype=np.float32)
        reference = torch.from_numpy(np.ascontiguousarray(crop[self.reference_channels]))
        if self.target_channel is None:
            target = torch.zeros((1, *self.size), dtype=torch.float32)
        else:
            target = torch.from_numpy(np.ascontiguousarray(crop[self.target_channel:self.target_channel + 1]))
        return {"reference": reference, "target": target,
                "structure": torch.tensor(int(self.structure[row]), dtype=torch.int64),
                "index": torch.tensor(row, dtype=torch.int64)}


class ShuffledEpochs(Dataset):
    """Epoch-aware view of a dataset: item ``epoch * len(dataset) + i`` is item ``perm[i]`` of the
    permutation of epoch ``epoch`` (seeded by ``(seed, epoch)``; the identity for ``shuffle=False``).

    Used with :class:`~cytogen.data.sampling.EpochSampler`: one epoch is every item once.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def order(self, epoch: int) -> np.ndarray:
        """The item order of ``epoch``."""
        n = len(self)
        if not self.shuffle:
            return np.arange(n)
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch)])
            self._perm = (int(epoch), rng.permutation(n))
        return self._perm[1]

    def __getitem__(self, k: int) -> Any:
        epoch, i = divmod(int(k), len(self))
        return self.dataset[int(self.order(epoch)[i])]
