"""OME-Zarr (OME-NGFF) reading and writing with plain :mod:`zarr`.

Reads NGFF v0.4 (zarr format 2, metadata in ``.zattrs``) and v0.5 (zarr format 3, metadata
under the ``"ome"`` attribute) images, highest resolution level only; also a
``bioformats2raw`` root (first image) and a bare zarr array (axes guessed as for a TIFF without
metadata). Writes NGFF v0.4 with ``zarr_format=2``: one ``multiscales`` entry with ``c`` and
``z``/``y``/``x`` axes (unit ``micrometer`` when the pixel size is known), a single dataset
``"0"`` with a ``scale`` transform and ``omero.channels[].label`` for channel names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from cytogen.errors import CytogenError
from cytogen.io._common import RawImage, atomic_dir, unit_to_um


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
    try:
        node = zarr.open(store=str(path), mode="r")
        if isinstance(node, zarr.Array):
            return RawImage(np.asarray(node[...]), _guess_axes(node.ndim))
        ome = dict(node.attrs)
        ome = ome.get("ome", ome)  # v0.5 nests everything under "ome"
        if "multiscales" not in ome and "bioformats2raw.layout" in ome and "0" in node:
            node = node["0"]
            ome = dict(node.attrs)
            ome = ome.get("ome", ome)
        multiscales = ome.get("multiscales")
        if not multiscales:
            raise CytogenError(
                f"{path}: this zarr group has no 'multiscales' metadata, so it is not an "
                "OME-Zarr image. Point at the image group inside it (the folder whose .zattrs "
                "or zarr.json has 'multiscales'), or convert the data to OME-Zarr."
            )
        ms = multiscales[0]
        dataset = ms["datasets"][0]
        arr = node[dataset["path"]]
        data = np.asarray(arr[...])
    except CytogenError:
        raise
    except Exception as exc:
        raise CytogenError(
            f"{path}: cannot be read as OME-Zarr: {type(exc).__name__}: {exc}; is it a complete "
            ".zarr folder? Copy or export it again."
        ) from exc
    axes_meta = ms.get("axes")
    if axes_meta and len(axes_meta) == data.ndim:
        parsed = [_axis_letter(a) for a in axes_meta]
    elif data.ndim == 5:  # NGFF <= 0.2 had no axes: always tczyx
        parsed = [(a, None) for a in "TCZYX"]
    else:
        parsed = [(a, None) for a in _guess_axes(data.ndim)]
    letters = "".join(a for a, _ in parsed)
    scale = _scale(dataset.get("coordinateTransformations"), data.ndim)
    scale = [a * b for a, b in zip(scale, _scale(ms.get("coordinateTransformations"), data.ndim))]
    sizes = {}
    for (letter, unit), s in zip(parsed, scale):
        factor = unit_to_um(unit)
        if letter in "ZYX" and factor is not None:
            sizes[letter] = s * factor
    channels = (ome.get("omero") or {}).get("channels") or []
    labels = [c.get("label") for c in channels if isinstance(c, dict)]
    names = labels if labels and all(isinstance(x, str) for x in labels) else None
    return RawImage(data, letters, sizes, names)


def _compressor(compression: str | None) -> Any:
    if compression is None:
        return None
    return {"zlib": numcodecs.Zlib(level=6), "zstd": numcodecs.Zstd(level=3)}[compression]


def _omero(data: np.ndarray, names: list[str]) -> dict[str, Any]:
    channels = []
    for k, name in enumerate(names):
        lo, hi = float(data[k].min()), float(data[k].max())
        if np.issubdtype(data.dtype, np.integer):
            info = np.iinfo(data.dtype)
            full = (float(info.min), float(info.max))
        else:
            full = (lo, hi)
        channels.append({
            "label": name, "active": True, "color": "FFFFFF",
            "window": {"start": lo, "end": hi, "min": full[0], "max": full[1]},
        })
    return {"version": "0.4", "channels": channels, "rdefs": {"model": "greyscale"}}


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
    spatial = axes[1:]
    axes_meta: list[dict[str, str]] = [{"name": "c", "type": "channel"}]
    for a in spatial:
        entry = {"name": a.lower(), "type": "space"}
        if pixel_size_um is not None:
            entry["unit"] = "micrometer"
        axes_meta.append(entry)
    sizes = [float(s) for s in pixel_size_um] if pixel_size_um else [1.0] * len(spatial)
    name = path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    multiscales = [{
        "version": "0.4",
        "name": name,
        "axes": axes_meta,
        "datasets": [{
            "path": "0",
            "coordinateTransformations": [{"type": "scale", "scale": [1.0] + sizes}],
        }],
    }]
    caps = (32, 256, 256) if len(spatial) == 3 else (1024, 1024)
    chunks = (1,) + tuple(min(n, c) for n, c in zip(data.shape[1:], caps))
    with atomic_dir(path) as tmp:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=2)
        arr = group.create_array(
            "0", shape=data.shape, dtype=data.dtype, chunks=chunks,
            compressors=_compressor(compression),
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        arr[...] = data
        group.attrs["multiscales"] = multiscales
        if channel_names is not None:
            group.attrs["omero"] = _omero(data, list(channel_names))
