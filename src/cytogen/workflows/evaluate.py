"""``cytogen evaluate pixels``: score a folder of predictions against a manifest's targets.

Every number is named by its family (see :mod:`cytogen.evaluate.pixel`): ``pearson_r`` on the
prediction as given, ``raw_*`` errors of the prediction as given, and ``calibrated_*`` errors
after an affine least-squares fit to the truth (slope clamped at >= 0), which flatter.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.data.manifest import read_manifest
from cytogen.errors import CytogenError
from cytogen.evaluate.pixel import (DESCRIPTIONS, FAMILIES, METRICS, PERCENTILES, SSIM_SIGMA,
                                    SSIM_UNDEFINED_REASON, SSIM_WINDOW, family_of, image_metrics,
                                    summarize, units_note)
from cytogen.io import atomic
from cytogen.io.images import read_image, read_spec, stack_channels


#: Image file endings cytogen reads, longest first (``a.ome.tif`` is field ``a``).
IMAGE_SUFFIXES = (".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".png")


def field_name(path: Path) -> str | None:
    """The field name of an image file (its name without the image ending), or None if not an image."""
    low = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix) and len(low) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def image_files(folder: Path) -> dict[str, Path]:
    """``{field name: path}`` of the images in a folder (hidden files skipped), sorted by name."""
    found = {n: p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and (n := field_name(p))}
    return dict(sorted(found.items()))


def check_out(out: str | Path, outputs: tuple[str, ...], what: str) -> Path:
    """Refuse an ``--out`` that exists and holds anything but a previous ``what`` (it is replaced whole).

    Evaluations write their folder with :func:`cytogen.io.atomic.atomic_dir`, which swaps in the
    new folder and deletes the old one: this keeps a user's other files from being deleted.
    """
    out = Path(out)
    if out.is_file() or (out.is_dir() and any(p.name not in outputs for p in out.iterdir())):
        raise CytogenError(f"--out {out}: exists and holds other files than {what} ({', '.join(outputs)}); "
                           "give a new folder (it is replaced as a whole)")
    return out


def find_prediction(pred_dir: Path, name: str) -> Path | None:
    """The prediction file ``PRED/<name>.<suffix>`` for a field, or None."""
    for suffix in (".tif", ".tiff", ".ome.tif", ".ome.zarr", ".zarr", ".png"):
        p = pred_dir / f"{name}{suffix}"
        if p.exists():
            return p
    return None


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows (dicts) to CSV atomically; columns in order of first appearance."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    return atomic.write_text(path, buf.getvalue())


def write_json(path: Path, obj: Any) -> Path:
    """Write JSON atomically (numpy scalars written as floats)."""
    return atomic.write_json(path, obj, default=float)


def evaluate_pixels(pred: str | Path, truth: str | Path, out: str | Path, *,
                    split: str | None = None, normalize: str = "percentile") -> dict[str, Any]:
    """Compare ``PRED/<name>.tif`` with the manifest targets of the same name.

    Writes ``OUT/pixel_metrics.csv`` (one row per field and channel, columns ``name``,
    ``split``, ``channel`` and :data:`~cytogen.evaluate.pixel.METRICS`) and
    ``OUT/pixel_summary.json`` (mean/median/std/min/max/n per metric, plus what the families,
    units, SSIM window and PSNR data range are). Rows without a prediction are skipped and
    counted, unless ``split`` is given, in which case all of that split's rows must have one.

    Parameters
    ----------
    pred
        Folder of predictions named like the manifest's fields.
    truth
        Manifest CSV whose targets are the truth.
    out
        Output folder.
    split
        Evaluate only this split (``None`` or ``"all"``: every row with a prediction).
    normalize
        ``"percentile"`` (default): prediction and truth both mapped by the truth's
        ``(x - p1) / (p99.8 - p1)``, so errors are in units of the truth's 1-99.8 percentile
        range; ``"none"``: errors in the target's own units.
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
        try:
            metrics = image_metrics(pred_img.data, truth_img.data, normalize=normalize)
        except CytogenError as err:
            raise CytogenError(f"{p} (field {e.name!r} of {truth}): {err}") from None
        for r in metrics:
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
    n_no_ssim = sum(1 for r in rows if not np.isfinite(r["raw_ssim"]))
    if n_no_ssim:
        print(f"note: SSIM is NaN for {n_no_ssim} field channel(s): {SSIM_UNDEFINED_REASON}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "pixel_metrics.csv", rows)
    summary = {
        "n_fields": len({r["name"] for r in rows}), "n_skipped": len(missing), "normalize": normalize,
        "units": units_note(normalize), "normalization_percentiles": list(PERCENTILES),
        "families": FAMILIES,
        "ssim": {"window": f"{SSIM_WINDOW} px Gaussian per axis", "sigma": SSIM_SIGMA,
                 "covariance": "population", "reference": "Wang et al. 2004",
                 "n_undefined": n_no_ssim, "undefined_reason": SSIM_UNDEFINED_REASON},
        "psnr": "10 log10(psnr_data_range^2 / mse), psnr_data_range = truth p99.8 - p1 in the metric units",
        "descriptions": DESCRIPTIONS,
        "metrics": summarize(rows, METRICS),
    }
    write_json(out / "pixel_summary.json", summary)
    return {**summary, "rows": rows}


def median_metric(result: dict[str, Any], key: str = "pearson_r") -> float:
    """Median of a metric from :func:`evaluate_pixels`' result.

    NaN if any row is NaN (e.g. Pearson r of a constant prediction), so an undefined field
    cannot be dropped into a passing median.
    """
    return float(np.median([r[key] for r in result["rows"]]))


def pixel_summary_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``metric, family, median, mean, min, max, n, meaning`` for a report table."""
    def family(k: str) -> str:
        return family_of(k)
    return [{"metric": k, "family": family(k), **{s: d.get(s, float("nan"))
                                                  for s in ("median", "mean", "min", "max")},
             "n": d["n"], "meaning": DESCRIPTIONS[k]}
            for k, d in result["metrics"].items()]
