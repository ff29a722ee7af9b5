"""Object-level calibration of a spread: are nuclei under a larger spread placed or found worse?

Takes the fields measured and matched by :mod:`cytogen.evaluate.pipeline` (through
:func:`cytogen.evaluate.summary.compute_object_metrics`, exactly as ``cytogen evaluate objects``
matches them) and each field's normalised spread map (:mod:`cytogen.evaluate.calibration`: the
spread divided by the truth's p99.8 - p1 range). Pure functions, numpy/scipy only.

* **Placement**: per matched pair, the mean spread inside the PREDICTED nucleus; the pairs pooled
  over fields are cut into spread quartiles (equal counts by rank, ties broken by field and label
  order) and the matched centroid distances of the top and the bottom quartile compared: medians
  with percentile-bootstrap 95 % intervals over pairs, and the one-sided Mann-Whitney U test
  (alternative: top-quartile distances are larger).
* **Detection**: per TRUE nucleus, the mean spread inside the true nucleus; the true nuclei cut
  into spread quartiles, and per quartile the fraction found (recall, Clopper-Pearson 95 %), with
  Fisher's exact test of top vs bottom (two-sided).

With fewer than :data:`MIN_OBJECTS` matched pairs (or true nuclei) the quartile statistics are
not computed and ``status`` says so.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.stats import fisher_exact, mannwhitneyu

from cytogen.evaluate.latent import bootstrap_interval
from cytogen.evaluate.pipeline import FieldResult
from cytogen.evaluate.stats import clopper_pearson

#: Fewest matched pairs (true nuclei for detection) for the quartile statistics.
MIN_OBJECTS = 8
N_BOOT = 1000


def mean_inside(labels: np.ndarray, values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Mean of ``values`` inside each object ``ids`` of a label image (NaN for an empty id)."""
    if len(ids) == 0:
        return np.zeros(0)
    return np.asarray(ndimage.mean(values, labels=labels, index=ids), dtype=np.float64)


def quartile_of(values: np.ndarray) -> np.ndarray:
    """Quartile 1..4 of each value: four groups of equal count by rank (stable order breaks ties)."""
    q = np.empty(len(values), np.int64)
    for k, part in enumerate(np.array_split(np.argsort(values, kind="stable"), 4)):
        q[part] = k + 1
    return q


def object_rows(fields: list[FieldResult], spreads: list[np.ndarray]) -> tuple[list[dict], list[dict]]:
    """``(pairs, trues)``: one row per matched pair and one per true nucleus, with their spreads.

    ``spreads[i]`` is field ``i``'s normalised spread map (same shape as its labels).
    Pair rows: field, labels, centroids (px), ``distance_<unit>`` and ``spread_pred_nucleus``;
    true rows: field, label, ``found`` and ``spread_true_nucleus``.
    """
    pairs, trues = [], []
    for f, sd in zip(fields, spreads):
        m, unit = f.matching, f.unit
        sp = mean_inside(f.labels_pred, sd, f.objects_pred.label[m.idx_pred])
        for k, (i, j) in enumerate(zip(m.idx_true.tolist(), m.idx_pred.tolist())):
            row = {"field": f.name, "true_label": int(f.objects_true.label[i]),
                   "pred_label": int(f.objects_pred.label[j])}
            for a, c in enumerate(f.objects_true.centroid_px[i]):
                row[f"true_centroid_{a}_px"] = float(c)
            for a, c in enumerate(f.objects_pred.centroid_px[j]):
                row[f"pred_centroid_{a}_px"] = float(c)
            row.update({"unit": unit, "distance": float(f.distance[k]), "spread_pred_nucleus": float(sp[k])})
            pairs.append(row)
        st = mean_inside(f.labels_true, sd, f.objects_true.label)
        found = set(m.idx_true.tolist())
        trues.extend({"field": f.name, "true_label": int(f.objects_true.label[i]), "found": i in found,
                      "spread_true_nucleus": float(st[i])} for i in range(len(st)))
    return pairs, trues


def _median_ci(d: np.ndarray, n_boot: int, seed: int) -> list[float]:
    return list(bootstrap_interval(d, lambda x: float(np.median(x)), n_boot=n_boot, seed=seed))


def placement_by_spread(pairs: list[dict], unit: str, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Matched centroid distance in the top vs the bottom spread quartile (see the module docstring).

    Also sets ``spread_quartile`` (1..4) on each pair row.
    """
    n = len(pairs)
    base = {"n_matched": n, "unit": unit,
            "spread": "mean normalised spread inside the PREDICTED nucleus of each matched pair",
            "quartiles": "4 groups of equal count of the matched pairs pooled over fields, ranked by spread",
            "interval": f"percentile bootstrap over matched pairs ({n_boot} draws, seed {seed})",
            "test": "Mann-Whitney U, one-sided: top-quartile distances larger than bottom-quartile ones"}
    if n < MIN_OBJECTS:
        return {**base, "status": f"too few matched nuclei ({n} < {MIN_OBJECTS}) for spread quartiles"}
    sp = np.array([r["spread_pred_nucleus"] for r in pairs])
    d = np.array([r["distance"] for r in pairs])
    q = quartile_of(sp)
    for r, k in zip(pairs, q.tolist()):
        r["spread_quartile"] = k
    top, bottom = d[q == 4], d[q == 1]
    test = mannwhitneyu(top, bottom, alternative="greater")
    per_q = [{"quartile": k, "n": int((q == k).sum()), "spread_min": float(sp[q == k].min()),
              "spread_max": float(sp[q == k].max()), f"median_distance_{unit}": float(np.median(d[q == k]))}
             for k in range(1, 5)]
    return {**base, "status": "ok",
            "top": {"n": int(top.size), "median_distance": float(np.median(top)),
                    "median_ci95": _median_ci(top, n_boot, seed), "mean_spread": float(sp[q == 4].mean())},
            "bottom": {"n": int(bottom.size), "median_distance": float(np.median(bottom)),
                       "median_ci95": _median_ci(bottom, n_boot, seed + 1),
                       "mean_spread": float(sp[q == 1].mean())},
            "mann_whitney_u": float(test.statistic), "p_one_sided": float(test.pvalue),
            "per_quartile": per_q}


def detection_by_spread(trues: list[dict]) -> dict:
    """Recall of the true nuclei per spread quartile (spread inside the TRUE nucleus)."""
    n = len(trues)
    base = {"n_true": n, "spread": "mean normalised spread inside each TRUE nucleus",
            "quartiles": "4 groups of equal count of the true nuclei pooled over fields, ranked by spread",
            "interval": "Clopper-Pearson 95 %",
            "test": "Fisher's exact test of found / missed, top vs bottom quartile, two-sided"}
    if n < MIN_OBJECTS:
        return {**base, "status": f"too few true nuclei ({n} < {MIN_OBJECTS}) for spread quartiles"}
    sp = np.array([r["spread_true_nucleus"] for r in trues])
    found = np.array([r["found"] for r in trues], bool)
    q = quartile_of(sp)
    per_q = []
    for k in range(1, 5):
        sel = q == k
        kk, nn = int(found[sel].sum()), int(sel.sum())
        per_q.append({"quartile": k, "found": kk, "n": nn, "recall": kk / nn,
                      "recall_ci95": list(clopper_pearson(kk, nn)), "spread_min": float(sp[sel].min()),
                      "spread_max": float(sp[sel].max())})
    t, b = per_q[3], per_q[0]
    p = fisher_exact([[t["found"], t["n"] - t["found"]], [b["found"], b["n"] - b["found"]]])[1]
    return {**base, "status": "ok", "top": t, "bottom": b, "p_fisher_two_sided": float(p), "per_quartile": per_q}
