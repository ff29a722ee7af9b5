"""Uncertainty on real data: one model, its TTA, an ensemble (and both), timed in one run and scored.

Predicts the test split of a manifest with the first model alone, with ``--tta``, with the ensemble of
all given models (``--ensemble``) and, with ``--both``, with TTA of the ensemble; times each (seconds
per field, and the ratio to the single model measured in this run); scores each with evaluate pixels
(median Pearson r, raw L1), evaluate objects (detection recall, within one nuclear radius) and, for the
runs with a spread, evaluate uncertainty (Spearman of spread vs |error| per field and pooled, the
calibration ratio, the matched distance of nuclei in the top vs bottom spread quartile). Also each
single model on its own, so the ensemble mean is compared with every member. Prints one JSON line per
run, then a Markdown table.

    python benchmarks/uncertainty.py --data sbs.csv --models RUN1/model RUN2/model RUN3/model --out DIR [--both]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cytogen.evaluate.pipeline import ObjectSettings
from cytogen.workflows.evaluate import evaluate_pixels
from cytogen.workflows.evaluate_objects import evaluate_objects
from cytogen.workflows.evaluate_uncertainty import evaluate_uncertainty
from cytogen.workflows.predict import predict


def _score(name: str, pred: Path, data: Path, out: Path, seconds: float, n: int, spread: bool) -> dict:
    pix = evaluate_pixels(pred, data, out / "pixels", split="test")
    obj = evaluate_objects(pred, data, out / "objects", split="test",
                           settings=ObjectSettings(radii=["nuclear"]), progress=False)["summary"]
    row = {"benchmark": "uncertainty", "run": name, "s_per_field": round(seconds / n, 2),
           "median_pearson_r": round(float(np.median([r["pearson_r"] for r in pix["rows"]])), 4),
           "median_raw_l1": round(float(np.median([r["raw_l1"] for r in pix["rows"]])), 4),
           "recall": round(obj["recall"], 4), "within_nuclear_radius": round(obj["within"][0]["fraction"], 4)}
    if spread:
        u = evaluate_uncertainty(pred, data, out / "uncertainty", split="test")
        px, place = u["pixels"], u["objects"]["placement"]
        row.update(spearman_pooled=round(px["pooled_spearman"]["value"], 3),
                   spearman_pooled_ci95=[round(v, 3) for v in px["pooled_spearman"]["ci95"]],
                   spearman_field_median=round(px["field_spearman"]["median"], 3),
                   calibration_ratio=round(px["calibration_ratio"]["value"], 2))
        if place.get("status") == "ok":
            row.update(distance_top_quartile=round(place["top"]["median_distance"], 3),
                       distance_bottom_quartile=round(place["bottom"]["median_distance"], 3),
                       distance_unit=place["unit"], p_top_gt_bottom=float(f"{place['p_one_sided']:.2g}"))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="manifest with a test split")
    ap.add_argument("--models", nargs="+", required=True, help="model folders trained alike (first = the single model)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--both", action="store_true", help="also TTA of the ensemble (8 x n passes)")
    a = ap.parse_args()
    out, data, models = Path(a.out), Path(a.data), a.models
    runs = [(f"single {i}", models[i], {}) for i in range(len(models))]
    runs += [("tta", models[0], {"tta": True}), (f"ensemble of {len(models)}", models[0], {"ensemble": models[1:]})]
    if a.both:
        runs.append((f"tta + ensemble of {len(models)}", models[0], {"tta": True, "ensemble": models[1:]}))
    rows = []
    for i, (name, model, kw) in enumerate(runs):
        pred = out / f"run{i}" / "pred"
        t0 = time.perf_counter()
        n = len(predict(model, pred, data=data, split="test", progress=False, **kw))
        rows.append(_score(name, pred, data, out / f"run{i}", time.perf_counter() - t0, n, bool(kw)))
        rows[-1]["x_single_time"] = round(rows[-1]["s_per_field"] / rows[0]["s_per_field"], 2)
        print(json.dumps(rows[-1]), flush=True)
    cols = ["run", "s_per_field", "x_single_time", "median_pearson_r", "median_raw_l1", "recall",
            "within_nuclear_radius", "spearman_field_median", "spearman_pooled", "calibration_ratio",
            "distance_top_quartile", "distance_bottom_quartile", "p_top_gt_bottom"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


if __name__ == "__main__":
    main()
