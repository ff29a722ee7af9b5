"""Outputs of ``cytogen evaluate objects``: CSV tables, summary JSON and an HTML report."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from cytogen.report.html import Section, write_report
from cytogen.report.object_figures import distance_hist_figure, overlay_figure
from cytogen.workflows.evaluate import write_csv, write_json
from cytogen.workflows.objects import ObjectSettings, collect_pairs, compute_object_metrics


def _fmt_log10(v: float | None) -> str:
    return "n/a" if v is None else f"1e{v:.1f}" if v > -300 else f"10^({v:.0f})"


def object_sections(result: dict[str, Any], max_overlays: int = 6) -> list[Section]:
    """Report sections: headline, fractions within radii with intervals and p-values, figures."""
    s = result["summary"]
    unit = s["unit"]
    head = [
        f"{s['n_fields']} field(s): {s['n_true']} real and {s['n_pred']} predicted nuclei, "
        f"{s['n_matched']} matched ({s['match']} matching, at most {s['max_match_distance']:.3g} {unit}).",
        f"Detection recall {s['recall']:.3f} (95 % CI {s['recall_ci95'][0]:.3f}-{s['recall_ci95'][1]:.3f}), "
        f"precision {s['precision']:.3f}; median centroid distance of matched pairs "
        f"{s['median_distance']:.3g} {unit}; median real nuclear radius {s['nuclear_radius']:.3g} {unit}.",
    ]
    within = [{
        "radius": w["radius"], "within": f"{w['k']}/{w['n']}", "fraction": w["fraction"],
        "Clopper-Pearson 95%": f"{w['cp_low']:.3f}-{w['cp_high']:.3f}",
        "Wilson 95%": f"{w['wilson_low']:.3f}-{w['wilson_high']:.3f}",
        "chance (image)": w["chance_image"], "p (image)": _fmt_log10(w["log10_p_image"]),
        "chance (cell region)": w["chance_region"], "p (cell region)": _fmt_log10(w["log10_p_region"]),
    } for w in s["within"]]
    inst = [{k: r[k] for k in ("threshold", "tp", "fp", "fn", "precision", "recall", "f1", "ap", "pq")
             if k in r} for r in s["instance_scores"]]
    radii = [(w["radius"], w["radius_value"]) for w in s["within"]]
    fields = result["field_data"][:max_overlays]
    sections = [
        Section("Objects: detection and position", head, tables=[
            ("Predicted nuclei within a radius of their matched real nucleus (n = predicted nuclei); "
             "p = binomial test against chance placement", within)]),
        Section("Centroid distances", figures=[("distance histograms", distance_hist_figure(
            result["dist_nearest"], result["dist_matched"], radii, unit))]),
        Section("Overlays", figures=[("real (blue) and predicted (red) nuclei", overlay_figure(
            [(f["name"], f["truth_image"], f["labels_true"], f["labels_pred"]) for f in fields]))]),
        Section("Instance agreement (IoU matching, pooled over fields)", tables=[("scores", inst)]),
    ]
    if isinstance(s["markers"], dict):
        m = s["markers"]
        sections.append(Section("Markers", [
            f"Blob markers at {m['max_distance_um']:g} um: {m['tp']} found, false-negative rate "
            f"{m['fn_rate']:.3f} ({m['fn']}/{m['n_true']}), false-positive rate {m['fp_rate']:.3f} "
            f"({m['fp']}/{m['n_pred']})."]))
    sections.append(Section("Per field", tables=[("fields", result["fields"])]))
    return sections


def evaluate_objects(pred: str | Path, truth: str | Path, out: str | Path, *,
                     settings: ObjectSettings | None = None, split: str | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Evaluate predicted nuclei against real ones and write ``OUT/`` (atomically as a folder).

    Writes ``objects.csv`` (one row per real and predicted object), ``fields.csv``,
    ``summary.json`` and ``report.html``. Returns the summary dict.
    """
    settings = settings or ObjectSettings()
    out = Path(out)
    pairs = collect_pairs(Path(pred), Path(truth), split)
    result = compute_object_metrics(pairs, settings, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_csv(tmp / "objects.csv", result["objects"])
        write_csv(tmp / "fields.csv", result["fields"])
        write_json(tmp / "summary.json", result["summary"])
        write_report(tmp / "report.html", "cytogen: object-level evaluation", object_sections(result),
                     subtitle=f"predictions: {pred}; truth: {truth}")
        out.mkdir(parents=True, exist_ok=True)
        for p in tmp.iterdir():
            p.replace(out / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
