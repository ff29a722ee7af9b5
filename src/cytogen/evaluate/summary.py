"""Pool the object evaluation over fields: counts, fractions within radii, nulls and p-values.

:func:`compute_object_metrics` runs :mod:`cytogen.evaluate.pipeline` on every field and pools:
detection recall and precision (Clopper-Pearson intervals), the fraction of predicted nuclei
within each radius of their matched real nucleus (Clopper-Pearson and Wilson intervals) and the
one-sided binomial test of that count against chance placement. The number of trials is the
number of predicted nuclei, and the chance ``p0`` is the mean over the same predicted nuclei of
each one's chance (of its own field, or of its own cell). The union-of-discs null is the default;
the per-nucleus null of Vasudevan et al. is reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cytogen.errors import CytogenError
from cytogen.evaluate.chance import mean_chance
from cytogen.evaluate.instances import aggregate_scores
from cytogen.evaluate.pipeline import (MATCH_RULES, FieldPair, FieldResult, ObjectSettings, field_spacing,
                                       measure_field, score_field)
from cytogen.evaluate.stats import binom_log10_sf, clopper_pearson, fraction_within

NULL_MODELS = {
    "test": ("one-sided binomial test P(X >= k), X ~ Binomial(n, p0): k = predicted nuclei within "
             "the radius of their matched real nucleus, n = all predicted nuclei (the trials), "
             "p0 = mean chance over the same n predicted nuclei"),
    "image_union": ("default: a nucleus placed uniformly at random in its field succeeds when it "
                    "lands within the radius of ANY real centroid; chance = fraction of the field's "
                    "pixels within the radius of some real centroid (union of discs), given to each "
                    "predicted nucleus of that field"),
    "image_per_nucleus": ("paper's null (Vasudevan et al.): one disc of the radius over the field "
                          "area, averaged over the field's real nuclei, given to each predicted "
                          "nucleus of that field; ignores that any real nucleus counts, so its "
                          "p-values are too small"),
    "region_union": ("default: a nucleus placed at random inside its own cell (source foreground "
                     "split by a watershed seeded by the real nuclei), at positions at least one "
                     "nuclear radius from the cell edge; chance = fraction of those positions "
                     "within the radius of any real centroid of that cell, per predicted nucleus"),
    "region_per_nucleus": ("paper's null (Vasudevan et al.): right / possible positions for one "
                           "real nucleus in its cell, averaged over the real nuclei of the "
                           "predicted nucleus's cell"),
}
NULLS = ("image_union", "image_per_nucleus", "region_union", "region_per_nucleus")


@dataclass
class ObjectResult:
    """Pooled summary (as written to ``summary.json``), per-field results and table rows."""

    summary: dict
    fields: list[FieldResult]
    field_rows: list[dict]
    object_rows: list[dict]
    dist_matched: np.ndarray
    dist_nearest: np.ndarray
    radii: list[tuple[str, float]]


def resolve_radii(radii: list[str | float], nuclear: float, unit: str) -> list[tuple[str, float]]:
    """``[(label, radius)]``: numbers are um (need a pixel size); ``nuclear`` = median real radius."""
    out = []
    for r in radii:
        if isinstance(r, str) and r.strip().lower() == "nuclear":
            out.append((f"nuclear ({nuclear:.3g} {unit})", nuclear))
        else:
            if unit != "um":
                raise CytogenError(
                    "radii in um need the pixel size: pass --pixel-size-um, or use --radius-um nuclear "
                    "(one nuclear radius measured from the real objects, in px)"
                )
            out.append((f"{float(r):g} um", float(r)))
    return out


def _pooled(k: int, n: int, parts: list[np.ndarray | None]) -> tuple[float, float | None]:
    """``(p0, log10 p)`` over the predicted nuclei; NaN/None when a field lacks the null or n = 0."""
    if n == 0 or any(p is None for p in parts):
        return float("nan"), None
    p0 = mean_chance(np.concatenate(parts))
    return p0, binom_log10_sf(k, n, p0)


def _within(fields: list[FieldResult], radii: list[tuple[str, float]], unit: str, n_pred: int,
            dist: np.ndarray) -> list[dict]:
    rows = []
    for i, (label, r) in enumerate(radii):
        fw = fraction_within(dist, r, n_pred)
        row = {"radius": label, "radius_value": r, "unit": unit, "k": fw["k"], "n": fw["n"],
               "fraction": fw["fraction"], "cp_low": fw["cp_low"], "cp_high": fw["cp_high"],
               "wilson_low": fw["wilson_low"], "wilson_high": fw["wilson_high"]}
        for null in NULLS:
            p0, lp = _pooled(fw["k"], n_pred, [getattr(f.chance[i], null) for f in fields])
            place, kind = null.split("_", 1)
            row[f"chance_{place}_{kind}"] = p0
            row[f"log10_p_{place}_{kind}"] = lp
        rows.append(row)
    return rows


def _field_row(f: FieldResult) -> dict:
    m, unit = f.matching, f.unit
    row = {"name": f.name, "pixel_size_source": f.pixel_size_source, "n_true": m.n_true, "n_pred": m.n_pred,
           "n_matched": m.n_matched, "recall": m.recall, "precision": m.precision,
           f"median_distance_{unit}": float(np.median(f.distance)) if f.distance.size else float("nan")}
    for c in f.chance:
        row[f"within {c.label}"] = c.k / m.n_pred if m.n_pred else float("nan")
        row[f"chance_image_union {c.label}"] = float(c.image_union[0]) if len(c.image_union) else float("nan")
    row["f1_iou50"] = f.instance[0]["f1"]
    row["jaccard"] = f.jaccard
    if f.markers is not None:
        row["marker_fn_rate"], row["marker_fp_rate"] = f.markers["fn_rate"], f.markers["fp_rate"]
    return row


def object_rows(f: FieldResult) -> list[dict]:
    """Per-object rows: real and predicted objects with their (nearest) partner and distance."""
    m, unit = f.matching, f.unit
    rows = []
    for kind, table, other, own_idx, other_idx in (
            ("true", f.objects_true, f.objects_pred, m.idx_true, m.idx_pred),
            ("pred", f.objects_pred, f.objects_true, m.idx_pred, m.idx_true)):
        partner: dict[int, tuple[int, float, int]] = {}
        for a, b, d in zip(own_idx.tolist(), other_idx.tolist(), f.distance.tolist()):
            j, best, n = partner.get(a, (b, d, 0))
            partner[a] = (b, d, n + 1) if d < best else (j, best, n + 1)
        for i, r in enumerate(table.to_rows()):
            j, dist, n = partner.get(i, (None, float("nan"), 0))
            rows.append({"field": f.name, "kind": kind, **r,
                         "matched_label": None if j is None else int(other.label[j]),
                         "n_partners": n, f"distance_{unit}": dist})
    return rows


def _markers(fields: list[FieldResult], s: ObjectSettings) -> dict | str:
    if any(f.markers is None for f in fields):
        return "skipped: needs the pixel size (--pixel-size-um)"
    mk = {k: sum(f.markers[k] for f in fields) for k in ("tp", "fn", "fp", "n_true", "n_pred")}
    return {**mk, "method": "difference of Gaussians (skimage blob_dog)", "max_distance_um": s.marker_distance_um,
            "fn_rate": mk["fn"] / mk["n_true"] if mk["n_true"] else float("nan"),
            "fp_rate": mk["fp"] / mk["n_pred"] if mk["n_pred"] else float("nan")}


def compute_object_metrics(pairs: list[FieldPair], s: ObjectSettings,
                           progress: Callable[[str], None] | None = None) -> ObjectResult:
    """Evaluate all fields and pool the statistics.

    Parameters
    ----------
    pairs : list of FieldPair
        The fields (real and predicted images, source images for the cell regions).
    s : ObjectSettings
        Options.
    progress : callable, optional
        Called with one line per field.

    Returns
    -------
    ObjectResult
        Summary, per-field results and CSV rows.
    """
    if not pairs:
        raise CytogenError("no fields to evaluate")
    if s.radii and any(not isinstance(r, str) for r in s.radii) and field_spacing(pairs[0], s)[0] is None:
        resolve_radii(s.radii, float("nan"), "px")  # raises: um radii need a pixel size
    fields = []
    for i, pair in enumerate(pairs, 1):
        fields.append(measure_field(pair, s))
        if progress:
            progress(f"[{i}/{len(pairs)}] {pair.name}: {len(fields[-1].objects_true)} real, "
                     f"{len(fields[-1].objects_pred)} predicted objects")
    units = {f.unit for f in fields}
    if len(units) > 1:
        raise CytogenError("some fields have a pixel size and others not; pass --pixel-size-um for all")
    unit = units.pop()
    if unit == "px" and s.max_distance_um is not None:
        raise CytogenError("--max-distance-um needs the pixel size; pass --pixel-size-um")
    radii_all = np.concatenate([(f.objects_true.equivalent_radius_um if unit == "um"
                                 else f.objects_true.equivalent_radius_px) for f in fields])
    nuclear = float(np.median(radii_all)) if radii_all.size else float("nan")
    wanted = s.radii if s.radii is not None else ([4.0, 1.0, "nuclear"] if unit == "um" else ["nuclear"])
    radii = resolve_radii(wanted, nuclear, unit)
    if s.match == "centroid" and not all(np.isfinite(r) for _, r in radii):
        raise CytogenError("no real nuclei found in any field, so there is no nuclear radius; "
                           "check the truth images or give --radius-um in um")
    max_d = s.max_distance_um if s.max_distance_um is not None else max(r for _, r in radii)
    for f in fields:
        score_field(f, radii, s, max_d)
    dist = np.concatenate([f.distance for f in fields])
    nearest = np.concatenate([f.nearest for f in fields])
    n_true = sum(f.matching.n_true for f in fields)
    n_pred = sum(f.matching.n_pred for f in fields)
    n_matched = sum(f.matching.n_matched for f in fields)
    n_true_matched = sum(f.matching.n_true_matched for f in fields)
    rec_ci = clopper_pearson(n_true_matched, n_true) if n_true else (float("nan"),) * 2
    prec_ci = clopper_pearson(n_matched, n_pred) if n_pred else (float("nan"),) * 2
    sources = list(dict.fromkeys(f.pixel_size_source for f in fields))
    summary = {
        "n_fields": len(fields), "unit": unit, "pixel_size_source": sources[0] if len(sources) == 1 else sources,
        "segmentation": ("instance label images given" if s.labels else
                         f"nucleus segmenter {s.segmenter_name or '(a function)'}" if s.segmenter is not None else
                         f"threshold {s.threshold} of the image smoothed by {s.sigma_px} px, holes filled, "
                         "touching nuclei split by a distance-transform watershed"),
        "match": s.match, "match_rule": MATCH_RULES[s.match],
        "max_match_distance": max_d if s.match == "centroid" else None,
        "nuclear_radius": nuclear, "n_true": n_true, "n_pred": n_pred, "n_matched": n_matched,
        "n_true_matched": n_true_matched,
        "recall": n_true_matched / n_true if n_true else float("nan"), "recall_ci95": list(rec_ci),
        "precision": n_matched / n_pred if n_pred else float("nan"), "precision_ci95": list(prec_ci),
        "median_distance": float(np.median(dist)) if dist.size else float("nan"),
        "within": _within(fields, radii, unit, n_pred, dist),
        "instance_scores": aggregate_scores([f.instance for f in fields]),
        "markers": _markers(fields, s),
        "null_model": NULL_MODELS,
    }
    rows = [r for f in fields for r in object_rows(f)]
    return ObjectResult(summary, fields, [_field_row(f) for f in fields], rows, dist, nearest, radii)
