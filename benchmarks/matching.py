"""Speed of object matching at 100,000 objects per side (prints one JSON line per result).

Run ``python benchmarks/matching.py``. Points are uniform in a square 2D field at one nucleus per
100 um^2 (about 10 um apart; denser than typical confluent cultures, so conflicts are common),
predictions are the truth plus Gaussian jitter (sigma 1.5 um) with 10 % deleted and 10 % extra
random points. Boxes are squares of side 6-10 um around the same centres, jittered likewise; they are matched
one-to-one (``match_bboxes``) and by the many-to-one best-overlap rule (``match_bboxes_best``).
"""

from __future__ import annotations

import json
import time

import numpy as np

from cytogen.evaluate.matching import match_bboxes, match_bboxes_best, match_centroids


def _best_of(fn, repeats: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _scene(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    side = 10.0 * np.sqrt(n)  # um; 100 um^2 per nucleus
    true = rng.uniform(0, side, size=(n, 2))
    keep = rng.random(n) >= 0.10
    pred = true[keep] + rng.normal(0, 1.5, size=(int(keep.sum()), 2))
    extra = rng.uniform(0, side, size=(n // 10, 2))
    pred = np.concatenate([pred, extra])
    return true, pred[rng.permutation(len(pred))], side


def main(n: int = 100_000) -> None:
    true, pred, side = _scene(n, seed=0)
    seconds, m = _best_of(lambda: match_centroids(true, pred, 4.0))
    print(json.dumps({"benchmark": "match_centroids", "n_true": len(true), "n_pred": len(pred),
                      "field_um": round(side, 1), "max_distance_um": 4.0, "seconds": round(seconds, 4),
                      "matched": m.n_matched, "within_1um": int(np.sum(m.distance <= 1.0))}))

    rng = np.random.default_rng(1)
    half_t = rng.uniform(3, 5, size=(len(true), 1))
    tb = np.hstack([true - half_t, true + half_t])
    half_p = rng.uniform(3, 5, size=(len(pred), 1))
    pb = np.hstack([pred - half_p, pred + half_p])
    seconds, m = _best_of(lambda: match_bboxes(tb, pb))
    print(json.dumps({"benchmark": "match_bboxes", "n_true": len(tb), "n_pred": len(pb),
                      "field_um": round(side, 1), "seconds": round(seconds, 4), "matched": m.n_matched,
                      "mean_iou": round(float(np.mean(1 - m.distance)), 4)}))
    seconds, m = _best_of(lambda: match_bboxes_best(tb, pb))
    print(json.dumps({"benchmark": "match_bboxes_best (many-to-one, Vasudevan et al.)", "n_true": len(tb),
                      "n_pred": len(pb), "field_um": round(side, 1), "seconds": round(seconds, 4),
                      "matched_pred": m.n_matched, "matched_true": m.n_true_matched,
                      "mean_iou": round(float(np.mean(1 - m.distance)), 4)}))


if __name__ == "__main__":
    main()
