"""Instance-level agreement of two label images (StarDist / Cellpose-style scores).

A true and a predicted object are a true positive at threshold ``t`` when they are paired by a
one-to-one matching that maximises the total IoU over pairs with ``IoU >= t``. For ``t > 0.5``
such pairs are unique (two objects cannot both overlap a third by more than half of the
union), so the matching is plain thresholding; otherwise (``t <= 0.5``) the Hungarian algorithm
(:func:`scipy.optimize.linear_sum_assignment`) resolves the conflicts. Note that StarDist
maximises the *number* of matches first; the two only differ below 0.5 when conflicts exist.

Scores per threshold (``tp``, ``fp``, ``fn`` counts; ``S`` = sum of IoU over true positives):
precision ``tp/(tp+fp)``, recall ``tp/(tp+fn)``, f1 ``2tp/(2tp+fp+fn)``, ap (the DSB 2018 /
StarDist "accuracy") ``tp/(tp+fp+fn)``, mean_matched_iou = sq ``S/tp``, rq ``tp/(tp+fp/2+fn/2)``
(= f1) and pq ``S/(tp+fp/2+fn/2)`` = sq * rq.

Convention for empty images: a ratio with a zero denominator is 0 (as StarDist), except when
neither image holds an object, which is perfect agreement: every ratio is then 1.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.segmentation import relabel_sequential

from cytogen.errors import CytogenError

DEFAULT_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
RATIOS = ("precision", "recall", "f1", "ap", "mean_matched_iou", "pq", "sq", "rq")


def _check_pair(labels_true: np.ndarray, labels_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for name, lab in (("labels_true", labels_true), ("labels_pred", labels_pred)):
        arr = np.asarray(lab)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if not np.issubdtype(arr.dtype, np.integer):
            raise CytogenError(
                f"{name} has dtype {arr.dtype}; instance scores need integer label images "
                "(0 = background). Segment intensity images first (segment_nuclei)."
            )
        if arr.size and arr.min() < 0:
            raise CytogenError(f"{name} contains negative labels; object ids must be >= 0.")
        out.append(arr)
    if out[0].shape != out[1].shape:
        raise CytogenError(
            f"label images differ in shape: true {out[0].shape}, predicted {out[1].shape}; "
            "compare labels of the same field."
        )
    return out[0], out[1]


def iou_table(labels_true: np.ndarray, labels_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every (true, predicted) object pair, from one joint histogram.

    Parameters
    ----------
    labels_true, labels_pred : numpy.ndarray
        Integer label images of equal shape (2D or 3D), 0 = background.

    Returns
    -------
    ids_true : numpy.ndarray
        ``(n_true,)`` ids present in ``labels_true`` (sorted, 0 excluded).
    ids_pred : numpy.ndarray
        ``(n_pred,)`` ids present in ``labels_pred``.
    iou : numpy.ndarray
        ``(n_true, n_pred)`` float64 IoU matrix.
    """
    t, p = _check_pair(labels_true, labels_pred)
    t_seq, _, inv_t = relabel_sequential(t)
    p_seq, _, inv_p = relabel_sequential(p)
    n_t, n_p = int(t_seq.max(initial=0)), int(p_seq.max(initial=0))
    ids_true = np.asarray(inv_t[np.arange(1, n_t + 1)], dtype=np.int64)
    ids_pred = np.asarray(inv_p[np.arange(1, n_p + 1)], dtype=np.int64)
    codes = t_seq.ravel().astype(np.int64) * (n_p + 1) + p_seq.ravel().astype(np.int64)
    joint = np.bincount(codes, minlength=(n_t + 1) * (n_p + 1)).reshape(n_t + 1, n_p + 1)
    area_t = joint.sum(axis=1)[1:]
    area_p = joint.sum(axis=0)[1:]
    inter = joint[1:, 1:].astype(np.float64)
    union = area_t[:, None] + area_p[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return ids_true, ids_pred, iou


def match_instances(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs maximising the total IoU among pairs with ``IoU >= threshold``.

    Returns the row and column indices of the matched pairs.
    """
    eligible = iou >= threshold
    if not eligible.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if eligible.sum(axis=1).max() <= 1 and eligible.sum(axis=0).max() <= 1:
        rows, cols = np.nonzero(eligible)
        return rows.astype(np.int64), cols.astype(np.int64)
    rows = np.flatnonzero(eligible.any(axis=1))
    cols = np.flatnonzero(eligible.any(axis=0))
    weight = np.where(eligible[np.ix_(rows, cols)], iou[np.ix_(rows, cols)], 0.0)
    r, c = linear_sum_assignment(weight, maximize=True)
    keep = eligible[rows[r], cols[c]]
    return rows[r][keep].astype(np.int64), cols[c][keep].astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def scores_from_counts(threshold: float, tp: int, fp: int, fn: int, sum_iou: float) -> dict:
    """All ratio scores from the counts of one threshold (see the module docstring)."""
    n_true, n_pred = tp + fn, tp + fp
    row = {"threshold": float(threshold), "n_true": int(n_true), "n_pred": int(n_pred),
           "tp": int(tp), "fp": int(fp), "fn": int(fn), "sum_matched_iou": float(sum_iou)}
    if n_true == 0 and n_pred == 0:
        row.update({k: 1.0 for k in RATIOS})
        return row
    half = tp + fp / 2 + fn / 2
    row.update({
        "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn), "ap": _ratio(tp, tp + fp + fn),
        "mean_matched_iou": _ratio(sum_iou, tp), "pq": _ratio(sum_iou, half),
        "sq": _ratio(sum_iou, tp), "rq": _ratio(tp, half),
    })
    return row


def _check_thresholds(thresholds) -> tuple[float, ...]:
    ths = tuple(float(t) for t in np.atleast_1d(np.asarray(thresholds, dtype=np.float64)))
    if not ths or not all(0 < t <= 1 for t in ths):
        raise CytogenError(f"IoU thresholds must lie in (0, 1], got {thresholds!r}.")
    return ths


def instance_scores(labels_true: np.ndarray, labels_pred: np.ndarray,
                    thresholds=DEFAULT_THRESHOLDS) -> list[dict]:
    """Instance detection / segmentation scores at each IoU threshold.

    Parameters
    ----------
    labels_true, labels_pred : numpy.ndarray
        Integer label images of equal shape (2D or 3D), 0 = background.
    thresholds : sequence of float
        IoU thresholds in (0, 1]; default 0.5, 0.55, ..., 0.95.

    Returns
    -------
    list of dict
        One dict per threshold with ``threshold, n_true, n_pred, tp, fp, fn, sum_matched_iou,
        precision, recall, f1, ap, mean_matched_iou, pq, sq, rq``.
    """
    ths = _check_thresholds(thresholds)
    _, _, iou = iou_table(labels_true, labels_pred)
    n_true, n_pred = iou.shape
    rows = []
    for thr in ths:
        r, c = match_instances(iou, thr)
        tp = len(r)
        rows.append(scores_from_counts(thr, tp, n_pred - tp, n_true - tp, float(iou[r, c].sum())))
    return rows


def jaccard_binary(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the foregrounds ``a > 0`` and ``b > 0``; 1.0 when both are empty."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise CytogenError(f"masks differ in shape: {a.shape} vs {b.shape}; compare masks of one field.")
    fa, fb = a > 0, b > 0
    union = np.count_nonzero(fa | fb)
    return float(np.count_nonzero(fa & fb) / union) if union else 1.0


def aggregate_scores(per_field: list[list[dict]]) -> list[dict]:
    """Dataset-level scores: counts pooled over fields per threshold, ratios recomputed.

    Equivalent to StarDist's ``matching_dataset(..., by_image=False)``: ``tp``, ``fp``, ``fn``
    and the matched IoU sum are summed over fields before any ratio is taken.

    Parameters
    ----------
    per_field : list of list of dict
        :func:`instance_scores` output of each field, all with the same thresholds.

    Returns
    -------
    list of dict
        One dict per threshold, with the keys of :func:`instance_scores` plus ``n_fields``.
    """
    if not per_field:
        raise CytogenError("no fields to aggregate; score at least one pair of label images.")
    ths = [r["threshold"] for r in per_field[0]]
    out = []
    for i, thr in enumerate(ths):
        tp = fp = fn = 0
        sum_iou = 0.0
        for k, field in enumerate(per_field):
            if [r["threshold"] for r in field] != ths:
                raise CytogenError(
                    f"field {k} was scored at thresholds {[r['threshold'] for r in field]} but field 0 "
                    f"at {ths}; score every field with the same thresholds."
                )
            row = field[i]
            tp, fp, fn = tp + row["tp"], fp + row["fp"], fn + row["fn"]
            sum_iou += row.get("sum_matched_iou", row["mean_matched_iou"] * row["tp"])
        out.append({**scores_from_counts(thr, tp, fp, fn, sum_iou), "n_fields": len(per_field)})
    return out
