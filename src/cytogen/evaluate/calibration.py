"""Calibration of a prediction's per-pixel spread: does a larger spread mean a larger error?

Pure functions on arrays (numpy/scipy only). A prediction with uncertainty is a mean image and
a spread image (the per-pixel standard deviation over test-time augmentations, ensemble members,
MC-dropout passes or GAN samples), both in the target's units. Per field:

* **normalisation** (the ``raw`` family of :mod:`cytogen.evaluate.pixel`): the absolute error
  ``|pred - truth|`` and the spread are divided by the truth's ``p99.8 - p1`` range
  (:data:`~cytogen.evaluate.pixel.PERCENTILES`), nothing fitted to the prediction, so both are in
  units of the truth's 1-99.8 percentile range and fields of different brightness pool;
* **subsample**: a seeded random sample of at most ``max_pixels`` pixels (all of them when the
  field is smaller), in random order; the per-field Spearman rho, the pooled Spearman rho and the
  spread deciles use it, the means and the calibration ratio use every pixel.

Pooled over fields (:func:`pool_calibration`): Spearman rho of spread against |error| over the
concatenated samples with a percentile-bootstrap-over-fields 95 % interval, the reliability curve
(mean |error| per pooled spread decile, intervals by the same bootstrap over fields), and two
scalar summaries: the calibration ratio ``sum|e| / (sqrt(2/pi) sum(sigma))`` and the Spearman rho
of the ten decile means against the decile index.

The reference: if the truth were ``pred + sigma * z`` with ``z`` standard normal (a calibrated
Gaussian spread), ``E|e| = sigma * sqrt(2/pi)`` (about 0.80 sigma): the reliability curve then
follows the line ``y = sqrt(2/pi) x`` and the ratio is 1. Above 1 the spread is too small
(over-confident), below 1 too large.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from cytogen.errors import CytogenError
from cytogen.evaluate.pixel import PERCENTILES, pearson_r

#: ``E|e| / sigma`` of a Gaussian error of standard deviation sigma.
GAUSS_ABS = float(np.sqrt(2.0 / np.pi))
#: Pixels sampled per field (seeded) for the rank statistics and the deciles.
MAX_PIXELS = 20_000
#: Pixels per bootstrap resample of the pooled Spearman rho (spread evenly over the drawn fields).
BOOT_PIXELS = 50_000
N_BINS = 10
N_BOOT = 1000

NORMALISATION = ("raw family: |pred - truth| and the spread both divided by the truth's p99.8 - p1 range "
                 f"(percentiles {PERCENTILES[0]:g} and {PERCENTILES[1]:g} of that field's truth), nothing "
                 "fitted to the prediction: units of the truth's 1-99.8 percentile range")
GAUSS_REFERENCE = ("a calibrated Gaussian spread (truth = pred + sigma z, z ~ N(0, 1)) gives "
                   "E|error| = sigma * sqrt(2/pi) = 0.798 sigma; it is a reference line, not a fit")
RATIO_MEANING = ("calibration ratio = sum over all pixels of |error| / (sqrt(2/pi) * sum of the spread): "
                 "1 for a calibrated Gaussian spread, > 1 spread too small (over-confident), < 1 too large")
DECILE_SPEARMAN_MEANING = ("Spearman rho of the mean |error| of the spread deciles against the decile "
                           "index: 1 = the error rises with every decile of spread")
INTERVAL_METHOD = ("percentile bootstrap over fields (fields drawn with replacement, {n_boot} draws, seed "
                   "{seed}); none with fewer than 2 fields")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho (Pearson r of average ranks); NaN when either is constant or has < 3 values."""
    x, y = np.ravel(x), np.ravel(y)
    if x.size < 3:
        return float("nan")
    return pearson_r(rankdata(x), rankdata(y))


def truth_range(truth: np.ndarray) -> tuple[float, float]:
    """The truth's ``(p1, p99.8 - p1)``: the raw-family normalisation of :mod:`~cytogen.evaluate.pixel`.

    Raises
    ------
    CytogenError
        The truth is flat between these percentiles (no range to state errors in).
    """
    lo, hi = (float(v) for v in np.percentile(truth, PERCENTILES))
    if not hi > lo:
        raise CytogenError(
            f"the truth is flat between its {PERCENTILES[0]}th and {PERCENTILES[1]}th percentiles "
            f"({lo:g}); errors and spread have no range to be stated in. Leave such fields out")
    return lo, hi - lo


def normalised_error_spread(pred: np.ndarray, spread: np.ndarray, truth: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, float]:
    """``|pred - truth| / scale``, ``spread / scale`` and ``scale`` (the truth's p99.8 - p1).

    Parameters
    ----------
    pred, spread, truth
        One channel each, same shape: the mean prediction, its per-pixel standard deviation
        (>= 0) and the true image, all in the target's units.

    Raises
    ------
    CytogenError
        Shapes differ, NaN/Inf pixels, a negative spread, or a flat truth.
    """
    p, s, t = (np.asarray(a, dtype=np.float64) for a in (pred, spread, truth))
    if not p.shape == s.shape == t.shape:
        raise CytogenError(f"prediction {p.shape}, spread {s.shape} and truth {t.shape} differ in shape")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(s)) and np.all(np.isfinite(t))):
        raise CytogenError("NaN/Inf pixels in the prediction, spread or truth")
    if s.min() < 0:
        raise CytogenError(f"the spread has negative pixels (min {s.min():g}); it must be a standard deviation")
    _, scale = truth_range(t)
    return np.abs(p - t) / scale, s / scale, scale


@dataclass
class FieldCalibration:
    """One field's calibration numbers and its seeded pixel sample (normalised units).

    ``sample_error`` / ``sample_spread`` hold the same pixels, in random order; ``sum_error`` and
    ``sum_spread`` are over all ``n_pixels`` pixels.
    """

    name: str
    n_pixels: int
    scale: float
    spearman: float
    mean_abs_error: float
    mean_spread: float
    sum_error: float
    sum_spread: float
    sample_error: np.ndarray
    sample_spread: np.ndarray

    def row(self) -> dict:
        """The ``fields.csv`` row."""
        return {"name": self.name, "spearman": self.spearman, "mean_abs_error": self.mean_abs_error,
                "mean_spread": self.mean_spread,
                "ratio": (self.sum_error / (GAUSS_ABS * self.sum_spread) if self.sum_spread > 0
                          else float("nan")),
                "n_pixels": self.n_pixels, "n_sampled": int(self.sample_error.size),
                "truth_range": self.scale}


def field_calibration(name: str, pred: np.ndarray, spread: np.ndarray, truth: np.ndarray, *,
                      max_pixels: int = MAX_PIXELS, seed: int = 0) -> FieldCalibration:
    """Calibration of one field's channel (see the module docstring).

    The sample is ``max_pixels`` pixels drawn without replacement by
    ``numpy.random.default_rng(seed)`` (all pixels, shuffled, when the field is smaller).
    """
    if int(max_pixels) < 3:
        raise CytogenError(f"max_pixels must be at least 3, got {max_pixels}")
    err, sd, scale = normalised_error_spread(pred, spread, truth)
    err, sd = err.ravel(), sd.ravel()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(err.size)[: int(max_pixels)]
    se, ss = err[idx], sd[idx]
    return FieldCalibration(name, int(err.size), scale, spearman(ss, se), float(err.mean()), float(sd.mean()),
                            float(err.sum()), float(sd.sum()), se, ss)


def _percentile_interval(values: np.ndarray) -> list[float] | None:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return None
    lo, hi = np.percentile(v, [2.5, 97.5])
    return [float(lo), float(hi)]


def _field_weights(n_fields: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n_fields)`` counts of each field in each resample of fields with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_fields, np.full(n_fields, 1.0 / n_fields), size=n_boot).astype(np.float64)


def _pooled_spearman(fields: list[FieldCalibration], n_boot: int, seed: int, boot_pixels: int) -> dict:
    err = np.concatenate([f.sample_error for f in fields])
    sd = np.concatenate([f.sample_spread for f in fields])
    rho = spearman(sd, err)
    ci = None
    if len(fields) >= 2 and np.isfinite(rho):
        m = max(3, int(boot_pixels) // len(fields))  # samples are shuffled: the first m are random
        rng = np.random.default_rng(seed)
        boots = np.empty(int(n_boot))
        for b in range(int(n_boot)):
            pick = rng.integers(0, len(fields), len(fields))
            boots[b] = spearman(np.concatenate([fields[i].sample_spread[:m] for i in pick]),
                                np.concatenate([fields[i].sample_error[:m] for i in pick]))
        ci = _percentile_interval(boots)
    return {"value": rho, "ci95": ci, "n_pixels": int(err.size),
            "what": "Spearman rho of spread vs |error| over the pooled per-field pixel samples",
            "interval": ("bootstrap over fields; each resample uses the first "
                         f"{max(3, int(boot_pixels) // len(fields))} pixels of each drawn field's random "
                         "sample" if ci is not None else "none: needs at least 2 fields and a defined rho")}


def reliability_bins(fields: list[FieldCalibration], n_bins: int = N_BINS, n_boot: int = N_BOOT,
                     seed: int = 0) -> list[dict]:
    """Mean |error| per pooled spread bin (deciles by default), with bootstrap-over-fields intervals.

    The pooled sample is ranked by spread (ties broken by the samples' random order) and cut into
    ``n_bins`` groups of equal count, so tied spreads never empty a bin. Per bin: its spread range,
    median and mean spread, mean |error|, the Gaussian reference ``sqrt(2/pi) * mean spread``,
    the pixel count and ``ci95`` (mean |error| of the bin's pixels over fields resampled with
    replacement; None with one field).
    """
    err = np.concatenate([f.sample_error for f in fields])
    sd = np.concatenate([f.sample_spread for f in fields])
    owner = np.concatenate([np.full(f.sample_error.size, i) for i, f in enumerate(fields)])
    if err.size < n_bins:
        raise CytogenError(f"{err.size} pixels sampled; need at least {n_bins} for the spread bins")
    order = np.argsort(sd, kind="stable")
    bin_of = np.empty(err.size, np.int64)
    for b, part in enumerate(np.array_split(order, n_bins)):
        bin_of[part] = b
    sums = np.zeros((len(fields), n_bins))
    counts = np.zeros((len(fields), n_bins))
    np.add.at(sums, (owner, bin_of), err)
    np.add.at(counts, (owner, bin_of), 1.0)
    w = _field_weights(len(fields), n_boot, seed) if len(fields) >= 2 else None
    rows = []
    for b in range(n_bins):
        e, s = err[bin_of == b], sd[bin_of == b]
        ci = None
        if w is not None:
            den = w @ counts[:, b]
            ok = den > 0
            ci = _percentile_interval((w[ok] @ sums[:, b]) / den[ok])
        rows.append({"bin": b + 1, "spread_min": float(s.min()), "spread_max": float(s.max()),
                     "median_spread": float(np.median(s)), "mean_spread": float(s.mean()),
                     "mean_abs_error": float(e.mean()),
                     "ci95_low": None if ci is None else ci[0], "ci95_high": None if ci is None else ci[1],
                     "gaussian_reference": GAUSS_ABS * float(s.mean()), "count": int(e.size)})
    return rows


def calibration_ratio(fields: list[FieldCalibration], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """``sum|e| / (sqrt(2/pi) sum(sigma))`` over all pixels of all fields, bootstrap-over-fields interval."""
    num = np.array([f.sum_error for f in fields])
    den = np.array([f.sum_spread for f in fields]) * GAUSS_ABS
    value = float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
    ci = None
    if len(fields) >= 2 and np.isfinite(value):
        w = _field_weights(len(fields), n_boot, seed)
        d = w @ den
        ok = d > 0
        ci = _percentile_interval((w[ok] @ num) / d[ok])
    return {"value": value, "ci95": ci, "what": RATIO_MEANING,
            "n_pixels": int(sum(f.n_pixels for f in fields))}


def pool_calibration(fields: list[FieldCalibration], *, n_bins: int = N_BINS, n_boot: int = N_BOOT,
                     seed: int = 0, boot_pixels: int = BOOT_PIXELS) -> dict:
    """Everything pooled over fields: Spearman, reliability bins, ratio, decile Spearman, per-field rho.

    Returns
    -------
    dict
        ``pooled_spearman``, ``bins`` (:func:`reliability_bins`), ``calibration_ratio``,
        ``decile_spearman``, ``field_spearman`` (median, min, max, n of the per-field rho) and the
        methods in words (``normalisation``, ``subsample``, ``interval``, ``gaussian_reference``).
    """
    if not fields:
        raise CytogenError("no fields to pool")
    bins = reliability_bins(fields, n_bins, n_boot, seed)
    rho_f = np.array([f.spearman for f in fields])
    ok = rho_f[np.isfinite(rho_f)]
    n_undefined = int((~np.isfinite(rho_f)).sum())
    return {
        "n_fields": len(fields),
        "pooled_spearman": _pooled_spearman(fields, n_boot, seed, boot_pixels),
        "field_spearman": {"median": float(np.median(ok)) if ok.size else None,
                           "min": float(ok.min()) if ok.size else None,
                           "max": float(ok.max()) if ok.size else None, "n": int(ok.size),
                           "n_undefined": n_undefined,
                           "what": "per field: Spearman rho of spread vs |error| over that field's pixel sample "
                                   "(undefined when the spread or the error is constant)"},
        "calibration_ratio": calibration_ratio(fields, n_boot, seed),
        "decile_spearman": {"value": spearman(np.arange(len(bins)), [b["mean_abs_error"] for b in bins]),
                            "what": DECILE_SPEARMAN_MEANING if n_bins == 10 else
                            DECILE_SPEARMAN_MEANING.replace("deciles", f"{n_bins} bins")},
        "mean_abs_error": float(sum(f.sum_error for f in fields) / sum(f.n_pixels for f in fields)),
        "mean_spread": float(sum(f.sum_spread for f in fields) / sum(f.n_pixels for f in fields)),
        "bins": bins,
        "normalisation": NORMALISATION,
        "subsample": (f"per field a seeded (seed {seed}) random sample of at most "
                      f"{max(f.sample_error.size for f in fields)} pixels for the Spearman rho and the "
                      "spread bins (each field weighs by its sample size); means and the ratio use all pixels"),
        "bins_method": (f"{n_bins} groups of equal pixel count of the pooled sample ranked by spread "
                        "(ties broken at random)"),
        "interval": INTERVAL_METHOD.format(n_boot=n_boot, seed=seed),
        "gaussian_reference": GAUSS_REFERENCE,
    }
