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


# ---------------------------------------------------------------------------------------------
# intervals, shifts, permutation tests
# ---------------------------------------------------------------------------------------------
def bootstrap_interval(values: np.ndarray | Sequence[np.ndarray], statistic: Callable[..., float],
                       n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic`` over cells.

    Parameters
    ----------
    values : ndarray or sequence of ndarrays
        One array (cells in the first axis) or several; each array is resampled with replacement
        independently (its own size), and ``statistic(*resampled)`` evaluated.
    statistic : callable
        Returns a float.
    n_boot, confidence, seed
        Resamples, two-sided level, seed.

    Returns
    -------
    (lo, hi) : floats (nan when an array is empty or the statistic is nan on every resample)
    """
    arrays = [np.asarray(values)] if isinstance(values, np.ndarray) else [np.asarray(v) for v in values]
    if not 0.0 < confidence < 1.0:
        raise CytogenError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if any(len(a) == 0 for a in arrays):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    out = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        out[b] = statistic(*[a[rng.integers(0, len(a), len(a))] for a in arrays])
    out = out[np.isfinite(out)]
    if out.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(out, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def centroid_shift(z_ctrl: np.ndarray, z_treat: np.ndarray) -> tuple[float, np.ndarray]:
    """Euclidean distance between the centroids of two clouds, and the per-dimension difference.

    Returns
    -------
    distance : float
        ``||mean(z_treat) - mean(z_ctrl)||``.
    per_dim : ndarray (D,)
        ``mean(z_treat) - mean(z_ctrl)`` (signed).
    """
    a, b = _as_2d(z_ctrl, "z_ctrl"), _as_2d(z_treat, "z_treat")
    if a.shape[1] != b.shape[1] or len(a) == 0 or len(b) == 0:
        raise CytogenError(f"centroid shift needs two non-empty clouds of the same dimension, got "
                           f"{a.shape} and {b.shape}")
    d = b.mean(axis=0) - a.mean(axis=0)
    return float(np.linalg.norm(d)), d


def permutation_test(z_a: np.ndarray, z_b: np.ndarray, n_permutations: int = 2000,
                     seed: int = 0) -> float:
    """Permutation p-value of the distance between two centroids.

    The labels of the pooled cells are shuffled ``n_permutations`` times; with ``k`` shuffles
    giving a centroid distance at least the observed one, p = (k + 1) / (n_permutations + 1)
    (never 0; the smallest reachable value is 1 / (n_permutations + 1)).
    """
    a, b = _as_2d(z_a, "z_a"), _as_2d(z_b, "z_b")
    observed, _ = centroid_shift(a, b)
    if int(n_permutations) < 1:
        raise CytogenError(f"n_permutations must be at least 1, got {n_permutations}")
    pooled = np.vstack([a, b])
    n, na = len(pooled), len(a)
    total = pooled.sum(axis=0)
    rng = np.random.default_rng(seed)
    k = 0
    tol = 1e-12 * max(1.0, observed)
    chunk = 256
    done = 0
    while done < n_permutations:
        m = min(chunk, n_permutations - done)
        # random subsets of size na as the "a" group, via argsort of random keys
        idx = np.argsort(rng.random((m, n)), axis=1)[:, :na]
        sum_a = pooled[idx].sum(axis=1)
        diff = (total - sum_a) / (n - na) - sum_a / na
        k += int(np.sum(np.linalg.norm(diff, axis=1) >= observed - tol))
        done += m
    return (k + 1) / (int(n_permutations) + 1)


def bonferroni(p: float | np.ndarray, m: int) -> float | np.ndarray:
    """Bonferroni-corrected p-values: ``min(1, p * m)`` for ``m`` tests."""
    if int(m) != m or m < 1:
        raise CytogenError(f"the number of tests must be a positive integer, got {m}")
    out = np.minimum(1.0, np.asarray(p, dtype=np.float64) * int(m))
    return float(out) if np.ndim(out) == 0 else out


def direction(z_ctrl: np.ndarray, z_treat: np.ndarray) -> np.ndarray:
    """Unit vector from the control centroid to the treated centroid (CytogenError if they coincide)."""
    dist, d = centroid_shift(z_ctrl, z_treat)
    if not dist > 0:
        raise CytogenError("the control and treated centroids coincide: no direction to project on")
    return d / dist


def project(z: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Signed coordinate of each row of ``z`` along ``direction`` (normalised) from ``origin``: (n,)."""
    z = _as_2d(z, "z")
    u = np.asarray(direction, dtype=np.float64).ravel()
    norm = np.linalg.norm(u)
    if not norm > 0:
        raise CytogenError("the projection direction is the zero vector")
    return (z - np.asarray(origin, dtype=np.float64).ravel()[None, :]) @ (u / norm)


# ---------------------------------------------------------------------------------------------
# screening read-outs
# ---------------------------------------------------------------------------------------------
def z_prime(pos: np.ndarray, neg: np.ndarray) -> float:
    """Z'-factor of a read-out between positive and negative controls (Zhang et al. 1999).

    Z' = 1 - 3 (sd_pos + sd_neg) / |mean_pos - mean_neg| (sample sds, ddof=1). 1 is ideal,
    above 0.5 an excellent assay, 0..0.5 marginal, below 0 the control bands overlap.
    Returns -inf when the means coincide and nan with fewer than 2 values in a group.
    """
    p = np.asarray(pos, dtype=np.float64).ravel()
    n = np.asarray(neg, dtype=np.float64).ravel()
    if len(p) < 2 or len(n) < 2:
        return float("nan")
    gap = abs(p.mean() - n.mean())
    spread = 3.0 * (p.std(ddof=1) + n.std(ddof=1))
    if gap == 0:
        return float("-inf") if spread > 0 else float("nan")
    return float(1.0 - spread / gap)


def z_prime_interval(pos: np.ndarray, neg: np.ndarray, n_boot: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of :func:`z_prime` (cells of each group resampled)."""
    p = np.asarray(pos, dtype=np.float64).ravel()
    n = np.asarray(neg, dtype=np.float64).ravel()
    return bootstrap_interval([p, n], z_prime, n_boot=n_boot, confidence=confidence, seed=seed)


def dose_response(values: np.ndarray, doses: np.ndarray) -> dict:
    """Summary of a per-cell read-out against dose.

    Parameters
    ----------
    values : ndarray (n,)
        Read-out per cell (e.g. the projection on the control -> treated direction).
    doses : ndarray (n,)
        Numeric dose per cell.

    Returns
    -------
    dict
        ``doses`` (sorted unique), ``n``, ``mean``, ``median``, ``sd`` (per dose, lists),
        ``spearman_rho`` and ``spearman_p`` (cell-level Spearman correlation of value and dose),
        ``n_violations`` (steps between consecutive doses where the mean goes against the overall
        trend, the sign of rho), ``monotone`` (at least 2 doses and no violation),
        ``n_significant_violations`` (violations larger than twice the standard error of the
        difference of the two means: a saturating response whose plateau wobbles by noise has
        none) and ``monotone_within_noise`` (at least 2 doses and no significant violation).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    d = np.asarray(doses, dtype=np.float64).ravel()
    if len(v) != len(d):
        raise CytogenError(f"values and doses need the same length, got {len(v)} and {len(d)}")
    keep = np.isfinite(v) & np.isfinite(d)
    v, d = v[keep], d[keep]
    levels = np.unique(d)
    means = np.array([v[d == x].mean() for x in levels])
    out = {"doses": levels.tolist(), "n": [int(np.sum(d == x)) for x in levels], "mean": means.tolist(),
           "median": [float(np.median(v[d == x])) for x in levels],
           "sd": [float(v[d == x].std(ddof=1)) if np.sum(d == x) > 1 else float("nan") for x in levels]}
    if len(levels) >= 2 and np.ptp(v) > 0:
        res = sstats.spearmanr(v, d)
        rho, p = float(res.statistic), float(res.pvalue)
    else:
        rho, p = float("nan"), float("nan")
    steps = np.diff(means)
    if np.isfinite(rho) and rho != 0:
        sign = np.sign(rho)
    else:
        sign = np.sign(means[-1] - means[0]) if len(means) > 1 else 0.0
    violations = int(np.sum(steps * sign < 0)) if sign != 0 else len(steps)
    n = np.array(out["n"], dtype=np.float64)
    var = np.array([v[d == x].var(ddof=1) if np.sum(d == x) > 1 else np.inf for x in levels])
    se_step = np.sqrt(var[1:] / n[1:] + var[:-1] / n[:-1])
    significant = int(np.sum((steps * sign < 0) & (np.abs(steps) > 2 * se_step))) if sign != 0 else len(steps)
    out.update(spearman_rho=rho, spearman_p=p, n_violations=violations,
               monotone=bool(len(levels) >= 2 and violations == 0),
               n_significant_violations=significant,
               monotone_within_noise=bool(len(levels) >= 2 and significant == 0))
    return out


# ---------------------------------------------------------------------------------------------
# coupling (Eq 4, 5) and rate / distortion
# ---------------------------------------------------------------------------------------------
def coupling(elbo_own: np.ndarray, elbo_swapped: np.ndarray) -> np.ndarray:
    """Per-cell coupling of a structure to one reference channel (Donovan-Maiye et al. Eq 4).

    The paper's statistic is the log of the likelihood of the cell over the mean likelihood of the
    cell with reference channel r replaced by that of the other cells of the same structure. With
    the ELBO standing for log p, a ratio of likelihoods becomes a difference in log space, and we
    average the swapped ELBOs (a mean of log-likelihoods, not the log of the mean likelihood; the
    former is robust to the huge dynamic range of exp(ELBO) and is the estimate reported here):

        c_i = ELBO(x_i) - mean_j ELBO(x_i with channel r from cell j)

    Large positive c_i: the structure is predicted much better from the cell's own channel r (the
    structure is coupled to r). Zero: channel r carries no information about the structure.

    Parameters
    ----------
    elbo_own : ndarray (n,)
        ELBO of each cell given its own reference.
    elbo_swapped : ndarray (n, k)
        ELBO of each cell with channel r from ``k`` other cells.
    """
    own = np.asarray(elbo_own, dtype=np.float64).ravel()
    sw = _as_2d(elbo_swapped, "elbo_swapped")
    if len(sw) != len(own):
        raise CytogenError(f"elbo_own and elbo_swapped need the same cells, got {len(own)} and {len(sw)}")
    return own - sw.mean(axis=1)


def differential_coupling(c_mem: np.ndarray, c_nuc: np.ndarray) -> float:
    """Differential coupling of a group of cells (Eq 5): d = (C_mem - C_nuc) / (|C_mem| + |C_nuc|).

    ``C_mem`` and ``C_nuc`` are the mean couplings (Eq 4) of the group's cells to the membrane (or
    cell mask) channel and to the nucleus channel. d lies in [-1, 1]: +1 coupled only to the
    membrane, -1 only to the nucleus, 0 equally (or to neither; see the magnitudes). nan when
    both means are 0.
    """
    m = float(np.mean(c_mem))
    n = float(np.mean(c_nuc))
    den = abs(m) + abs(n)
    return (m - n) / den if den > 0 else float("nan")


def rate_distortion(kl_per_cell: np.ndarray, recon_per_cell: np.ndarray) -> dict:
    """Rate (KL summed over latent dimensions, nats) and distortion (reconstruction error) summaries.

    Parameters
    ----------
    kl_per_cell : ndarray (n, D) or (n,)
        KL per cell and dimension (summed over dimensions when 2D).
    recon_per_cell : ndarray (n,)
        Reconstruction error per cell (summed squared error, mean over samples).

    Returns
    -------
    dict
        ``rate``, ``rate_sd``, ``distortion``, ``distortion_sd``, ``elbo`` (= -(rate + distortion),
        the unweighted ELBO), ``n_cells``, and when per-dimension KL is given ``kl_per_dim``
        (mean per dimension) and ``n_active_dims`` (mean KL > 0.6).
    """
    kl = np.asarray(kl_per_cell, dtype=np.float64)
    rec = np.asarray(recon_per_cell, dtype=np.float64).ravel()
    rate_c = kl.sum(axis=1) if kl.ndim == 2 else kl.ravel()
    if len(rate_c) != len(rec) or len(rec) == 0:
        raise CytogenError(f"KL and reconstruction need the same non-zero number of cells, got "
                           f"{len(rate_c)} and {len(rec)}")
    out = {"rate": float(rate_c.mean()), "rate_sd": float(rate_c.std()), "distortion": float(rec.mean()),
           "distortion_sd": float(rec.std()), "elbo": float(-(rate_c + rec).mean()), "n_cells": int(len(rec))}
    if kl.ndim == 2:
        per_dim = kl.mean(axis=0)
        out["kl_per_dim"] = per_dim.tolist()
        out["n_active_dims"] = int(len(informative_dims(per_dim)))
    return out
