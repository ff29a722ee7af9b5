"""Binomial statistics for object-placement metrics (numpy/scipy only).

The number of predicted objects placed within a radius of their real counterpart is modelled as a
binomial count: :func:`fraction_within` gives the fraction with exact Clopper-Pearson and Wilson
score intervals, and :func:`binom_log10_sf` the one-sided p-value of that count under a "random
placement" null, in log10 so that values far below 1e-308 stay finite. The chance of success under
that null comes from :mod:`cytogen.evaluate.chance`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp
from scipy.stats import binom, binomtest

from cytogen.errors import CytogenError


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
