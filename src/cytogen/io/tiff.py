"""TIFF reading (plain, OME, ImageJ) and OME-TIFF writing with :mod:`tifffile`.

Pixel size comes from, in order: OME-XML ``PhysicalSize{X,Y,Z}`` with their units; ImageJ
metadata (``unit``, ``spacing`` for z, and the X/YResolution tags); plain X/YResolution tags,
trusted only when ResolutionUnit is inch or centimetre and the size is between 0.001 and 100 um
(72 dpi defaults from image editors are ignored). Channel names come from OME ``Channel/@Name``
or ImageJ ``Labels``. Truncated files are detected (data past the end of the file, broken
offsets) and reported as :class:`~cytogen.errors.CytogenError`.
"""

from __future__ import annotations

import logging
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from cytogen.errors import CytogenError
from cytogen.io._common import RawImage, unit_to_um
from cytogen.io.atomic import atomic_file

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
    with atomic_file(path) as tmp, open(tmp, "xb") as fh:
        tifffile.imwrite(
            fh, data, ome=True, photometric="minisblack", compression=compression,
            metadata=metadata, **extra,
        )
