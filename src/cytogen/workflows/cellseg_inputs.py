"""One field of a segmentation manifest made ready for marker-controlled cell segmentation.

:func:`prepare_inputs` reads a :class:`~cytogen.data.seg_manifest.SegEntry` and returns its
normalised cell image, the markers (from a nucleus image, a nucleus label image, or a nucleus
image predicted by a translator model folder), the foreground mask (given, or the graph cut of a
scribble-trained pixel classifier's probability, or the graph cut of the image itself), the pixel
size, the ground-truth labels when given and reference markers to score model-made markers
against. Shared by ``cytogen train`` (cellseg recipes) and ``cytogen segment cells``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.config import CellSegConfig
from cytogen.data.normalize import Normalizer
from cytogen.data.seg_manifest import MARKER_COLUMNS, SegEntry
from cytogen.errors import CytogenError
from cytogen.io.images import Image, read_spec, stack_channels

__all__ = ["SegInputs", "choose_marker_source", "clear_model_cache", "marker_settings", "patch_sigma_px",
           "prepare_inputs", "resolve_settings"]


@dataclass
class SegInputs:
    """Everything one field needs to be segmented (or trained on).

    Attributes
    ----------
    name : str
        Field name.
    image : numpy.ndarray
        ``(C, Y, X)`` float32 cell image, normalised.
    markers : numpy.ndarray
        ``(N, 2)`` float marker centres (y, x) in pixels.
    foreground : numpy.ndarray
        ``(Y, X)`` bool, True = cells.
    pixel_size_um : tuple of float or None
        ``(y, x)`` in um (the manifest's ``pixel_size_um`` wins over the files').
    marker_source : str
        ``"nuclei"``, ``"nucleus_model"`` or ``"markers"``.
    truth : numpy.ndarray or None
        ``(Y, X)`` int32 ground-truth cell labels (column ``cells``).
    reference_markers : numpy.ndarray or None
        Markers to score ``markers`` against, from another marker column of the row
        (the ``markers`` label image's centroids first, else the ``nuclei`` image's blobs);
        None when the markers came from the only reference there is.
    reference_source : str or None
        The column ``reference_markers`` came from.
    raw : Image
        The source channels as read (not normalised), pixel size set.
    foreground_source : str
        ``"mask"``, ``"scribbles"`` or ``"graph_cut"``.
    """

    name: str
    image: np.ndarray
    markers: np.ndarray
    foreground: np.ndarray
    pixel_size_um: tuple[float, ...] | None
    marker_source: str
    truth: np.ndarray | None
    reference_markers: np.ndarray | None
    raw: Image
    reference_source: str | None = None
    foreground_source: str = "graph_cut"


def resolve_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The ``cellseg`` section with every key: ``settings`` over :class:`CellSegConfig` defaults,
    types and ranges checked as in a recipe."""
    from cytogen.config import recipe_from_dict

    base = dataclasses.asdict(CellSegConfig())
    given = dict(settings or {})
    unknown = sorted(set(given) - set(base))
    if unknown:
        raise CytogenError(f"cellseg settings: unknown key(s) {unknown}; known: {sorted(base)}")
    checked = dataclasses.asdict(recipe_from_dict({"cellseg": given}, "cellseg settings").cellseg)
    return {**base, **{k: checked[k] for k in given}}


def marker_settings(settings: dict[str, Any], pixel_size_um: tuple[float, ...] | None) -> dict[str, Any]:
    """Keyword arguments of :func:`cytogen.segment.markers.markers_from_image` from a ``cellseg``
    section: sizes in um are used only when the pixel size is known (else the px values)."""
    kw: dict[str, Any] = {"method": settings["markers"], "nucleus_diameter_px": settings["nucleus_diameter_px"],
                          "threshold_rel": settings["threshold_rel"], "min_distance_px": settings["min_distance_px"],
                          "min_size_px": settings["min_size_px"], "pixel_size_um": pixel_size_um}
    if pixel_size_um is not None:
        kw.update(nucleus_diameter_um=settings["nucleus_diameter_um"], min_distance_um=settings["min_distance_um"],
                  min_size_um2=settings["min_size_um2"])
    return kw


def patch_sigma_px(settings: dict[str, Any], pixel_size_um: tuple[float, ...] | None) -> tuple[float, ...]:
    """Sigma of the Gaussian marker channel in pixels per axis: ``sigma_um`` / pixel size when both
    are known, else ``sigma_px``."""
    if settings.get("sigma_um") is not None and pixel_size_um is not None:
        return tuple(float(settings["sigma_um"]) / float(p) for p in pixel_size_um)
    n = 2 if pixel_size_um is None else len(pixel_size_um)
    return (float(settings["sigma_px"]),) * n


def choose_marker_source(entry: SegEntry, markers_from: str | None) -> str:
    """The marker column to use for ``entry`` (``markers_from``, or the only one given)."""
    given = entry.marker_sources
    if markers_from is not None:
        if markers_from not in MARKER_COLUMNS:
            raise CytogenError(f"markers_from {markers_from!r} is not one of {', '.join(MARKER_COLUMNS)}")
        if markers_from not in given:
            raise CytogenError(f"field {entry.name!r}: --markers-from {markers_from} but its '{markers_from}' "
                               f"column is empty (it gives {', '.join(given)}); fill it or choose another source")
        return markers_from
    if len(given) > 1:
        raise CytogenError(f"field {entry.name!r} gives several marker sources ({', '.join(given)}); choose one "
                           f"with --markers-from {'|'.join(given)} (the others then serve as reference markers)")
    return given[0]


@lru_cache(maxsize=4)
def _load_translator(folder: str):
    from cytogen.predict.model_folder import load_model_folder

    return load_model_folder(folder)


def clear_model_cache() -> None:
    """Forget the translator model folders loaded for ``nucleus_model`` markers."""
    _load_translator.cache_clear()


def _pixel_size(image: Image, manifest_um: float | None) -> tuple[float, ...] | None:
    if manifest_um is not None:
        return (float(manifest_um),) * image.ndim_spatial
    return image.pixel_size_um


def _plane(spec: str, column: str, entry: SegEntry, shape: tuple[int, ...]) -> np.ndarray:
    """The one 2D plane of a single-image column, checked against the source's shape."""
    im = read_spec(spec)
    if im.ndim_spatial != 2 or im.data.shape[0] != 1:
        raise CytogenError(f"field {entry.name!r}, column '{column}': {spec} is {im.axes} {im.data.shape}; give one "
                           "2D channel (pick one with 'path#c=K')")
    if im.spatial_shape != shape:
        raise CytogenError(f"field {entry.name!r}, column '{column}': {spec} is {im.spatial_shape} pixels but the "
                           f"source is {shape}; give images of the same field and size")
    return im.data[0]


def _labels(spec: str, column: str, entry: SegEntry, shape: tuple[int, ...]) -> np.ndarray:
    a = _plane(spec, column, entry, shape)
    if a.dtype.kind == "f":
        if not (np.all(np.isfinite(a)) and np.array_equal(a, np.round(a))):
            raise CytogenError(f"field {entry.name!r}, column '{column}': {spec} is not a label image (non-integer "
                               "values); save labels as integers")
    elif a.dtype.kind not in "biu":
        raise CytogenError(f"field {entry.name!r}, column '{column}': {spec} has {a.dtype} pixels; give integer labels")
    if a.min() < 0:
        raise CytogenError(f"field {entry.name!r}, column '{column}': {spec} has negative labels")
    return a.astype(np.int32)


def _image_markers(nucleus: np.ndarray, settings: dict[str, Any], ps: tuple[float, ...] | None) -> np.ndarray:
    from cytogen.segment.markers import markers_from_image

    return markers_from_image(nucleus.astype(np.float32), **marker_settings(settings, ps))


def _model_markers(entry: SegEntry, raw: Image, settings: dict[str, Any], ps: tuple[float, ...] | None
                   ) -> np.ndarray:
    from cytogen.workflows.predict import predict_image

    model = _load_translator(str(Path(entry.nucleus_model).resolve()))
    try:
        pred = predict_image(model, raw, source=entry.source[0])
    except CytogenError as exc:
        raise CytogenError(f"field {entry.name!r}, column 'nucleus_model' ({entry.nucleus_model}): {exc}") from None
    return _image_markers(pred[0], settings, ps)


def _markers(column: str, entry: SegEntry, raw: Image, settings: dict[str, Any],
             ps: tuple[float, ...] | None) -> np.ndarray:
    from cytogen.segment.markers import markers_from_labels

    shape = raw.spatial_shape
    if column == "nuclei":
        return _image_markers(_plane(entry.nuclei, "nuclei", entry, shape), settings, ps)
    if column == "markers":
        return markers_from_labels(_labels(entry.markers, "markers", entry, shape))
    return _model_markers(entry, raw, settings, ps)


def _foreground(entry: SegEntry, raw: Image, settings: dict[str, Any]) -> tuple[np.ndarray, str]:
    from cytogen.segment.foreground import DEFAULT_KAPPA, foreground_mask

    shape = raw.spatial_shape
    if entry.foreground is not None:
        return _plane(entry.foreground, "foreground", entry, shape) != 0, "mask"
    kappa = DEFAULT_KAPPA if settings["kappa"] is None else float(settings["kappa"])
    image = raw.data.astype(np.float32)
    holes = dict(max_hole_px=_max_hole_px(settings, raw))
    if entry.scribbles is not None:
        scribbles = _labels(entry.scribbles, "scribbles", entry, shape)
        try:
            return foreground_mask(image, scribbles=scribbles, alpha=settings["alpha"], kappa=kappa,
                                   **holes), "scribbles"
        except CytogenError as exc:
            raise CytogenError(f"field {entry.name!r}, column 'scribbles' ({entry.scribbles}): {exc}") from None
    return foreground_mask(image, alpha=settings["alpha"], kappa=kappa, sigma_px=_foreground_sigma_px(settings, raw),
                           **holes), "graph_cut"


def _foreground_sigma_px(settings: dict[str, Any], raw: Image) -> float:
    """Smoothing of the intensity route: ``foreground_sigma_um`` / pixel size when both are known."""
    ps = raw.pixel_size_um
    if settings.get("foreground_sigma_um") is not None and ps:
        return float(settings["foreground_sigma_um"]) / float(ps[-1])
    return float(settings["foreground_sigma_px"])


def _max_hole_px(settings: dict[str, Any], raw: Image) -> float:
    """Holes of the foreground filled: up to a disk of twice the nucleus diameter (a cytoplasmic
    stain leaves the nuclei dark; the markers sit there)."""
    d = float(settings["nucleus_diameter_px"])
    ps = raw.pixel_size_um
    if settings.get("nucleus_diameter_um") is not None and ps:
        d = float(settings["nucleus_diameter_um"]) / float(ps[-1])
    return float(np.pi * d * d)


def _reference(entry: SegEntry, used: str, raw: Image, settings: dict[str, Any],
               ps: tuple[float, ...] | None) -> tuple[np.ndarray | None, str | None]:
    for column in ("markers", "nuclei"):  # label centroids are the closer truth
        if column != used and getattr(entry, column) is not None:
            return _markers(column, entry, raw, settings, ps), column
    return None, None


def prepare_inputs(entry: SegEntry, settings: dict[str, Any] | None = None, *, markers_from: str | None = None,
                   normalizer: Normalizer | None = None, foreground: bool = True) -> SegInputs:
    """Read one field of a segmentation manifest and make its markers and foreground.

    Parameters
    ----------
    entry
        A row of :func:`cytogen.data.seg_manifest.read_seg_manifest`.
    settings
        The recipe's ``cellseg`` section (a dict; missing keys take the
        :class:`~cytogen.config.CellSegConfig` defaults): marker method, nucleus diameter,
        threshold, minimum distance and size (um when the pixel size is known), graph-cut
        ``kappa`` and ``alpha``.
    markers_from
        ``"nuclei"``, ``"nucleus_model"`` or ``"markers"``; None = the only one the row gives.
    normalizer
        Normalisation of the source channels (default: percentile 1-99.8 per field); a model
        folder's normaliser at prediction time.
    foreground
        Compute the foreground (False: an all-True mask, for callers that need none).

    Returns
    -------
    SegInputs

    Raises
    ------
    CytogenError
        A 3D source, images of a different size than the source, several marker sources without a
        choice, a label column that is not integer, a translator that does not fit the source.
    """
    settings = resolve_settings(settings)
    column = choose_marker_source(entry, markers_from)
    raw = stack_channels([read_spec(s) for s in entry.source])
    if raw.ndim_spatial != 2:
        raise CytogenError(f"field {entry.name!r}: source {entry.source[0]} is {raw.axes} {raw.data.shape}; cell "
                           "segmentation takes 2D fields (give one plane, or a max projection)")
    if not np.all(np.isfinite(raw.data)):
        raise CytogenError(f"field {entry.name!r}: source {entry.source[0]} contains NaN/Inf pixels; replace them")
    ps = _pixel_size(raw, entry.pixel_size_um)
    raw = Image(raw.data, raw.axes, ps, raw.channel_names)
    norm = normalizer if normalizer is not None else Normalizer("percentile", scope="field")
    image = norm.normalize(raw.data)
    markers = np.asarray(_markers(column, entry, raw, settings, ps), dtype=np.float64).reshape(-1, 2)
    reference, ref_source = _reference(entry, column, raw, settings, ps)
    if foreground:
        fg, fg_source = _foreground(entry, raw, settings)
    else:
        fg, fg_source = np.ones(raw.spatial_shape, dtype=bool), "none"
    truth = _labels(entry.cells, "cells", entry, raw.spatial_shape) if entry.cells is not None else None
    return SegInputs(name=entry.name, image=image, markers=markers, foreground=np.asarray(fg, dtype=bool),
                     pixel_size_um=ps, marker_source=column, truth=truth,
                     reference_markers=None if reference is None else np.asarray(reference, float).reshape(-1, 2),
                     raw=raw, reference_source=ref_source, foreground_source=fg_source)
