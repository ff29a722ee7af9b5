"""Multiscale pyramids for OME-Zarr: level shapes and 2 x 2 downsampling of row blocks.

The pyramid rule: level 0 is the image; each further level halves Y and X (never Z, never C;
odd sizes round up, so the last row / column of a level averages the pixels it has) until the
largest of Y and X is at most ``max_side`` (1024 by default: a 16384 x 16384 field has 5 levels,
16384 ... 1024). Intensities are downsampled by the mean of each 2 x 2 block (NGFF ``type``
``"mean"``, as ``skimage.transform.downscale_local_mean`` without its zero padding at odd edges),
label images by taking the top-left pixel of each block (``"nearest"``), which keeps label values
exact. :class:`RowHalver` turns a stream of row blocks of one level into the row blocks of the
next, so a pyramid is built while level 0 is written, one block at a time.
"""

from __future__ import annotations

import numpy as np

#: Downsampling methods by name (written as the NGFF ``multiscales[].type``).
METHODS = ("mean", "nearest")


def level_shapes(shape: tuple[int, ...], max_side: int | None = 1024) -> list[tuple[int, ...]]:
    """Shapes of the pyramid levels of an image of ``shape`` (Y and X its last two axes).

    Parameters
    ----------
    shape : tuple of int
        Level-0 shape, e.g. ``(C, Y, X)`` or ``(C, Z, Y, X)``.
    max_side : int or None
        Halve Y and X (rounding up) until both are at most this; None: level 0 only.

    Returns
    -------
    list of tuple of int
        Level 0 first.
    """
    shapes = [tuple(int(n) for n in shape)]
    if max_side is None:
        return shapes
    if max_side < 1:
        raise ValueError(f"pyramid max_side must be at least 1, got {max_side}")
    while max(shapes[-1][-2:]) > max_side:
        *lead, y, x = shapes[-1]
        shapes.append((*lead, -(-y // 2), -(-x // 2)))
    return shapes


def halve(block: np.ndarray, method: str) -> np.ndarray:
    """Downsample the last two axes of ``block`` by 2 (sizes rounded up), keeping its dtype.

    Parameters
    ----------
    block : numpy.ndarray
        At least 2D; Y and X are the last two axes.
    method : {"mean", "nearest"}
        ``"mean"``: mean of each 2 x 2 block (of the pixels it has at odd edges), rounded to the
        nearest integer for integer dtypes; ``"nearest"``: the top-left pixel of each block.

    Returns
    -------
    numpy.ndarray
        Shape ``(..., ceil(Y / 2), ceil(X / 2))``.
    """
    if method == "nearest":
        return np.ascontiguousarray(block[..., ::2, ::2])
    if method != "mean":
        raise ValueError(f"unknown downsampling method {method!r}; use one of {METHODS}")
    h, w = block.shape[-2:]
    acc_dtype = np.float32 if block.dtype in (np.float16, np.float32) else np.float64
    acc = block[..., ::2, ::2].astype(acc_dtype)
    acc[..., : h // 2, :] += block[..., 1::2, ::2]
    acc[..., :, : w // 2] += block[..., ::2, 1::2]
    acc[..., : h // 2, : w // 2] += block[..., 1::2, 1::2]
    count_y = np.full(acc.shape[-2], 2.0, acc_dtype)
    count_x = np.full(acc.shape[-1], 2.0, acc_dtype)
    count_y[h // 2:] = 1.0
    count_x[w // 2:] = 1.0
    acc /= np.outer(count_y, count_x)
    if np.issubdtype(block.dtype, np.integer):
        info = np.iinfo(block.dtype)
        return np.clip(np.rint(acc), info.min, info.max).astype(block.dtype)
    return acc.astype(block.dtype, copy=False)


class RowHalver:
    """Blocks of rows of one level in, blocks of rows of the next level out, in order.

    Rows run along axis 1 of ``(C, rows, ...)`` blocks. When that axis is Y (``CYX`` images)
    rows are paired: an odd row at the end of a block waits for the first row of the next one,
    and the image's last row, if unpaired, is downsampled alone. When it is Z (``CZYX``) every
    block is downsampled in Y and X on its own.

    Parameters
    ----------
    rows_total : int
        Rows (along axis 1) of the input level.
    rows_are_y : bool
        True for ``CYX`` (axis 1 is Y and is halved), False for ``CZYX``.
    method : {"mean", "nearest"}
        See :func:`halve`.
    """

    def __init__(self, rows_total: int, rows_are_y: bool, method: str) -> None:
        self.rows_total, self.rows_are_y, self.method = rows_total, rows_are_y, method
        self.rows_in = 0
        self._carry: np.ndarray | None = None

    def feed(self, block: np.ndarray) -> np.ndarray | None:
        """Rows of the next level that ``block`` completes (None when it completes none)."""
        self.rows_in += block.shape[1]
        if not self.rows_are_y:
            return halve(block, self.method)
        pieces = []
        if self._carry is not None:
            pieces.append(halve(np.concatenate([self._carry, block[:, :1]], axis=1), self.method))
            block = block[:, 1:]
            self._carry = None
        even = block.shape[1] // 2 * 2
        if even:
            pieces.append(halve(block[:, :even], self.method))
        if block.shape[1] > even:
            if self.rows_in == self.rows_total:  # the image's last row, unpaired
                pieces.append(halve(block[:, even:], self.method))
            else:
                self._carry = block[:, even:].copy()
        if not pieces:
            return None
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)
