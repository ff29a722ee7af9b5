"""OME-Zarr (OME-NGFF) reading and writing with plain :mod:`zarr`.

Reads NGFF v0.4 (zarr format 2, metadata in ``.zattrs``) and v0.5 (zarr format 3, metadata
under the ``"ome"`` attribute) images, highest resolution level only; also a
``bioformats2raw`` root (first image) and a bare zarr array (axes guessed as for a TIFF without
metadata). :func:`open_ome_zarr` gives the same without reading pixels. Writes NGFF v0.4 with
``zarr_format=2``: one ``multiscales`` entry with ``c`` and ``z``/``y``/``x`` axes (unit
``micrometer`` when the pixel size is known), a single dataset ``"0"`` with a ``scale``
transform and ``omero.channels[].label`` for channel names; :func:`create_ome_zarr` writes
such an image row by row (streaming), :func:`write_ome_zarr` a whole array at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from cytogen.errors import CytogenError
from cytogen.io._common import RawImage, check_row_block, unit_to_um
from cytogen.io.atomic import atomic_dir


def _guess_axes(ndim: int) -> str:
    # No axis metadata: YX last, unknown ("Q") in front, resolved like a TIFF without metadata.
    return "Q" * max(ndim - 2, 0) + "YX"[-min(ndim, 2):]


def _axis_letter(entry: Any) -> tuple[str, str | None]:
    if isinstance(entry, str):
        name, kind, unit = entry.lower(), None, None
    else:
        name = str(entry.get("name", "")).lower()
        kind, unit = entry.get("type"), entry.get("unit")
    if kind == "channel" or name in ("c", "ch", "channel"):
        return "C", None
    if kind == "time" or name == "t":
        return "T", None
    if name in ("z", "y", "x"):
        return name.upper(), unit
    return "Q", None


def _scale(transforms: list[dict] | None, ndim: int) -> list[float]:
    scale = [1.0] * ndim
    for t in transforms or []:
        if t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
            scale = [a * float(b) for a, b in zip(scale, t["scale"])]
    return scale


def _ome(node: Any) -> dict[str, Any]:
    attrs = dict(node.attrs)
    return dict(attrs.get("ome", attrs))  # v0.5 nests everything under "ome"


def _image_group(path: Path) -> tuple[Any, dict[str, Any]]:
    """The zarr group of the image at ``path`` (first image of a bioformats2raw root) and its
    first ``multiscales`` entry; raises :class:`CytogenError` when there is none."""
    node = zarr.open_group(store=str(path), mode="r")
    ome = _ome(node)
    if "multiscales" not in ome and "bioformats2raw.layout" in ome and "0" in node:
        node = node["0"]
        ome = _ome(node)
    multiscales = ome.get("multiscales")
    if not multiscales:
        raise CytogenError(
            f"{path}: this zarr group has no 'multiscales' metadata, so it is not an "
            "OME-Zarr image. Point at the image group inside it (the folder whose .zattrs "
            "or zarr.json has 'multiscales'), or convert the data to OME-Zarr."
        )
    return node, ome


def open_ome_zarr_levels(path: Path) -> list[zarr.Array]:
    """Every resolution level of an OME-Zarr image, level 0 (full resolution) first.

    Parameters
    ----------
    path : pathlib.Path
        The image group (``.ome.zarr`` folder, a label image ``IMAGE.ome.zarr/labels/NAME``,
        or a bioformats2raw root, whose first image is used).

    Returns
    -------
    list of zarr.Array
        The arrays of the first ``multiscales`` entry's ``datasets``, in their order (NGFF:
        largest first), opened read-only without reading pixels.

    Raises
    ------
    CytogenError
        When the folder is not a readable OME-Zarr image group.
    """
    path = Path(path)
    try:
        node, ome = _image_group(path)
        return [node[d["path"]] for d in ome["multiscales"][0]["datasets"]]
    except CytogenError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def list_ome_zarr_labels(path: Path) -> list[str]:
    """Names of the NGFF label images of an OME-Zarr image (``IMAGE/labels/<name>``).

    Parameters
    ----------
    path : pathlib.Path
        The image group (``.ome.zarr`` folder).

    Returns
    -------
    list of str
        The names the ``labels`` group lists (its ``"labels"`` attribute) whose group exists,
        in that order; empty when the image has no ``labels`` group. Open one with
        :func:`open_ome_zarr_levels` on ``path / "labels" / name``.

    Raises
    ------
    CytogenError
        When the folder is not a readable zarr group.
    """
    path = Path(path)
    try:
        node = zarr.open_group(store=str(path), mode="r")
        if "labels" not in node:
            return []
        group = node["labels"]
        names = _ome(group).get("labels") or []
        return [str(n) for n in names if str(n) in group]
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def open_ome_zarr(path: Path) -> RawImage:
    """Open level 0 of an OME-Zarr image (or a bare zarr array) without reading pixels.

    Parameters
    ----------
    path : pathlib.Path
        The ``.zarr`` / ``.ome.zarr`` directory.

    Returns
    -------
    RawImage
        Its ``data`` is the :class:`zarr.Array` itself (read on slicing), with the stored axis
        letters, pixel sizes (only for axes whose unit is a known length) and ``omero`` labels.

    Raises
    ------
    CytogenError
        When the directory is not a readable zarr store or holds no image.
    """
    try:
        node = zarr.open(store=str(path), mode="r")
        if isinstance(node, zarr.Array):
            return RawImage(node, _guess_axes(node.ndim))
        node, ome = _image_group(path)
        ms = ome["multiscales"][0]
        dataset = ms["datasets"][0]
        arr = node[dataset["path"]]
    except CytogenError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    ndim = arr.ndim
    axes_meta = ms.get("axes")
    if axes_meta and len(axes_meta) == ndim:
        parsed = [_axis_letter(a) for a in axes_meta]
    elif ndim == 5:  # NGFF <= 0.2 had no axes: always tczyx
        parsed = [(a, None) for a in "TCZYX"]
    else:
        parsed = [(a, None) for a in _guess_axes(ndim)]
    letters = "".join(a for a, _ in parsed)
    scale = _scale(dataset.get("coordinateTransformations"), ndim)
    scale = [a * b for a, b in zip(scale, _scale(ms.get("coordinateTransformations"), ndim))]
    sizes = {}
    for (letter, unit), s in zip(parsed, scale):
        factor = unit_to_um(unit)
        if letter in "ZYX" and factor is not None:
            sizes[letter] = s * factor
    channels = (ome.get("omero") or {}).get("channels") or []
    labels = [c.get("label") for c in channels if isinstance(c, dict)]
    names = labels if labels and all(isinstance(x, str) for x in labels) else None
    return RawImage(arr, letters, sizes, names)


def _unreadable(path: Path, exc: Exception) -> CytogenError:
    return CytogenError(
        f"{path}: cannot be read as OME-Zarr: {type(exc).__name__}: {exc}; is it a complete "
        ".zarr folder? Copy or export it again."
    )


def read_ome_zarr(path: Path) -> RawImage:
    """Read level 0 of an OME-Zarr image (or a bare zarr array) as stored.

    Parameters
    ----------
    path : pathlib.Path
        The ``.zarr`` / ``.ome.zarr`` directory.

    Returns
    -------
    RawImage
        The array with its stored axis letters, pixel sizes (only for axes whose unit is a
        known length) and ``omero`` channel labels.

    Raises
    ------
    CytogenError
        When the directory is not a readable zarr store or holds no image.
    """
    raw = open_ome_zarr(path)
    try:
        raw.data = np.asarray(raw.data[...])
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    return raw


def _compressor(compression: str | None) -> Any:
    if compression is None:
        return None
    return {"zlib": numcodecs.Zlib(level=6), "zstd": numcodecs.Zstd(level=3)}[compression]


def _omero(lo: np.ndarray, hi: np.ndarray, dtype: np.dtype, names: list[str]) -> dict[str, Any]:
    channels = []
    for k, name in enumerate(names):
        start, end = float(lo[k]), float(hi[k])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            full = (float(info.min), float(info.max))
        else:
            full = (start, end)
        channels.append({
            "label": name, "active": True, "color": "FFFFFF",
            "window": {"start": start, "end": end, "min": full[0], "max": full[1]},
        })
    return {"version": "0.4", "channels": channels, "rdefs": {"model": "greyscale"}}


def _multiscales(name: str, axes: str, pixel_size_um: tuple[float, ...] | None
                 ) -> list[dict[str, Any]]:
    spatial = axes[1:]
    axes_meta: list[dict[str, str]] = [{"name": "c", "type": "channel"}]
    for a in spatial:
        entry = {"name": a.lower(), "type": "space"}
        if pixel_size_um is not None:
            entry["unit"] = "micrometer"
        axes_meta.append(entry)
    sizes = [float(s) for s in pixel_size_um] if pixel_size_um else [1.0] * len(spatial)
    return [{
        "version": "0.4",
        "name": name,
        "axes": axes_meta,
        "datasets": [{
            "path": "0",
            "coordinateTransformations": [{"type": "scale", "scale": [1.0] + sizes}],
        }],
    }]


def _image_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class OmeZarrWriter:
    """Rows of one NGFF v0.4 image, written in order along the first spatial axis.

    Made by :func:`create_ome_zarr`; write with :meth:`write`. Rows that do not fill a whole
    chunk row are gathered in a buffer of one chunk row until it is full, so each chunk is
    written exactly once; per-channel minimum and maximum are kept as rows arrive for the
    ``omero`` display window.

    Attributes
    ----------
    path : pathlib.Path
        The final destination.
    shape : tuple of int
        Shape of the whole image, axes ``CYX`` or ``CZYX``.
    dtype : numpy.dtype
        Stored dtype; blocks are cast to it.
    chunks : tuple of int
        Chunk shape; ``chunks[1]`` rows are written at a time.
    rows_written : int
        Rows along axis 1 received so far.
    """

    def __init__(self, root: Path, path: Path, shape: tuple[int, ...], dtype: np.dtype,
                 axes: str, pixel_size_um: tuple[float, ...] | None,
                 channel_names: list[str] | None, compression: str | None,
                 chunks: tuple[int, ...]) -> None:
        self.path, self.shape, self.dtype, self.chunks = path, shape, dtype, chunks
        self._axes, self._pixel, self._names = axes, pixel_size_um, channel_names
        self._group = zarr.open_group(store=str(root), mode="w", zarr_format=2)
        self._array = self._group.create_array(
            "0", shape=shape, dtype=dtype, chunks=chunks, compressors=_compressor(compression),
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        self.rows_written = 0
        self._flushed = 0  # rows already in the array (a multiple of chunks[1] until the end)
        self._buf: np.ndarray | None = None
        self._lo = np.full(shape[0], np.inf)
        self._hi = np.full(shape[0], -np.inf)

    def write(self, start: int, block: np.ndarray) -> None:
        """Store rows ``[start, start + block.shape[1])`` of the image.

        Parameters
        ----------
        start : int
            First row along the first spatial axis; must follow the rows written so far.
        block : numpy.ndarray
            ``(C, rows, *rest)`` with the image's channel count and other spatial sizes.
        """
        block = np.asarray(block)
        rows = check_row_block(self.path, self.shape, block, start, self.rows_written)
        block = block.astype(self.dtype, copy=False)
        flat = block.reshape(block.shape[0], -1)
        self._lo = np.minimum(self._lo, flat.min(axis=1))
        self._hi = np.maximum(self._hi, flat.max(axis=1))
        h, pos = self.chunks[1], 0
        while pos < rows:
            held = self.rows_written - self._flushed
            if held == 0 and (rows - pos >= h or start + rows == self.shape[1]):
                n = rows - pos if start + rows == self.shape[1] else (rows - pos) // h * h
                self._array[:, self.rows_written:self.rows_written + n] = block[:, pos:pos + n]
                self._flushed += n
            else:  # gather rows in a one-chunk-row buffer until it is full or the image ends
                if self._buf is None:
                    self._buf = np.empty((self.shape[0], h, *self.shape[2:]), self.dtype)
                n = min(rows - pos, h - held)
                self._buf[:, held:held + n] = block[:, pos:pos + n]
                if held + n == h or self.rows_written + n == self.shape[1]:
                    self._array[:, self._flushed:self._flushed + held + n] = self._buf[:, :held + n]
                    self._flushed += held + n
            pos += n
            self.rows_written += n

    def finish(self) -> None:
        """Write the remaining rows and the metadata; refuses an incomplete image."""
        if self.rows_written != self.shape[1]:
            raise CytogenError(
                f"{self.path}: only {self.rows_written} of {self.shape[1]} rows were written; "
                "the image is incomplete and was not saved. Run the prediction again."
            )
        self._group.attrs["multiscales"] = _multiscales(_image_name(self.path), self._axes,
                                                        self._pixel)
        if self._names is not None:
            self._group.attrs["omero"] = _omero(self._lo, self._hi, self.dtype, self._names)


def _default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    caps = (32, 256, 256) if len(shape) == 4 else (1024, 1024)
    return (1,) + tuple(min(n, c) for n, c in zip(shape[1:], caps))


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
) -> Iterator[OmeZarrWriter]:
    """Create an NGFF v0.4 image (zarr format 2) to be filled row by row, atomically.

    The image is built in a hidden temporary folder next to ``path`` and renamed into place
    only when the ``with`` block ends without error and every row was written; otherwise the
    temporary folder is deleted and an existing ``path`` is left as it was.

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
        Chunk shape (clipped to ``shape``); default one channel and up to 1024 x 1024 pixels
        in 2D, 32 x 256 x 256 in 3D. Rows are buffered to whole chunk rows (``chunks[1]``).

    Yields
    ------
    OmeZarrWriter
        Call ``writer.write(start, block)`` with consecutive blocks of rows.
    """
    path = Path(path)
    shape = tuple(int(n) for n in shape)
    if axes not in ("CYX", "CZYX") or len(shape) != len(axes) or min(shape) < 1:
        raise CytogenError(f"{path}: cannot create an image of shape {shape} with axes {axes!r}; "
                           "give a non-empty (C, Y, X) or (C, Z, Y, X) shape")
    if compression not in (None, "zlib", "zstd"):
        raise CytogenError(f"{path}: unknown compression {compression!r}; use zlib, zstd or None")
    chunks = _default_chunks(shape) if chunks is None else tuple(
        max(1, min(int(c), n)) for c, n in zip(chunks, shape))
    if len(chunks) != len(shape):
        raise CytogenError(f"{path}: chunks {chunks} need one size per axis of {shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path) as tmp:
        writer = OmeZarrWriter(tmp, path, shape, np.dtype(dtype), axes, pixel_size_um,
                               None if channel_names is None else list(channel_names),
                               compression, chunks)
        yield writer
        writer.finish()


def write_ome_zarr(
    path: Path,
    data: np.ndarray,
    axes: str,
    pixel_size_um: tuple[float, ...] | None,
    channel_names: list[str] | None,
    compression: str | None,
) -> None:
    """Write an NGFF v0.4 image (zarr format 2) atomically.

    Parameters
    ----------
    path : pathlib.Path
        Destination directory; an existing one is replaced only after the new one is complete.
    data : numpy.ndarray
        Array with axes ``axes``.
    axes : str
        ``"CYX"`` or ``"CZYX"``.
    pixel_size_um : tuple of float or None
        Pixel size per spatial axis; when None the axes carry no unit and the scale is 1.
    channel_names : list of str or None
        Written as ``omero.channels[].label`` when given.
    compression : {"zlib", "zstd", None}
        Chunk compressor.
    """
    with create_ome_zarr(path, data.shape, data.dtype, axes, pixel_size_um, channel_names,
                         compression) as writer:
        writer.write(0, data)
