"""Writing OME-Zarr (OME-NGFF 0.4, zarr format 2) images with pyramids and labels.

Pixels are written by cytogen chunk row by chunk row (so a prediction streams to disk with
bounded memory, and every chunk is written once); the metadata is written by ome-zarr-py
(:func:`ome_zarr.writer.write_multiscales_metadata` with its omero channel checks and
:func:`ome_zarr.writer.write_label_metadata`, in :class:`ome_zarr.format.FormatV04`), and the
pyramid (:mod:`cytogen.io.pyramid`) is built from the same row blocks as level 0 arrives.

Why NGFF 0.4 and not 0.5: 0.4 (zarr v2, ``/``-separated chunk keys) is what the tools our users
open images in read today. The Bio-Formats stack (its OMEZarrReader, used by QuPath and OMERO;
NGFF-Converter 2.1 / bioformats2raw still write only 0.4, ome/NGFF-Converter#88, 2026), ilastik
(zarr v2 only, ilastik/ilastik#3033) read 0.4, and Fiji (n5-ij, MoBIE) has read it for years;
napari-ome-zarr opens 0.5 only with ome-zarr-py >= 0.12 (ome/ome-zarr-py#470), so older napari
set-ups cannot. Every 0.5 reader also reads 0.4, not the reverse. cytogen reads both
(:mod:`cytogen.io.ome_zarr`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

import cytogen
from cytogen.errors import CytogenError
from cytogen.io._common import check_row_block
from cytogen.io.atomic import atomic_dir
from cytogen.io.pyramid import RowHalver, level_shapes

#: The NGFF version cytogen writes (see the module docstring for why) and its zarr format.
NGFF_VERSION, ZARR_FORMAT = "0.4", 2


def _ngff_format() -> Any:
    """ome-zarr-py's Format of :data:`NGFF_VERSION` (imported here: ome-zarr-py pulls in dask,
    seconds of start-up that reading or a TIFF prediction does not need)."""
    from ome_zarr.format import FormatV04

    return FormatV04()


def _compressor(compression: str | None) -> Any:
    if compression is None:
        return None
    return {"zlib": numcodecs.Zlib(level=6), "zstd": numcodecs.Zstd(level=3)}[compression]


def _omero(lo: np.ndarray, hi: np.ndarray, dtype: np.dtype, names: list[str]) -> dict[str, Any]:
    channels = []
    for k, name in enumerate(names):
        start, end = float(lo[k]), float(hi[k])
        if not (np.isfinite(start) and np.isfinite(end)):  # an all-NaN channel
            start, end = 0.0, 1.0
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            full = (float(info.min), float(info.max))
        else:
            full = (start, end)
        channels.append({
            "label": name, "active": True, "color": "FFFFFF",
            "window": {"start": start, "end": end, "min": full[0], "max": full[1]},
        })
    return {"version": NGFF_VERSION, "channels": channels, "rdefs": {"model": "greyscale"}}


def _axes(axes: str, pixel_size_um: tuple[float, ...] | None) -> list[dict[str, str]]:
    meta = []
    for a in axes:
        if a == "C":
            meta.append({"name": "c", "type": "channel"})
        else:
            entry = {"name": a.lower(), "type": "space"}
            if pixel_size_um is not None:
                entry["unit"] = "micrometer"
            meta.append(entry)
    return meta


def _datasets(n_levels: int, axes: str, pixel_size_um: tuple[float, ...] | None,
              method: str) -> list[dict[str, Any]]:
    """One dataset per level of an image with stored ``axes`` (``"CYX"``, ``"ZYX"``, ...): its
    ``scale`` (um per pixel when the pixel size is known) and, for block means, the
    ``translation`` that puts each pixel at the centre of the level-0 pixels it averages."""
    n_spatial = len(axes.replace("C", ""))
    sizes = [float(v) for v in pixel_size_um] if pixel_size_um else [1.0] * n_spatial
    out = []
    for k in range(n_levels):
        scale, shift, it = [], [], iter(sizes)
        for pos, a in enumerate(axes):
            f = 2.0**k if a in "YX" else 1.0
            s = 1.0 if a == "C" else next(it)
            scale.append(s * f)
            shift.append(s * (f - 1) / 2)
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if k and method == "mean":
            transforms.append({"type": "translation", "translation": shift})
        out.append({"path": str(k), "coordinateTransformations": transforms})
    return out


class _LevelRows:
    """Rows of one level array, gathered into whole chunk rows so each chunk is written once."""

    def __init__(self, array: zarr.Array, shape: tuple[int, ...], h: int) -> None:
        # shape: (C, rows, ...) of the blocks; the array may lack the C axis (label images)
        self.array, self.shape, self.h = array, shape, min(h, shape[1])
        self.rows, self.flushed = 0, 0
        self._buf: np.ndarray | None = None

    def _store(self, a: int, b: int, values: np.ndarray) -> None:
        if self.array.ndim == len(self.shape):
            self.array[:, a:b] = values
        else:
            self.array[a:b] = values[0]

    def push(self, block: np.ndarray) -> None:
        n_total = self.shape[1]
        rows, pos = block.shape[1], 0
        while pos < rows:
            held = self.rows - self.flushed
            if held == 0 and (rows - pos >= self.h or self.rows + rows - pos == n_total):
                n = rows - pos if self.rows + rows - pos == n_total else (rows - pos) // self.h * self.h
                self._store(self.rows, self.rows + n, block[:, pos:pos + n])
                self.flushed += n
            else:  # gather rows in a one-chunk-row buffer until it is full or the image ends
                if self._buf is None:
                    self._buf = np.empty((self.shape[0], self.h, *self.shape[2:]),
                                         self.array.dtype)
                n = min(rows - pos, self.h - held)
                self._buf[:, held:held + n] = block[:, pos:pos + n]
                if held + n == self.h or self.rows + n == n_total:
                    self._store(self.flushed, self.flushed + held + n, self._buf[:, :held + n])
                    self.flushed += held + n
            pos += n
            self.rows += n


class OmeZarrWriter:
    """Rows of one NGFF image and its pyramid, written in order along the first spatial axis.

    Made by :func:`create_ome_zarr` (or :func:`write_ome_zarr_labels` for a label image); write
    with :meth:`write`. Each block goes to level 0 and, downsampled, to every further level;
    rows that do not fill a whole chunk row wait in a one-chunk-row buffer per level. Per-channel
    minimum and maximum (NaN ignored) are kept for the ``omero`` display window.

    Attributes
    ----------
    path : pathlib.Path
        The final destination (for messages).
    shape : tuple of int
        Level-0 shape of the blocks, axes ``CYX`` / ``CZYX`` (a label image: C = 1, stored
        without its channel axis).
    dtype : numpy.dtype
        Stored dtype; blocks are cast to it.
    chunks : tuple of int
        Level-0 chunk shape; ``chunks[1]`` rows are written at a time.
    level_shapes : list of tuple of int
        Shapes of the pyramid levels, level 0 first.
    method : {"mean", "nearest"}
        Downsampling of the levels after 0.
    rows_written : int
        Rows along axis 1 received so far.
    """

    def __init__(self, group: zarr.Group, path: Path, shape: tuple[int, ...], dtype: np.dtype,
                 axes: str, pixel_size_um: tuple[float, ...] | None,
                 channel_names: list[str] | None, compression: str | None,
                 chunks: tuple[int, ...], max_side: int | None, method: str,
                 has_c: bool = True) -> None:
        self.path, self.shape, self.dtype, self.chunks = path, shape, dtype, chunks
        self.method, self._group = method, group
        self._axes = axes if has_c else axes.replace("C", "")  # the axes stored
        self._pixel, self._names = pixel_size_um, channel_names
        self.level_shapes = level_shapes(shape, max_side)
        self._levels = []
        cut = 0 if has_c else 1  # a label image has no channel axis
        for k, level in enumerate(self.level_shapes):
            array = group.create_array(
                str(k), shape=level[cut:], dtype=dtype,
                chunks=tuple(min(c, n) for c, n in zip(chunks, level))[cut:],
                compressors=_compressor(compression),
                chunk_key_encoding={"name": "v2", "separator": "/"},
            )
            self._levels.append(_LevelRows(array, level, chunks[1]))
        rows_are_y = axes.index("Y") == 1  # CYX: rows are Y (halved); CZYX: rows are Z
        self._halvers = [RowHalver(level[1], rows_are_y, method) for level in self.level_shapes[:-1]]
        self.rows_written = 0
        self._lo = np.full(shape[0], np.inf)
        self._hi = np.full(shape[0], -np.inf)

    def write(self, start: int, block: np.ndarray) -> None:
        """Store rows ``[start, start + block.shape[1])`` of the image (and its pyramid).

        Parameters
        ----------
        start : int
            First row along axis 1; must follow the rows written so far.
        block : numpy.ndarray
            ``(C, rows, *rest)`` with the image's other sizes.
        """
        block = np.asarray(block)
        rows = check_row_block(self.path, self.shape, block, start, self.rows_written)
        block = block.astype(self.dtype, copy=False)
        flat = block.reshape(block.shape[0], -1)
        if flat.dtype.kind == "f":
            self._lo = np.fmin(self._lo, np.nanmin(flat, axis=1, initial=np.inf))
            self._hi = np.fmax(self._hi, np.nanmax(flat, axis=1, initial=-np.inf))
        else:
            self._lo = np.minimum(self._lo, flat.min(axis=1))
            self._hi = np.maximum(self._hi, flat.max(axis=1))
        self.rows_written += rows
        part: np.ndarray | None = block
        for k, level in enumerate(self._levels):
            if part is None:
                break
            level.push(part)
            part = self._halvers[k].feed(part) if k < len(self._halvers) else None

    def finish(self) -> None:
        """Write the metadata with ome-zarr-py; refuses an image whose rows are incomplete."""
        if self.rows_written != self.shape[1]:
            raise CytogenError(
                f"{self.path}: only {self.rows_written} of {self.shape[1]} rows were written; "
                "the image is incomplete and was not saved. Run the prediction again."
            )
        assert all(lv.rows == lv.shape[1] for lv in self._levels)
        extra: dict[str, Any] = {"method": f"cytogen.io.pyramid.halve ({self.method}, 2x2 in Y, X)",
                                 "cytogen_version": cytogen.__version__}
        if self._names is not None:
            extra["omero"] = _omero(self._lo, self._hi, self.dtype, self._names)
        from ome_zarr.writer import write_multiscales_metadata

        write_multiscales_metadata(
            self._group, _datasets(len(self.level_shapes), self._axes, self._pixel, self.method),
            fmt=_ngff_format(), axes=_axes(self._axes, self._pixel), name=_image_name(self.path),
            metadata=extra)
        ms = self._group.attrs["multiscales"]
        ms[0]["type"] = self.method
        self._group.attrs["multiscales"] = ms


def _image_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    caps = (32, 256, 256) if len(shape) == 4 else (1024, 1024)
    return (1,) + tuple(min(n, c) for n, c in zip(shape[1:], caps))


def _check_create(path: Path, shape: tuple[int, ...], axes: str, compression: str | None,
                  chunks: tuple[int, ...] | None) -> tuple[int, ...]:
    if axes not in ("CYX", "CZYX") or len(shape) != len(axes) or min(shape) < 1:
        raise CytogenError(f"{path}: cannot create an image of shape {shape} with axes {axes!r}; "
                           "give a non-empty (C, Y, X) or (C, Z, Y, X) shape")
    if compression not in (None, "zlib", "zstd"):
        raise CytogenError(f"{path}: unknown compression {compression!r}; use zlib, zstd or None")
    chunks = _default_chunks(shape) if chunks is None else tuple(
        max(1, min(int(c), n)) for c, n in zip(chunks, shape))
    if len(chunks) != len(shape):
        raise CytogenError(f"{path}: chunks {chunks} need one size per axis of {shape}")
    return chunks


@contextmanager
def create_ome_zarr(
    path: Path,
    shape: tuple[int, ...],
    dtype: Any,
    axes: str,
    pixel_size_um: tuple[float, ...] | None,
    channel_names: list[str] | None,
    compression: str | None,
    chunks: tuple[int, ...] | None = None,
    *,
    max_side: int | None = 1024,
) -> Iterator[OmeZarrWriter]:
    """Create an NGFF 0.4 image (zarr format 2) with a pyramid, filled row by row, atomically.

    The image is built in a hidden temporary folder next to ``path`` and renamed into place
    only when the ``with`` block ends without error and every row was written; otherwise the
    temporary folder is deleted and an existing ``path`` is left as it was. Levels ``1, 2, ...``
    (2 x 2 block means in Y and X, :mod:`cytogen.io.pyramid`) are written from the same blocks.

    Parameters
    ----------
    path : pathlib.Path
        Destination directory (``.ome.zarr``); missing parent folders are created.
    shape : tuple of int
        ``(C, Y, X)`` or ``(C, Z, Y, X)``.
    dtype : numpy dtype-like
        Stored dtype.
    axes : str
        ``"CYX"`` or ``"CZYX"``.
    pixel_size_um : tuple of float or None
        Pixel size per spatial axis; when None the axes carry no unit and the scale is 1.
    channel_names : list of str or None
        Written as ``omero.channels[].label`` when given, with a display window from the
        running per-channel minimum and maximum of the rows written.
    compression : {"zlib", "zstd", None}
        Chunk compressor.
    chunks : tuple of int, optional
        Level-0 chunk shape (clipped to ``shape``, and per level to the level's shape); default
        one channel and up to 1024 x 1024 pixels in 2D, 32 x 256 x 256 in 3D. Rows are buffered
        to whole chunk rows (``chunks[1]``).
    max_side : int or None
        Pyramid levels until Y and X are both at most this (None: level 0 only).

    Yields
    ------
    OmeZarrWriter
        Call ``writer.write(start, block)`` with consecutive blocks of rows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path) as tmp:
        writer = _image_writer(tmp, path, shape, dtype, axes, pixel_size_um, channel_names,
                               compression, chunks, max_side)
        yield writer
        writer.finish()


def _image_writer(folder: Path, path: Path, shape: tuple[int, ...], dtype: Any, axes: str,
                  pixel_size_um: tuple[float, ...] | None, channel_names: list[str] | None,
                  compression: str | None, chunks: tuple[int, ...] | None,
                  max_side: int | None) -> OmeZarrWriter:
    """A writer of the image ``path`` (named after it) built in ``folder``."""
    shape = tuple(int(n) for n in shape)
    chunks = _check_create(path, shape, axes, compression, chunks)
    group = zarr.open_group(store=str(folder), mode="w", zarr_format=ZARR_FORMAT)
    return OmeZarrWriter(group, path, shape, np.dtype(dtype), axes, pixel_size_um,
                         None if channel_names is None else list(channel_names),
                         compression, chunks, max_side, "mean")


def write_ome_zarr(
    path: Path,
    data: np.ndarray,
    axes: str,
    pixel_size_um: tuple[float, ...] | None,
    channel_names: list[str] | None,
    compression: str | None,
    *,
    max_side: int | None = 1024,
    labels: dict[str, np.ndarray] | None = None,
) -> None:
    """Write an NGFF 0.4 image (zarr format 2) with its pyramid, and label images, atomically.

    Parameters
    ----------
    path : pathlib.Path
        Destination directory; an existing one is replaced only after the new one is complete.
    data : numpy.ndarray
        Array with axes ``axes``.
    axes, pixel_size_um, channel_names, compression, max_side
        As for :func:`create_ome_zarr`.
    labels : dict of str to numpy.ndarray, optional
        Segmentations of the image by name (integer, the image's spatial shape), written as
        NGFF ``labels/<name>`` (:func:`cytogen.io.ome_zarr_labels.write_ome_zarr_labels`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path) as tmp:
        writer = _image_writer(tmp, path, data.shape, data.dtype, axes, pixel_size_um,
                               channel_names, compression, None, max_side)
        step = writer.chunks[1]
        for a in range(0, data.shape[1], step):  # one chunk row at a time (bounded copies)
            writer.write(a, data[:, a:a + step])
        writer.finish()
        if labels:
            from cytogen.io.ome_zarr_labels import write_ome_zarr_labels

            for name, lab in labels.items():
                write_ome_zarr_labels(tmp, name, lab, compression=compression, max_side=max_side)
