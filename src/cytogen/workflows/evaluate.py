"""``cytogen evaluate pixels``: score a folder of predictions against a manifest's targets."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.data.manifest import read_manifest
from cytogen.errors import CytogenError
from cytogen.evaluate.pixel import METRICS, image_metrics, summarize
from cytogen.io.images import read_image, read_spec, stack_channels


def find_prediction(pred_dir: Path, name: str) -> Path | None:
    """The prediction file ``PRED/<name>.<suffix>`` for a field, or None."""
    for suffix in (".tif", ".tiff", ".ome.tif", ".ome.zarr", ".zarr", ".png"):
        p = pred_dir / f"{name}{suffix}"
        if p.exists():
            return p
    return None


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows (dicts) to CSV atomically."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return path


def write_json(path: Path, obj: Any) -> Path:
    """Write JSON atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)
    return path


def evaluate_pixels(pred: str | Path, truth: str | Path, out: str | Path, *,
                    split: str | None = None, normalize: str = "percentile") -> dict[str, Any]:
    """Compare ``PRED/<name>.tif`` with the manifest targets of the same name.

    Writes ``OUT/pixel_metrics.csv`` (one row per field and channel) and
    ``OUT/pixel_summary.json`` (mean/median/std/min/max per metric). Rows without a prediction
    are skipped and counted, unless ``split`` is given, in which case all of that split's rows
    must have one.
    """
    pred_dir, out = Path(pred), Path(out)
    if not pred_dir.is_dir():
        raise CytogenError(f"{pred_dir}: prediction folder not found; run 'cytogen predict' first")
    entries = [e for e in read_manifest(truth) if split in (None, "all") or e.split == split]
    rows, missing = [], []
    for e in entries:
        p = find_prediction(pred_dir, e.name)
        if p is None:
            missing.append(e.name)
            continue
        truth_img = stack_channels([read_spec(s) for s in e.target])
        pred_img = read_image(p)
        if pred_img.data.shape != truth_img.data.shape:
            raise CytogenError(
                f"{p}: prediction is {pred_img.data.shape} but the target of field {e.name!r} is "
                f"{truth_img.data.shape}; was it predicted from this manifest?"
            )
        for r in image_metrics(pred_img.data, truth_img.data, normalize=normalize):
            rows.append({"name": e.name, "split": e.split, **r})
    if not rows:
        raise CytogenError(
            f"{pred_dir}: no prediction matches a field of {truth} (expected files named <name>.tif)"
        )
    if split not in (None, "all") and missing:
        raise CytogenError(f"{pred_dir}: no prediction for {len(missing)} field(s) of split {split}, "
                           f"e.g. {missing[0]!r}")
    if missing:
        print(f"note: {len(missing)} manifest field(s) have no prediction and were skipped",
              file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "pixel_metrics.csv", rows)
    summary = {"n_fields": len({r["name"] for r in rows}), "n_skipped": len(missing),
               "normalize": normalize, "metrics": summarize(rows, METRICS)}
    write_json(out / "pixel_summary.json", summary)
    return {**summary, "rows": rows}


def median_metric(result: dict[str, Any], key: str = "pearson_r") -> float:
    """Median of a metric from :func:`evaluate_pixels`' result."""
    return float(np.median([r[key] for r in result["rows"]]))
