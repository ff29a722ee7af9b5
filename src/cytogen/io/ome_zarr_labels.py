"""NGFF label images (segmentations) of cytogen's OME-Zarr images: ``IMAGE/labels/<name>``.

A label image is a multiscale image of its own with the image's spatial axes, pixel size and
pyramid rule, downsampled by nearest pixel (:func:`cytogen.io.pyramid.halve`, ``"nearest"``:
label values stay exact), with ``image-label`` metadata written by ome-zarr-py
(:func:`ome_zarr.writer.write_label_metadata`); the ``labels`` group lists it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from cytogen.errors import CytogenError
from cytogen.io.atomic import atomic_dir
from cytogen.io.ome_zarr_write import (
    ZARR_FORMAT,
    OmeZarrWriter,
    _check_create,
    _ngff_format,
)


def write_ome_zarr_labels(
    path: Path,
    name: str,
    labels: np.ndarray,
    *,
    colors: dict[int, tuple[int, int, int, int]] | None = None,
    compression: str | None = "zlib",
    max_side: int | None = 1024,
) -> Path:
    """Add a label image (a segmentation) to an OME-Zarr image as NGFF ``labels/<name>``.

    The label image has the image's spatial axes, pixel size and pyramid rule, downsampled by
    nearest pixel (label values stay exact), ``image-label`` metadata (``colors`` when given,
    ``source.image = "../../"``) written by ome-zarr-py, and ``name`` is added to the list of
    the ``labels`` group. The label group is built in a hidden folder and renamed into place
    (an existing label image of that name is replaced); the image itself is not touched.

    Parameters
    ----------
    path : pathlib.Path
        An NGFF 0.4 image written by cytogen (:func:`write_ome_zarr`); never a user's input.
    name : str
        Label image name, e.g. ``"nuclei"``.
    labels : numpy.ndarray
        Integer labels, 0 = background, with the image's spatial shape (``(Y, X)`` or
        ``(Z, Y, X)``).
    colors : dict of int to (r, g, b, a), optional
        Display colours (0-255) for some label values.
    compression : {"zlib", "zstd", None}
        Chunk compressor.
    max_side : int or None
        As for :func:`create_ome_zarr`.

    Returns
    -------
    pathlib.Path
        ``path / "labels" / name``.
    """
    from cytogen.io.ome_zarr import open_ome_zarr

    path = Path(path)
    image = open_ome_zarr(path)
    labels = np.asarray(labels)
    spatial = tuple(n for a, n in zip(image.axes, image.data.shape) if a in "ZYX")
    if labels.dtype.kind not in "iub" or labels.shape != spatial:
        raise CytogenError(
            f"{path}: label image {name!r} must be integers of the image's spatial shape "
            f"{spatial}, got {labels.dtype} {labels.shape}; cast or crop the segmentation.")
    if not name or "/" in name or name.startswith("."):
        raise CytogenError(f"{path}: {name!r} is not a label name; use a plain name like 'nuclei'")
    axes = "C" + "".join(a for a in image.axes if a in "ZYX")
    pixel = tuple(image.sizes_um[a] for a in axes[1:]) if all(
        a in image.sizes_um for a in axes[1:]) else None
    dtype = np.dtype(np.uint8) if labels.dtype == bool else labels.dtype
    block = labels[None].astype(dtype, copy=False)
    root = zarr.open_group(store=str(path), mode="r+", zarr_format=ZARR_FORMAT)
    group = root.require_group("labels")
    chunks = _check_create(path, block.shape, axes, compression, None)
    with atomic_dir(path / "labels" / name) as tmp:
        sub = zarr.open_group(store=str(tmp), mode="w", zarr_format=ZARR_FORMAT)
        writer = OmeZarrWriter(sub, tmp.with_name(name), block.shape, dtype, axes, pixel, None,
                               compression, chunks, max_side, "nearest", has_c=False)
        for a in range(0, block.shape[1], chunks[1]):
            writer.write(a, block[:, a:a + chunks[1]])
        writer.finish()
    listed = [n for n in (group.attrs.get("labels") or []) if n != name]
    group.attrs["labels"] = listed  # write_label_metadata appends name to the list
    rgba = None if colors is None else [
        {"label-value": int(v), "rgba": [int(c) for c in col]} for v, col in sorted(colors.items())]
    from ome_zarr.writer import write_label_metadata

    write_label_metadata(group, name, colors=rgba, fmt=_ngff_format(), source={"image": "../../"})
    return path / "labels" / name
