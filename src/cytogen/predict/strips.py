"""Strip-wise input reading and output accumulation for :func:`~cytogen.predict.tiling.predict_tiled`.

Tiles are visited with the first spatial axis (Y in 2D, Z in 3D) outermost. The input is read
one strip at a time (the rows of one row of tiles, across the full extent of the other axes),
and the output is accumulated only for the band of rows that unfinished tiles can still touch:
finished rows are normalised by the summed blend weights and handed on at once. Memory is
therefore about one strip of input plus one band of output, whatever the image length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["BandAccumulator", "StripReader"]


class _AxisPlan(Protocol):  # the parts of tiling._Axis used here
    size: int

    def read(self, j: int) -> tuple[slice, np.ndarray | None]: ...


class StripReader:
    """Read tiles from a (C, *spatial) array, one strip of axis-0 rows at a time.

    Parameters
    ----------
    image : array-like
        Anything supporting basic slicing that returns numpy data (numpy, memmap, zarr).
    axes : sequence of tiling plans
        One per spatial axis; ``axes[a].read(j)`` gives the source slice of tile ``j`` and,
        when the tile reaches into padding, the local take-indices.
    """

    def __init__(self, image: Any, axes: Sequence[_AxisPlan]) -> None:
        self.image = image
        self.axes = axes
        self._j0: int | None = None
        self._strip: np.ndarray | None = None
        self._take0: np.ndarray | None = None

    def tile(self, js: tuple[int, ...]) -> np.ndarray:
        """Tile ``js`` (one index per axis) as float32 ``(C, *tile)``; may be a view of the input."""
        if js[0] != self._j0:
            sl0, self._take0 = self.axes[0].read(js[0])
            self._strip = None  # drop the previous strip before reading the next one
            self._strip = np.asarray(self.image[(slice(None), sl0)])
            self._j0 = js[0]
        assert self._strip is not None
        reads = [ax.read(j) for ax, j in zip(self.axes[1:], js[1:])]
        block = self._strip[(slice(None), slice(None), *(sl for sl, _ in reads))]
        for a, take in enumerate([self._take0] + [t for _, t in reads]):
            if take is not None:
                block = np.take(block, take, axis=a + 1)
        return block.astype(np.float32, copy=False)


class BandAccumulator:
    """Weighted sums of tile outputs for the rows (axis 0) that are not finished yet.

    Parameters
    ----------
    channels : int
        Output channels.
    shape : tuple of int
        Spatial shape of the whole output.
    weight_sums : sequence of numpy.ndarray
        Summed blend weights per axis (separable), each of length ``shape[a]``.
    emit : callable
        ``emit(start, block)`` receives each finished float32 block ``(channels, rows, *rest)``
        of output rows ``[start, start + rows)``, in order; the block is not reused afterwards.
    """

    def __init__(self, channels: int, shape: tuple[int, ...], weight_sums: Sequence[np.ndarray],
                 emit: Callable[[int, np.ndarray], None]) -> None:
        self.shape = shape
        self.weight_sums = [np.asarray(w).astype(np.float32) for w in weight_sums]
        self.emit = emit
        self.start = 0  # first row not emitted yet; row r lives at buf[:, r - start]
        self.buf = np.zeros((channels, 0, *shape[1:]), dtype=np.float32)

    def add(self, out_sl: tuple[slice, ...], values: np.ndarray) -> None:
        """Add ``values`` (``(channels, *tile part)``) at output slices ``out_sl``."""
        a, b = out_sl[0].start, out_sl[0].stop
        if a < self.start:
            raise RuntimeError(f"row {a} was already emitted (tiles out of order)")
        if b - self.start > self.buf.shape[1]:  # grow the band (rare: first rows, big batches)
            grown = np.zeros((self.buf.shape[0], b - self.start, *self.shape[1:]), np.float32)
            grown[:, : self.buf.shape[1]] = self.buf
            self.buf = grown
        rows = slice(a - self.start, b - self.start)
        self.buf[(slice(None), rows, *out_sl[1:])] += values

    def finish(self, upto: int) -> None:
        """Normalise rows ``[start, upto)`` by the summed weights, emit them, slide the band."""
        n = upto - self.start
        if n <= 0:
            return
        if n > self.buf.shape[1]:  # rows no tile wrote to cannot exist (every pixel is covered)
            raise RuntimeError(f"rows {self.start}..{upto} were never written")
        block = self.buf[:, :n].copy()
        nd = len(self.shape)
        for a, w in enumerate(self.weight_sums):  # same division order as a whole-image pass
            view = [1] * (nd + 1)
            view[a + 1] = n if a == 0 else self.shape[a]
            block /= (w[self.start:upto] if a == 0 else w).reshape(view)
        rest = self.buf.shape[1] - n
        for i in range(0, rest, n):  # slide in pieces of n rows: no overlap, no temporary copy
            k = min(n, rest - i)
            self.buf[:, i:i + k] = self.buf[:, n + i:n + i + k]
        self.buf[:, rest:] = 0.0
        self.start = upto
        self.emit(upto - n, block)
