"""Chance of placing a nucleus within a radius of a real one by random placement (null models).

Two nulls, each in a whole-image and a cell-region variant:

*Union of discs* (the honest null, used for the binomial test by default): a randomly placed
nucleus counts as a success when it lands within the radius of *any* real centroid, so the chance
is the fraction of the possible positions that lie within the radius of some real centroid
(:func:`chance_union_image`, :func:`chance_union_region`).

*Per nucleus* (the null of Vasudevan et al.): the chance that one random position lands
within the radius of one given real centroid, i.e. one disc over the possible positions
(:func:`chance_probability_image`, :func:`chance_probability_region`). With many nuclei per field
it is smaller than the union by about the number of nuclei, so its p-values are far too small.

Positions are pixel centres (integer coordinates, as ``skimage.measure.regionprops``); distances
are physical (``spacing`` per axis) and counted exactly on the pixel grid, so the results equal a
brute-force count of pixel centres. Per-object probabilities are pooled with :func:`mean_chance`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from cytogen.errors import CytogenError

_EPS = 1e-9  # relative slack so lattice points exactly on a radius count as inside


def _radius_vector(radius: float | Sequence[float], ndim: int, name: str) -> np.ndarray:
    r = np.asarray(radius, dtype=np.float64)
    if r.ndim == 0:
        r = np.full(ndim, float(r))
    if r.shape != (ndim,) or not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise CytogenError(f"{name} must be a positive number or one positive number per axis ({ndim}), got {radius}")
    return r


def _centroids(centroids: np.ndarray, ndim: int) -> np.ndarray:
    c = np.asarray(centroids, dtype=np.float64)
    if c.size == 0:
        return np.zeros((0, ndim))
    if c.ndim != 2 or c.shape[1] != ndim:
        raise CytogenError(f"centroids must have shape (N, {ndim}) in pixel (row, col[, ...]) order, got {c.shape}")
    if not np.all(np.isfinite(c)):
        raise CytogenError("centroids contain NaN/Inf; drop those objects first")
    return c


def _check_radius(radius: float, exclusion: float = 0.0) -> None:
    if not (np.isfinite(radius) and radius > 0 and np.isfinite(exclusion) and exclusion >= 0):
        raise CytogenError(f"need radius > 0 and exclusion >= 0, got radius={radius}, exclusion={exclusion}")


def chance_probability_image(
    centroids_px: np.ndarray, shape: tuple[int, ...], radius_px: float | Sequence[float]
) -> np.ndarray:
    """Per-nucleus null: chance that one random pixel lies within a radius of each centroid.

    ``p_i = |{pixels x : sum(((x - c_i) / r)^2) <= 1}| / prod(shape)``, counted exactly on the
    pixel grid, so objects near an edge or corner get proportionally less (Vasudevan et al.:
    one disc over the field).

    Parameters
    ----------
    centroids_px : ndarray, shape (N, d)
        Centroids in pixel coordinates, axis order as ``shape`` (2D or 3D).
    shape : tuple of int
        Image shape (``(Y, X)`` or ``(Z, Y, X)``).
    radius_px : float or sequence of float
        Radius in pixels, or one per axis for anisotropic pixels (``r_um / pixel_size_um``).

    Returns
    -------
    ndarray, shape (N,)
        Per-object probabilities.
    """
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise CytogenError(f"image shape must be positive, got {shape}")
    d = len(shape)
    c = _centroids(centroids_px, d)
    r = _radius_vector(radius_px, d, "radius_px")
    size = np.asarray(shape)
    lo = np.clip(np.ceil(c - r), 0, size - 1).astype(np.int64)
    hi = np.clip(np.floor(c + r), 0, size - 1).astype(np.int64)
    # enumerate offsets along the leading axes; count the last axis analytically per row
    span = [int(np.max(hi[:, a] - lo[:, a], initial=0)) + 1 for a in range(d - 1)]
    offsets = np.array(list(itertools.product(*[range(s) for s in span])), dtype=np.int64).reshape(-1, d - 1)
    counts = np.zeros(len(c), dtype=np.int64)
    chunk = max(1, 2_000_000 // max(1, len(offsets)))
    for s in range(0, len(c), chunk):
        cc, ll, hh = c[s:s + chunk], lo[s:s + chunk], hi[s:s + chunk]
        coords = ll[:, None, : d - 1] + offsets[None]  # (n, K, d-1)
        valid = np.all(coords <= hh[:, None, : d - 1], axis=2)
        rem = 1.0 + _EPS - np.sum(((coords - cc[:, None, : d - 1]) / r[: d - 1]) ** 2, axis=2)
        valid &= rem >= 0
        w = r[-1] * np.sqrt(np.clip(rem, 0, None))
        a = np.maximum(np.ceil(cc[:, None, -1] - w), 0)
        b = np.minimum(np.floor(cc[:, None, -1] + w), shape[-1] - 1)
        counts[s:s + chunk] = np.sum(np.where(valid, np.maximum(b - a + 1, 0), 0), axis=1)
    return counts / float(np.prod(size))


def within_radius_mask(centroids_px: np.ndarray, shape: tuple[int, ...], radius: float, *,
                       spacing: float | Sequence[float] = 1.0,
                       offset: Sequence[int] | None = None) -> np.ndarray:
    """Pixels whose centre lies within ``radius`` of any centroid (the union of discs/spheres).

    Equivalent to thresholding the exact Euclidean distance map of the centroid set at
    ``radius``; computed exactly in a window of the radius around each centroid (a distance
    transform seeded at rounded centroids would be off by up to half a pixel).

    Parameters
    ----------
    centroids_px : ndarray, shape (N, d)
        Centroids in pixel coordinates of the full image (sub-pixel allowed).
    shape : tuple of int
        Shape of the returned mask.
    radius : float
        Radius in the units of ``spacing``.
    spacing : float or sequence of float
        Pixel size per axis (um), or 1 for pixels.
    offset : sequence of int, optional
        Image coordinates of the mask's first pixel (for a crop of a larger image).

    Returns
    -------
    ndarray of bool
        The mask, ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    d = len(shape)
    c = _centroids(centroids_px, d)
    sp = _radius_vector(spacing, d, "spacing")
    _check_radius(radius)
    off = np.zeros(d, np.int64) if offset is None else np.asarray(offset, dtype=np.int64)
    end = off + np.asarray(shape)
    mask = np.zeros(shape, dtype=bool)
    r_px, lim = radius / sp, radius**2 * (1 + _EPS)
    for ci in c:
        lo = np.maximum(np.floor(ci - r_px).astype(np.int64), off)
        hi = np.minimum(np.ceil(ci + r_px).astype(np.int64) + 1, end)
        if np.any(hi <= lo):
            continue
        grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        d2 = sum(((g - x) * s) ** 2 for g, x, s in zip(grids, ci, sp))
        mask[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, off))] |= d2 <= lim
    return mask


def chance_union_image(centroids_px: np.ndarray, shape: tuple[int, ...], radius: float, *,
                       spacing: float | Sequence[float] = 1.0) -> float:
    """Union null for a whole field: fraction of its pixels within ``radius`` of any real centroid.

    A nucleus placed uniformly at random in the field succeeds near *any* real nucleus, so this
    is its chance of success (0 for a field without real nuclei).

    Parameters
    ----------
    centroids_px : ndarray, shape (N, d)
        Real centroids in pixel coordinates.
    shape : tuple of int
        Field shape, 2D or 3D.
    radius : float
        Radius in the units of ``spacing`` (um, or px with the default spacing 1).
    spacing : float or sequence of float
        Pixel size per axis (anisotropic voxels allowed).

    Returns
    -------
    float
        The fraction in [0, 1].
    """
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise CytogenError(f"image shape must be positive, got {shape}")
    return float(within_radius_mask(centroids_px, shape, radius, spacing=spacing).mean())


def _label_image(region: np.ndarray) -> np.ndarray:
    region = np.asarray(region)
    if region.dtype == bool:
        return ndimage.label(region)[0]
    if np.issubdtype(region.dtype, np.integer) and region.min(initial=0) >= 0:
        return region
    raise CytogenError(
        f"region must be a boolean foreground mask or a non-negative integer label image, got dtype {region.dtype}"
    )


def cells_of(points_px: np.ndarray, labels: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Cell label of each point: the label under its nearest pixel, else the nearest cell's."""
    size = np.asarray(labels.shape)
    pix = np.clip(np.rint(points_px), 0, size - 1).astype(np.int64)
    lab = labels[tuple(pix.T)].astype(np.int64)
    if np.any(lab == 0):  # a point outside every cell: take the nearest labelled pixel
        idx = ndimage.distance_transform_edt(labels == 0, sampling=spacing, return_distances=False,
                                             return_indices=True)
        out = np.flatnonzero(lab == 0)
        lab[out] = labels[tuple(idx[(slice(None), *pix[out].T)])]
    return lab


def _allowed_positions(labels: np.ndarray, lbl: int, box: tuple[slice, ...], exclusion: float,
                       spacing: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """Crop (box padded by one pixel inside the image) and the cell's allowed centroid positions.

    Allowed: farther than ``exclusion`` from the cell's edge (pixels of other cells or background);
    the image border is not an edge. A cell that fills the whole crop has no edge pixel in it, and
    ``distance_transform_edt`` then measures from a phantom zero before the first corner, so the
    distance is infinite there instead. Too thin a cell falls back to all of its pixels.
    """
    crop = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, labels.shape))
    inside = labels[crop] == lbl
    if inside.all():
        dist = np.full(inside.shape, np.inf)
    else:
        dist = ndimage.distance_transform_edt(inside, sampling=spacing)
    allowed = dist > exclusion * (1 + _EPS)
    return crop, allowed if allowed.any() else inside


def _region_setup(centroids_px, region, radius, exclusion, spacing):
    labels = _label_image(region)
    d = labels.ndim
    c = _centroids(centroids_px, d)
    sp = _radius_vector(spacing, d, "spacing")
    _check_radius(radius, exclusion)
    if not np.any(labels):
        raise CytogenError("region has no foreground pixels; pass the cell (cytoplasm + nucleus) mask")
    return labels, c, sp


def chance_probability_region(
    centroids_px: np.ndarray,
    region: np.ndarray,
    radius: float,
    exclusion: float,
    *,
    spacing: float | Sequence[float] = 1.0,
    at_px: np.ndarray | None = None,
) -> np.ndarray:
    """Per-nucleus null in the cell (Vasudevan et al.): ``right / possible`` per centroid.

    For each true centroid, the *possible positions* are the pixels of its cell whose distance to
    the cell edge exceeds ``exclusion`` (one nuclear radius: a nucleus of that radius centred there
    lies wholly inside the cell); the *right positions* are the possible positions within
    ``radius`` of that centroid.

    Parameters
    ----------
    centroids_px : ndarray, shape (N, d)
        True centroids in pixel coordinates (2D or 3D, same axis order as ``region``).
    region : ndarray of bool or int
        Either a boolean foreground mask (cells = connected components, face connectivity) or an
        integer label image (0 = background, each positive label one cell; use this for confluent
        cells that touch).
    radius, exclusion : float
        Matching radius and nuclear radius in the units of ``spacing`` (pixels by default).
    spacing : float or sequence of float
        Pixel size per axis (e.g. ``(z_um, y_um, x_um)``); then ``radius`` and ``exclusion`` are
        in um. Distances use ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``.
    at_px : ndarray, shape (M, d), optional
        Points (e.g. predicted centroids) to give each the mean chance of the real nuclei of its
        own cell (0 for a cell without one) instead of one chance per real centroid.

    Returns
    -------
    ndarray, shape (N,) or (M,)
        Per-object probabilities in [0, 1].

    Notes
    -----
    The cell of a centroid is the label under its nearest pixel; a centroid outside every cell is
    given the nearest cell. If no pixel of a cell is farther than ``exclusion`` from its edge (the
    cell is too thin for the nucleus), the whole cell is used as the possible positions instead.
    The image border is not a cell edge: a cell cut by the border is assumed to continue beyond.
    """
    labels, c, sp = _region_setup(centroids_px, region, radius, exclusion, spacing)
    lab = cells_of(c, labels, sp) if len(c) else np.zeros(0, np.int64)
    boxes = ndimage.find_objects(labels)
    p = np.empty(len(c))
    for lbl in np.unique(lab):
        crop, allowed = _allowed_positions(labels, int(lbl), boxes[lbl - 1], exclusion, sp)
        start = [s.start for s in crop]
        possible = int(allowed.sum())
        for n in np.flatnonzero(lab == lbl):
            near = within_radius_mask(c[n:n + 1], allowed.shape, radius, spacing=sp, offset=start)
            p[n] = np.count_nonzero(allowed & near) / possible
    if at_px is None:
        return p
    q = _centroids(at_px, labels.ndim)
    if len(q) == 0:
        return np.zeros(0)
    lab_q = cells_of(q, labels, sp)
    out = np.zeros(len(q))
    for lbl in np.unique(lab_q):
        mine = lab == lbl
        if mine.any():
            out[lab_q == lbl] = p[mine].mean()
    return out


def chance_union_region(
    true_centroids_px: np.ndarray,
    region: np.ndarray,
    radius: float,
    exclusion: float,
    *,
    spacing: float | Sequence[float] = 1.0,
    at_px: np.ndarray | None = None,
) -> np.ndarray:
    """Union null in the cell: the fraction of a cell's possible positions within ``radius`` of
    any real centroid of that cell, for the cell of each point in ``at_px``.

    Possible positions and the cell of a point are as in :func:`chance_probability_region`; the
    right positions are those within ``radius`` of *any* real centroid assigned to the same cell.
    A cell without a real centroid has chance 0.

    Parameters
    ----------
    true_centroids_px : ndarray, shape (N, d)
        Real centroids in pixel coordinates.
    region : ndarray of bool or int
        Cell mask or label image, as for :func:`chance_probability_region`.
    radius, exclusion : float
        Matching radius and nuclear radius in the units of ``spacing``.
    spacing : float or sequence of float
        Pixel size per axis.
    at_px : ndarray, shape (M, d), optional
        The points whose cell's chance is wanted (e.g. the predicted centroids: each predicted
        nucleus gets the chance of its own cell); default the real centroids.

    Returns
    -------
    ndarray, shape (M,)
        Per-point probabilities in [0, 1].
    """
    labels, c, sp = _region_setup(true_centroids_px, region, radius, exclusion, spacing)
    q = c if at_px is None else _centroids(at_px, labels.ndim)
    if len(q) == 0:
        return np.zeros(0)
    lab_true = cells_of(c, labels, sp) if len(c) else np.zeros(0, np.int64)
    lab_q = cells_of(q, labels, sp)
    boxes = ndimage.find_objects(labels)
    p = np.zeros(len(q))
    for lbl in np.unique(lab_q):
        mine = c[lab_true == lbl]
        if len(mine) == 0:
            continue
        crop, allowed = _allowed_positions(labels, int(lbl), boxes[lbl - 1], exclusion, sp)
        near = within_radius_mask(mine, allowed.shape, radius, spacing=sp, offset=[s.start for s in crop])
        p[lab_q == lbl] = np.count_nonzero(allowed & near) / int(allowed.sum())
    return p


def mean_chance(p: np.ndarray) -> float:
    """Pooled chance probability ``p0`` for a binomial test over objects with different chances.

    The count of chance successes over objects with probabilities ``p_i`` is Poisson-binomial; it
    is approximated by ``Binomial(n, mean(p_i))``, which has the same mean and a larger variance.
    By Hoeffding (1956) that binomial's upper tail bounds the Poisson-binomial's for counts above
    ``sum(p_i) + 1``, so p-values from :func:`cytogen.evaluate.stats.binom_log10_sf` with this
    ``p0`` are conservative.

    Parameters
    ----------
    p : ndarray
        Per-object probabilities in [0, 1] (one per trial: per predicted nucleus).

    Returns
    -------
    float
        Their mean.
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    if p.size == 0:
        raise CytogenError("no per-object probabilities given; need at least one object")
    if not np.all((p >= 0) & (p <= 1)):
        raise CytogenError("per-object probabilities must lie in [0, 1] (NaN is not allowed)")
    return float(p.mean())
