"""OME-Zarr (OME-NGFF) images: reading, and the writers of :mod:`cytogen.io.ome_zarr_write`.

Reads NGFF v0.4 (zarr format 2, metadata in ``.zattrs``) and v0.5 (zarr format 3, metadata
under the ``"ome"`` attribute) images: :func:`read_ome_zarr` / :func:`open_ome_zarr` give level 0
(the full resolution) with axes, pixel size and ``omero`` channel labels, read or lazily;
:func:`open_ome_zarr_levels` every pyramid level; :func:`list_ome_zarr_labels` the NGFF label
images (``labels/<name>``). Also reads a ``bioformats2raw`` root (first image) and a bare zarr
array (axes guessed as for a TIFF without metadata).

Writing (NGFF 0.4 with ome-zarr-py's metadata writers around cytogen's chunk-wise pixel writes,
with a multiscale pyramid and labels; why 0.4 is said there) is :func:`create_ome_zarr`
(streaming, row by row), :func:`write_ome_zarr` (a whole array) and
:func:`write_ome_zarr_labels`, imported here from :mod:`cytogen.io.ome_zarr_write`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cytogen.errors import CytogenError
from cytogen.io._common import RawImage, unit_to_um
from cytogen.io.ome_zarr_labels import write_ome_zarr_labels  # noqa: F401  (public writers, here too)
from cytogen.io.ome_zarr_write import OmeZarrWriter, create_ome_zarr, write_ome_zarr  # noqa: F401


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
