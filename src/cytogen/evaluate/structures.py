"""Several predicted structures of the same fields: a common intensity scale and region agreement.

Exclusivity (:mod:`cytogen.evaluate.exclusivity`) compares the values of different structures at
one pixel, so they must share a scale. The scales, each applied per structure:

- ``truth``: prediction and truth both mapped by the *truth field's* ``(x - p1) / (p99.8 - p1)``
  (cytogen's ``evaluate pixels`` convention and the target normalisation cytogen trains with);
  1.0 is the bright level of the real structure in that field.
- ``percentile``: ``(x - p1) / (p99.8 - p1)`` of that structure's values pooled over all fields
  (no truth needed; relative brightness between fields is kept).
- ``minmax``: ``(x - min) / (max - min)`` pooled over all fields, i.e. [0, 1]; times 255 this is
  the 8-bit pixel-intensity scale of Sun et al.'s tables.
- ``none``: the values as given (already on a common scale).

Nothing is clipped. Region agreement is the Jaccard index of the thresholded truth and
prediction of each structure (Sun et al., section 3.1), pooled as sums of intersections and
unions over fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from skimage.filters import threshold_li, threshold_otsu, threshold_triangle

from cytogen.errors import CytogenError

SCALES = ("truth", "percentile", "minmax", "none")

SCALE_NOTES = {
    "truth": "prediction and truth of each structure mapped by the truth field's (x - p1) / (p99.8 - p1)",
    "percentile": "each structure mapped by (x - p1) / (p99.8 - p1) of its values pooled over all fields",
    "minmax": "each structure mapped to [0, 1] by its min and max over all fields (x 255 = 8-bit units)",
    "none": "values as given, assumed to share one scale",
}

#: At most this many values per structure and field enter the pooled percentiles (an even stride).
_MAX_SAMPLE = 1_000_000


def pooled_scale(fields: Iterable[np.ndarray], method: str,
                 percentiles: tuple[float, float] = (1.0, 99.8)) -> list[tuple[float, float]]:
    """Per-structure ``(offset, range)`` pooled over fields for ``percentile``, ``minmax`` or ``none``.

    Parameters
    ----------
    fields : iterable of ndarray, each (S, [Z,] Y, X)
        The same structures in the same order in every field (read one at a time).
    method : str
        ``percentile``, ``minmax`` or ``none`` (``truth`` is per field: :func:`truth_scaled`).
    percentiles : (float, float)
        Low and high percentiles of ``percentile`` (over at most 10^6 evenly strided values per
        structure and field; min and max are exact).
    """
    if method not in ("percentile", "minmax", "none"):
        raise CytogenError(f"scale {method!r} is not pooled; choose one of percentile, minmax, none")
    samples: list[list[np.ndarray]] = []
    lows: list[float] = []
    highs: list[float] = []
    for f in fields:
        if not samples:
            samples, lows, highs = [[] for _ in f], [np.inf] * len(f), [-np.inf] * len(f)
        for s in range(len(samples)):
            v = np.asarray(f[s], np.float64).ravel()
            samples[s].append(v[:: max(1, int(np.ceil(v.size / _MAX_SAMPLE)))])
            lows[s], highs[s] = min(lows[s], float(v.min())), max(highs[s], float(v.max()))
    params = []
    for s in range(len(samples)):
        if method == "none":
            params.append((0.0, 1.0))
            continue
        lo, hi = (np.percentile(np.concatenate(samples[s]), percentiles) if method == "percentile"
                  else (lows[s], highs[s]))
        if not hi > lo:
            raise CytogenError(f"structure {s}: its values are constant ({lo:g}) over all fields, so the "
                               f"{method} scale is undefined; use --scale none or check the predictions")
        params.append((float(lo), float(hi - lo)))
    return params


def apply_scale(stack: np.ndarray, params: Sequence[tuple[float, float]]) -> np.ndarray:
    """``(x - offset) / range`` per structure (float32)."""
    out = np.empty(stack.shape, np.float32)
    for s, (lo, rng) in enumerate(params):
        out[s] = (stack[s] - lo) / rng
    return out


def truth_scaled(pred: np.ndarray, truth: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8),
                 name: str = "field") -> tuple[np.ndarray, np.ndarray]:
    """Prediction and truth of each structure mapped by the truth's own percentiles in this field."""
    if pred.shape != truth.shape:
        raise CytogenError(f"{name}: prediction shape {pred.shape} differs from the truth's {truth.shape}")
    p_out, t_out = np.empty(pred.shape, np.float32), np.empty(truth.shape, np.float32)
    for s in range(pred.shape[0]):
        lo, hi = np.percentile(truth[s], percentiles)
        if not hi > lo:
            raise CytogenError(f"{name}: structure {s} of the truth is flat between its {percentiles} "
                               "percentiles, so the truth scale is undefined; use --scale percentile")
        p_out[s] = (pred[s] - lo) / (hi - lo)
        t_out[s] = (truth[s] - lo) / (hi - lo)
    return p_out, t_out


def region_mask(image: np.ndarray, threshold: str | float = "otsu") -> np.ndarray:
    """Pixels of a structure: above Otsu/Li/triangle of this image, or above a value."""
    a = np.asarray(image, np.float64)
    if isinstance(threshold, str):
        funcs = {"otsu": threshold_otsu, "li": threshold_li, "triangle": threshold_triangle}
        if threshold not in funcs:
            raise CytogenError(f"threshold {threshold!r}: choose otsu, li, triangle or a number")
        if a.max() == a.min():
            return np.zeros(a.shape, bool)
        return a > funcs[threshold](a)
    return a > float(threshold)


def jaccard_counts(truth_mask: np.ndarray, pred_mask: np.ndarray) -> tuple[int, int]:
    """Intersection and union pixel counts (pool them over fields, then divide)."""
    return int(np.count_nonzero(truth_mask & pred_mask)), int(np.count_nonzero(truth_mask | pred_mask))


def jaccard(intersection: int, union: int) -> float:
    """``intersection / union``; 1.0 when both regions are empty."""
    return 1.0 if union == 0 else intersection / union
