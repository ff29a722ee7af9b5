"""Whole-cell segmentation scores: mean IoU of matched cells and AP / F1 / PQ over IoU thresholds.

Pure functions on integer label images (0 = background), built on
:mod:`cytogen.evaluate.instances`.

Definitions (``S`` = sum of the IoU over matched pairs):

- **matched cells** (:func:`match_cells`): the one-to-one pairing of true and predicted cells that
  maximises the total IoU over all overlapping pairs (IoU > 0), found with the Hungarian algorithm
  (:func:`cytogen.evaluate.instances.match_instances`). Every true cell that overlaps some
  predicted cell can be matched, however poorly.
- ``miou_matched`` = ``S / n_matched``: the mean IoU of the matched cells (the marker-controlled
  segmentation paper's "mIoU of matched cells"; a missed or an extra cell does not lower it).
- ``miou_all_true`` = ``S / n_true``: the same sum over every true cell, an unmatched one counting
  0 (stricter: missed cells lower it).
- ``miou_matched50``: the mean IoU of the pairs matched at IoU >= 0.5 (``sq`` at 0.5).
- ``miou_foreground_only``: ``miou_matched`` of the predicted cell area (the union of the
  predicted cells) divided among the true cells by the nearest true cell: the score the
  prediction would have with its foreground errors alone and a perfect division between touching
  cells. ``miou_matched`` far below it = cells divided badly; it low itself = the mask is wrong.
- per IoU threshold ``t`` (default 0.5, 0.55, ..., 0.95): ``precision, recall, f1, ap, pq`` of
  :func:`cytogen.evaluate.instances.instance_scores` (``ap = tp / (tp + fp + fn)``, the DSB 2018
  / StarDist "average precision").

Empty images: when neither image holds a cell every ratio is 1 (perfect agreement); a ratio with a
zero denominator is otherwise 0. Pooled scores (:func:`pool_cell_scores`) add the sums and counts
of the fields before dividing, so a field weighs by its number of cells.
"""

from __future__ import annotations

import numpy as np

from cytogen.errors import CytogenError
from cytogen.evaluate.instances import (
    DEFAULT_THRESHOLDS, aggregate_scores, instance_scores, iou_table, match_instances,
)

__all__ = ["DEFAULT_THRESHOLDS", "DEFINITIONS", "cell_scores", "match_cells", "pool_cell_scores",
           "threshold_key"]

# the smallest positive float: ``iou >= ANY_OVERLAP`` is ``iou > 0`` (an IoU is at least 1 / pixels)
ANY_OVERLAP = float(np.finfo(np.float64).tiny)

DEFINITIONS = {
    "matched cells": "one-to-one pairs of true and predicted cells maximising the total IoU over all "
                     "overlapping pairs (IoU > 0; Hungarian algorithm)",
    "miou_matched": "mean IoU of the matched cells: sum of their IoUs / number of matched pairs "
                    "(pooled: over all pairs of all fields); missed and extra cells do not lower it",
    "miou_all_true": "sum of the IoUs of the matched cells / number of true cells (an unmatched true "
                     "cell counts 0)",
    "miou_matched50": "mean IoU of the pairs matched at IoU >= 0.5 (sq at 0.5)",
    "miou_foreground_only": "miou_matched of the predicted cell area (union of the predicted cells) given "
                            "pixel by pixel to the nearest true cell: the foreground errors alone",
    "miou_matched_ci95": "95 % percentile bootstrap interval of the pooled miou_matched, resampling "
                         "fields with replacement (2000 draws, seed 0); null with fewer than 2 fields",
    "tp/fp/fn at t": "true cells and predicted cells paired one-to-one with IoU >= t (maximal total "
                     "IoU), unpaired predicted cells, unpaired true cells",
    "precision": "tp / (tp + fp)", "recall": "tp / (tp + fn)", "f1": "2 tp / (2 tp + fp + fn)",
    "ap": "tp / (tp + fp + fn) (DSB 2018 / StarDist average precision at one IoU threshold)",
    "pq": "panoptic quality: sum of matched IoUs / (tp + fp/2 + fn/2)",
    "ap50, f1_50, pq50": "ap, f1, pq at IoU threshold 0.5",
    "map": "mean of the pooled ap over the IoU thresholds (0.5:0.95 by default; DSB 2018's score)",
    "map_ci95": "95 % percentile bootstrap interval of map, resampling fields (one draw for all thresholds)",
    "pooled": "counts and IoU sums added over fields before any ratio (a field weighs by its cells)",
    "empty": "no cell in either image: every ratio 1; otherwise a zero denominator gives 0",
}


def threshold_key(t: float) -> str:
    """Column suffix of an IoU threshold: ``0.5 -> "50"``, ``0.75 -> "75"``."""
    return f"{int(round(float(t) * 100)):02d}"


def match_cells(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched cells: the one-to-one pairs maximising the total IoU over overlapping pairs.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Integer label images of equal shape (2D or 3D), 0 = background.

    Returns
    -------
    ids_true, ids_pred : numpy.ndarray
        ``(n_matched,)`` label ids of the matched true and predicted cells (in ``truth``, ``pred``).
    iou : numpy.ndarray
        ``(n_matched,)`` float64 IoU of each pair (all > 0).
    """
    ids_t, ids_p, table = iou_table(truth, pred)
    r, c = match_instances(table, ANY_OVERLAP)
    return ids_t[r], ids_p[c], table[r, c]


def _ratio(num: float, den: float, both_empty: bool) -> float:
    if both_empty:
        return 1.0
    return float(num / den) if den > 0 else 0.0


def cell_scores(truth: np.ndarray, pred: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> dict:
    """Scores of one field's predicted cells against its true cells (see the module docstring).

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Integer label images of equal shape (2D or 3D), 0 = background. ``truth`` may also be
        another segmentation (agreement); the scores are then not symmetric only in the naming
        (precision and recall swap).
    thresholds : sequence of float
        IoU thresholds in (0, 1] of the instance scores.

    Returns
    -------
    dict
        ``n_true, n_pred, n_matched, sum_iou_matched, miou_matched, miou_all_true,
        miou_matched50`` (None when 0.5 is not a threshold), ``miou_foreground_only`` (with its
        ``sum_iou_foreground_only`` and ``n_matched_foreground_only``), ``matched_iou`` (float64 array of
        the matched pairs' IoUs), ``scores`` (one :func:`instance_scores` dict per threshold) and
        ``precision<k>, recall<k>, f1_<k>, ap<k>, pq<k>`` for each threshold (``k`` =
        :func:`threshold_key`, e.g. ``ap50``).
    """
    ids_t, ids_p, table = iou_table(truth, pred)
    r, c = match_instances(table, ANY_OVERLAP)
    matched = table[r, c]
    n_true, n_pred, n_matched = len(ids_t), len(ids_p), len(r)
    empty = n_true == 0 and n_pred == 0
    total = float(matched.sum())
    scores = instance_scores(truth, pred, thresholds)
    out = {
        "n_true": n_true, "n_pred": n_pred, "n_matched": n_matched, "sum_iou_matched": total,
        "miou_matched": _ratio(total, n_matched, empty), "miou_all_true": _ratio(total, n_true, empty),
        "miou_matched50": _miou50(scores),
        "matched_iou": matched, "scores": scores,
    }
    out.update(_threshold_columns(scores))
    out.update(_foreground_only(truth, pred))
    return out


def _foreground_only(truth: np.ndarray, pred: np.ndarray) -> dict:
    """IoU sum and count of the predicted area divided among the true cells by the nearest one."""
    from scipy import ndimage as ndi

    truth = np.asarray(truth)
    if not truth.any():
        return {"sum_iou_foreground_only": 0.0, "n_matched_foreground_only": 0,
                "miou_foreground_only": 1.0 if not np.asarray(pred).any() else 0.0}
    _, idx = ndi.distance_transform_edt(truth == 0, return_indices=True)
    divided = np.where(np.asarray(pred) != 0, truth[tuple(idx)], 0)
    _, _, table = iou_table(truth, divided)
    r, c = match_instances(table, ANY_OVERLAP)
    total = float(table[r, c].sum())
    return {"sum_iou_foreground_only": total, "n_matched_foreground_only": len(r),
            "miou_foreground_only": _ratio(total, len(r), False)}


def _index_of(scores: list[dict], threshold: float) -> int | None:
    return next((i for i, s in enumerate(scores) if abs(s["threshold"] - threshold) < 1e-9), None)


def _miou50(scores: list[dict]) -> float | None:
    i = _index_of(scores, 0.5)
    return None if i is None else scores[i]["mean_matched_iou"]


def _threshold_columns(scores: list[dict]) -> dict:
    out = {}
    for s in scores:
        k = threshold_key(s["threshold"])
        out.update({f"precision{k}": s["precision"], f"recall{k}": s["recall"], f"f1_{k}": s["f1"],
                    f"ap{k}": s["ap"], f"pq{k}": s["pq"]})
    return out


def _bootstrap_ratio(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> list[float] | None:
    """Percentile 95 % interval of ``sum(num) / sum(den)`` over fields resampled with replacement."""
    n = len(num)
    if n < 2:
        return None
    w = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    d = w @ den
    ok = d > 0
    if not ok.any():
        return None
    ratio = (w @ num)[ok] / d[ok]
    lo, hi = np.percentile(ratio, [2.5, 97.5])
    return [float(lo), float(hi)]


def pool_cell_scores(fields: list[dict], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Dataset-level scores of several fields' :func:`cell_scores`.

    Counts and IoU sums are added over fields before any ratio (:func:`aggregate_scores` for the
    thresholded scores); ``miou_matched_ci95`` and ``ap50_ci95`` are percentile bootstrap intervals
    over fields (``n_boot`` draws, ``seed``), None for a single field.

    Returns
    -------
    dict
        ``n_fields, n_true, n_pred, n_matched, miou_matched, miou_matched_ci95, miou_all_true,
        miou_matched50, miou_foreground_only, miou_matched_field_mean, miou_matched_field_sd`` (over fields with a
        match), ``ap50_ci95``, ``thresholds``, ``ap, f1, pq, precision, recall`` (lists per
        threshold), ``map`` (their mean AP over the thresholds, e.g. 0.5:0.95) with ``map_ci95``,
        ``scores`` (pooled rows of :func:`aggregate_scores`) and
        ``precision<k>, recall<k>, f1_<k>, ap<k>, pq<k>`` per threshold.
    """
    if not fields:
        raise CytogenError("no fields to pool; score at least one pair of label images.")
    n_true = sum(f["n_true"] for f in fields)
    n_pred = sum(f["n_pred"] for f in fields)
    n_matched = sum(f["n_matched"] for f in fields)
    total = sum(f["sum_iou_matched"] for f in fields)
    empty = n_true == 0 and n_pred == 0
    if empty:  # a perfect score of nothing against nothing would flatter (one field may be empty, not all)
        raise CytogenError(f"none of the {len(fields)} field(s) has a cell in either the prediction or the truth: "
                           "there is nothing to score; check that the segmentation produced cells "
                           "(its summary.json n_cells) and that the truth holds labels.")
    scores = aggregate_scores([f["scores"] for f in fields])
    per_field = np.array([f["miou_matched"] for f in fields if f["n_matched"] > 0], dtype=np.float64)
    sums = np.array([f["sum_iou_matched"] for f in fields], dtype=np.float64)
    out = {
        "n_fields": len(fields), "n_true": n_true, "n_pred": n_pred, "n_matched": n_matched,
        "miou_matched": _ratio(total, n_matched, empty),
        "miou_matched_ci95": _bootstrap_ratio(sums, np.array([f["n_matched"] for f in fields], float),
                                              n_boot, seed),
        "miou_all_true": _ratio(total, n_true, empty),
        "miou_matched50": _miou50(scores),
        "miou_foreground_only": _ratio(sum(f["sum_iou_foreground_only"] for f in fields),
                                       sum(f["n_matched_foreground_only"] for f in fields), empty),
        "miou_matched_field_mean": float(per_field.mean()) if per_field.size else None,
        "miou_matched_field_sd": float(per_field.std(ddof=1)) if per_field.size > 1 else None,
        "thresholds": [s["threshold"] for s in scores],
        **{k: [s[k] for s in scores] for k in ("ap", "f1", "pq", "precision", "recall")},
        "scores": scores,
    }
    out.update(_threshold_columns(scores))
    i50 = _index_of(scores, 0.5)
    if i50 is not None:
        tp = np.array([f["scores"][i50]["tp"] for f in fields], dtype=np.float64)
        den = np.array([f["scores"][i50]["tp"] + f["scores"][i50]["fp"] + f["scores"][i50]["fn"]
                        for f in fields], dtype=np.float64)
        out["ap50_ci95"] = _bootstrap_ratio(tp, den, n_boot, seed)
    else:
        out["ap50_ci95"] = None
    out["map"] = float(np.mean(out["ap"]))
    out["map_ci95"] = _bootstrap_map(fields, n_boot, seed)
    return out


def _bootstrap_map(fields: list[dict], n_boot: int, seed: int) -> list[float] | None:
    """Percentile 95 % interval of the mean over thresholds of the pooled AP, fields resampled
    (the same draws for every threshold)."""
    n = len(fields)
    if n < 2:
        return None
    tp = np.array([[s["tp"] for s in f["scores"]] for f in fields], dtype=np.float64)  # (fields, thresholds)
    den = np.array([[s["tp"] + s["fp"] + s["fn"] for s in f["scores"]] for f in fields], dtype=np.float64)
    w = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    d = w @ den
    ok = (d > 0).all(axis=1)
    if not ok.any():
        return None
    m = ((w @ tp)[ok] / d[ok]).mean(axis=1)
    lo, hi = np.percentile(m, [2.5, 97.5])
    return [float(lo), float(hi)]
