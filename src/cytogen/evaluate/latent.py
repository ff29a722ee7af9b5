"""Statistics of latent spaces for the Statistical Cell (numpy/scipy only, no torch).

Dimension ranking (mean absolute deviation), informative dimensions (mean KL above a threshold),
PCA by SVD, linear-regression R^2 on a held-out fraction, centroid shifts with a permutation test
and Bonferroni correction, projections on a control -> treated direction, dose-response summaries
(Spearman rho and a monotonicity check), the Z'-factor of a screening read-out, the coupling of
Donovan-Maiye et al. (2022) Eq 4 and the differential coupling of Eq 5, rate/distortion summaries
and percentile-bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sstats

from cytogen.errors import CytogenError


def _as_2d(x: np.ndarray, what: str = "x") -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise CytogenError(f"{what} must be a (cells, dims) array, got shape {a.shape}")
    return a


# ---------------------------------------------------------------------------------------------
# dimensions, PCA, regression
# ---------------------------------------------------------------------------------------------
def rank_by_mad(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank latent dimensions by their mean absolute deviation across cells.

    Parameters
    ----------
    z : ndarray, shape (n, D)
        Latent codes (e.g. posterior means) of ``n`` cells.

    Returns
    -------
    order : ndarray of int, shape (D,)
        Dimension indices, largest MAD first (ties keep index order).
    mad : ndarray, shape (D,)
        Mean absolute deviation from the mean of each dimension, in dimension order.
    """
    z = _as_2d(z, "z")
    mad = np.mean(np.abs(z - z.mean(axis=0, keepdims=True)), axis=0)
    order = np.argsort(-mad, kind="stable")
    return order, mad


def informative_dims(kl_mean: np.ndarray, threshold: float = 0.6) -> np.ndarray:
    """Indices of the dimensions whose mean KL divergence exceeds ``threshold`` (nats).

    The paper calls these the informative dimensions (KL > 0.6); uninformative dimensions carry
    the prior and are ignored by the decoder.
    """
    kl = np.asarray(kl_mean, dtype=np.float64).ravel()
    return np.flatnonzero(kl > threshold)


def pca_fit(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal components of ``x`` by SVD of the centred data.

    Parameters
    ----------
    x : ndarray, shape (m, p)
        Observations in rows.
    n : int
        Components to keep (at most ``min(m, p)``).

    Returns
    -------
    mean : ndarray (p,)
    components : ndarray (n, p)
        Orthonormal rows, largest variance first; the sign is fixed so the largest-magnitude
        entry of each component is positive (deterministic).
    explained_ratio : ndarray (n,)
        Fraction of the total variance explained by each component.
    """
    x = _as_2d(x, "x")
    m, p = x.shape
    if int(n) != n or n < 1 or n > min(m, p):
        raise CytogenError(f"PCA needs 1 <= n <= min(observations, variables) = {min(m, p)}, got {n}")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[: int(n)].copy()
    flip = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
    comps *= np.where(flip == 0, 1.0, flip)[:, None]
    var = s**2
    total = var.sum()
    ratio = var[: int(n)] / total if total > 0 else np.zeros(int(n))
    return mean, comps, ratio


def pca_transform(x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Scores of ``x`` (m, p) on ``components`` (n, p) after subtracting ``mean``: (m, n)."""
    x = _as_2d(x, "x")
    return (x - np.asarray(mean)[None, :]) @ np.asarray(components).T


def regression_r2(z: np.ndarray, y: np.ndarray, holdout: float = 0.1, seed: int = 0) -> np.ndarray:
    """R^2 of a least-squares linear map (with intercept) from ``z`` to each column of ``y``.

    The map is fitted on a seeded random ``1 - holdout`` of the rows and scored on the rest;
    R^2 = 1 - SSE / SST with SST about the held-out mean (so it can be negative for a map worse
    than predicting the mean).

    Parameters
    ----------
    z : ndarray (n, d)
        Predictors (e.g. the informative latent dimensions).
    y : ndarray (n,) or (n, k)
        Targets (e.g. the top principal components of the features).
    holdout : float
        Held-out fraction in (0, 1); at least 2 rows are held out and at least 1 fitted.
    seed : int
        Seed of the split.

    Returns
    -------
    ndarray (k,)
        Held-out R^2 per column of ``y`` (nan for a constant held-out column).
    """
    z = _as_2d(z, "z")
    y = _as_2d(y, "y")
    n = len(z)
    if len(y) != n:
        raise CytogenError(f"z and y need the same rows, got {n} and {len(y)}")
    if not 0.0 < holdout < 1.0:
        raise CytogenError(f"holdout must be a fraction in (0, 1), got {holdout}")
    n_test = max(2, int(round(holdout * n)))
    if n - n_test < 1:
        raise CytogenError(f"too few cells ({n}) for a held-out regression")
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    a = np.hstack([z, np.ones((n, 1))])
    coef, *_ = np.linalg.lstsq(a[train], y[train], rcond=None)
    pred = a[test] @ coef
    sse = ((y[test] - pred) ** 2).sum(axis=0)
    sst = ((y[test] - y[test].mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)
    return r2
