"""``cytogen evaluate uncertainty``: is a prediction's spread large where its error is large?

Reads ``PRED/<name>.tif`` (the mean prediction) and ``PRED/<name>_spread.tif`` (the per-pixel
standard deviation over the members of ``cytogen predict --tta/--ensemble/--mc-dropout/--samples``)
for the manifest rows of a split, calls :mod:`cytogen.evaluate.calibration` (pixels) and
:mod:`cytogen.evaluate.calibration_objects` (nuclei, matched as ``cytogen evaluate objects``
matches them) and writes ``OUT/`` as one folder: ``uncertainty.json``, ``fields.csv``,
``deciles.csv``, ``objects.csv``, ``reliability.png``, ``spread_maps.png``, ``report.html``.
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
from cytogen.evaluate.calibration import (GAUSS_ABS, MAX_PIXELS, N_BOOT, field_calibration,
                                          normalised_error_spread, pool_calibration)
from cytogen.evaluate.calibration_objects import MIN_OBJECTS, detection_by_spread, object_rows, placement_by_spread
from cytogen.evaluate.pipeline import FieldPair, ObjectSettings
from cytogen.evaluate.summary import compute_object_metrics
from cytogen.io import atomic
from cytogen.io.atomic import atomic_dir
from cytogen.io.images import Image, read_image, read_spec, stack_channels
from cytogen.report.figures import save_figure
from cytogen.report.html import Section, write_report
from cytogen.report.uncertainty_figures import reliability_figure, spread_maps_figure
from cytogen.workflows.evaluate import check_out, find_prediction, write_csv, write_json

OUTPUTS = ("uncertainty.json", "fields.csv", "deciles.csv", "objects.csv", "reliability.png",
           "spread_maps.png", "report.html")
SPREAD_HINT = ("predict with --tta, --ensemble, --mc-dropout or --samples to get a per-pixel spread "
               "(<name>_spread.tif beside <name>.tif)")
OBJECT_COLUMNS = ("field", "true_label", "pred_label", "unit", "distance", "spread_pred_nucleus",
                  "spread_quartile")


def _note(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr)


def choose_split(entries: list, split: str | None) -> str:
    """The split evaluated: the one given, else ``test`` when the manifest has test rows, else ``all``."""
    if split is None:
        return "test" if any(e.split == "test" for e in entries) else "all"
    return split


def read_field(pred_dir: Path, entry, channel: int) -> tuple[Image, Image, Image, Path]:
    """``(truth, mean, spread, mean path)`` of one manifest row, checked against each other."""
    p = find_prediction(pred_dir, entry.name)
    if p is None:
        raise CytogenError(f"{pred_dir / (entry.name + '.tif')}: no prediction for field {entry.name!r}; "
                           "predict this split with 'cytogen predict' (or pass --split)")
    q = find_prediction(pred_dir, entry.name + "_spread")
    if q is None:
        raise CytogenError(f"{p}: no spread {pred_dir / (entry.name + '_spread.tif')} beside the mean "
                           f"prediction; {SPREAD_HINT}")
    truth = stack_channels([read_spec(s) for s in entry.target])
    mean, spread = read_image(p), read_image(q)
    if mean.data.shape != truth.data.shape:
        raise CytogenError(f"{p}: prediction is {mean.data.shape} but the target of field {entry.name!r} is "
                           f"{truth.data.shape}; was it predicted from this manifest?")
    if spread.data.shape != mean.data.shape:
        raise CytogenError(f"{q}: spread is {spread.data.shape} but the mean prediction {p.name} is "
                           f"{mean.data.shape}; write both from the same 'cytogen predict' run")
    if mean.channel_names and spread.channel_names and mean.channel_names != spread.channel_names:
        raise CytogenError(f"{q}: channels {spread.channel_names} differ from the mean prediction's "
                           f"{mean.channel_names}; write both from the same 'cytogen predict' run")
    if not 0 <= channel < truth.data.shape[0]:
        raise CytogenError(f"--channel {channel}: field {entry.name!r} has {truth.data.shape[0]} channel(s) "
                           f"(0..{truth.data.shape[0] - 1})")
    return truth, mean, spread, p


def _csv_fixed(path: Path, rows: list[dict], columns: tuple[str, ...]) -> Path:
    """CSV with at least ``columns`` (so a file without rows still has its header)."""
    cols = list(dict.fromkeys([*columns, *(k for r in rows for k in r)]))
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    return atomic.write_text(path, buf.getvalue())


def evaluate_uncertainty(pred: str | Path, truth: str | Path, out: str | Path, *, split: str | None = None,
                         pixel_size_um: float | None = None, channel: int = 0, progress: bool = False,
                         max_pixels: int = MAX_PIXELS, n_boot: int = N_BOOT, seed: int = 0,
                         n_maps: int = 3) -> dict[str, Any]:
    """Calibration of the spread of ``PRED`` against the manifest targets; writes ``OUT/`` as one folder.

    Parameters
    ----------
    pred
        Folder with ``<name>.tif`` (mean) and ``<name>_spread.tif`` (per-pixel standard deviation).
    truth
        Manifest CSV whose targets are the truth (``pixel_size_um`` column used for the nuclei).
    out
        New output folder (replaced as a whole only when it holds a previous uncertainty evaluation).
    split
        Manifest split (default: ``test`` if the manifest has test rows, else all). Every row of a
        named split must have both files; with ``all`` rows without a prediction are skipped.
    pixel_size_um
        In-plane pixel size for the nucleus distances (wins over the manifest and the metadata).
    channel
        The channel evaluated (pixels and nuclei).
    max_pixels, n_boot, seed
        Pixels sampled per field, bootstrap draws, seed of both.
    n_maps
        Fields shown in ``spread_maps.png``.

    Returns
    -------
    dict
        The ``uncertainty.json`` content.
    """
    pred_dir, out = Path(pred), Path(out)
    if not pred_dir.is_dir():
        raise CytogenError(f"{pred_dir}: prediction folder not found; run 'cytogen predict' with "
                           "--tta/--ensemble/--mc-dropout/--samples first")
    settings = ObjectSettings(pixel_size_um=pixel_size_um, channel=channel)
    check_out(out, OUTPUTS, "an uncertainty evaluation")
    entries = read_manifest(truth)
    split = choose_split(entries, split)
    chosen = [e for e in entries if split == "all" or e.split == split]
    if not chosen:
        raise CytogenError(f"{truth}: no rows with split={split}; use --split all|train|val|test")
    if split == "all":
        skipped = [e.name for e in chosen if find_prediction(pred_dir, e.name) is None]
        chosen = [e for e in chosen if e.name not in skipped]
        if not chosen:
            raise CytogenError(f"{pred_dir}: no prediction matches a field of {truth} (expected <name>.tif "
                               "and <name>_spread.tif)")
    else:
        skipped = []
    for e in chosen:  # every field's two files exist before anything is printed or computed
        if find_prediction(pred_dir, e.name) is None or find_prediction(pred_dir, e.name + "_spread") is None:
            read_field(pred_dir, e, channel)  # raises the error naming the missing file
    _note(progress, f"evaluating split: {split}")
    if skipped:
        _note(progress, f"note: {len(skipped)} field(s) without a prediction were skipped")
    fields, pairs, spreads, maps = [], [], [], []
    for i, e in enumerate(chosen):
        t_img, m_img, s_img, p = read_field(pred_dir, e, channel)
        t, m, s = (a.data[channel] for a in (t_img, m_img, s_img))
        try:
            fc = field_calibration(e.name, m, s, t, max_pixels=max_pixels, seed=seed + i)
            err, sd, _ = normalised_error_spread(m, s, t)
        except CytogenError as err_:
            raise CytogenError(f"{p} (field {e.name!r} of {truth}): {err_}") from None
        fields.append(fc)
        spreads.append(sd.astype(np.float32))
        pairs.append(FieldPair(e.name, t_img, m_img, None, e.pixel_size_um))
        if len(maps) < n_maps:
            maps.append((e.name, t.astype(np.float32), m.astype(np.float32), sd.astype(np.float32),
                         err.astype(np.float32)))
        _note(progress, f"[{i + 1}/{len(chosen)}] {e.name}: spearman {fc.spearman:.3f}, "
                        f"mean |error| {fc.mean_abs_error:.4g}, mean spread {fc.mean_spread:.4g}")
    pooled = pool_calibration(fields, n_boot=n_boot, seed=seed)
    pooled["subsample"] = (f"per field a seeded random sample of at most {max_pixels} pixels (seed {seed} + "
                           "field index; all pixels when fewer) for the Spearman rho and the spread bins; "
                           "means and the calibration ratio use all pixels")
    obj = compute_object_metrics(pairs, settings)
    o = obj.summary
    pair_rows, true_rows = object_rows(obj.fields, spreads)
    placement = placement_by_spread(pair_rows, o["unit"], n_boot=n_boot, seed=seed)
    detection = detection_by_spread(true_rows)
    summary = {
        "inputs": {"pred": str(pred_dir.resolve()), "truth": str(Path(truth).resolve()), "split": split,
                   "channel": channel, "n_skipped": len(skipped)},
        "pixels": {k: v for k, v in pooled.items() if k != "bins"},
        "deciles": pooled["bins"],
        "fields": [f.row() for f in fields],
        "objects": {
            "unit": o["unit"], "pixel_size_source": o["pixel_size_source"],
            "segmentation": o["segmentation"], "match": o["match"], "match_rule": o["match_rule"],
            "max_match_distance": o["max_match_distance"], "n_true": o["n_true"], "n_pred": o["n_pred"],
            "n_matched": o["n_matched"], "recall": o["recall"], "recall_ci95": o["recall_ci95"],
            "matching": "as 'cytogen evaluate objects' with its default settings (same segmentation and "
                        "matching; --pixel-size-um and --channel passed through)",
            "min_objects": MIN_OBJECTS, "placement": placement, "detection": detection},
        "gaussian_factor": GAUSS_ABS,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        write_json(tmp / "uncertainty.json", summary)
        write_csv(tmp / "fields.csv", summary["fields"])
        write_csv(tmp / "deciles.csv", summary["deciles"])
        _csv_fixed(tmp / "objects.csv", pair_rows, OBJECT_COLUMNS)
        rel = reliability_figure(summary["deciles"], [f.spearman for f in fields], pooled["pooled_spearman"])
        sm = spread_maps_figure(maps)
        save_figure(rel, tmp / "reliability.png")
        save_figure(sm, tmp / "spread_maps.png")
        write_report(tmp / "report.html", "cytogen: uncertainty calibration", uncertainty_sections(summary, rel, sm),
                     subtitle=f"predictions: {pred}; truth: {truth}; split: {split}; channel {channel}")
    return summary


def _ci(ci: list[float] | None) -> str:
    return "n/a" if not ci else f"{ci[0]:.3g} - {ci[1]:.3g}"


def summary_rows(summary: dict) -> list[dict]:
    """The report's summary table: one row per headline number, each with what it is."""
    px = summary["pixels"]
    fs = px["field_spearman"]
    return [
        {"number": "pooled Spearman rho (spread vs |error|)", "value": px["pooled_spearman"]["value"],
         "95% interval": _ci(px["pooled_spearman"]["ci95"]), "what": px["pooled_spearman"]["what"]},
        {"number": "median per-field Spearman rho", "value": fs["median"],
         "95% interval": "n/a", "what": f"{fs['what']}; n = {fs['n']}"},
        {"number": "calibration ratio", "value": px["calibration_ratio"]["value"],
         "95% interval": _ci(px["calibration_ratio"]["ci95"]), "what": px["calibration_ratio"]["what"]},
        {"number": "decile Spearman", "value": px["decile_spearman"]["value"], "95% interval": "n/a",
         "what": px["decile_spearman"]["what"]},
        {"number": "mean |error|", "value": px["mean_abs_error"], "95% interval": "n/a",
         "what": "over all pixels, truth percentile-range units"},
        {"number": "mean spread", "value": px["mean_spread"], "95% interval": "n/a",
         "what": "over all pixels, truth percentile-range units"},
    ]


def object_table(summary: dict) -> tuple[list[str], list[dict]]:
    """Text and rows of the report's objects section (or the reason there are no numbers)."""
    o = summary["objects"]
    pl, de = o["placement"], o["detection"]
    text = [f"{o['n_true']} real and {o['n_pred']} predicted nuclei, {o['n_matched']} matched "
            f"({o['match_rule']}, at most {o['max_match_distance']:.3g} {o['unit']}); {o['matching']}. "
            f"Pixel size: {o['pixel_size_source']}; distances in {o['unit']}."]
    rows = []
    if pl["status"] == "ok":
        text.append(f"Placement: {pl['spread']}; {pl['quartiles']}; intervals: {pl['interval']}; "
                    f"{pl['test']}: U = {pl['mann_whitney_u']:.4g}, p = {pl['p_one_sided']:.3g}.")
        for k in ("top", "bottom"):
            rows.append({"group": f"{k} spread quartile (placement)", "n": pl[k]["n"],
                         f"median distance ({o['unit']})": pl[k]["median_distance"],
                         "95% interval": _ci(pl[k]["median_ci95"]), "mean spread": pl[k]["mean_spread"]})
    else:
        text.append(f"Placement: {pl['status']}.")
    if de["status"] == "ok":
        text.append(f"Detection: {de['spread']}; {de['quartiles']}; recall interval {de['interval']}; "
                    f"{de['test']}: p = {de['p_fisher_two_sided']:.3g}.")
        for k in ("top", "bottom"):
            rows.append({"group": f"{k} spread quartile (detection)", "n": de[k]["n"],
                         "recall": de[k]["recall"], "95% interval": _ci(de[k]["recall_ci95"])})
    else:
        text.append(f"Detection: {de['status']}.")
    return text, rows


def uncertainty_sections(summary: dict, reliability, spread_maps) -> list[Section]:
    """Report sections: summary table, reliability figure, objects table, spread maps."""
    px = summary["pixels"]
    head = [f"{px['n_fields']} field(s). Normalisation: {px['normalisation']}.",
            f"Subsample: {px['subsample']}. Intervals: {px['interval']}.",
            f"Reference: {px['gaussian_reference']}."]
    obj_text, obj_rows = object_table(summary)
    return [
        Section("Summary", head, tables=[("headline numbers", summary_rows(summary))]),
        Section("Reliability", [f"Bins: {px['bins_method']}."],
                tables=[("spread deciles", summary["deciles"])],
                figures=[("mean |error| per spread decile (95 % bootstrap-over-fields intervals) against the "
                          "calibrated-Gaussian line E|e| = sqrt(2/pi) sigma; right: per-field Spearman rho",
                          reliability)]),
        Section("Objects", obj_text, tables=[("spread quartiles", obj_rows)]),
        Section("Spread maps", ["Same central crop per row; spread and |error| on one shared colour scale "
                                "(truth percentile-range units); 3D fields max-projected over z."],
                figures=[("truth | prediction | spread | |error|", spread_maps)]),
        Section("Per field", tables=[("fields", summary["fields"])]),
    ]
