"""Read and write microscopy images with explicit axes and physical pixel size.

Every image in cytogen is an :class:`Image`: a numpy array with axes ``"CYX"`` (2D) or
``"CZYX"`` (3D), its pixel size in micrometres and its channel names. Supported formats, chosen
by suffix (case-insensitive):

- ``.tif`` / ``.tiff`` / ``.ome.tif`` / ``.ome.tiff``: plain, OME and ImageJ TIFF (written as
  OME-TIFF);
- ``.png``: 2D, grey (1 channel), grey+alpha (2), RGB (3) or RGBA (4), 8 or 16 bit;
- ``.zarr`` / ``.ome.zarr`` directories: OME-Zarr (see :mod:`cytogen.io.ome_zarr`).

Axes of TIFF files come from tifffile's series axes: C and S (samples, e.g. RGB) are channels,
Z is z; T of size 1 is dropped and longer time series are refused. One extra unknown axis in
front of Y and X (tifffile's ``Q`` or ``I``, as in a plain multi-page TIFF) is read as **Z**
(a single-channel stack); pass ``axes=`` (e.g. ``axes="CYX"``) when it really holds channels.
A z-stack with a single plane reads back as 2D. Sources can be named with a channel pick,
``"path/to/file.tif#c=2"`` (see :func:`parse_source_spec`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np

from cytogen.errors import CytogenError
from cytogen.io._common import RawImage, canonicalize
from cytogen.io.atomic import atomic_file
from cytogen.io.ome_zarr import read_ome_zarr, write_ome_zarr
from cytogen.io.tiff import read_tiff, write_tiff

SUPPORTED_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".png", ".zarr", ".ome.zarr")
COMPRESSIONS = (None, "zlib", "zstd")


@dataclass
class Image:
    """An image with explicit axes and physical metadata.

    Attributes
    ----------
    data : numpy.ndarray
        Pixel values with axes ``axes``; the dtype is the file's.
    axes : str
        ``"CYX"`` or ``"CZYX"``.
    pixel_size_um : tuple of float or None
        Pixel size in micrometres per spatial axis, ``(y, x)`` or ``(z, y, x)``; None if unknown.
    channel_names : list of str or None
        One name per channel, or None.
    """

    data: np.ndarray
    axes: str
    pixel_size_um: tuple[float, ...] | None = None
    channel_names: list[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, np.ndarray):
            self.data = np.asarray(self.data)
        if self.axes not in ("CYX", "CZYX"):
            raise CytogenError(f"Image axes must be 'CYX' or 'CZYX', got {self.axes!r}.")
        if self.data.ndim != len(self.axes):
            raise CytogenError(
                f"Image data has shape {self.data.shape} ({self.data.ndim} axes) but axes "
                f"{self.axes!r} need {len(self.axes)}; add or remove the channel/z axis."
            )
        if self.pixel_size_um is not None:
            sizes = tuple(float(s) for s in self.pixel_size_um)
            if len(sizes) != self.ndim_spatial or not all(np.isfinite(s) and s > 0 for s in sizes):
                raise CytogenError(
                    f"pixel_size_um={self.pixel_size_um!r} must hold {self.ndim_spatial} positive "
                    f"sizes in micrometres (one per axis of {self.axes[1:]}) or be None."
                )
            self.pixel_size_um = sizes
        if self.channel_names is not None:
            self.channel_names = [str(n) for n in self.channel_names]
            if len(self.channel_names) != self.data.shape[0]:
                raise CytogenError(
                    f"{len(self.channel_names)} channel names {self.channel_names} given for an "
                    f"image with {self.data.shape[0]} channels; give one name per channel or None."
                )

    @property
    def ndim_spatial(self) -> int:
        """Number of spatial axes: 2 or 3."""
        return len(self.axes) - 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the channel axis: ``(Y, X)`` or ``(Z, Y, X)``."""
        return tuple(self.data.shape[1:])


# ----------------------------------------------------------------------------------- formats
def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith(".png"):
        return "png"
    if name.endswith(".zarr"):
        return "zarr"
    if path.is_dir() and any((path / m).exists() for m in (".zgroup", ".zarray", "zarr.json")):
        return "zarr"
    raise CytogenError(
        f"{path}: unsupported file type '{''.join(path.suffixes) or path.name}'. Supported: "
        f"{', '.join(SUPPORTED_SUFFIXES)}; convert the image (e.g. in Fiji: Save As > Tiff)."
    )


def _check_readable(path: Path, fmt: str) -> None:
    if not path.exists():
        raise CytogenError(
            f"{path}: file does not exist (looked at {path.absolute()}); check the path and "
            "the working directory."
        )
    if fmt == "zarr":
        if not path.is_dir():
            raise CytogenError(f"{path}: a .zarr image must be a folder, but this is a file.")
        return
    if path.is_dir():
        raise CytogenError(f"{path}: is a folder, not an image file; name a file inside it.")
    if path.stat().st_size == 0:
        raise CytogenError(
            f"{path}: the file is empty (0 bytes), probably an interrupted copy or export; "
            "copy or export it again."
        )


# --------------------------------------------------------------------------------------- PNG
def _read_png(path: Path) -> RawImage:
    try:
        data = imagecodecs.png_decode(path.read_bytes())
    except Exception as exc:
        raise CytogenError(
            f"{path}: cannot be read as PNG: {type(exc).__name__}: {exc}; is it complete? "
            "Copy or export it again."
        ) from exc
    return RawImage(np.asarray(data), "YX" if data.ndim == 2 else "YXS")


def _write_png(path: Path, image: Image) -> None:
    n_c = image.data.shape[0]
    if image.ndim_spatial != 2 or n_c not in (1, 3, 4) or image.data.dtype not in (
        np.uint8, np.uint16,
    ):
        raise CytogenError(
            f"{path}: PNG can hold only 2D images with 1, 3 or 4 channels of uint8/uint16; this "
            f"image is {image.axes} {image.data.shape} {image.data.dtype}. Write a .tif instead "
            "(it keeps any shape, dtype and the pixel size)."
        )
    pixels = image.data[0] if n_c == 1 else np.moveaxis(image.data, 0, -1)
    encoded = imagecodecs.png_encode(np.ascontiguousarray(pixels))
    with atomic_file(path) as tmp, open(tmp, "xb") as fh:
        fh.write(encoded)


# ------------------------------------------------------------------------------------ public
def read_image(path: str | Path, *, channel: int | None = None, axes: str | None = None) -> Image:
    """Read a TIFF, PNG or OME-Zarr image as ``CYX`` / ``CZYX``.

    Parameters
    ----------
    path : str or pathlib.Path
        Image file (``.tif``, ``.tiff``, ``.ome.tif``, ``.ome.tiff``, ``.png``) or OME-Zarr
        folder (``.zarr``, ``.ome.zarr``).
    channel : int, optional
        Keep only this channel (0-based); the result has one channel.
    axes : str, optional
        One letter per *stored* axis (after tifffile drops size-1 axes), e.g. ``"CYX"`` for a
        plain multi-page TIFF whose pages are channels; overrides what the file says.

    Returns
    -------
    Image
        Data in the file's dtype (native byte order), pixel size in um when the file records it
        (OME, ImageJ, plausible resolution tags, NGFF units), channel names when named.

    Raises
    ------
    CytogenError
        Missing, empty, truncated or unsupported files; ambiguous axes; time series; empty
        images; a channel index out of range.
    """
    path = Path(path).expanduser()
    fmt = _format_of(path)
    _check_readable(path, fmt)
    raw = {"tiff": read_tiff, "png": _read_png, "zarr": read_ome_zarr}[fmt](path)
    data, canon_axes, pixel, names = canonicalize(raw, path, axes)
    if channel is not None:
        n_c = data.shape[0]
        if not isinstance(channel, (int, np.integer)) or not 0 <= channel < n_c:
            raise CytogenError(
                f"{path}: channel {channel!r} does not exist; the file has {n_c} channel(s), "
                f"numbered 0 to {n_c - 1}" + (f" ({', '.join(names)})" if names else "") + "."
            )
        data = np.ascontiguousarray(data[channel : channel + 1])
        names = [names[channel]] if names else None
    return Image(data, canon_axes, pixel, names)


def write_image(path: str | Path, image: Image, *, compression: str | None = "zlib") -> Path:
    """Write an image atomically as OME-TIFF, PNG or OME-Zarr (chosen by suffix).

    TIFF files are always OME-TIFF (data, dtype, axes, pixel size and channel names round-trip
    through :func:`read_image`). PNG keeps only the pixels. OME-Zarr is NGFF v0.4, zarr format 2.
    The data goes to a temporary name in the destination folder first; an existing destination
    is replaced only once the new file/folder is complete. Missing parent folders are created.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination.
    image : Image
        What to write. Boolean data is written as uint8.
    compression : {"zlib", "zstd", None}, default "zlib"
        Lossless compression for TIFF and Zarr; ignored for PNG (always deflate).

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    CytogenError
        Unsupported suffix or compression, empty image, data PNG cannot hold, destination is
        an existing folder (for files).
    """
    path = Path(path).expanduser()
    if not isinstance(image, Image):
        raise CytogenError(f"{path}: write_image needs an Image, got {type(image).__name__}.")
    fmt = _format_of(path)
    if compression not in COMPRESSIONS:
        raise CytogenError(
            f"{path}: unknown compression {compression!r}; use one of {COMPRESSIONS}."
        )
    if 0 in image.data.shape:
        raise CytogenError(
            f"{path}: refusing to write an empty image (shape {image.data.shape}, axes "
            f"{image.axes}); check the crop or selection that produced it."
        )
    if image.data.dtype.kind not in "buif":
        raise CytogenError(
            f"{path}: cannot write {image.data.dtype} pixels; convert to an integer or float "
            "dtype first."
        )
    if image.data.dtype == bool:
        image = Image(image.data.astype(np.uint8), image.axes, image.pixel_size_um,
                      image.channel_names)
    if fmt != "zarr" and path.is_dir():
        raise CytogenError(f"{path}: is an existing folder; choose a file name for the image.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "tiff":
        write_tiff(path, image.data, image.axes, image.pixel_size_um, image.channel_names,
                   compression)
    elif fmt == "png":
        _write_png(path, image)
    else:
        write_ome_zarr(path, image.data, image.axes, image.pixel_size_um, image.channel_names,
                       compression)
    return path


_SPEC = re.compile(r"^(?P<path>.*)#c=(?P<channel>[^#]*)$")


def parse_source_spec(spec: str) -> tuple[Path, int | None]:
    """Split ``"path#c=K"`` into the path and the 0-based channel index.

    Parameters
    ----------
    spec : str
        ``"dir/a.tif#c=2"`` or a plain path ``"a.tif"``. A ``#`` not followed by ``c=`` is
        part of the file name.

    Returns
    -------
    tuple of (pathlib.Path, int or None)
        ``(Path("dir/a.tif"), 2)`` or ``(Path("a.tif"), None)``.

    Raises
    ------
    CytogenError
        Empty spec, empty path or a channel that is not a non-negative integer.
    """
    text = str(spec).strip()
    match = _SPEC.match(text)
    path_text, channel = (match["path"], match["channel"].strip()) if match else (text, None)
    if not path_text.strip():
        raise CytogenError(f"Image source {spec!r} names no file; write e.g. 'images/a.tif#c=0'.")
    if channel is None:
        return Path(path_text), None
    if not channel.isdigit():
        raise CytogenError(
            f"Image source {spec!r}: channel {channel!r} after '#c=' must be a non-negative "
            "integer (0 = first channel), e.g. 'a.tif#c=1'."
        )
    return Path(path_text), int(channel)


def read_spec(spec: str, base_dir: Path | None = None) -> Image:
    """Read an image named by a source spec (``"path#c=K"``).

    Parameters
    ----------
    spec : str
        See :func:`parse_source_spec`.
    base_dir : pathlib.Path, optional
        Folder that relative paths are resolved against (e.g. a manifest's folder).

    Returns
    -------
    Image
        The image, reduced to channel K when the spec picks one.
    """
    path, channel = parse_source_spec(spec)
    path = path.expanduser()
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return read_image(path, channel=channel)


def stacked_metadata(images: list[Any]) -> tuple[tuple[float, ...] | None, list[str] | None]:
    """Check that images can be stacked as channels; their joint pixel size and channel names.

    Parameters
    ----------
    images : list
        Objects with ``axes``, ``spatial_shape``, ``pixel_size_um``, ``channel_names`` and
        ``data.shape`` (:class:`Image`, or lazily opened images).

    Returns
    -------
    pixel_size_um : tuple of float or None
        The first known pixel size.
    channel_names : list of str or None
        Names concatenated (unnamed ones become ``"channel_K"`` when any is named), else None.

    Raises
    ------
    CytogenError
        See :func:`stack_channels`.
    """
    if not images:
        raise CytogenError("stack_channels needs at least one image; got an empty list.")
    first = images[0]
    for k, im in enumerate(images[1:], start=1):
        if im.axes != first.axes or im.spatial_shape != first.spatial_shape:
            raise CytogenError(
                f"Cannot stack channels: image 0 has spatial shape {first.spatial_shape} "
                f"({first.axes}) but image {k} has {im.spatial_shape} ({im.axes}); all "
                "channels of one field must have the same size (crop or resample them first)."
            )
    known = [im.pixel_size_um for im in images if im.pixel_size_um is not None]
    for other in known[1:]:
        if not np.allclose(other, known[0], rtol=0.01, atol=0.0):
            raise CytogenError(
                f"Cannot stack channels with different pixel sizes {known[0]} and {other} um; "
                "resample the images to one pixel size first."
            )
    names = None
    if any(im.channel_names for im in images):
        names = []
        for im in images:
            n_c = im.data.shape[0]
            names += im.channel_names or [f"channel_{len(names) + i}" for i in range(n_c)]
    return (known[0] if known else None), names


def stack_channels(images: list[Image]) -> Image:
    """Concatenate images along the channel axis.

    Parameters
    ----------
    images : list of Image
        Images with identical axes and spatial shape. Different dtypes are promoted with
        :func:`numpy.result_type` (e.g. uint8 + uint16 -> uint16).

    Returns
    -------
    Image
        Channels in order; names concatenated (unnamed ones become ``"channel_K"`` when any is
        named, else None); the first known pixel size.

    Raises
    ------
    CytogenError
        No images, different spatial shapes (both named), or known pixel sizes that differ by
        more than 1%.
    """
    pixel, names = stacked_metadata(images)
    dtype = np.result_type(*[im.data.dtype for im in images])
    data = np.concatenate([im.data.astype(dtype, copy=False) for im in images], axis=0)
    return Image(data, images[0].axes, pixel, names)
