"""``cytogen evaluate objects``: read the fields, call :mod:`cytogen.evaluate.summary`, write the outputs.

Outputs (``OUT/``, swapped in as one folder only once complete): ``objects.csv`` (one row per real
and predicted object), ``fields.csv``, ``summary.json`` (with ``inputs``: the absolute prediction
and truth paths and the split evaluated) and ``report.html``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.data.manifest import read_manifest
from cytogen.errors import CytogenError
from cytogen.evaluate.pipeline import FieldPair, ObjectSettings
from cytogen.evaluate.summary import ObjectResult, compute_object_metrics
from cytogen.io.atomic import atomic_dir
from cytogen.io.images import read_image, read_spec, stack_channels
from cytogen.report.html import Section, write_report
from cytogen.report.object_figures import distance_hist_figure, overlay_figure
from cytogen.workflows.evaluate import check_out, find_prediction, write_csv, write_json

__all__ = ["ObjectSettings", "collect_pairs", "evaluate_objects", "object_sections"]


def collect_pairs(pred: Path, truth: Path, split: str | None = None) -> list[FieldPair]:
    """Pair predictions with truths from a manifest (targets, sources, ``pixel_size_um``) or a
    folder of same-named images."""
    pred, truth = Path(pred), Path(truth)
    if not pred.is_dir():
        raise CytogenError(f"{pred}: prediction folder not found; run 'cytogen predict' first")
    pairs = []
    if truth.is_dir():
        for p in sorted(truth.iterdir()):
            if p.name.startswith("."):
                continue
            name = p.name.split(".")[0]
            q = find_prediction(pred, name)
            if q is not None:
                pairs.append(FieldPair(name, read_image(p), read_image(q)))
    else:
        for e in read_manifest(truth):
            if split not in (None, "all") and e.split != split:
                continue
            q = find_prediction(pred, e.name)
            if q is None:
                continue
            pairs.append(FieldPair(e.name, stack_channels([read_spec(s) for s in e.target]), read_image(q),
                                   stack_channels([read_spec(s) for s in e.source]), e.pixel_size_um))
    if not pairs:
        raise CytogenError(f"{pred}: no prediction matches a truth field of {truth} (same names expected)")
    return pairs


def _fmt_log10(v: float | None) -> str:
    return "n/a" if v is None else f"10^({v:.1f})" if v > -300 else f"10^({v:.0f})"


def object_sections(result: ObjectResult | dict[str, Any], max_overlays: int = 6) -> list[Section]:
    """Report sections: headline, fractions within radii with intervals and p-values, figures.

    ``result`` is an :class:`ObjectResult` or the dict :func:`evaluate_objects` returns.
    """
    if isinstance(result, dict):
        result = result["result"]
    s = result.summary
    unit = s["unit"]
    cut = f", at most {s['max_match_distance']:.3g} {unit}" if s["max_match_distance"] is not None else ""
    head = [
        f"{s['n_fields']} field(s): {s['n_true']} real and {s['n_pred']} predicted nuclei, "
        f"{s['n_matched']} predicted nuclei matched to {s['n_true_matched']} real ones "
        f"(matching '{s['match']}': {s['match_rule']}{cut}). Pixel size: {s['pixel_size_source']}.",
        f"Detection recall {s['recall']:.3f} (95 % CI {s['recall_ci95'][0]:.3f}-{s['recall_ci95'][1]:.3f}), "
        f"precision {s['precision']:.3f}; median centroid distance of matched pairs "
        f"{s['median_distance']:.3g} {unit}; median real nuclear radius {s['nuclear_radius']:.3g} {unit}.",
        "Chance: union = a randomly placed nucleus succeeds near ANY real nucleus (the fraction of the "
        "field, or of the allowed positions in its cell, within the radius of a real centroid; used by "
        "default); per nucleus = the paper's null (Vasudevan et al.), one disc per real nucleus, which "
        "overstates significance. p: one-sided binomial test of k of n predicted nuclei.",
    ]
    within = [{
        "radius": w["radius"], "within": f"{w['k']}/{w['n']}", "fraction": w["fraction"],
        "Clopper-Pearson 95%": f"{w['cp_low']:.3f}-{w['cp_high']:.3f}",
        "Wilson 95%": f"{w['wilson_low']:.3f}-{w['wilson_high']:.3f}",
        "chance image (union)": w["chance_image_union"], "p image (union)": _fmt_log10(w["log10_p_image_union"]),
        "chance cell (union)": w["chance_region_union"], "p cell (union)": _fmt_log10(w["log10_p_region_union"]),
        "chance image (per nucleus, paper)": w["chance_image_per_nucleus"],
        "p image (per nucleus, paper)": _fmt_log10(w["log10_p_image_per_nucleus"]),
        "chance cell (per nucleus, paper)": w["chance_region_per_nucleus"],
        "p cell (per nucleus, paper)": _fmt_log10(w["log10_p_region_per_nucleus"]),
    } for w in s["within"]]
    inst = [{k: r[k] for k in ("threshold", "tp", "fp", "fn", "precision", "recall", "f1", "ap", "pq")
             if k in r} for r in s["instance_scores"]]
    fields = result.fields[:max_overlays]
    sections = [
        Section("Objects: detection and position", head, tables=[
            ("Predicted nuclei within a radius of their matched real nucleus (n = predicted nuclei); "
             "p = binomial test against chance placement", within)]),
        Section("Centroid distances", figures=[("distance histograms", distance_hist_figure(
            result.dist_nearest, result.dist_matched, result.radii, unit))]),
        Section("Overlays", figures=[("real (blue) and predicted (red) nuclei", overlay_figure(
            [(f.name, f.truth_image, f.labels_true, f.labels_pred) for f in fields]))]),
        Section("Instance agreement (IoU matching, pooled over fields)", tables=[("scores", inst)]),
    ]
    if isinstance(s["markers"], dict):
        m = s["markers"]
        sections.append(Section("Markers", [
            f"Blob markers ({m['method']}) at {m['max_distance_um']:g} um: {m['tp']} found, false-negative "
            f"rate {m['fn_rate']:.3f} ({m['fn']}/{m['n_true']}), false-positive rate {m['fp_rate']:.3f} "
            f"({m['fp']}/{m['n_pred']})."]))
    sections.append(Section("Per field", tables=[("fields", result.field_rows)]))
    return sections


OUTPUTS = ("objects.csv", "fields.csv", "summary.json", "report.html")


def _progress(line: str) -> None:
    print(line, file=sys.stderr)


def segmenter_function(model_dir: str | Path, settings: dict[str, Any] | None = None):
    """``f(image, spacing) -> labels`` of a trained nucleus segmenter (``segment_nuclei`` folder),
    for :class:`ObjectSettings.segmenter`."""
    from cytogen.io.images import Image
    from cytogen.predict.model_folder import load_nucleus_segmenter
    from cytogen.workflows.segment_nuclei import resolve_instances, segment_image

    model = load_nucleus_segmenter(model_dir)
    inst = resolve_instances(model, settings)

    def segment(image, spacing):
        axes = "CYX" if image.ndim == 2 else "CZYX"
        return segment_image(model, Image(np.asarray(image, np.float32)[None], axes, spacing), inst)

    return segment


def evaluate_objects(pred: str | Path, truth: str | Path, out: str | Path, *,
                     settings: ObjectSettings | None = None, split: str | None = None,
                     progress: bool = True, segmenter: str | Path | None = None) -> dict[str, Any]:
    """Evaluate predicted nuclei against real ones and write ``OUT/`` as one folder.

    Writes ``objects.csv`` (one row per real and predicted object), ``fields.csv``,
    ``summary.json`` and ``report.html`` into a temporary folder and swaps it in only once all
    are written: on any error ``OUT`` is absent or still the previous, complete evaluation.

    ``segmenter``: a nucleus segmenter's model folder (``cytogen train configs/segment_nuclei2d.yaml``)
    that segments the real and the predicted images instead of the threshold segmentation.

    Returns
    -------
    dict
        ``{"summary": the summary.json dict, "result": the typed ObjectResult}``.
    """
    settings = settings or ObjectSettings()
    if segmenter is not None:
        if settings.labels:
            raise CytogenError("give --labels (the inputs are label images) or --segmenter, not both")
        settings = dataclasses.replace(settings, segmenter=segmenter_function(segmenter), segmenter_name=str(segmenter))
    out = Path(out)
    check_out(out, OUTPUTS, "an object evaluation")
    pairs = collect_pairs(Path(pred), Path(truth), split)
    result = compute_object_metrics(pairs, settings, progress=_progress if progress else None)
    if progress and result.summary["unit"] == "px":
        _progress("note: no pixel size known; distances are in px (pass --pixel-size-um for um)")
    # what was evaluated, so viewers (the napari reader) can show the images under the nuclei
    result.summary["inputs"] = {"pred": str(Path(pred).resolve()), "truth": str(Path(truth).resolve()),
                                "split": split}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        write_csv(tmp / "objects.csv", result.object_rows)
        write_csv(tmp / "fields.csv", result.field_rows)
        write_json(tmp / "summary.json", result.summary)
        write_report(tmp / "report.html", "cytogen: object-level evaluation", object_sections(result),
                     subtitle=f"predictions: {pred}; truth: {truth}")
    return {"summary": result.summary, "result": result}
