"""Pixel-level agreement between a predicted and a true image (numpy/scikit-image only).

Metrics per channel: L1, MSE, SSIM, PSNR and Pearson r. With ``normalize="percentile"`` (the
default) the truth is scaled so that its 1st/99.8th percentiles map to 0/1 and the prediction
is mapped onto that scale by the least-squares affine fit (as CSBDeep's evaluation does), so
that L1/MSE/SSIM/PSNR judge structure rather than an arbitrary intensity offset. Pearson r is
invariant to both.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cytogen.errors import CytogenError

METRICS = ("l1", "mse", "ssim", "psnr", "pearson_r")


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays (NaN if either is constant)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def _percentile_scale(truth: np.ndarray, lo: float = 1.0, hi: float = 99.8) -> tuple[float, float]:
    p_lo, p_hi = np.percentile(truth, [lo, hi])
    scale = p_hi - p_lo
    return float(p_lo), float(scale if scale > 0 else 1.0)


def _affine_fit(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``a * pred + b`` minimising the squared error to ``truth``."""
    p = pred.ravel().astype(np.float64)
    t = truth.ravel().astype(np.float64)
    var = p.var()
    a = ((p - p.mean()) * (t - t.mean())).mean() / var if var > 0 else 0.0
    b = t.mean() - a * p.mean()
    return (a * pred + b).astype(np.float64)


def channel_metrics(pred: np.ndarray, truth: np.ndarray, *, normalize: str = "percentile") -> dict[str, float]:
    """Metrics for one channel (2D or 3D arrays of equal shape)."""
    if pred.shape != truth.shape:
        raise CytogenError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))):
        raise CytogenError("NaN/Inf pixels in prediction or truth; metrics are undefined")
    if normalize == "percentile":
        off, scale = _percentile_scale(t)
        t = (t - off) / scale
        p = _affine_fit(p, t)
    elif normalize != "none":
        raise CytogenError(f"unknown normalize {normalize!r}; use percentile or none")
    data_range = float(t.max() - t.min()) or 1.0
    small = min(t.shape)
    win = min(7, small if small % 2 else small - 1)
    ssim = (structural_similarity(t, p, data_range=data_range, win_size=win)
            if win >= 3 else float("nan"))
    mse = float(np.mean((p - t) ** 2))
    return {
        "l1": float(np.mean(np.abs(p - t))), "mse": mse, "ssim": float(ssim),
        "psnr": float(peak_signal_noise_ratio(t, p, data_range=data_range)) if mse > 0 else float("inf"),
        "pearson_r": pearson_r(p, t),
    }


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
    """Mean, median, std, min, max and n of each metric over rows (NaN-aware)."""
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows if k in r], dtype=np.float64)
        v = v[np.isfinite(v)]
        out[k] = ({"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()),
                   "min": float(v.min()), "max": float(v.max()), "n": int(v.size)} if v.size
                  else {"n": 0})
    return out
