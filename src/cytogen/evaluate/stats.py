"""Binomial statistics for object-placement metrics (numpy/scipy only).

The number of true objects whose predicted counterpart lies within a radius is modelled as a
binomial count: :func:`fraction_within` gives the fraction with exact Clopper-Pearson and Wilson
score intervals, and :func:`binom_log10_sf` the one-sided p-value of that count under a "random
placement" null, in log10 so that values far below 1e-308 stay finite. The chance of success under
that null comes from :func:`chance_probability_image` (one uniformly random position in the whole
image) or :func:`chance_probability_region` (a random position inside the object's own cell, where
the whole nucleus still fits), pooled over objects with :func:`mean_chance`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.special import logsumexp
from scipy.stats import binom, binomtest

from cytogen.errors import CytogenError

_EPS = 1e-9  # relative slack so lattice points exactly on a radius count as inside


def _check_counts(k: int, n: int) -> tuple[int, int]:
    if int(k) != k or int(n) != n or n < 0 or not 0 <= k <= n:
        raise CytogenError(f"need integers 0 <= k <= n, got k={k}, n={n}")
    return int(k), int(n)


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise CytogenError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence}")
    return float(confidence)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided confidence interval of a binomial proportion.

    Parameters
    ----------
    k, n : int
        Successes and trials, ``0 <= k <= n``.
    confidence : float
        Confidence level in (0, 1).

    Returns
    -------
    tuple of float
        ``(low, high)``, identical to ``scipy.stats.binomtest(k, n).proportion_ci(confidence,
        method="exact")``; ``(nan, nan)`` when ``n == 0``.
    """
    k, n = _check_counts(k, n)
    confidence = _check_confidence(confidence)
    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(k, n).proportion_ci(confidence, method="exact")
    return float(ci.low), float(ci.high)


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (the paper's "score confidence interval").

    Same arguments as :func:`clopper_pearson`; equals ``binomtest(k, n).proportion_ci(confidence,
    method="wilson")`` and is ``(nan, nan)`` when ``n == 0``.
    """
    k, n = _check_counts(k, n)
    confidence = _check_confidence(confidence)
    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(k, n).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def binom_log10_sf(k: int, n: int, p0: float) -> float:
    """``log10 P(X >= k)`` for ``X ~ Binomial(n, p0)``, finite far below 1e-308.

    Where scipy's survival function is representable (> 1e-300) this is exactly
    ``log10(scipy.stats.binom.sf(k - 1, n, p0))``; below that it is the log-sum-exp of
    ``binom.logpmf`` over ``k..n`` divided by ``ln 10`` (relative accuracy ~1e-12).

    Parameters
    ----------
    k, n : int
        Observed successes and trials, ``0 <= k <= n`` (``k <= 0`` gives 0.0).
    p0 : float
        Success probability under the null hypothesis, in [0, 1].

    Returns
    -------
    float
        The log10 p-value; ``-inf`` when the event is impossible (``p0 == 0`` and ``k >= 1``).
    """
    if not 0.0 <= p0 <= 1.0:
        raise CytogenError(f"p0 must be a probability in [0, 1], got {p0}")
    if k <= 0:
        return 0.0
    k, n = _check_counts(k, n)
    if p0 == 0.0:
        return float("-inf")
    sf = float(binom.sf(k - 1, n, p0))
    if sf > 1e-300:
        return math.log10(sf)
    logpmf = binom.logpmf(np.arange(k, n + 1), n, p0)
    return float(logsumexp(logpmf) / math.log(10.0))


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


def chance_probability_image(
    centroids_px: np.ndarray, shape: tuple[int, ...], radius_px: float | Sequence[float]
) -> np.ndarray:
    """Chance that one uniformly random pixel of the image lies within a radius of each centroid.

    ``p_i = |{pixels x : sum(((x - c_i) / r)^2) <= 1}| / prod(shape)``, counted exactly on the
    pixel grid (pixel centres at integer coordinates, as in ``skimage.measure.regionprops``), so
    objects near an edge or corner get proportionally less.

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


def _label_image(region: np.ndarray) -> np.ndarray:
    region = np.asarray(region)
    if region.dtype == bool:
        return ndimage.label(region)[0]
    if np.issubdtype(region.dtype, np.integer) and region.min(initial=0) >= 0:
        return region
    raise CytogenError(
        f"region must be a boolean foreground mask or a non-negative integer label image, got dtype {region.dtype}"
    )


def chance_probability_region(
    centroids_px: np.ndarray,
    region: np.ndarray,
    radius: float,
    exclusion: float,
    *,
    spacing: float | Sequence[float] = 1.0,
) -> np.ndarray:
    """Chance of placing each object's centroid within ``radius`` by chance inside its own cell.

    The paper's cell-restricted null: for each true centroid, the *possible positions* are the
    pixels of its cell whose distance to the cell edge exceeds ``exclusion`` (one nuclear radius:
    a nucleus of that radius centred there lies wholly inside the cell, i.e. no pixel of another
    cell or of background lies within ``exclusion``); the *right positions* are the possible
    positions within ``radius`` of the centroid; ``p = right / possible``.

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

    Returns
    -------
    ndarray, shape (N,)
        Per-object probabilities in [0, 1].

    Notes
    -----
    The cell of a centroid is the label under its nearest pixel; a centroid outside every cell is
    given the nearest cell. If no pixel of a cell is farther than ``exclusion`` from its edge (the
    cell is too thin for the nucleus), the whole cell is used as the possible positions instead.
    The image border is not a cell edge: a cell cut by the border is assumed to continue beyond.
    Work is one labelling (for a boolean mask) and one distance transform per cell, each on that
    cell's bounding box, plus a window of the radius around each centroid.
    """
    labels = _label_image(region)
    d = labels.ndim
    c = _centroids(centroids_px, d)
    sp = _radius_vector(spacing, d, "spacing")
    if not (np.isfinite(radius) and radius > 0 and np.isfinite(exclusion) and exclusion >= 0):
        raise CytogenError(f"need radius > 0 and exclusion >= 0, got radius={radius}, exclusion={exclusion}")
    if len(c) == 0:
        return np.zeros(0)
    if not np.any(labels):
        raise CytogenError("region has no foreground pixels; pass the cell (cytoplasm + nucleus) mask")
    size = np.asarray(labels.shape)
    pix = np.clip(np.rint(c), 0, size - 1).astype(np.int64)
    lab = labels[tuple(pix.T)]
    if np.any(lab == 0):  # centroid outside every cell: take the nearest labelled pixel
        idx = ndimage.distance_transform_edt(labels == 0, sampling=sp, return_distances=False, return_indices=True)
        out = np.flatnonzero(lab == 0)
        near = idx[(slice(None), *pix[out].T)]
        lab[out] = labels[tuple(near)]
    boxes = ndimage.find_objects(labels)
    cells: dict[int, tuple[tuple[slice, ...], np.ndarray, int]] = {}
    for lbl in np.unique(lab):
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(boxes[lbl - 1], labels.shape))
        inside = labels[box] == lbl
        dist = ndimage.distance_transform_edt(inside, sampling=sp)
        allowed = dist > exclusion * (1 + _EPS)
        if not allowed.any():
            allowed = inside  # too thin for the nucleus: fall back to the whole cell
        cells[int(lbl)] = (box, allowed, int(allowed.sum()))
    r_px = radius / sp
    p = np.empty(len(c))
    for n, (ci, lbl) in enumerate(zip(c, lab)):
        box, allowed, possible = cells[int(lbl)]
        start = np.array([s.start for s in box])
        wlo = np.maximum(np.ceil(ci - r_px).astype(np.int64), start)
        whi = np.minimum(np.floor(ci + r_px).astype(np.int64) + 1, start + np.array(allowed.shape))
        if np.any(whi <= wlo):
            p[n] = 0.0
            continue
        grids = np.ogrid[tuple(slice(a, b) for a, b in zip(wlo, whi))]
        d2 = sum(((g - x) * s) ** 2 for g, x, s in zip(grids, ci, sp))
        win = allowed[tuple(slice(a - s0, b - s0) for a, b, s0 in zip(wlo, whi, start))]
        p[n] = np.count_nonzero(win & (d2 <= radius**2 * (1 + _EPS))) / possible
    return p


def mean_chance(p: np.ndarray) -> float:
    """Pooled chance probability ``p0`` for a binomial test over objects with different chances.

    The count of chance successes over objects with probabilities ``p_i`` is Poisson-binomial; it
    is approximated by ``Binomial(n, mean(p_i))``, which has the same mean and a larger variance.
    By Hoeffding (1956) that binomial's upper tail bounds the Poisson-binomial's for counts above
    ``sum(p_i) + 1``, so p-values from :func:`binom_log10_sf` with this ``p0`` are conservative.

    Parameters
    ----------
    p : ndarray
        Per-object probabilities in [0, 1].

    Returns
    -------
    float
        Their mean.
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    if p.size == 0:
        raise CytogenError("no per-object probabilities given; need at least one true object")
    if not np.all((p >= 0) & (p <= 1)):
        raise CytogenError("per-object probabilities must lie in [0, 1] (NaN is not allowed)")
    return float(p.mean())


def fraction_within(distances: np.ndarray, radius: float, n_trials: int, confidence: float = 0.95) -> dict:
    """Fraction of objects placed within ``radius``, with exact and score confidence intervals.

    Parameters
    ----------
    distances : ndarray
        Distances of the matched pairs (physical units). Unmatched objects are failures: they
        have no distance here but count in ``n_trials``.
    radius : float
        Success threshold (``distance <= radius``), same units.
    n_trials : int
        Number of trials: the number of true objects (or of predicted objects), as the caller
        decides; must be at least the number of successes.
    confidence : float
        Confidence level of the intervals.

    Returns
    -------
    dict
        ``radius, k, n, fraction, cp_low, cp_high, wilson_low, wilson_high`` (fraction and
        intervals NaN when ``n_trials == 0``).
    """
    dist = np.asarray(distances, dtype=np.float64).ravel()
    if np.any(np.isnan(dist)):
        raise CytogenError("distances contain NaN; pass only the distances of matched pairs")
    k = int(np.count_nonzero(dist <= radius))
    if int(n_trials) != n_trials or n_trials < k:
        raise CytogenError(
            f"n_trials={n_trials} is smaller than the {k} successes; pass the number of true (or predicted) objects"
        )
    n = int(n_trials)
    cp, wl = clopper_pearson(k, n, confidence), wilson(k, n, confidence)
    return {
        "radius": float(radius), "k": k, "n": n, "fraction": k / n if n else float("nan"),
        "cp_low": cp[0], "cp_high": cp[1], "wilson_low": wl[0], "wilson_high": wl[1],
    }
