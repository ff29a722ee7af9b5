"""Sliding-window prediction over whole 2D / 3D images with blended tile seams.

The image is cut into equally sized tiles (the last tile of each axis aligned to the image
end, so every pixel is covered), tiles are sent to ``fn`` in batches, and the outputs are
blended with a weight window and normalised by the summed weights. Tiles are visited with the
first spatial axis outermost and accumulated strip by strip (:mod:`cytogen.predict.strips`):
rows that no remaining tile can touch are finished and handed to a ``sink`` at once, so with a
sink, memory is about one band of tile rows across the image plus one batch, whatever the
image length. Without a sink the finished rows are gathered into one float32 array.

When ``fn`` runs out of memory the batch is retried with half as many tiles (down to one), and
:class:`~cytogen.predict.oom.TileOOMError` tells the caller to use a smaller tile.

Images smaller than a tile, or whose size would force a tile that is not a multiple of
``size_multiple``, are padded per tile (reflection, or edge for single-pixel axes) and the
result is cropped back, so the input array is never copied or modified as a whole.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cytogen.errors import CytogenError
from cytogen.predict.oom import TileOOMError, free_memory, is_oom_error
from cytogen.predict.strips import BandAccumulator, StripReader

__all__ = ["BLENDS", "balanced_tile", "blend_window", "predict_tiled", "redundancy",
           "tile_starts"]

BLENDS = ("gaussian", "linear", "constant")
GAUSSIAN_FLOOR = 1e-4  # relative to the window's peak; keeps every weight > 0


def blend_window(length: int, blend: str = "gaussian") -> np.ndarray:
    """1D blending weights for one tile axis (peak 1, all weights > 0).

    Parameters
    ----------
    length : int
        Tile length along the axis.
    blend : {"gaussian", "linear", "constant"}
        ``"gaussian"``: ``exp(-x^2 / 2 sigma^2)`` around the centre with
        ``sigma = length / 8``, floored at ``GAUSSIAN_FLOOR``; ``"linear"``: a tent
        ``min(i + 1, length - i)``; ``"constant"``: ones.

    Returns
    -------
    numpy.ndarray
        float64 weights of shape ``(length,)``. N-D windows are outer products.
    """
    i = np.arange(length, dtype=np.float64)
    if blend == "constant":
        w = np.ones(length)
    elif blend == "linear":
        w = np.minimum(i + 1, length - i)
    elif blend == "gaussian":
        sigma = length / 8.0
        w = np.exp(-0.5 * ((i - (length - 1) / 2.0) / sigma) ** 2)
    else:
        raise CytogenError(f"blend must be one of {BLENDS}, got {blend!r}")
    w = w / w.max()
    return np.maximum(w, GAUSSIAN_FLOOR) if blend == "gaussian" else w


def tile_starts(size: int, tile: int, step: int) -> list[int]:
    """Start offsets of windows of length ``tile`` every ``step`` over ``size``.

    The last window is aligned to the end, so ``[0, size)`` is covered.

    Parameters
    ----------
    size, tile, step : int
        Axis length (>= tile), window length and stride (>= 1).

    Returns
    -------
    list of int
        Sorted, unique start offsets.
    """
    if size <= tile:
        return [0]
    return list(range(0, size - tile, step)) + [size - tile]


def _reflect(idx: np.ndarray, size: int) -> np.ndarray:
    """Map indices outside ``[0, size)`` back inside by mirror reflection (no edge repeat)."""
    if size == 1:
        return np.zeros_like(idx)
    period = 2 * (size - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= size, period - idx, idx)


@dataclass
class _Axis:
    """Tiling plan for one spatial axis."""

    size: int  # image size S
    tile: int  # tile size T (multiple of size_multiple)
    step: int
    margin: int
    pad_before: int = 0
    starts: list[int] = field(default_factory=list)
    windows: np.ndarray | None = None  # (n, T) float32, margin-masked blend windows
    weight_sum: np.ndarray | None = None  # (S,) float64

    def read(self, j: int) -> tuple[slice, np.ndarray | None]:
        """Source slice of tile ``j`` and, if it reaches into padding, local take-indices."""
        idx = np.arange(self.starts[j], self.starts[j] + self.tile) - self.pad_before
        if idx[0] >= 0 and idx[-1] < self.size:
            return slice(int(idx[0]), int(idx[-1]) + 1), None
        idx = _reflect(idx, self.size)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        return slice(lo, hi), idx - lo

    def write(self, j: int) -> tuple[slice, slice]:
        """(output slice, tile slice) of the part of tile ``j`` inside the image."""
        start, lo = self.starts[j], self.pad_before
        a = max(start, lo)
        b = min(start + self.tile, lo + self.size)
        return slice(a - lo, b - lo), slice(a - start, b - start)


def _per_axis(value: int | Sequence[int], nd: int, name: str) -> tuple[int, ...]:
    values = (value,) * nd if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != nd or not all(isinstance(v, (int, np.integer)) for v in values):
        raise CytogenError(f"{name} must be an int or {nd} ints (one per spatial axis), "
                           f"got {value!r}")
    return tuple(int(v) for v in values)


def balanced_tile(size: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile (a multiple of ``multiple``, at most ``tile``) that covers ``size``
    with as many tiles of ``overlap`` pixels overlap as ``tile`` needs.

    The last tile of an axis is aligned to the end, so a tile much larger than the remainder
    recomputes most of its predecessor; spreading the tiles evenly removes that redundancy.

    Parameters
    ----------
    size, tile, overlap, multiple : int
        Axis length, the largest tile, the overlap in pixels (``< tile``) and the size multiple.

    Returns
    -------
    int
        ``tile`` when the axis needs one tile (or no smaller tile keeps the count).
    """
    if size <= tile or overlap >= tile:
        return tile
    n = math.ceil((size - overlap) / (tile - overlap))
    smaller = math.ceil(math.ceil((size + (n - 1) * overlap) / n) / multiple) * multiple
    return smaller if overlap < smaller < tile else tile


def _plan(shape: tuple[int, ...], tile: tuple[int, ...], overlap: float | tuple[int, ...],
          size_multiple: tuple[int, ...], margin: tuple[int, ...], blend: str,
          balance: bool = False) -> list[_Axis]:
    nd = len(shape)
    if isinstance(overlap, (int, float, np.number)) and not isinstance(overlap, bool):
        if not 0.0 <= float(overlap) < 1.0:
            raise CytogenError(f"overlap as a fraction must be in [0, 1), got {overlap!r}")
        fractions: tuple[float, ...] | None = (float(overlap),) * nd
        pixels: tuple[int, ...] = (0,) * nd
    else:
        fractions, pixels = None, _per_axis(overlap, nd, "overlap")
    axes = []
    for a in range(nd):
        size, m = shape[a], size_multiple[a]
        t = math.ceil(min(tile[a], size) / m) * m
        ov = round(fractions[a] * t) if fractions is not None else pixels[a]
        if ov < 0 or margin[a] < 0:
            raise CytogenError(f"overlap and margin must be >= 0, got {overlap!r}, {margin!r}")
        if size > t and t - 2 * margin[a] < 1:
            raise CytogenError(f"margin {margin[a]} is too large for tile size {t} "
                               f"(axis {a}); use a margin below half the tile (with an overlap "
                               "of auto, the margin is the model's receptive-field radius: use "
                               "a larger tile, e.g. --tile auto, or give --overlap)")
        if balance and fractions is None:
            t = balanced_tile(size, t, max(ov, 2 * margin[a]), m)
        step = t - min(max(ov, 2 * margin[a]), t - 1)
        ax = _Axis(size=size, tile=t, step=step, margin=margin[a],
                   pad_before=max(t - size, 0) // 2)
        ax.starts = tile_starts(max(size, t), t, step)
        base = blend_window(t, blend)
        windows = np.repeat(base[None], len(ax.starts), axis=0)
        if ax.margin and len(ax.starts) > 1:  # zero weights at interior tile sides only
            windows[1:, : ax.margin] = 0.0
            windows[:-1, t - ax.margin:] = 0.0
        ax.windows = windows.astype(np.float32)
        ax.weight_sum = np.zeros(size)
        for j in range(len(ax.starts)):
            out_sl, tile_sl = ax.write(j)
            ax.weight_sum[out_sl] += ax.windows[j, tile_sl]
        if not (ax.weight_sum > 0).all():  # pragma: no cover - guarded by the step choice
            raise RuntimeError(f"tiling left pixels uncovered on axis {a}")
        axes.append(ax)
    return axes


def redundancy(shape: Sequence[int], tile: Sequence[int], overlap: float | Sequence[int] = 0.25,
               size_multiple: int | Sequence[int] = 1, margin: int | Sequence[int] = 0,
               balance: bool = False) -> float:
    """Pixels the model computes per output pixel under :func:`predict_tiled`'s tiling.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the image.
    tile, overlap, size_multiple, margin, balance
        As for :func:`predict_tiled`.

    Returns
    -------
    float
        ``n_tiles x tile pixels / image pixels`` (1.0: no pixel computed twice).
    """
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    axes = _plan(shape, _per_axis(tile, nd, "tile"), overlap, _per_axis(size_multiple, nd,
                 "size_multiple"), _per_axis(margin, nd, "margin"), "constant", balance)
    return float(math.prod(len(ax.starts) * ax.tile for ax in axes) / math.prod(shape))


def _check_args(image: object, tile: object, batch_size: object, size_multiple: object,
                margin: object, blend: str
                ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    if not hasattr(image, "shape") or len(image.shape) not in (3, 4):
        raise CytogenError("image must be a (C, Y, X) or (C, Z, Y, X) array, got shape "
                           f"{getattr(image, 'shape', type(image).__name__)}")
    kind = np.dtype(image.dtype).kind
    if kind not in "biuf":
        raise CytogenError(f"image must have a real numeric dtype, got {image.dtype}")
    if min(image.shape) < 1:
        raise CytogenError(f"image is empty (shape {tuple(image.shape)})")
    shape = tuple(int(s) for s in image.shape[1:])
    nd = len(shape)
    tile_t = _per_axis(tile, nd, "tile")
    mult = _per_axis(size_multiple, nd, "size_multiple")
    margin_t = _per_axis(margin, nd, "margin")
    if min(tile_t) < 1 or min(mult) < 1:
        raise CytogenError(f"tile and size_multiple must be >= 1, got {tile!r}, "
                           f"{size_multiple!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise CytogenError(f"batch_size must be a positive integer, got {batch_size!r}")
    if blend not in BLENDS:
        raise CytogenError(f"blend must be one of {BLENDS}, got {blend!r}")
    return shape, tile_t, mult, margin_t


def _read_batch(reader: StripReader, batch_js: list[tuple[int, ...]],
                transform: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    tiles = []
    for js in batch_js:
        t = reader.tile(js)
        if not np.isfinite(t).all():
            raise CytogenError("image contains NaN or infinite values; clean or mask "
                               "them before prediction")
        if transform is not None:  # on a copy: the tile may be a view of the input
            t = np.asarray(transform(t.copy()), dtype=np.float32)
        tiles.append(t)
    return np.stack(tiles)


def _call(fn: Callable[[torch.Tensor], torch.Tensor], tiles: np.ndarray, weigh: Callable,
          device: torch.device, dtype: torch.dtype, pad_to: int = 0) -> np.ndarray | str:
    """Weighted ``fn`` output of the batch, or the error text when memory ran out.

    A batch of fewer than ``pad_to`` tiles is zero-padded to ``pad_to`` for the call and the
    padding is cropped from the output.
    """
    n = tiles.shape[0]
    try:
        x = torch.from_numpy(tiles).to(device=device, dtype=dtype)
        if n < pad_to:
            x = torch.cat([x, x.new_zeros((pad_to - n, *x.shape[1:]))])
        y = fn(x)
        return weigh(y[:n] if n < pad_to and isinstance(y, torch.Tensor) else y)
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}"


def _weighted(pred: object, batch_js: list[tuple[int, ...]], tile_shape: tuple[int, ...],
              windows: list[torch.Tensor], out_channels: int | None) -> np.ndarray:
    """Check ``fn``'s output and multiply each tile by its separable blend window."""
    n, nd = len(batch_js), len(tile_shape)
    if (not isinstance(pred, torch.Tensor) or pred.ndim != nd + 2
            or pred.shape[0] != n or tuple(pred.shape[2:]) != tile_shape):
        got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred)
        raise CytogenError(f"fn must return a (B, C_out, *{tile_shape}) tensor with "
                           f"B={n}, got {got}")
    if out_channels is not None and pred.shape[1] != out_channels:
        raise CytogenError(f"fn returned {pred.shape[1]} channels, expected {out_channels}")
    pred = pred.float()
    for a, w in enumerate(windows):  # per-tile separable weights, on device
        idx = torch.tensor([js[a] for js in batch_js], device=pred.device)
        view = [n, 1] + [1] * nd
        view[a + 2] = tile_shape[a]
        pred = pred * w.to(pred.device)[idx].reshape(view)
    return pred.cpu().numpy()


def predict_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    *,
    tile: tuple[int, ...],
    overlap: float | tuple[int, ...] = 0.25,
    batch_size: int = 4,
    size_multiple: int | tuple[int, ...] = 1,
    out_channels: int | None = None,
    blend: str = "gaussian",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
    margin: int | tuple[int, ...] = 0,
    sink: Callable[[int, np.ndarray], None] | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    out_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    pad_batches: bool = False,
    balance: bool = False,
) -> np.ndarray | None:
    """Apply ``fn`` to a whole image tile by tile and blend the tiles.

    Parameters
    ----------
    fn : callable
        Maps a ``(B, C, *tile_shape)`` tensor to ``(B, C_out, *tile_shape)``, e.g. a model
        in ``eval()`` mode. Called under ``torch.inference_mode()``.
    image : numpy.ndarray
        ``(C, Y, X)`` or ``(C, Z, Y, X)`` real-valued array (or any array supporting basic
        slicing, e.g. a memmap or zarr array). Not modified. It is read one strip at a time
        (the axis-0 rows of one row of tiles, across the other axes), never as a whole.
    tile : tuple of int
        Tile size per spatial axis (an int is used for all axes). It is clipped to the image
        size and rounded up to ``size_multiple``; smaller images are padded.
    overlap : float or tuple of int
        Fraction of the tile in ``[0, 1)`` shared by neighbouring tiles, or pixels per axis.
    batch_size : int
        Tiles per ``fn`` call. When ``fn`` runs out of memory (see
        :func:`~cytogen.predict.oom.is_oom_error`) the batch is retried with half as many
        tiles, down to 1, and the rest of the image uses the smaller batch; a
        :class:`RuntimeWarning` says so.
    size_multiple : int or tuple of int
        The tile size per axis must be divisible by this (e.g. ``model.size_multiple``).
    out_channels : int, optional
        Expected ``C_out``; checked against ``fn``'s output when given.
    blend : {"gaussian", "linear", "constant"}
        Weight window, see :func:`blend_window`.
    device : str or torch.device
        Where the tiles are sent.
    dtype : torch.dtype
        Dtype of the tiles given to ``fn`` (e.g. ``torch.bfloat16``).
    progress : callable, optional
        Called as ``progress(done_tiles, total_tiles)`` after each batch.
    margin : int or tuple of int
        Pixels at each tile side that touches another tile whose weight is set to zero
        (e.g. the model's border artefacts). The overlap is raised to at least
        ``2 * margin`` so every pixel stays covered. Sides on the image border keep weight.
    sink : callable, optional
        ``sink(start, block)`` receives the prediction strip by strip as soon as rows along
        the first spatial axis are final: float32 ``block`` of shape ``(C_out, rows, *rest)``
        holds output rows ``[start, start + rows)``. Blocks arrive in order and cover the axis
        exactly once. With a sink nothing is returned and memory does not grow with the
        image length.
    transform : callable, optional
        Applied to each input tile (float32 ``(C, *tile)``, a copy) before ``fn``, e.g.
        intensity normalisation with precomputed statistics; must keep the tile's spatial shape.
    out_transform : callable, optional
        Applied to each finished block (float32 ``(C_out, rows, *rest)``) before the sink or
        the returned array, e.g. denormalisation; must keep the block's shape.
    pad_batches : bool
        Zero-pad every short batch (the image's last one, or all of an image with fewer tiles
        than a batch) to the batch size in use and crop the padding from the output, so ``fn``
        always sees one batch shape: a model under ``torch.compile`` then never recompiles for a
        partial batch. The size padded to is the current one: after an out-of-memory back-off
        it is the halved batch size, never the size that failed.
    balance : bool
        With an overlap in pixels: shrink each axis's tile to the smallest multiple of
        ``size_multiple`` that covers the axis with the same number of tiles
        (:func:`balanced_tile`), so the last tile does not recompute most of its neighbour.
        ``tile`` is then the largest tile allowed. Ignored for fractional overlaps.

    Returns
    -------
    numpy.ndarray or None
        float32 ``(C_out, *spatial)`` prediction with the image's spatial shape; None when a
        ``sink`` is given.

    Raises
    ------
    CytogenError
        For an image of the wrong rank or dtype, an empty or non-finite image, invalid
        tiling arguments, or an ``fn`` output of the wrong shape.
    TileOOMError
        When ``fn`` runs out of memory even for a batch of one tile (a :class:`CytogenError`).
    """
    shape, tile_t, mult, margin_t = _check_args(image, tile, batch_size, size_multiple,
                                                margin, blend)
    axes = _plan(shape, tile_t, overlap, mult, margin_t, blend, balance)
    tile_shape = tuple(ax.tile for ax in axes)
    counts = tuple(len(ax.starts) for ax in axes)
    total = math.prod(counts)

    def tile_index(k: int) -> tuple[int, ...]:  # k-th tile, axis 0 outermost (C order)
        return tuple(int(i) for i in np.unravel_index(k, counts))
    device = torch.device(device)
    windows = [torch.from_numpy(ax.windows).to(device) for ax in axes]
    reader = StripReader(image, axes)
    band: BandAccumulator | None = None
    full: list[np.ndarray] = []

    def emit(start: int, block: np.ndarray) -> None:
        if out_transform is not None:
            block = np.asarray(out_transform(block), dtype=np.float32)
        if sink is not None:
            sink(start, block)
            return
        if not full:
            full.append(np.empty((block.shape[0], *shape), dtype=np.float32))
        full[0][:, start:start + block.shape[1]] = block

    done, bs = 0, int(batch_size)
    with torch.inference_mode():
        while done < total:
            batch_js = [tile_index(k) for k in range(done, min(done + bs, total))]
            def weigh(pred: object) -> np.ndarray:
                return _weighted(pred, batch_js, tile_shape, windows, out_channels)

            values = _call(fn, _read_batch(reader, batch_js, transform), weigh, device, dtype,
                           bs if pad_batches else 0)
            if isinstance(values, str):  # out of memory: free, halve the batch and retry it
                free_memory()
                if bs == 1:
                    raise TileOOMError(
                        f"out of memory predicting a single tile of {tile_shape} pixels on "
                        f"{device} ({values}); use a smaller tile or a device with more memory",
                        tile_shape)
                warnings.warn(f"out of memory with {bs} tiles per batch on {device}; "
                              f"continuing with batch size {bs // 2}", RuntimeWarning,
                              stacklevel=2)
                bs //= 2
                continue
            if band is None:
                band = BandAccumulator(values.shape[1], shape,
                                       [ax.weight_sum for ax in axes], emit)
            for k, js in enumerate(batch_js):
                out_sl, tile_sl = zip(*(ax.write(j) for ax, j in zip(axes, js)))
                if js[0] != batch_js[0][0]:  # a new row of tiles: rows above it are final
                    band.finish(out_sl[0].start)
                band.add(out_sl, values[(k, slice(None), *tile_sl)])
            done += len(batch_js)
            # rows before the first row the next tile writes are final
            band.finish(axes[0].write(tile_index(done)[0])[0].start if done < total else shape[0])
            if progress is not None:
                progress(done, total)
    return None if sink is not None else full[0]
