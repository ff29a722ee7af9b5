"""Open images without reading their pixels: OME-Zarr and TIFF as sliceable ``CYX``/``CZYX`` views.

:func:`open_image_lazy` returns a :class:`LazyImage` whose ``data`` reads only what is sliced,
so images larger than memory can be predicted strip by strip. OME-Zarr level 0 is opened with
:mod:`zarr`; TIFF pixels are read through tifffile's zarr store (any compression, tiles or
strips), or memory-mapped when the file is uncompressed and contiguous. Axes, pixel size and
channel names follow the same rules as :func:`cytogen.io.images.read_image` (same parsing
code): size-1 T/Z/unknown axes are dropped, a single unknown leading axis is Z, a file without
a channel axis gets a size-1 one, and stored orders such as ``ZCYX`` or ``YXS`` are presented
as ``CZYX`` / ``CYX`` without copying the file.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from cytogen.errors import CytogenError
from cytogen.io._common import metadata_for, resolve_axes
from cytogen.io.images import (
    Image,
    _check_readable,
    _format_of,
    parse_source_spec,
    read_image,
    stacked_metadata,
)
from cytogen.io.ome_zarr import open_ome_zarr
from cytogen.io.tiff import first_series, unreadable_tiff

__all__ = ["AxesView", "ChannelStack", "LazyImage", "open_image_lazy", "open_spec_lazy", "stack_lazy"]


class AxesView:
    """A stored array seen with canonical axes ``C[Z]YX``, read only where it is sliced.

    Parameters
    ----------
    base : array-like
        The stored array (zarr array, memmap, numpy); basic slicing must return numpy data.
    letters : str
        One letter per stored axis after :func:`~cytogen.io._common.resolve_axes`, from
        ``C S Z Y X``; ``D`` marks a size-1 axis to drop.
    channel : int, optional
        Keep only this channel (the view then has one channel).
    """

    def __init__(self, base: Any, letters: str, channel: int | None = None) -> None:
        self.base = base
        self.letters = letters
        kept = letters.replace("D", "")
        self.axes = "C" + "".join(a for a in "ZYX" if a in kept)
        self.has_channel = "C" in kept
        self.channel = channel
        n_c = int(base.shape[letters.index("C")]) if self.has_channel else 1
        spatial = tuple(int(base.shape[letters.index(a)]) for a in self.axes[1:])
        self.shape = (1 if channel is not None else n_c, *spatial)
        self.dtype = np.dtype(base.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _full_key(key, self.ndim)
        k_c = key[0]
        virtual_c = not self.has_channel or self.channel is not None
        stored_key, present = [], []
        for letter in self.letters:
            if letter == "D":
                stored_key.append(0)
                continue
            if letter == "C" and self.channel is not None:
                k = slice(self.channel, self.channel + 1)
            else:
                k = key[self.axes.index(letter)]
            stored_key.append(k)
            if isinstance(k, slice):
                present.append(letter)
        out = np.asarray(self.base[tuple(stored_key)])
        order = [a for a in self.axes if a in present]
        out = np.transpose(out, [present.index(a) for a in order])
        if virtual_c:
            if not self.has_channel:
                out = out[np.newaxis]
            out = _pick(out, k_c)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


class ChannelStack:
    """Several lazily opened images with one spatial shape, seen as one image's channels."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.dtype = np.result_type(*[np.dtype(p.dtype) for p in parts])
        self.shape = (sum(int(p.shape[0]) for p in parts), *tuple(parts[0].shape[1:]))
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _full_key(key, self.ndim)
        rest = (slice(None), *key[1:])
        out = np.concatenate([np.asarray(p[rest]).astype(self.dtype, copy=False)
                              for p in self.parts])
        return _pick(out, key[0])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def _full_key(key: Any, ndim: int) -> tuple[Any, ...]:
    """A basic-indexing key as one int or slice per axis (Ellipsis expanded)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    key = key + (slice(None),) * (ndim - len(key))
    if len(key) != ndim or not all(isinstance(k, (slice, int, np.integer)) for k in key):
        raise IndexError(f"only ints and slices index a lazy image, got {key!r}")
    return key


def _pick(out: np.ndarray, k: Any) -> np.ndarray:
    """Apply an int or slice to axis 0 of an array already read."""
    if isinstance(k, slice):
        return out[k]
    if not -out.shape[0] <= int(k) < out.shape[0]:
        raise IndexError(f"channel index {k} is out of range for {out.shape[0]} channel(s)")
    return out[int(k)]


@dataclass
class LazyImage:
    """An image whose pixels stay in the file until sliced.

    Attributes
    ----------
    data : AxesView or numpy.ndarray
        Sliceable with axes ``axes``; ``data[...]`` or ``numpy.asarray(data)`` reads it all.
    axes : str
        ``"CYX"`` or ``"CZYX"``.
    pixel_size_um : tuple of float or None
        Pixel size in micrometres per spatial axis.
    channel_names : list of str or None
        One name per channel, or None.
    """

    data: Any
    axes: str
    pixel_size_um: tuple[float, ...] | None = None
    channel_names: list[str] | None = None
    closer: Callable[[], None] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, [Z,] Y, X)``."""
        return tuple(int(s) for s in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        """Stored pixel dtype."""
        return np.dtype(self.data.dtype)

    @property
    def ndim_spatial(self) -> int:
        """2 or 3."""
        return len(self.axes) - 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the channel axis."""
        return self.shape[1:]

    def read(self) -> Image:
        """Load all pixels as an :class:`~cytogen.io.images.Image`."""
        return Image(np.ascontiguousarray(self.data[...]), self.axes, self.pixel_size_um,
                     self.channel_names)

    def close(self) -> None:
        """Close the underlying file (TIFF); harmless to call twice."""
        if self.closer is not None:
            self.closer()
            self.closer = None

    def __enter__(self) -> "LazyImage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _view(base: Any, stored_axes: str, path: Path) -> AxesView:
    drop, letters = resolve_axes(tuple(base.shape), stored_axes, path)
    if "S" in letters and "C" in letters:
        raise CytogenError(
            f"{path}: channels are stored on two axes ('{stored_axes}', shape "
            f"{tuple(base.shape)}), which cannot be read lazily; convert the file to OME-Zarr "
            "with channels first (cytogen.io.images.write_image(PATH.ome.zarr, read_image(...))) "
            "or predict with TIFF output."
        )
    kept = iter(letters.replace("S", "C"))
    view = AxesView(base, "".join("D" if i in drop else next(kept) for i in range(len(base.shape))))
    if 0 in view.shape:
        raise CytogenError(f"{path}: the image is empty (shape {view.shape} as {view.axes}); "
                           "an axis has size 0. Re-export the image.")
    return view


class ReleasingMap:
    """An uncompressed, contiguous image file mapped read-only, read by copies that leave no
    pages resident.

    Slicing copies the selected pixels out of the mapping and then tells the kernel that this
    process no longer needs the mapped pages (``madvise(MADV_DONTNEED)``; they stay in the page
    cache). Without that, every page read once keeps counting towards the resident memory, so
    streaming a 16384 x 16384 uncompressed input strip by strip would end with the whole input
    resident.

    Parameters
    ----------
    path : pathlib.Path
        The file.
    shape, dtype
        The stored array (``dtype`` with the file's byte order).
    offset : int
        Byte offset of the first pixel.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any, offset: int) -> None:
        self._file = open(path, "rb")
        try:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._array = np.ndarray(tuple(shape), np.dtype(dtype), buffer=self._map,
                                     offset=int(offset))
        except BaseException:
            self._file.close()
            raise
        self.shape, self.dtype = self._array.shape, self._array.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        out = np.array(self._array[key])  # a copy: the pages it came from are released next
        if hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)
        return out

    def close(self) -> None:
        """Unmap and close the file (copies already read stay valid)."""
        self._array = None  # type: ignore[assignment]  # drop the export before unmapping
        self._map.close()
        self._file.close()


def _open_tiff(path: Path) -> tuple[Any, str, dict[str, float], list | None, Callable[[], None]]:
    tif = tifffile.TiffFile(path)
    try:
        series, sizes, names = first_series(tif, path)
        if series.dataoffset is not None:  # uncompressed and contiguous: map the file
            mapped = ReleasingMap(path, series.shape, np.dtype(series.dtype).newbyteorder(tif.byteorder),
                                  series.dataoffset)
            tif.close()
            return mapped, series.axes, sizes, names, mapped.close
        store = series.aszarr(level=0)
        base = zarr.open(store, mode="r")
    except CytogenError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise unreadable_tiff(path, exc) from exc

    def close() -> None:
        store.close()
        tif.close()

    return base, series.axes, sizes, names, close


def open_image_lazy(path: str | Path, channel: int | None = None) -> LazyImage:
    """Open an OME-Zarr (level 0) or TIFF image without reading its pixels.

    Parameters
    ----------
    path : str or pathlib.Path
        ``.zarr`` / ``.ome.zarr`` folder or ``.tif`` / ``.tiff`` file. PNG files are small by
        nature and are read into memory.
    channel : int, optional
        Keep only this channel (0-based), still without reading pixels.

    Returns
    -------
    LazyImage
        Close it (or use it as a context manager) to release a TIFF file handle.

    Raises
    ------
    CytogenError
        Missing or unreadable files, ambiguous axes, time series, channels split over two
        stored axes, empty images, a channel index out of range.
    """
    path = Path(path).expanduser()
    fmt = _format_of(path)
    _check_readable(path, fmt)
    if fmt == "png":
        image = read_image(path, channel=channel)
        return LazyImage(image.data, image.axes, image.pixel_size_um, image.channel_names)
    closer = None
    if fmt == "zarr":
        raw = open_ome_zarr(path)
        base, stored, sizes, names = raw.data, raw.axes, raw.sizes_um, raw.channel_names
    else:
        base, stored, sizes, names, closer = _open_tiff(path)
    try:
        view = _view(base, stored, path)
        pixel, names = metadata_for(view.axes, sizes, names, view.shape[0])
        if channel is not None:
            n_c = view.shape[0]
            if not isinstance(channel, (int, np.integer)) or not 0 <= channel < n_c:
                raise CytogenError(
                    f"{path}: channel {channel!r} does not exist; the file has {n_c} "
                    f"channel(s), numbered 0 to {n_c - 1}.")
            view = AxesView(base, view.letters, int(channel))
            names = [names[channel]] if names else None
    except BaseException:
        if closer is not None:
            closer()
        raise
    return LazyImage(view, view.axes, pixel, names, closer)


def open_spec_lazy(spec: str, base_dir: Path | None = None) -> LazyImage:
    """:func:`open_image_lazy` for a source spec ``"path#c=K"`` (see ``parse_source_spec``)."""
    path, channel = parse_source_spec(spec)
    path = path.expanduser()
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return open_image_lazy(path, channel=channel)


def stack_lazy(images: list[LazyImage]) -> LazyImage:
    """Lazily opened images with one spatial shape as the channels of one image.

    Metadata rules and errors are those of :func:`cytogen.io.images.stack_channels`; the
    result closes all parts. A single image is returned as it is.
    """
    if len(images) == 1:
        return images[0]
    pixel, names = stacked_metadata(images)

    def close() -> None:
        for im in images:
            im.close()

    return LazyImage(ChannelStack([im.data for im in images]), images[0].axes, pixel, names,
                     close)
