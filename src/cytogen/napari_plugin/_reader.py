"""The napari reader: cytogen's outputs as image, labels, points and shapes layers.

A path is a cytogen output when the run record that cytogen writes beside it says so (file
names alone do not: any TIFF could be anything). :func:`classify` decides:

========================================  ==============  ==========================================
path                                      kind            recognised by
========================================  ==============  ==========================================
``OUT/`` of ``cytogen evaluate objects``  ``"objects"``   a folder holding ``objects.csv``,
                                                          ``fields.csv`` and ``summary.json``
``OUT/<name>.tif`` / ``.ome.zarr``        ``"image"``     ``runtime.json`` in the folder
(``cytogen predict``)                                     (written by every ``cytogen predict``)
``OUT/<name>.tif`` (``segment nuclei``)   ``"labels"``    ``summary.json`` and ``nuclei.csv``
``OUT/<name>.tif``, ``OUT/foreground/``   ``"labels"``    ``summary.json`` and ``markers.csv`` in
(``segment cells``)                                       the folder (or its parent: foreground/)
``DATA/masks/*.tif``, ``DATA/images/``    ``"labels"``,   ``manifest.csv`` and ``segment.csv`` in
(``cytogen synthesize cells``)            ``"image"``     the dataset folder
========================================  ==============  ==========================================

Images must be TIFF (``.tif``, ``.tiff``, ``.ome.tif``) or OME-Zarr (``.zarr``, ``.ome.zarr``).
A "labels" image becomes a labels layer only when its pixels are integers (else an image
layer). Every image is opened lazily (:func:`cytogen.io.lazy.open_image_lazy`): each channel is
a dask array read chunk by chunk as napari displays it; an OME-Zarr pyramid is one multiscale
layer per channel (level 0 first) and its NGFF ``labels/`` become labels layers. Layers carry
``scale`` = the pixel size in micrometres (1 per axis when unknown) and are named
``"<channel> (<file stem>)"``; ``metadata["cytogen"]`` records the source file and channel.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.errors import CytogenError

#: ``(data, layer keyword arguments, layer type)``, napari's LayerData tuple.
LayerData = tuple[Any, dict[str, Any], str]

OBJECT_FILES = ("objects.csv", "fields.csv", "summary.json")
_TIFF = (".tif", ".tiff")
_ZARR = (".zarr",)


def _is_image_path(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(_TIFF) and path.is_file() or name.endswith(_ZARR) and path.is_dir()


def _has(folder: Path, *names: str) -> bool:
    return all((folder / n).is_file() for n in names)


def classify(path: str | Path) -> str | None:
    """What kind of cytogen output ``path`` is: ``"objects"``, ``"image"``, ``"labels"`` or None.

    Parameters
    ----------
    path : str or pathlib.Path
        A file or folder.

    Returns
    -------
    str or None
        None for anything cytogen did not write (see the module docstring for the rules).
    """
    path = Path(path)
    if path.is_dir() and _has(path, *OBJECT_FILES):
        return "objects"
    if not _is_image_path(path):
        return None
    folder = path.parent
    if _has(folder, "runtime.json"):
        return "image"
    if _has(folder, "summary.json") and (_has(folder, "nuclei.csv") or _has(folder, "markers.csv")):
        return "labels"
    if folder.name == "foreground" and _has(folder.parent, "summary.json", "markers.csv"):
        return "labels"
    if folder.name in ("masks", "images") and _has(folder.parent, "manifest.csv", "segment.csv"):
        return "labels" if folder.name == "masks" else "image"
    return None


def napari_get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """npe2 reader hook: :func:`read_paths` when every path is a cytogen output, else None."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or any(classify(p) is None for p in paths):
        return None
    return read_paths


def read_paths(path: str | list[str]) -> list[LayerData]:
    """Layers for one or several cytogen outputs (see :func:`classify`).

    Raises
    ------
    CytogenError
        When a path is not a cytogen output or cannot be read (the message names the file).
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    layers: list[LayerData] = []
    for p in map(Path, paths):
        kind = classify(p)
        if kind is None:
            raise CytogenError(f"{p}: not an output of cytogen (no run record beside it); open it "
                               "with napari's own reader instead")
        if kind == "objects":
            from cytogen.napari_plugin._objects import objects_layers

            layers += objects_layers(p)
        else:
            layers += image_layers(p, labels=kind == "labels")
    return layers


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def _dask_channel(base: Any, letters: str, channel: int, token: str) -> Any:
    """Channel ``channel`` of a stored array seen as ``[Z]YX``, as a lazy dask array."""
    import dask.array as da

    from cytogen.io.lazy import AxesView

    view = AxesView(base, letters, channel)
    spatial = view.shape[1:]
    chunks = (1,) * (len(spatial) - 2) + tuple(min(n, 1024) for n in spatial[-2:])
    return da.from_array(view, chunks=(1, *chunks), name=f"cytogen-{token}", asarray=True)[0]


def _omero_windows(path: Path) -> list[tuple[float, float] | None] | None:
    """Display windows of an OME-Zarr's ``omero`` channels (None where absent)."""
    for meta in ("zarr.json", ".zattrs"):
        f = path / meta
        if f.is_file():
            attrs = json.loads(f.read_text())
            attrs = attrs.get("attributes", attrs)
            attrs = attrs.get("ome", attrs)
            out = []
            for ch in (attrs.get("omero") or {}).get("channels") or []:
                w = ch.get("window") or {}
                ok = isinstance(w.get("start"), (int, float)) and isinstance(w.get("end"), (int, float))
                out.append((float(w["start"]), float(w["end"])) if ok and w["end"] > w["start"] else None)
            return out or None
    return None


def image_layers(path: str | Path, *, labels: bool = False, name_prefix: str = "") -> list[LayerData]:
    """One layer per channel of a TIFF or OME-Zarr image, opened lazily.

    Parameters
    ----------
    path : str or pathlib.Path
        The image.
    labels : bool
        Make labels layers when the pixels are integers (image layers otherwise).
    name_prefix : str
        Put before each layer's name.

    Returns
    -------
    list of LayerData
        Image or labels layers, ``scale`` = pixel size in um; an OME-Zarr's NGFF labels follow.
    """
    from cytogen.io.lazy import open_image_lazy
    from cytogen.io.ome_zarr import open_ome_zarr_levels

    path = Path(path)
    lazy = open_image_lazy(path)
    letters = lazy.data.letters
    zarr_in = path.name.lower().endswith(_ZARR) or path.parent.name == "labels"
    levels = open_ome_zarr_levels(path) if zarr_in else [lazy.data.base]
    if any(lvl.ndim != len(letters) for lvl in levels):
        raise CytogenError(f"{path}: the pyramid levels do not all have {len(letters)} axes")
    scale = tuple(lazy.pixel_size_um or (1.0,) * lazy.ndim_spatial)
    names = lazy.channel_names or [f"channel_{k}" for k in range(lazy.shape[0])]
    as_labels = labels and np.issubdtype(lazy.dtype, np.integer)
    windows = _omero_windows(path) if zarr_in else None
    token = f"{path.resolve()}-{path.stat().st_mtime_ns}"
    out: list[LayerData] = []
    for c, channel in enumerate(names):
        data = [_dask_channel(lvl, letters, c, f"{token}-{k}-{c}") for k, lvl in enumerate(levels)]
        kwargs: dict[str, Any] = {
            "name": f"{name_prefix}{channel} ({_stem(path)})", "scale": scale,
            "metadata": {"cytogen": {"path": str(path), "channel": channel, "channel_index": c,
                                     "pixel_size_um": lazy.pixel_size_um}},
        }
        if len(data) > 1:
            kwargs["multiscale"] = True
        if not as_labels:
            kwargs["blending"] = "additive"
            if windows and c < len(windows) and windows[c] is not None:
                kwargs["contrast_limits"] = windows[c]
        out.append((data if len(data) > 1 else data[0], kwargs, "labels" if as_labels else "image"))
    if zarr_in and path.parent.name != "labels":
        out += _ngff_labels(path, name_prefix)
    return out


def _ngff_labels(path: Path, name_prefix: str) -> list[LayerData]:
    """Labels layers for the NGFF label images of an OME-Zarr image (``IMAGE/labels/<name>``)."""
    from cytogen.io.ome_zarr import list_ome_zarr_labels

    out: list[LayerData] = []
    for name in list_ome_zarr_labels(path):
        for data, kwargs, _ in image_layers(path / "labels" / name, labels=True, name_prefix=name_prefix):
            kwargs["name"] = f"{name_prefix}{name} ({_stem(path)})"
            out.append((data, kwargs, "labels"))
    return out
