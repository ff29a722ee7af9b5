"""Pixel-level agreement between a predicted and a true image (numpy/scikit-image only).

Two families of metrics per channel, always named by family:

* **raw** (``raw_l1``, ``raw_mse``, ``raw_ssim``, ``raw_psnr``): the prediction as given
  against the truth, as Vasudevan et al. report L1/SSIM/PSNR and Sun et al. 2022 report MSE.
  Nothing is fitted to the prediction. With ``normalize="percentile"`` (the default) both
  images are mapped by the *same* transform, taken from the truth alone:
  ``(x - p1) / (p99.8 - p1)`` with the truth's 1st and 99.8th percentiles, so raw errors are in
  units of the truth's 1-99.8 percentile range. With ``normalize="none"`` they are in the
  target's own units.
* **calibrated** (``calibrated_l1``, ...): the prediction first fitted to the truth by least
  squares, ``slope * pred + offset``, with the slope clamped at >= 0 as CSBDeep's evaluation
  does (Weigert et al. 2018). The fit flatters: an affinely wrong prediction scores perfectly,
  but an anti-correlated one gets slope 0, i.e. the constant mean of the truth, and so scores
  like a blank image, never better. ``calibration_slope`` and ``calibration_offset`` are the
  fit in the images' own units (``truth ~ slope * pred + offset``).

``pearson_r`` is computed on the prediction as given, so its sign is kept.

SSIM is that of Wang et al. 2004: an 11 x 11 (11 x 11 x 11 in 3D) Gaussian window with
sigma 1.5, population covariances, K1 = 0.01, K2 = 0.03, averaged over the positions where the
whole window fits. An image smaller than 11 pixels along any axis has no such position: its
SSIM is NaN (see :data:`SSIM_UNDEFINED_REASON`), never a smaller window. Unlike the other
metrics SSIM depends on the images' zero point (its luminance term), so it differs between
``normalize`` modes, and it assumes non-negative intensities: an inverted prediction whose local
means are negative can score a positive SSIM; read it beside ``pearson_r``. The calibration fit
minimises MSE, not SSIM, so ``calibrated_ssim`` can be below ``raw_ssim``. PSNR is
``10 log10(R**2 / MSE)`` with ``R`` the truth's ``p99.8 - p1`` range in the units the metric is
computed in (1.0 after percentile normalisation), recorded per channel as
``psnr_data_range``; one hot pixel cannot move it the way it moves ``max - min``.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from cytogen.errors import CytogenError

#: Per-channel keys of :func:`channel_metrics`, in report order.
METRICS = (
    "pearson_r",
    "raw_l1", "raw_mse", "raw_ssim", "raw_psnr",
    "calibrated_l1", "calibrated_mse", "calibrated_ssim", "calibrated_psnr",
    "calibration_slope", "calibration_offset", "psnr_data_range",
)

#: Truth percentiles that define the normalisation and the PSNR data range.
PERCENTILES = (1.0, 99.8)
#: SSIM window (Wang et al. 2004): Gaussian of this sigma, truncated to this many pixels per axis.
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
SSIM_UNDEFINED_REASON = (f"SSIM needs at least {SSIM_WINDOW} pixels along every axis for its "
                         f"{SSIM_WINDOW}-pixel Gaussian window (sigma {SSIM_SIGMA}); smaller images get NaN")

#: What each metric is, in words (for JSON summaries and reports).
DESCRIPTIONS = {
    "pearson_r": "Pearson r of the prediction as given with the truth (sign kept)",
    "raw_l1": "raw: mean |pred - truth|, prediction as given",
    "raw_mse": "raw: mean (pred - truth)^2, prediction as given",
    "raw_ssim": f"raw: SSIM, {SSIM_WINDOW}-px Gaussian window sigma {SSIM_SIGMA} (Wang et al. 2004)",
    "raw_psnr": "raw: PSNR in dB, data range psnr_data_range",
    "calibrated_l1": "calibrated (affine fit to the truth, flatters): mean |fit - truth|",
    "calibrated_mse": "calibrated (affine fit to the truth, flatters): mean (fit - truth)^2",
    "calibrated_ssim": "calibrated (affine fit to the truth, flatters): SSIM, same window",
    "calibrated_psnr": "calibrated (affine fit to the truth, flatters): PSNR in dB",
    "calibration_slope": "slope of the least-squares fit truth ~ slope * pred + offset, clamped >= 0",
    "calibration_offset": "offset of that fit, in the target's own units",
    "psnr_data_range": "truth p99.8 - p1 in the metric units (1.0 after percentile normalisation)",
}


#: The two metric families, in words (every summary and report states them).
FAMILIES = {
    "raw": "raw: the prediction as given against the truth; nothing fitted to the prediction",
    "calibrated": ("calibrated (affine fit to the truth, flatters): the prediction replaced by "
                   "slope * pred + offset fitted to the truth by least squares, slope clamped at >= 0 "
                   "(an anti-correlated prediction becomes the constant mean of the truth)"),
}


def family_of(metric: str) -> str:
    """Short family label of a metric key, for report tables."""
    if metric.startswith("calibrat"):
        return "calibrated (affine fit to the truth, flatters)"
    if metric.startswith("raw_") or metric == "pearson_r":
        return "raw (prediction as given)"
    return "fit / range"


def units_note(normalize: str) -> str:
    """One sentence saying what units the L1/MSE/PSNR of ``normalize`` are in."""
    if normalize == "percentile":
        return ("raw and calibrated errors are in units of the truth's 1-99.8 percentile range: both "
                "images mapped by (x - p1) / (p99.8 - p1) of the truth, nothing fitted to the prediction")
    return "raw and calibrated errors are in the target's own units (no normalisation)"


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays (NaN if either is constant)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def calibration_fit(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Least-squares ``slope, offset`` with ``truth ~ slope * pred + offset`` and ``slope >= 0``.

    An anti-correlated (or constant) prediction gets slope 0 and offset ``mean(truth)``: the
    best constant image (Weigert et al. 2018 clamp the slope the same way).
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=np.float64).ravel()
    pc = p - p.mean()
    var = float((pc * pc).mean())
    slope = float((pc * (t - t.mean())).mean() / var) if var > 0 else 0.0
    slope = max(slope, 0.0)
    return slope, float(t.mean() - slope * p.mean())


def ssim(pred: np.ndarray, truth: np.ndarray, data_range: float) -> float:
    """SSIM of Wang et al. 2004 (11-px Gaussian window, sigma 1.5), NaN if the image is too small."""
    if min(truth.shape) < SSIM_WINDOW:
        return float("nan")
    return float(structural_similarity(truth, pred, data_range=data_range, gaussian_weights=True,
                                       sigma=SSIM_SIGMA, use_sample_covariance=False,
                                       win_size=SSIM_WINDOW))


def psnr(mse: float, data_range: float) -> float:
    """``10 log10(data_range**2 / mse)`` in dB (inf for a perfect prediction)."""
    return float(10 * np.log10(data_range ** 2 / mse)) if mse > 0 else float("inf")


def _family(pred: np.ndarray, truth: np.ndarray, data_range: float, prefix: str) -> dict[str, float]:
    d = pred - truth
    mse = float(np.mean(d * d))
    return {f"{prefix}_l1": float(np.mean(np.abs(d))), f"{prefix}_mse": mse,
            f"{prefix}_ssim": ssim(pred, truth, data_range), f"{prefix}_psnr": psnr(mse, data_range)}


def channel_metrics(pred: np.ndarray, truth: np.ndarray, *, normalize: str = "percentile") -> dict[str, float]:
    """All :data:`METRICS` for one channel (2D or 3D arrays of equal shape).

    Parameters
    ----------
    pred, truth
        The prediction as given and the true image, same shape, finite.
    normalize
        ``"percentile"``: both images mapped by the truth's ``(x - p1) / (p99.8 - p1)`` before
        the errors are taken (raw errors in units of the truth's percentile range).
        ``"none"``: errors in the target's own units.

    Returns
    -------
    dict
        ``pearson_r``, the raw and calibrated L1/MSE/SSIM/PSNR, the calibration fit and the
        PSNR data range (see the module docstring).

    Raises
    ------
    CytogenError
        Shapes differ, a pixel is NaN/Inf, the truth is flat between its percentiles (no data
        range to normalise by or to state PSNR against), or ``normalize`` is unknown.
    """
    if normalize not in ("percentile", "none"):
        raise CytogenError(f"unknown normalize {normalize!r}; use percentile or none")
    if pred.shape != truth.shape:
        raise CytogenError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))):
        raise CytogenError("NaN/Inf pixels in prediction or truth; metrics are undefined")
    lo, hi = (float(v) for v in np.percentile(t, PERCENTILES))
    if not hi > lo:
        raise CytogenError(
            f"the truth is flat between its {PERCENTILES[0]}th and {PERCENTILES[1]}th percentiles "
            f"({lo:g}); pixel errors have no data range to be stated in. Leave such fields out of "
            "the evaluation")
    slope, offset = calibration_fit(p, t)
    cal = slope * p + offset
    if normalize == "percentile":
        scale = hi - lo
        t, p, cal = (t - lo) / scale, (p - lo) / scale, (cal - lo) / scale
        data_range = 1.0
    else:
        data_range = hi - lo
    return {"pearson_r": pearson_r(p, t), **_family(p, t, data_range, "raw"),
            **_family(cal, t, data_range, "calibrated"),
            "calibration_slope": slope, "calibration_offset": offset, "psnr_data_range": data_range}


def image_metrics(pred: np.ndarray, truth: np.ndarray, *, normalize: str = "percentile") -> list[dict[str, float]]:
    """Per-channel metrics of ``(C, [Z,] Y, X)`` arrays; one dict per channel."""
    if pred.shape != truth.shape:
        raise CytogenError(
            f"prediction shape {pred.shape} differs from truth shape {truth.shape}; "
            "compare the prediction with the target it was made for"
        )
    return [{"channel": c, **channel_metrics(pred[c], truth[c], normalize=normalize)}
            for c in range(pred.shape[0])]


def summarize(rows: list[dict[str, float]], keys: tuple[str, ...] = METRICS) -> dict[str, dict[str, float]]:
    """Mean, median, std, min, max and n of each metric over rows (non-finite values left out)."""
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows if k in r], dtype=np.float64)
        v = v[np.isfinite(v)]
        out[k] = ({"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()),
                   "min": float(v.min()), "max": float(v.max()), "n": int(v.size)} if v.size
                  else {"n": 0})
    return out
