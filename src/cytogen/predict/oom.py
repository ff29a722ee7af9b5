"""Out-of-memory handling for tiled prediction: recognise OOM errors, free memory, shrink tiles.

:func:`~cytogen.predict.tiling.predict_tiled` halves its batch size when the model runs out of
memory (down to one tile per batch) and raises :class:`TileOOMError` when even a single tile
does not fit; the prediction workflow then restarts the image with :func:`smaller_tile`.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence

import torch

from cytogen.errors import CytogenError

__all__ = ["MIN_TILE", "TileOOMError", "free_memory", "is_oom_error", "smaller_tile"]

#: Tiles are never shrunk below this many pixels per axis (or below the size multiple).
MIN_TILE = 32

_OOM_MESSAGES = ("out of memory", "can't allocate memory", "defaultcpuallocator")


class TileOOMError(CytogenError):
    """Even a batch of one tile did not fit in memory; predict again with a smaller tile.

    Attributes
    ----------
    tile : tuple of int
        The tile size (pixels per spatial axis) that failed.
    """

    def __init__(self, message: str, tile: tuple[int, ...]) -> None:
        super().__init__(message)
        self.tile = tuple(tile)


def is_oom_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the device (GPU or CPU) ran out of memory.

    Parameters
    ----------
    exc : BaseException
        An exception raised by a model call.

    Returns
    -------
    bool
        True for :class:`torch.OutOfMemoryError` (CUDA), any :class:`MemoryError`, and a
        :class:`RuntimeError` whose message says "out of memory", "can't allocate memory" or
        names PyTorch's ``DefaultCPUAllocator``.
    """
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if (oom_type is not None and isinstance(exc, oom_type)) or isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(m in text for m in _OOM_MESSAGES)
    return False


def free_memory() -> None:
    """Release what can be released after an OOM: Python garbage and PyTorch's CUDA cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def smaller_tile(tile: Sequence[int], shape: Sequence[int],
                 size_multiple: int | Sequence[int] = 1) -> tuple[int, ...]:
    """The tile to retry with after :class:`TileOOMError`: half of the tile in use, per axis.

    The tile in use is ``tile`` clipped to the image and rounded up to ``size_multiple``, as
    :func:`~cytogen.predict.tiling.predict_tiled` does. Each axis is halved, rounded down to a
    multiple of ``size_multiple`` and kept at least ``max(size_multiple, MIN_TILE)`` (rounded up
    to the multiple), or at the tile in use when that is already smaller.

    Parameters
    ----------
    tile : sequence of int
        Requested tile size per spatial axis.
    shape : sequence of int
        Spatial shape of the image.
    size_multiple : int or sequence of int
        Divisor of the tile size per axis.

    Returns
    -------
    tuple of int
        The smaller tile; equal to the tile in use when no axis can shrink any further.
    """
    nd = len(shape)
    mults = (size_multiple,) * nd if isinstance(size_multiple, int) else tuple(size_multiple)
    out = []
    for t, s, m in zip(tile, shape, mults):
        used = math.ceil(min(int(t), int(s)) / m) * m
        floor = math.ceil(max(m, MIN_TILE) / m) * m
        half = (used // 2) // m * m
        out.append(min(used, max(half, floor)))
    return tuple(out)
