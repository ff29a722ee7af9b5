"""Cell markers: one point per nucleus, from a nucleus image or from a label image.

Marker-controlled segmentation (the unsupervised CNN cell segmentation of Scientific Reports)
starts from one marker per cell: the centroid of each nucleus found by CellProfiler in an
experimental nucleus image, or the centre of each blob found by a difference-of-Gaussians
detector in a synthetic (model-predicted) nucleus image. This module gives both:

- :func:`markers_from_image`: blob detection (``"dog"`` / ``"log"``, via
  :func:`cytogen.evaluate.markers.detect_markers`) or the centroids of classically segmented
  nuclei (``"segment"``, via :func:`cytogen.segment.cells.segment_nuclei`), then a minimum size
  and a minimum distance between markers;
- :func:`markers_from_labels`: one marker per object of a label image (e.g. a nucleus mask);
- :func:`merge_close`: greedy suppression of markers closer than a distance.

Markers are float arrays ``(N, d)`` of pixel centres in image axis order (``(y, x)`` or
``(z, y, x)``). Sizes and distances are in um when given as ``*_um`` (they need the pixel
size) and in pixels otherwise.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from cytogen.errors import CytogenError
from cytogen.evaluate.markers import detect_markers
from cytogen.evaluate.objects import check_image, check_pixel_size
from cytogen.segment.cells import segment_nuclei

__all__ = ["MARKER_METHODS", "markers_from_image", "markers_from_labels", "merge_close"]

MARKER_METHODS = ("dog", "log", "segment")


# ----------------------------------------------------------------------------- merging
def _check_markers(points, name: str = "points") -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, arr.shape[-1] if arr.ndim == 2 else 0)
    if arr.ndim != 2:
        raise CytogenError(f"{name} has shape {arr.shape}; give an (N, d) array of marker coordinates.")
    if not np.all(np.isfinite(arr)):
        raise CytogenError(f"{name} contains NaN or Inf coordinates; remove those markers.")
    return arr


def _suppress(coords: np.ndarray, min_distance: float, strength: np.ndarray | None) -> np.ndarray:
    """Indices (ascending) of the points kept by greedy non-maximum suppression."""
    n = len(coords)
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    order = np.arange(n) if strength is None else np.argsort(-strength, kind="stable")
    tree = cKDTree(coords)
    removed = np.zeros(n, dtype=bool)
    kept = []
    for i in order:
        if removed[i]:
            continue
        kept.append(i)
        near = np.asarray(tree.query_ball_point(coords[i], min_distance), dtype=np.intp)
        if near.size:
            close = np.linalg.norm(coords[near] - coords[i], axis=1) < min_distance
            removed[near[close]] = True
    return np.sort(np.asarray(kept, dtype=np.intp))


def _check_strength(strength, n: int) -> np.ndarray | None:
    if strength is None:
        return None
    s = np.asarray(strength, dtype=np.float64).reshape(-1)
    if s.shape != (n,) or not np.all(np.isfinite(s)):
        raise CytogenError(f"strength must hold one finite value per marker ({n}), got shape "
                           f"{np.shape(strength)}.")
    return s


def merge_close(points: np.ndarray, min_distance_px: float, strength: np.ndarray | None = None,
                ) -> np.ndarray:
    """Markers with those closer than ``min_distance_px`` to a stronger one removed.

    Parameters
    ----------
    points : numpy.ndarray
        ``(N, d)`` marker coordinates in pixels.
    min_distance_px : float
        Two kept markers are at least this far apart (Euclidean, pixels; a pair exactly this far
        apart is kept).
    strength : numpy.ndarray, optional
        ``(N,)`` score per marker (blob intensity, object area, ...); higher wins. Without it
        earlier markers win.

    Returns
    -------
    numpy.ndarray
        ``(M, d)`` kept markers, in their input order.

    Notes
    -----
    Greedy non-maximum suppression: visit the markers from the strongest down (ties: input
    order); keep a marker unless a kept one lies closer than ``min_distance_px``, in which case
    it is merged into (dropped in favour of) that stronger marker.
    """
    pts = _check_markers(points)
    if not (np.isfinite(min_distance_px) and min_distance_px >= 0):
        raise CytogenError(f"min_distance_px must be a number >= 0, got {min_distance_px!r}.")
    s = _check_strength(strength, len(pts))
    return pts[_suppress(pts, float(min_distance_px), s)]


# ----------------------------------------------------------------------------- labels
def _check_labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise CytogenError(f"labels have shape {arr.shape}; give a 2D (Y, X) or 3D (Z, Y, X) "
                           "label image (0 = background).")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise CytogenError(f"labels have dtype {arr.dtype}; give an integer label image.")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise CytogenError("labels contain non-integer values; give an integer label image "
                               "(0 = background, one positive integer per object).")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise CytogenError("labels contain negative values; use 0 for background and positive "
                           "integers for objects.")
    return arr


def _inside_centroid(comp: np.ndarray) -> np.ndarray:
    """Centroid of a boolean component, or its nearest pixel when the centroid lies outside."""
    pix = np.argwhere(comp)
    c = pix.mean(axis=0)
    r = np.floor(c + 0.5).astype(np.intp)
    if np.all(r >= 0) and np.all(r < comp.shape) and comp[tuple(r)]:
        return c
    return pix[int(np.argmin(((pix - c) ** 2).sum(axis=1)))].astype(np.float64)


def _label_centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label values, markers, full object sizes in pixels) per label in sorted order."""
    values = np.unique(labels)
    values = values[values > 0]
    out = np.zeros((len(values), labels.ndim))
    sizes = np.zeros(len(values), dtype=np.int64)
    structure = ndi.generate_binary_structure(labels.ndim, labels.ndim)
    boxes = ndi.find_objects(labels.astype(np.intp, copy=False))
    for k, v in enumerate(values):
        box = boxes[int(v) - 1]
        obj = labels[box] == v
        sizes[k] = int(obj.sum())
        comp, n = ndi.label(obj, structure=structure)
        if n > 1:
            counts = np.bincount(comp.ravel())
            counts[0] = 0
            obj = comp == int(np.argmax(counts))  # the largest piece (first on ties)
        out[k] = _inside_centroid(obj) + np.array([s.start for s in box])
    return values, out, sizes


def markers_from_labels(labels: np.ndarray) -> np.ndarray:
    """One marker per object of a label image: its centroid, kept inside the object.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label image ``(Y, X)`` or ``(Z, Y, X)``; 0 = background.

    Returns
    -------
    numpy.ndarray
        ``(N, d)`` float markers, one per label in sorted label order: the centroid of the
        label's largest connected component (full connectivity: diagonal neighbours connect);
        when that centroid's pixel is not part of the component (a C- or ring-shaped object) the
        marker moves to the component's pixel nearest to it (first in raster order on ties).
    """
    return _label_centroids(_check_labels(labels))[1]


# ----------------------------------------------------------------------------- image
def _need_pixel_size(name: str, value, ps) -> None:
    if value is not None and ps is None:
        px_name = name.replace("_um2", "_px").replace("_um", "_px")
        raise CytogenError(f"{name}={value!r} is in um but the pixel size is unknown; pass "
                           f"pixel_size_um or give the value in pixels ({px_name}).")


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise CytogenError(f"{name} must be a number {'>= 0' if allow_zero else '> 0'}, got {value!r}.")


def _blob_strength(scaled: np.ndarray, pts: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Mean intensity of the image smoothed at the typical blob scale, at each marker."""
    if len(pts) == 0:
        return np.zeros(0)
    smooth = ndi.gaussian_filter(scaled, np.median(sigma, axis=0))
    return ndi.map_coordinates(smooth, pts.T, order=1, mode="nearest")


def _scale01(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [1.0, 99.8])
    if hi <= lo:
        lo, hi = float(img.min()), float(img.max())
    return np.zeros_like(img) if hi <= lo else np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def markers_from_image(image: np.ndarray, *, pixel_size_um: tuple[float, ...] | None = None,
                       method: str = "dog", nucleus_diameter_um: float | None = None,
                       nucleus_diameter_px: float = 10.0, threshold_rel: float = 0.1,
                       min_distance_um: float | None = None, min_distance_px: float | None = None,
                       min_size_um2: float | None = None, min_size_px: float | None = None,
                       ) -> np.ndarray:
    """One marker per nucleus of a nucleus image (experimental or model-predicted).

    Parameters
    ----------
    image : numpy.ndarray
        Nucleus image ``(Y, X)`` or ``(Z, Y, X)``.
    pixel_size_um : tuple of float, optional
        Pixel size in um per axis; needed by every ``*_um`` setting.
    method : {"dog", "log", "segment"}
        ``"dog"`` (default; the study's detector for synthetic nucleus images) / ``"log"``: blob
        centres from :func:`cytogen.evaluate.markers.detect_markers`; ``"segment"``: centroids
        (:func:`markers_from_labels`) of :func:`cytogen.segment.cells.segment_nuclei` objects,
        the CellProfiler-like route the study used for experimental nucleus images.
    nucleus_diameter_um, nucleus_diameter_px : float
        Typical nucleus diameter (um when given, else pixels). Sets the blob scale; for
        ``"segment"`` half of it is the closest two splitting seeds of touching nuclei may be.
    threshold_rel : float
        Blob response threshold relative to the strongest blob, in (0, 1) (blob methods).
    min_distance_um, min_distance_px : float, optional
        Markers closer than this are merged, the stronger kept (blobs: higher smoothed
        intensity at the centre; objects: larger area); see :func:`merge_close`. None: no
        merging beyond the detector's own.
    min_size_um2, min_size_px : float, optional
        Markers of smaller nuclei are dropped: blob area pi r^2 with r = sigma sqrt(d) per axis
        (volume 4/3 pi r_z r_y r_x in 3D, um^3 then), or the segmented object's area (volume).

    Returns
    -------
    numpy.ndarray
        ``(N, d)`` float markers in pixel coordinates (detector order for blobs, label order for
        ``"segment"``); ``(0, d)`` when none is found.

    Raises
    ------
    CytogenError
        Unknown method, a setting in um without ``pixel_size_um``, a non-positive size.
    """
    img = check_image(image)
    ps = check_pixel_size(pixel_size_um, img.ndim)
    if method not in MARKER_METHODS:
        raise CytogenError(f"unknown marker method {method!r}; use one of {', '.join(MARKER_METHODS)}.")
    _need_pixel_size("nucleus_diameter_um", nucleus_diameter_um, ps)
    _need_pixel_size("min_distance_um", min_distance_um, ps)
    _need_pixel_size("min_size_um2", min_size_um2, ps)
    _positive("nucleus_diameter_um", nucleus_diameter_um)
    _positive("nucleus_diameter_px", nucleus_diameter_px)
    _positive("min_distance_um", min_distance_um, allow_zero=True)
    _positive("min_distance_px", min_distance_px, allow_zero=True)
    _positive("min_size_um2", min_size_um2, allow_zero=True)
    _positive("min_size_px", min_size_px, allow_zero=True)
    d = img.ndim
    voxel_um = float(np.prod(ps)) if ps is not None else 1.0

    if method == "segment":
        diam_um = (nucleus_diameter_um if nucleus_diameter_um is not None
                   else (nucleus_diameter_px * min(ps) if ps is not None else None))
        kw: dict = {"min_distance_px": max(1, int(round(nucleus_diameter_px / 2)))}
        if ps is not None:
            kw["min_distance_um"] = diam_um / 2
        if min_size_px is not None:
            kw["min_size_px"] = max(1, int(math.ceil(min_size_px)))
        if min_size_um2 is not None:
            kw["min_size_um"] = float(min_size_um2)
        elif ps is not None and min_size_px is not None:
            kw["min_size_um"] = float(min_size_px) * voxel_um
        _, pts, size_px = _label_centroids(segment_nuclei(img, ps, **kw))
        size_px = size_px.astype(np.float64)
        strength = size_px
    else:
        pts, sigma = detect_markers(img, pixel_size_um=ps, nucleus_diameter_um=nucleus_diameter_um,
                                    nucleus_diameter_px=nucleus_diameter_px,
                                    threshold_rel=threshold_rel, method=method, return_sigma=True)
        radius = sigma * math.sqrt(d)
        size_px = (math.pi if d == 2 else 4.0 / 3.0 * math.pi) * np.prod(radius, axis=1)
        strength = _blob_strength(_scale01(img), pts, sigma)

    keep = np.ones(len(pts), dtype=bool)
    if min_size_um2 is not None:
        keep &= size_px * voxel_um >= min_size_um2
    elif min_size_px is not None:
        keep &= size_px >= min_size_px
    pts, strength = pts[keep], strength[keep]

    if min_distance_um is not None:
        pts = pts[_suppress(pts * np.asarray(ps), float(min_distance_um), strength)]
    elif min_distance_px is not None:
        pts = pts[_suppress(pts, float(min_distance_px), strength)]
    return pts.reshape(-1, d)
