"""Positional densities in the unit disc / ball, their KL divergence and its permutation test.

Points are the Cartesian frame coordinates of :func:`cytogen.evaluate.spatial.unit_coordinates`
(radius x direction), so angles wrap without a seam and the centre is one point.

- **Density** (:func:`positional_density`): a Gaussian kernel density with one isotropic bandwidth
  ``h`` (frame units, the membrane at radius 1), the same for both sets of a comparison. It is
  computed on a fixed grid of ``size`` cells per axis over ``[-1, 1]^d`` (64 in 2D, 32 in 3D) by
  *binned* estimation: each point is counted in its grid cell, the histogram is smoothed
  with a Gaussian of standard deviation ``h`` (:func:`scipy.ndimage.gaussian_filter`, zero outside,
  4 SD), restricted to the cells whose centre lies in the unit disc / ball, and normalised to
  integrate to 1 there (kernel mass beyond the membrane is dropped, as no object lies there).
  Binning moves each point by at most half a cell (1/64 resp. 1/32 of the radius).
- **Bandwidth** (:func:`default_bandwidth`): Scott's rule on the pooled points of both sets,
  ``h = sd x n^(-1 / (d + 4))`` with ``sd`` the root mean per-axis variance, at least one grid cell.
- **KL divergence** (:func:`kl_divergence`): ``sum_grid P log(P / Q) dV`` of the real (P) and the
  generated (Q) densities on the grid, after flooring both at 1e-6 of the uniform density of the
  disc / ball and renormalising (no log 0). Both directions are reported.
- **Permutation test** (:func:`positional_test`): the set labels of the pooled points are shuffled
  (same sizes) ``n_permutations`` times, or whole groups (cells, images) are when ``groups`` are
  given; ``p = (1 + #{KL_perm >= KL}) / (1 + n_permutations)``.
- **Real vs real** (:func:`real_vs_real`): the real groups (cells or images) split at random into
  halves, each split tested as above, with the comparison's bandwidth.
- **Shape vs position** (:func:`shape_position_regression`): ordinary least squares of a shape
  value per object (the first shape PC, as the paper) on the frame coordinates, with R^2.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy import stats

from cytogen.errors import CytogenError

__all__ = ["FLOOR", "default_bandwidth", "frame_grid", "kl_divergence", "positional_density", "positional_test",
           "real_vs_real", "shape_position_regression"]

FLOOR = 1e-6  # densities floored at this fraction of the uniform density before the KL divergence
_SIZE = {2: 64, 3: 32}


def frame_grid(ndim: int, size: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Grid over ``[-1, 1]^ndim``: cell-centre coordinates (1D), inside-the-unit-ball mask, cell volume."""
    size = _SIZE[ndim] if size is None else int(size)
    c = (np.arange(size) + 0.5) / size * 2 - 1
    grids = np.meshgrid(*([c] * ndim), indexing="ij")
    inside = sum(g * g for g in grids) <= 1.0
    return c, inside, (2.0 / size) ** ndim


def _check(points: np.ndarray, what: str) -> np.ndarray:
    p = np.asarray(points, float)
    if p.ndim != 2 or p.shape[1] not in (2, 3):
        raise CytogenError(f"{what}: positions must be (n, 2) or (n, 3) frame coordinates, got shape {p.shape}")
    if len(p) == 0:
        raise CytogenError(f"{what}: no objects inside cells to estimate a positional density from")
    if not np.isfinite(p).all():
        raise CytogenError(f"{what}: positions hold NaN or infinite values")
    return p


def default_bandwidth(*point_sets: np.ndarray, size: int | None = None) -> float:
    """Scott's rule on the pooled points (frame units), at least one grid cell."""
    pooled = np.concatenate([np.asarray(p, float) for p in point_sets])
    n, d = pooled.shape
    sd = float(np.sqrt(pooled.var(0).mean())) if n > 1 else 0.5
    cell = 2.0 / (_SIZE[d] if size is None else size)
    return max(sd * n ** (-1.0 / (d + 4)) if sd > 0 else 0.5, cell)


def _bins(points: np.ndarray, size: int) -> np.ndarray:
    idx = np.clip(np.floor((points + 1) / 2 * size).astype(np.int64), 0, size - 1)
    return np.ravel_multi_index(tuple(idx.T), (size,) * points.shape[1])


def _density_from_bins(flat: np.ndarray, ndim: int, size: int, h: float, inside: np.ndarray,
                       vol: float) -> np.ndarray:
    hist = np.bincount(flat, minlength=size**ndim).astype(float).reshape((size,) * ndim)
    dens = ndi.gaussian_filter(hist, sigma=h / (2.0 / size), mode="constant", truncate=4.0) * inside
    total = dens.sum() * vol
    return dens / total if total > 0 else inside / (inside.sum() * vol)


def positional_density(points: np.ndarray, bandwidth: float, size: int | None = None) -> np.ndarray:
    """Kernel density of frame points on :func:`frame_grid` (zero outside the unit disc / ball)."""
    p = _check(points, "positional density")
    d = p.shape[1]
    size = _SIZE[d] if size is None else int(size)
    _, inside, vol = frame_grid(d, size)
    return _density_from_bins(_bins(p, size), d, size, float(bandwidth), inside, vol)


def kl_divergence(p: np.ndarray, q: np.ndarray, inside: np.ndarray, vol: float) -> float:
    """``KL(P || Q)`` of two grid densities (see the module docstring for the floor)."""
    floor = FLOOR / (inside.sum() * vol)
    a = np.maximum(p[inside], floor)
    b = np.maximum(q[inside], floor)
    a, b = a / (a.sum() * vol), b / (b.sum() * vol)
    return float(np.sum(a * np.log(a / b)) * vol)


def positional_test(real: np.ndarray, generated: np.ndarray, *, bandwidth: float | None = None,
                    n_permutations: int = 1000, seed: int = 0, size: int | None = None,
                    groups: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """KL divergence of the real and generated positional densities and its permutation p value.

    Parameters
    ----------
    real, generated
        Frame points ``(n, d)`` in the unit disc / ball (d = 2 or 3, the same on both sides).
    bandwidth
        Kernel SD in frame units; default :func:`default_bandwidth` of both sets pooled.
    n_permutations
        Label shuffles (0: no p value).
    groups
        Optional group id per point of each side (e.g. cell or image): shuffle whole groups
        (keeping the number of groups per side) instead of single objects, for objects that are
        not independent draws.

    Returns
    -------
    dict
        ``kl`` (real || generated), ``kl_reverse``, ``p_permutation``, ``n_real``,
        ``n_generated``, ``bandwidth``, ``grid``, ``n_permutations``, ``permute_by``,
        ``kl_null_median``, ``kl_null_95``, ``floor``, and the densities ``density_real``,
        ``density_generated`` (arrays, for figures).
    """
    a, b = _check(real, "real"), _check(generated, "generated")
    if a.shape[1] != b.shape[1]:
        raise CytogenError(f"real positions are {a.shape[1]}D but generated ones {b.shape[1]}D; compare 2D with "
                           "2D and 3D with 3D")
    d = a.shape[1]
    size = _SIZE[d] if size is None else int(size)
    h = default_bandwidth(a, b, size=size) if bandwidth is None else float(bandwidth)
    if not (np.isfinite(h) and h > 0):
        raise CytogenError(f"bandwidth must be > 0 (frame units, membrane at 1), got {bandwidth}")
    _, inside, vol = frame_grid(d, size)
    flat = np.concatenate([_bins(a, size), _bins(b, size)])
    na = len(a)

    def kl_of(sel: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        pa = _density_from_bins(flat[sel], d, size, h, inside, vol)
        pb = _density_from_bins(flat[~sel], d, size, h, inside, vol)
        return kl_divergence(pa, pb, inside, vol), pa, pb

    first = np.zeros(len(flat), bool)
    first[:na] = True
    kl, pa, pb = kl_of(first)
    rng = np.random.default_rng(seed)
    null = []
    if groups is not None:
        ga, gb = np.asarray(groups[0]).astype(str), np.asarray(groups[1]).astype(str)
        if len(ga) != na or len(gb) != len(b):
            raise CytogenError("groups must hold one id per real and per generated point")
        g = np.concatenate([np.char.add("real:", ga), np.char.add("generated:", gb)])
        uniq, inv = np.unique(g, return_inverse=True)
        n_first = len(np.unique(ga))
    for _ in range(int(n_permutations)):
        if groups is None:
            sel = np.zeros(len(flat), bool)
            sel[rng.permutation(len(flat))[:na]] = True
        else:
            chosen = np.zeros(len(uniq), bool)
            chosen[rng.permutation(len(uniq))[:n_first]] = True
            sel = chosen[inv]
        null.append(kl_of(sel)[0])
    null_a = np.asarray(null)
    p = float((1 + np.sum(null_a >= kl)) / (1 + len(null_a))) if len(null_a) else float("nan")
    return {"kl": kl, "kl_reverse": kl_divergence(pb, pa, inside, vol), "p_permutation": p, "n_real": na,
            "n_generated": len(b), "bandwidth": h, "grid": f"{size}^{d} cells over [-1, 1]^{d}, inside the unit "
            f"{'disc' if d == 2 else 'ball'}", "n_permutations": int(n_permutations),
            "permute_by": "object" if groups is None else "group", "floor": FLOOR,
            "kl_null_median": float(np.median(null_a)) if len(null_a) else float("nan"),
            "kl_null_95": float(np.percentile(null_a, 95)) if len(null_a) else float("nan"),
            "density_real": pa, "density_generated": pb}


def real_vs_real(points: np.ndarray, groups: np.ndarray, *, n_splits: int = 10, n_permutations: int = 200,
                 bandwidth: float | None = None, seed: int = 0, size: int | None = None,
                 permute_groups: bool = False) -> dict:
    """The null of two real halves: groups (cells or images) split at random into halves, each
    split tested with :func:`positional_test`; median KL and p value, and all of them.

    Raises
    ------
    CytogenError
        Fewer than two groups.
    """
    p = _check(points, "real")
    g = np.asarray(groups).astype(str)
    uniq = np.unique(g)
    if len(uniq) < 2:
        raise CytogenError(f"the real-vs-real null needs at least two cells or images, got {len(uniq)}")
    h = default_bandwidth(p, size=size) if bandwidth is None else float(bandwidth)
    rng = np.random.default_rng(seed)
    kls, ps = [], []
    for i in range(int(n_splits)):
        half = set(rng.permutation(uniq)[: len(uniq) // 2])
        sel = np.isin(g, list(half))
        gr = (g[sel], g[~sel]) if permute_groups else None
        t = positional_test(p[sel], p[~sel], bandwidth=h, n_permutations=n_permutations, seed=seed + 1 + i,
                            size=size, groups=gr)
        kls.append(t["kl"])
        ps.append(t["p_permutation"])
    return {"kl_median": float(np.median(kls)), "p_median": float(np.median(ps)), "kl": kls, "p": ps,
            "n_splits": int(n_splits), "n_groups": len(uniq), "bandwidth": h,
            "fraction_p_below_0.05": float(np.mean(np.asarray(ps) < 0.05))}


def shape_position_regression(shape_value: np.ndarray, position: np.ndarray) -> dict:
    """OLS of one shape value per object (e.g. the first shape PC) on its position (columns of
    ``position``, e.g. the unit-disc coordinates and the radius), with an intercept.

    Returns
    -------
    dict
        ``r2``, ``r2_adjusted``, ``n_objects``, ``n_predictors``, ``coefficients`` (intercept
        first) and ``p_value`` (F test of all slopes = 0).
    """
    y = np.asarray(shape_value, float).ravel()
    x = np.asarray(position, float)
    x = x[:, None] if x.ndim == 1 else x
    if len(x) != len(y):
        raise CytogenError(f"shape-vs-position regression: {len(y)} shape values but {len(x)} positions")
    k = x.shape[1]
    if len(y) < k + 2:
        raise CytogenError(f"shape-vs-position regression needs more than {k + 1} objects, got {len(y)}")
    design = np.column_stack([np.ones(len(y)), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum(resid**2))
    n = len(y)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    r2_adj = 1.0 - (1.0 - r2) * (n - 1) / (n - k - 1)
    f = (r2 / k) / ((1 - r2) / (n - k - 1)) if r2 < 1 else np.inf
    return {"r2": float(r2), "r2_adjusted": float(r2_adj), "n_objects": n, "n_predictors": k,
            "coefficients": [float(c) for c in coef], "p_value": float(stats.f.sf(f, k, n - k - 1))}
