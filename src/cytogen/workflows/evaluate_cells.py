"""``cytogen evaluate cells``: score cell label images against ground truth or another segmentation.

Reads ``PRED/<name>.tif`` label images and the truth of the same fields (the ``cells`` column of a
segmentation manifest ``M.csv``, or a folder of same-named label images: the agreement between two
segmentations, e.g. from fluorescence and bright field), scores each field with
:func:`cytogen.evaluate.cells.cell_scores`, pools them with
:func:`cytogen.evaluate.cells.pool_cell_scores` and writes, as one folder swapped in only once
complete: ``cells_per_field.csv`` (one row per field), ``scores.csv`` (pooled scores, one row per
IoU threshold), ``summary.json``, ``ap_vs_iou.png`` and ``report.html``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cytogen.data.seg_manifest import read_seg_manifest
from cytogen.errors import CytogenError
from cytogen.evaluate.cells import DEFAULT_THRESHOLDS, DEFINITIONS, cell_scores, pool_cell_scores, threshold_key
from cytogen.io.atomic import atomic_dir
from cytogen.io.images import Image, read_image, read_spec
from cytogen.report.figures import save_figure
from cytogen.report.html import Section, write_report
from cytogen.workflows.evaluate import check_out, field_name, find_prediction, write_csv, write_json

__all__ = ["OUTPUTS", "collect_cell_fields", "evaluate_cells", "read_labels"]

OUTPUTS = ("cells_per_field.csv", "scores.csv", "summary.json", "ap_vs_iou.png", "report.html")
TRUTH_KINDS = {"manifest": "ground-truth labels", "folder": "another segmentation"}


def read_labels(image: Image, where: str) -> np.ndarray:
    """The integer label array of a one-channel image (``(Y, X)`` or ``(Z, Y, X)``).

    Float images holding whole numbers (labels saved as float) are accepted; anything else that is
    not integer raises :class:`CytogenError` naming ``where``.
    """
    data = np.asarray(image.data)
    if data.shape[0] != 1:
        raise CytogenError(f"{where}: has {data.shape[0]} channels but a label image has one; pick the "
                           "label channel with 'path#c=K' in the manifest")
    lab = data[0]
    if lab.dtype == bool:
        return lab.astype(np.uint8)
    if not np.issubdtype(lab.dtype, np.integer):
        if not (np.isfinite(lab).all() and np.array_equal(lab, np.round(lab))):
            raise CytogenError(f"{where}: holds non-integer values ({lab.dtype}), so it is not a label image; "
                               "give integer cell labels (0 = background), e.g. the <name>.tif of "
                               "'cytogen segment cells'")
        lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise CytogenError(f"{where}: holds negative labels; cell labels are >= 0 (0 = background)")
    return lab


def collect_cell_fields(pred: Path, truth: Path, split: str | None = None) -> tuple[list[dict], dict]:
    """Pair each truth field with its prediction ``PRED/<name>.<suffix>``.

    Returns
    -------
    fields : list of dict
        ``name, split, truth`` (a spec or path), ``pred`` (path), in truth order.
    info : dict
        ``truth_kind`` (:data:`TRUTH_KINDS` value), ``n_fields_without_truth`` (manifest rows of
        the split without a ``cells`` value, skipped) and ``n_pred_unscored`` (label images in
        ``PRED`` with no truth field).

    Raises
    ------
    CytogenError
        Missing folders or manifest, no truth, or truth fields without a prediction (all named).
    """
    pred, truth = Path(pred), Path(truth)
    if not pred.is_dir():
        raise CytogenError(f"--pred {pred}: folder not found; give the --out folder of 'cytogen segment cells'")
    if truth.is_dir():
        if split not in (None, "all"):
            raise CytogenError(f"--split {split} selects rows of an M.csv, but --truth {truth} is a folder of "
                               "label images; drop --split or give the M.csv")
        fields = [{"name": n, "split": "", "truth": str(p)} for p in sorted(truth.iterdir())
                  if not p.name.startswith(".") and (n := field_name(p)) is not None]
        if not fields:
            raise CytogenError(f"--truth {truth}: no label images (<name>.tif / .png / .zarr) in the folder")
        kind, skipped = "folder", 0
    elif truth.is_file():
        entries = read_seg_manifest(truth, check_files=False)
        if split not in (None, "all"):
            entries = [e for e in entries if e.split == split]
            if not entries:
                raise CytogenError(f"--truth {truth}: no row of split {split!r}; its splits are "
                                   f"{sorted({e.split for e in read_seg_manifest(truth, check_files=False)})}")
        fields = [{"name": e.name, "split": e.split, "truth": e.cells} for e in entries if e.cells]
        if not fields:
            raise CytogenError(f"--truth {truth}: no row{'' if split in (None, 'all') else f' of split {split!r}'} "
                               "fills the 'cells' column (ground-truth cell labels); fill it, or give a folder "
                               "of label images as --truth")
        kind, skipped = "manifest", len(entries) - len(fields)
    else:
        raise CytogenError(f"--truth {truth}: not found; give an M.csv with a 'cells' column or a folder of "
                           "label images")
    missing = []
    for f in fields:
        q = find_prediction(pred, f["name"])
        if q is None:
            missing.append(f["name"])
        f["pred"] = str(q)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise CytogenError(f"--pred {pred}: no label image for {len(missing)} of {len(fields)} truth field(s): "
                           f"{shown}; segment them (same M.csv and --split) or restrict the truth with --split")
    names = {f["name"] for f in fields}
    unscored = sum(1 for p in pred.iterdir() if not p.name.startswith(".")
                   and (n := field_name(p)) is not None and n not in names)
    return fields, {"truth_kind": TRUTH_KINDS[kind], "n_fields_without_truth": skipped,
                    "n_pred_unscored": unscored}


def _score_field(f: dict) -> dict:
    where_t = f"truth of field {f['name']!r} ({f['truth']})"
    t = read_labels(read_spec(f["truth"]), where_t)
    p = read_labels(read_image(f["pred"]), f"prediction {f['pred']}")
    if t.shape != p.shape:
        raise CytogenError(f"field {f['name']!r}: prediction {f['pred']} has shape {p.shape} but its truth "
                           f"{f['truth']} has {t.shape}; segment the same field at the same size")
    return cell_scores(t, p, DEFAULT_THRESHOLDS)


def _field_row(f: dict, s: dict) -> dict:
    row = {"name": f["name"], "split": f["split"]} if f["split"] else {"name": f["name"]}
    row.update({k: s[k] for k in ("n_true", "n_pred", "n_matched", "miou_matched", "miou_all_true",
                                  "miou_matched50", "miou_foreground_only", "precision50", "recall50", "f1_50",
                                  "pq50")})
    row.update({f"ap{threshold_key(t)}": s[f"ap{threshold_key(t)}"] for t in DEFAULT_THRESHOLDS})
    return row


def threshold_figure(pooled: dict, matched_iou: np.ndarray) -> Figure:
    """AP, F1 and PQ against the IoU threshold (pooled), beside the histogram of matched IoUs."""
    fig = Figure(figsize=(9.0, 3.4))
    ax, bx = fig.subplots(1, 2)
    for key, style in (("ap", "o-"), ("f1", "s--"), ("pq", "^:")):
        ax.plot(pooled["thresholds"], pooled[key], style, label=key.upper())
    ax.set(xlabel="IoU threshold", ylabel="score (pooled over fields)", ylim=(0, 1.02),
           title="AP = tp / (tp + fp + fn)")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    bx.hist(matched_iou, bins=np.linspace(0, 1, 41), color="0.4")
    bx.axvline(pooled["miou_matched"], color="C3", label=f"mIoU {pooled['miou_matched']:.3f}")
    bx.set(xlabel="IoU of a matched cell", ylabel="cells", xlim=(0, 1),
           title=f"{pooled['n_matched']} matched cells")
    bx.legend(loc="upper left")
    fig.tight_layout()
    return fig


def _fmt_ci(ci: list[float] | None) -> str:
    return "n/a (one field)" if ci is None else f"{ci[0]:.3f}-{ci[1]:.3f}"


def _sections(summary: dict, png: bytes) -> list[Section]:
    s = summary
    head = [
        f"{s['n_fields']} field(s) against {s['truth_kind']} ({s['truth']}): {s['n_true']} true cells, "
        f"{s['n_pred']} predicted, {s['n_matched']} matched one-to-one (maximal total IoU over "
        "overlapping pairs).",
        f"mIoU of matched cells {s['miou_matched']:.3f} (95 % bootstrap CI over fields "
        f"{_fmt_ci(s['miou_matched_ci95'])}); over all true cells {s['miou_all_true']:.3f}; "
        f"AP@0.5 {s['ap50']:.3f} (CI {_fmt_ci(s['ap50_ci95'])}), F1@0.5 {s['f1_50']:.3f}, "
        f"PQ@0.5 {s['pq50']:.3f}.",
        f"With its foreground errors alone (the predicted cell area given pixel by pixel to the nearest "
        f"true cell) the mIoU would be {s['miou_foreground_only']:.3f}: the gap to it is the division "
        "between cells, the rest of 1 the mask.",
    ]
    if s["n_fields_without_truth"]:
        head.append(f"{s['n_fields_without_truth']} manifest row(s) without a 'cells' value were skipped.")
    if s["n_pred_unscored"]:
        head.append(f"{s['n_pred_unscored']} label image(s) in the prediction folder have no truth field "
                    "and were not scored.")
    cols = ("threshold", "tp", "fp", "fn", "precision", "recall", "f1", "ap", "pq", "mean_matched_iou")
    rows = [{k: r[k] for k in cols} for r in s["scores"]]
    return [
        Section("Cells: matched IoU and instance scores", head,
                tables=[("pooled over fields, per IoU threshold", rows)]),
        Section("AP against the IoU threshold", figures=[("AP, F1, PQ per IoU threshold; IoUs of the matched "
                                                          "cells", png)]),
        Section("Per field", tables=[("fields", s["per_field"])]),
        Section("Definitions", [f"{k}: {v}" for k, v in s["definitions"].items()]),
    ]


def evaluate_cells(pred: str | Path, truth: str | Path, out: str | Path, *,
                   split: str | None = None) -> dict[str, Any]:
    """Score predicted cell label images and write ``OUT/`` as one folder.

    Parameters
    ----------
    pred
        Folder of ``<name>.tif`` label images (``cytogen segment cells --out``).
    truth
        A segmentation manifest ``M.csv`` whose ``cells`` column holds ground-truth labels, or a
        folder of same-named label images (agreement between two segmentations).
    out
        Output folder, replaced as a whole (refused when it holds other files).
    split
        Only manifest rows of this split (``None`` / ``"all"``: every row with ``cells``).

    Returns
    -------
    dict
        The ``summary.json`` content: ``n_fields, n_true, n_pred, n_matched, miou_matched,
        miou_matched_ci95, miou_all_true, miou_matched50, miou_foreground_only, miou_matched_field_mean/_sd, ap50,
        ap50_ci95, f1_50, pq50, precision50, recall50, ap75, thresholds, ap, f1, pq, precision,
        recall`` (lists per threshold), ``scores`` (pooled rows), ``per_field`` (rows),
        ``truth_kind, truth, pred, split, n_fields_without_truth, n_pred_unscored, report, out,
        definitions``.

    Raises
    ------
    CytogenError
        Missing inputs, truth fields without a prediction, shape mismatches, non-label images, an
        occupied ``out``.
    """
    pred, truth, out = Path(pred), Path(truth), Path(out)
    check_out(out, OUTPUTS, "a cell evaluation")
    fields, info = collect_cell_fields(pred, truth, split)
    scored = [_score_field(f) for f in fields]
    pooled = pool_cell_scores(scored)
    matched = np.concatenate([s["matched_iou"] for s in scored])
    keys = ("n_fields", "n_true", "n_pred", "n_matched", "miou_matched", "miou_matched_ci95", "miou_all_true",
            "miou_matched50", "miou_foreground_only", "miou_matched_field_mean", "miou_matched_field_sd", "ap50",
            "ap50_ci95", "map", "map_ci95",
            "f1_50", "pq50", "precision50", "recall50", "ap75", "thresholds", "ap", "f1", "pq", "precision",
            "recall", "scores")
    summary = {k: pooled[k] for k in keys}
    summary.update({
        "per_field": [_field_row(f, s) for f, s in zip(fields, scored)],
        **info, "truth": str(truth), "pred": str(pred), "split": split,
        "report": str(out / "report.html"), "out": str(out),
        "definitions": {**DEFINITIONS, "truth_kind": "ground-truth labels: the 'cells' column of the M.csv "
                        "(manual outlines or exact synthetic masks); another segmentation: same-named label "
                        "images of a folder (then the scores measure agreement, and precision / recall swap "
                        "when the two folders swap)"},
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        write_csv(tmp / "cells_per_field.csv", summary["per_field"])
        write_csv(tmp / "scores.csv", pooled["scores"])
        write_json(tmp / "summary.json", summary)
        png = save_figure(threshold_figure(pooled, matched), tmp / "ap_vs_iou.png").read_bytes()
        write_report(tmp / "report.html", "cytogen: cell segmentation evaluation", _sections(summary, png),
                     subtitle=f"predictions: {pred}; truth: {truth}" + (f"; split {split}" if split else ""))
    return summary
