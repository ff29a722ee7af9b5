"""TIFF reading (plain, OME, ImageJ) and OME-TIFF writing with :mod:`tifffile`.

Pixel size comes from, in order: OME-XML ``PhysicalSize{X,Y,Z}`` with their units; ImageJ
metadata (``unit``, ``spacing`` for z, and the X/YResolution tags); plain X/YResolution tags,
trusted only when ResolutionUnit is inch or centimetre and the size is between 0.001 and 100 um
(72 dpi defaults from image editors are ignored). Channel names come from OME ``Channel/@Name``
or ImageJ ``Labels``. Truncated files are detected (data past the end of the file, broken
offsets) and reported as :class:`~cytogen.errors.CytogenError`.

:func:`create_tiff` writes an OME-TIFF row block by row block in bounded memory (streamed
prediction): rows go to a raw spool file next to the destination, and the OME-TIFF is then
written from it one band of tiles at a time.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from cytogen.errors import CytogenError
from cytogen.io._common import RawImage, check_row_block, unit_to_um
from cytogen.io.atomic import atomic_file, temp_sibling

_PLAUSIBLE_UM = (0.001, 100.0)  # pixel sizes outside this range in plain TIFF tags are ignored


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome_metadata(xml: str | None) -> tuple[dict[str, float], list[str] | None]:
    try:
        root = ET.fromstring(xml or "")
    except (ET.ParseError, ValueError):
        return {}, None
    pixels = next((el for el in root.iter() if _local(el.tag) == "Pixels"), None)
    if pixels is None:
        return {}, None
    sizes = {}
    for letter in "XYZ":
        value = pixels.get(f"PhysicalSize{letter}")
        factor = unit_to_um(pixels.get(f"PhysicalSize{letter}Unit", "µm"))
        try:
            if value is not None and factor is not None:
                sizes[letter] = float(value) * factor
        except ValueError:
            pass
    names = [ch.get("Name") for ch in pixels if _local(ch.tag) == "Channel"]
    return sizes, (names if names and all(names) else None)


def _tag_pixel_size(page: Any, factor: float) -> dict[str, float]:
    sizes = {}
    for letter in "XY":
        tag = page.tags.get(f"{letter}Resolution")
        num, den = tag.value if tag is not None else (0, 0)
        if num and den:
            sizes[letter] = factor * den / num
    return sizes if len(sizes) == 2 else {}


def _imagej_metadata(tif: tifffile.TiffFile, page: Any) -> tuple[dict[str, float], list | None]:
    md = tif.imagej_metadata or {}
    sizes: dict[str, float] = {}
    factor = unit_to_um(md.get("unit"))
    if factor is not None:
        sizes = _tag_pixel_size(page, factor)
        if sizes and md.get("spacing"):
            sizes["Z"] = float(md["spacing"]) * factor
    labels, n_c, n_z = md.get("Labels"), int(md.get("channels", 1)), int(md.get("slices", 1))
    names = None
    if isinstance(labels, list) and labels:
        if len(labels) == n_c:
            names = labels
        elif len(labels) == n_c * n_z and all(
            labels[z * n_c : (z + 1) * n_c] == labels[:n_c] for z in range(n_z)
        ):
            names = labels[:n_c]  # ImageJ labels each slice; keep them if constant along z
    return sizes, names


def _tiff_metadata(tif: tifffile.TiffFile, page: Any) -> tuple[dict[str, float], list | None]:
    sizes: dict[str, float] = {}
    names = None
    if tif.is_ome:
        sizes, names = _ome_metadata(tif.ome_metadata)
    if tif.is_imagej:
        ij_sizes, ij_names = _imagej_metadata(tif, page)
        sizes, names = sizes or ij_sizes, names or ij_names
    if not sizes:  # plain resolution tags: trusted only in real units and at microscope scale
        unit = page.tags.get("ResolutionUnit")
        factor = {2: 25400.0, 3: 10000.0}.get(int(unit.value) if unit is not None else 1)
        tagged = _tag_pixel_size(page, factor) if factor else {}
        if all(_PLAUSIBLE_UM[0] <= s <= _PLAUSIBLE_UM[1] for s in tagged.values()):
            sizes = tagged
    return sizes, names


def unreadable_tiff(path: Path, exc: Exception) -> CytogenError:
    """The error for a TIFF that tifffile cannot parse."""
    return CytogenError(
        f"{path}: cannot be read as TIFF: {type(exc).__name__}: {exc}; is it complete? "
        "Copy or export it again."
    )


def first_series(tif: tifffile.TiffFile, path: Path) -> tuple[Any, dict[str, float], list | None]:
    """The first image series of an open TIFF, checked for missing or truncated planes.

    Parameters
    ----------
    tif : tifffile.TiffFile
        The open file.
    path : pathlib.Path
        The file, for messages.

    Returns
    -------
    series : tifffile.TiffPageSeries
        The first series (a warning says when there are more).
    sizes_um : dict of str to float
        Pixel size per spatial letter, when known.
    channel_names : list of str or None
        Channel names, when the file names them.

    Raises
    ------
    CytogenError
        When the file holds no image, planes are missing or data runs past the end of the file.
    """
    if not tif.series:
        raise CytogenError(f"{path}: the TIFF holds no image; export it again.")
    if len(tif.series) > 1:
        warnings.warn(
            f"{path}: holds {len(tif.series)} image series; reading only the first.",
            stacklevel=4,
        )
    series = tif.series[0]
    for page in series.pages:
        if page is None:
            raise CytogenError(
                f"{path}: image planes are missing from the file (a multi-file OME-TIFF "
                "needs all its files in the same folder); is it complete?"
            )
        size = page.parent.filehandle.size
        if any(o + n > size for o, n in zip(page.dataoffsets, page.databytecounts)):
            raise CytogenError(
                f"{path}: cannot be read as TIFF: image data runs past the end of the "
                f"file ({size} bytes); is it complete? Copy or export it again."
            )
    sizes, names = _tiff_metadata(tif, series.keyframe)
    return series, sizes, names


def read_tiff(path: Path) -> RawImage:
    """Read the first series of a TIFF as stored, with its pixel sizes and channel names.

    Parameters
    ----------
    path : pathlib.Path
        A plain, OME or ImageJ TIFF.

    Returns
    -------
    RawImage
        The array with tifffile's series axes (size-1 axes already squeezed).

    Raises
    ------
    CytogenError
        When the file cannot be parsed, is truncated or holds no image.
    """
    collect = _Collect()
    log = logging.getLogger("tifffile")
    log.addHandler(collect)
    try:
        with tifffile.TiffFile(path) as tif:
            series, sizes, names = first_series(tif, path)
            data = series.asarray()
            axes = series.axes
    except CytogenError:
        raise
    except Exception as exc:
        raise unreadable_tiff(path, exc) from exc
    finally:
        log.removeHandler(collect)
    damaged = [m for m in collect.messages if "invalid" in m and "offset" in m]
    if damaged:
        raise CytogenError(
            f"{path}: cannot be read as TIFF: {damaged[0]}; is it complete? The file looks "
            "truncated; copy or export it again."
        )
    return RawImage(data, axes, sizes, names)


def write_tiff(
    path: Path,
    data: np.ndarray,
    axes: str,
    pixel_size_um: tuple[float, ...] | None,
    channel_names: list[str] | None,
    compression: str | None,
) -> None:
    """Write an OME-TIFF atomically (temporary file in the same folder, then rename).

    Parameters
    ----------
    path : pathlib.Path
        Destination file.
    data : numpy.ndarray
        Array with axes ``axes``.
    axes : str
        ``"CYX"`` or ``"CZYX"``.
    pixel_size_um : tuple of float or None
        Pixel size per spatial axis; stored as OME ``PhysicalSize*`` in µm and as resolution
        tags in pixels per centimetre.
    channel_names : list of str or None
        Stored as OME ``Channel/@Name``.
    compression : {"zlib", "zstd", None}
        TIFF compression.
    """
    with atomic_file(path) as tmp, open(tmp, "xb") as fh:
        tifffile.imwrite(fh, data, compression=compression,
                         **_ome_options(axes, pixel_size_um, channel_names))


def _ome_options(axes: str, pixel_size_um: tuple[float, ...] | None,
                 channel_names: list[str] | None) -> dict[str, Any]:
    """The ``tifffile.imwrite`` arguments of cytogen's OME-TIFFs: axes, pixel size, names.

    Pixel size goes to OME ``PhysicalSize*`` in µm and to resolution tags in pixels per
    centimetre (for non-OME readers); channel names to OME ``Channel/@Name``.
    """
    metadata: dict[str, Any] = {"axes": axes}
    extra: dict[str, Any] = {}
    if pixel_size_um is not None:
        for letter, size in zip(axes[1:], pixel_size_um):
            metadata[f"PhysicalSize{letter}"] = float(size)
            metadata[f"PhysicalSize{letter}Unit"] = "µm"
        y, x = pixel_size_um[-2:]  # also as resolution tags, for non-OME readers
        extra = {"resolution": (1e4 / x, 1e4 / y), "resolutionunit": "CENTIMETER"}
    if channel_names is not None:
        metadata["Channel"] = {"Name": list(channel_names)}
    return {"ome": True, "photometric": "minisblack", "metadata": metadata, **extra}


#: Largest TIFF tile side of :func:`create_tiff` (pixels; tifffile needs multiples of 16).
STREAM_TILE = 256
_ENCODE_BUFFER = 1 << 24  # bytes of tiles tifffile gathers per batch of parallel encoding


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class TiffRowWriter:
    """Rows of an image spooled to a raw file, then written as OME-TIFF pages tile by tile.

    Made by :func:`create_tiff`; call :meth:`write` with consecutive row blocks. The spool
    holds the image channel-major (``C x rows x rest``), so each TIFF page (one channel, or
    one channel and Z plane) can be read back in bands of tile rows with plain file reads:
    neither the rows written nor the pages read are ever whole in memory (no memory map, so
    the resident size does not grow with the file either).
    """

    def __init__(self, path: Path, spool: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype = path, shape, dtype
        self._fd = spool
        self.rows_written = 0
        self._row_bytes = math.prod(shape[2:]) * dtype.itemsize
        y, x = shape[-2:]
        self.tile = tuple(min(STREAM_TILE, 16 * math.ceil(n / 16)) for n in (y, x))

    def write(self, start: int, block: np.ndarray) -> None:
        """Store rows ``[start, start + block.shape[1])`` along the first spatial axis.

        Parameters
        ----------
        start : int
            First row (Z plane for 3D); must follow the rows written so far.
        block : numpy.ndarray
            ``(C, rows, *rest)`` with the image's channel count and other spatial sizes.
        """
        block = np.asarray(block)
        rows = check_row_block(self.path, self.shape, block, start, self.rows_written)
        for c in range(self.shape[0]):
            rows_c = np.ascontiguousarray(block[c], dtype=self.dtype)
            offset = (c * self.shape[1] + start) * self._row_bytes
            _pwrite_all(self._fd, memoryview(rows_c).cast("B"), offset)
        self.rows_written += rows

    def _tiles(self) -> Iterator[np.ndarray]:
        """Every tile of every page, in file order, read one band of tile rows at a time.

        One band buffer is reused; tiles are yielded as copies (tifffile may hold several
        while it encodes them in parallel).
        """
        y, x = self.shape[-2:]
        th, tw = self.tile
        page_bytes = y * x * self.dtype.itemsize
        buffer = np.empty((min(th, y), x), self.dtype)
        for page in range(math.prod(self.shape[:-2])):
            for y0 in range(0, y, th):
                band = buffer[:min(th, y - y0)]
                view = memoryview(band).cast("B")
                offset, got = page * page_bytes + y0 * x * self.dtype.itemsize, 0
                while got < len(view):
                    n = os.preadv(self._fd, [view[got:]], offset + got)
                    if n == 0:
                        raise OSError(f"{self.path}: the row spool ended early")
                    got += n
                for x0 in range(0, x, tw):
                    yield band[:, x0:x0 + tw].copy()

    def finish(self, target: Path, axes: str, pixel_size_um: tuple[float, ...] | None,
               channel_names: list[str] | None, compression: str | None) -> None:
        """Write the complete image from the spool to ``target`` (an OME-TIFF)."""
        if self.rows_written != self.shape[1]:
            raise ValueError(f"{self.path}: only {self.rows_written} of {self.shape[1]} rows "
                             "were written; the image is incomplete")
        with open(target, "xb") as fh:
            tifffile.imwrite(fh, self._tiles(), shape=self.shape, dtype=self.dtype,
                             tile=self.tile, compression=compression,
                             buffersize=_ENCODE_BUFFER,
                             **_ome_options(axes, pixel_size_um, channel_names))


@contextmanager
def create_tiff(
    path: Path,
    shape: tuple[int, ...],
    dtype: Any,
    axes: str,
    pixel_size_um: tuple[float, ...] | None,
    channel_names: list[str] | None,
    compression: str | None = "zlib",
) -> Iterator[TiffRowWriter]:
    """Create an OME-TIFF to be filled row block by row block, in bounded memory, atomically.

    The file has the metadata of :func:`write_tiff` (axes, pixel size, channel names; it reads
    back like one written by :func:`cytogen.io.images.write_image`) and is tiled
    (:data:`STREAM_TILE` pixels). TIFF stores one page per channel (and Z plane), so rows that
    arrive for all channels at once are first spooled to a hidden raw file next to ``path``
    (as large as the uncompressed image); when the ``with`` block ends with every row written,
    the OME-TIFF is written from the spool one band of tile rows at a time into a hidden
    temporary file, which is then renamed onto ``path``. On an exception neither file is left
    and an existing ``path`` is untouched. Memory: one band of tile rows (plus tifffile's
    encoding buffer of 16 MiB), whatever the image size.

    Parameters
    ----------
    path : pathlib.Path
        Destination ``.tif`` / ``.tiff``; missing parent folders are created.
    shape : tuple of int
        ``(C, Y, X)`` or ``(C, Z, Y, X)``.
    dtype : numpy dtype-like
        Stored dtype (integer or float).
    axes : str
        ``"CYX"`` or ``"CZYX"``.
    pixel_size_um : tuple of float or None
        Pixel size per spatial axis.
    channel_names : list of str or None
        One name per channel.
    compression : {"zlib", "zstd", None}, default "zlib"
        Tile compression.

    Yields
    ------
    TiffRowWriter
        Call ``writer.write(start, block)`` with consecutive blocks ``(C, rows, ...)`` along
        the first spatial axis (Y in 2D, Z in 3D).

    Raises
    ------
    CytogenError
        Bad shape, axes, dtype or compression, or ``path`` is an existing folder.
    """
    path = Path(path)
    shape = tuple(int(n) for n in shape)
    dtype = np.dtype(dtype)
    if axes not in ("CYX", "CZYX") or len(shape) != len(axes) or min(shape) < 1:
        raise CytogenError(f"{path}: cannot create an image of shape {shape} with axes {axes!r}; "
                           "give a non-empty (C, Y, X) or (C, Z, Y, X) shape")
    if dtype.kind not in "buif":
        raise CytogenError(f"{path}: cannot write {dtype} pixels; use an integer or float dtype")
    if compression not in (None, "zlib", "zstd"):
        raise CytogenError(f"{path}: unknown compression {compression!r}; use zlib, zstd or None")
    if channel_names is not None and len(channel_names) != shape[0]:
        raise CytogenError(f"{path}: {len(channel_names)} channel names for {shape[0]} channels")
    if path.is_dir():
        raise CytogenError(f"{path}: is an existing folder; choose a file name for the image.")
    path.parent.mkdir(parents=True, exist_ok=True)
    spool = temp_sibling(path, "rows")
    fd = os.open(spool, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        writer = TiffRowWriter(path, fd, shape, dtype)
        yield writer
        with atomic_file(path) as tmp:
            writer.finish(tmp, axes, pixel_size_um, channel_names, compression)
    finally:
        os.close(fd)
        spool.unlink(missing_ok=True)
