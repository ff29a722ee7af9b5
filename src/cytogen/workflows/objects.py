"""``cytogen evaluate objects``: are the predicted nuclei where the real ones are?

For each field: segment real and predicted nucleus images into objects (or take label
images), match them one-to-one (optimal centroid matching, or the paper's bounding-box overlap
maximisation), measure centroid distances in um, and pool over fields: detection recall and
precision, the fraction of predicted nuclei within each radius with Clopper-Pearson and Wilson
95 % intervals, the chance of landing that close by random placement (in the whole image and
inside the cell region with the nucleus kept wholly inside the cell) and the binomial test of
the observed successes against it (as log10 p), IoU-based instance scores and marker errors.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from cytogen.data.manifest import read_manifest
from cytogen.errors import CytogenError
from cytogen.evaluate.instances import aggregate_scores, instance_scores, jaccard_binary
from cytogen.evaluate.markers import detect_markers, marker_errors
from cytogen.evaluate.matching import match_bboxes, match_centroids
from cytogen.evaluate.objects import as_labels, measure_objects, segment_nuclei
from cytogen.evaluate.stats import (binom_log10_sf, chance_probability_image,
                                    chance_probability_region, clopper_pearson, fraction_within,
                                    mean_chance)
from cytogen.io.images import Image, read_image, read_spec, stack_channels
from cytogen.workflows.evaluate import find_prediction


@dataclass
class ObjectSettings:
    """Options of the object evaluation (CLI flags map one-to-one)."""

    pixel_size_um: float | None = None
    radii: list[str | float] | None = None  # None: 4 um, 1 um and one nuclear radius (px: nuclear only)
    labels: bool = False
    match: str = "centroid"
    max_distance_um: float | None = None
    threshold: str | float = "otsu"
    sigma_px: float = 1.0
    min_area_um2: float | None = None
    min_area_px: int = 20
    exclude_border: bool = False
    region: str = "source"
    marker_distance_um: float = 15.0
    channel: int = 0


@dataclass
class FieldPair:
    """One field's real and predicted images (first target channel), and its region image."""

    name: str
    truth: Image
    pred: Image
    source: Image | None = None


def collect_pairs(pred: Path, truth: Path, split: str | None = None) -> list[FieldPair]:
    """Pair predictions with truths from a manifest (targets) or a folder (same file names)."""
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
            pairs.append(FieldPair(e.name, stack_channels([read_spec(s) for s in e.target]),
                                   read_image(q), stack_channels([read_spec(s) for s in e.source])))
    if not pairs:
        raise CytogenError(f"{pred}: no prediction matches a truth field of {truth} (same names expected)")
    return pairs


def _spacing(pair: FieldPair, s: ObjectSettings) -> tuple[float, ...] | None:
    nd = pair.truth.ndim_spatial
    if s.pixel_size_um is not None:
        if s.pixel_size_um <= 0:
            raise CytogenError(f"--pixel-size-um must be positive, got {s.pixel_size_um}")
        own = pair.truth.pixel_size_um or pair.pred.pixel_size_um
        return ((own[0],) if nd == 3 and own else (s.pixel_size_um,) * (nd - 2)) + (s.pixel_size_um,) * 2
    return pair.truth.pixel_size_um or pair.pred.pixel_size_um


def _channel(img: Image, k: int, what: str, name: str) -> np.ndarray:
    if k >= img.data.shape[0]:
        raise CytogenError(f"field {name!r}: {what} has {img.data.shape[0]} channel(s), --channel {k} asked")
    return img.data[k]


def _labels(img: np.ndarray, spacing, s: ObjectSettings) -> np.ndarray:
    if s.labels:
        return as_labels(img)
    return segment_nuclei(img, pixel_size_um=spacing, sigma_px=s.sigma_px, threshold=s.threshold,
                          min_area_um2=s.min_area_um2, min_area_px=s.min_area_px,
                          exclude_border=s.exclude_border)


def _region(pair: FieldPair, truth_labels: np.ndarray, s: ObjectSettings) -> np.ndarray | None:
    """Cells for the restricted chance: the source's Otsu foreground (plus the real nuclei), split
    into one region per real nucleus by a marker-controlled watershed (as CellProfiler's
    propagation of secondary objects from nuclei). Returns an integer label image."""
    if s.region == "none" or pair.source is None:
        return None
    src = ndimage.gaussian_filter(pair.source.data.astype(np.float32).max(axis=0), 2.0)
    fg = src > threshold_otsu(src) if src.max() > src.min() else np.zeros(src.shape, bool)
    fg = ndimage.binary_fill_holes(fg | (truth_labels > 0))
    return watershed(-src, markers=truth_labels, mask=fg)


def evaluate_field(pair: FieldPair, s: ObjectSettings) -> dict[str, Any]:
    """Objects, matching and per-field figures of one field (distances in um when known)."""
    spacing = _spacing(pair, s)
    t_img = _channel(pair.truth, s.channel, "truth", pair.name)
    p_img = _channel(pair.pred, s.channel, "prediction", pair.name)
    if t_img.shape != p_img.shape:
        raise CytogenError(f"field {pair.name!r}: prediction is {p_img.shape}, truth {t_img.shape}")
    lt, lp = _labels(t_img, spacing, s), _labels(p_img, spacing, s)
    ot, op = measure_objects(lt, spacing), measure_objects(lp, spacing)
    unit = "um" if spacing else "px"
    ct = ot.centroid_um if spacing else ot.centroid_px
    cp = op.centroid_um if spacing else op.centroid_px
    r_nuc = float(np.median(ot.equivalent_radius_um if spacing else ot.equivalent_radius_px)) if len(ot) else np.nan
    return {"name": pair.name, "spacing": spacing, "unit": unit, "labels_true": lt, "labels_pred": lp,
            "objects_true": ot, "objects_pred": op, "c_true": ct, "c_pred": cp, "nuclear_radius": r_nuc,
            "truth_image": t_img, "pred_image": p_img, "region": _region(pair, lt, s)}


def _match(f: dict[str, Any], s: ObjectSettings, max_distance: float):
    if s.match == "bbox":
        m = match_bboxes(f["objects_true"].bbox, f["objects_pred"].bbox)
        d = np.linalg.norm(f["c_true"][m.idx_true] - f["c_pred"][m.idx_pred], axis=1) if m.n_matched else np.zeros(0)
        return m, d
    if s.match != "centroid":
        raise CytogenError(f"--match must be centroid or bbox, got {s.match!r}")
    m = match_centroids(f["c_true"], f["c_pred"], max_distance)
    return m, m.distance


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


def compute_object_metrics(pairs: list[FieldPair], s: ObjectSettings, progress: bool = True) -> dict[str, Any]:
    """Evaluate all fields and pool the statistics; returns summary, per-field and per-object rows."""
    if s.radii and any(not isinstance(r, str) for r in s.radii) and _spacing(pairs[0], s) is None:
        resolve_radii(s.radii, float("nan"), "px")  # raises: um radii need a pixel size
    fields = []
    for i, pair in enumerate(pairs, 1):
        fields.append(evaluate_field(pair, s))
        if progress:
            print(f"[{i}/{len(pairs)}] {pair.name}: {len(fields[-1]['objects_true'])} real, "
                  f"{len(fields[-1]['objects_pred'])} predicted objects", file=sys.stderr)
    units = {f["unit"] for f in fields}
    if len(units) > 1:
        raise CytogenError("some fields have a pixel size and others not; pass --pixel-size-um for all")
    unit = units.pop()
    radii_all = np.concatenate([(f["objects_true"].equivalent_radius_um if unit == "um"
                                 else f["objects_true"].equivalent_radius_px) for f in fields])
    nuclear = float(np.median(radii_all)) if radii_all.size else float("nan")
    wanted = s.radii
    if wanted is None:
        wanted = [4.0, 1.0, "nuclear"] if unit == "um" else ["nuclear"]
        if unit == "px":
            print("note: no pixel size known; distances are in px and the radius is one nuclear radius "
                  "(pass --pixel-size-um for um)", file=sys.stderr)
    radii = resolve_radii(wanted, nuclear, unit)
    max_d = s.max_distance_um if s.max_distance_um is not None else max(r for _, r in radii)
    if unit == "px" and s.max_distance_um is not None:
        raise CytogenError("--max-distance-um needs the pixel size; pass --pixel-size-um")

    obj_rows, field_rows, dist_matched, dist_nearest, inst = [], [], [], [], []
    succ = {lab: 0 for lab, _ in radii}
    p_img = {lab: [] for lab, _ in radii}
    p_reg = {lab: [] for lab, _ in radii}
    mk = {"tp": 0, "fn": 0, "fp": 0, "n_true": 0, "n_pred": 0}
    n_true = n_pred = n_matched = 0
    for f in fields:
        m, d = _match(f, s, max_d)
        dist_matched.append(d)
        if len(f["c_pred"]) and len(f["c_true"]):
            dist_nearest.append(cKDTree(f["c_true"]).query(f["c_pred"])[0])
        n_true += m.n_true
        n_pred += m.n_pred
        n_matched += m.n_matched
        spacing = f["spacing"]
        px = np.asarray(spacing) if spacing else np.ones(f["truth_image"].ndim)
        row = {"name": f["name"], "n_true": m.n_true, "n_pred": m.n_pred, "n_matched": m.n_matched,
               "recall": m.recall, "precision": m.precision,
               f"median_distance_{unit}": float(np.median(d)) if d.size else float("nan")}
        for lab, r in radii:
            k = int(np.sum(d <= r))
            succ[lab] += k
            row[f"within {lab}"] = k / m.n_pred if m.n_pred else float("nan")
            ct_px = f["objects_true"].centroid_px
            if len(ct_px):
                p_img[lab].append(chance_probability_image(ct_px, f["truth_image"].shape, r / px))
                if f["region"] is not None:
                    p_reg[lab].append(chance_probability_region(ct_px, f["region"], r, f["nuclear_radius"],
                                                                spacing=tuple(px)))
        sc = instance_scores(f["labels_true"], f["labels_pred"])
        inst.append(sc)
        row["f1_iou50"] = sc[0]["f1"]
        row["jaccard"] = jaccard_binary(f["labels_true"], f["labels_pred"])
        if unit == "um":
            diam = 2 * f["nuclear_radius"] if np.isfinite(f["nuclear_radius"]) else 10.0
            mt = detect_markers(f["truth_image"], pixel_size_um=spacing, nucleus_diameter_um=diam)
            mp = detect_markers(f["pred_image"], pixel_size_um=spacing, nucleus_diameter_um=diam)
            me = marker_errors(mt * px, mp * px, s.marker_distance_um)
            for k in mk:
                mk[k] += me[k]
            row["marker_fn_rate"], row["marker_fp_rate"] = me["fn_rate"], me["fp_rate"]
        field_rows.append(row)
        obj_rows.extend(_object_rows(f, m, d, unit))
    return _summary(fields, field_rows, obj_rows, radii, succ, p_img, p_reg, n_true, n_pred, n_matched,
                    np.concatenate(dist_matched) if dist_matched else np.zeros(0),
                    np.concatenate(dist_nearest) if dist_nearest else np.zeros(0),
                    aggregate_scores(inst), mk, unit, nuclear, max_d, s)


def _object_rows(f: dict[str, Any], m, d: np.ndarray, unit: str) -> list[dict[str, Any]]:
    """Per-object rows: real and predicted objects with their match and distance."""
    rows = []
    partner_t = dict(zip(m.idx_true.tolist(), zip(m.idx_pred.tolist(), d.tolist())))
    partner_p = dict(zip(m.idx_pred.tolist(), zip(m.idx_true.tolist(), d.tolist())))
    for kind, table, partner in (("true", f["objects_true"], partner_t), ("pred", f["objects_pred"], partner_p)):
        for i, r in enumerate(table.to_rows()):
            j, dist = partner.get(i, (None, float("nan")))
            rows.append({"field": f["name"], "kind": kind, **r,
                         "matched_label": None if j is None else int(
                             (f["objects_pred"] if kind == "true" else f["objects_true"]).label[j]),
                         f"distance_{unit}": dist})
    return rows


def _summary(fields, field_rows, obj_rows, radii, succ, p_img, p_reg, n_true, n_pred, n_matched,
             dist_matched, dist_nearest, inst, mk, unit, nuclear, max_d, s) -> dict[str, Any]:
    within = []
    for lab, r in radii:
        fw = fraction_within(dist_matched, r, n_pred)
        pi = mean_chance(np.concatenate(p_img[lab])) if p_img[lab] else float("nan")
        pr = mean_chance(np.concatenate(p_reg[lab])) if p_reg[lab] else float("nan")
        within.append({
            "radius": lab, "radius_value": r, "unit": unit, "k": fw["k"], "n": fw["n"],
            "fraction": fw["fraction"], "cp_low": fw["cp_low"], "cp_high": fw["cp_high"],
            "wilson_low": fw["wilson_low"], "wilson_high": fw["wilson_high"],
            "chance_image": pi, "log10_p_image": binom_log10_sf(fw["k"], fw["n"], pi) if np.isfinite(pi) else None,
            "chance_region": pr, "log10_p_region": binom_log10_sf(fw["k"], fw["n"], pr) if np.isfinite(pr) else None,
        })
    rec_ci = clopper_pearson(n_matched, n_true) if n_true else (float("nan"),) * 2
    prec_ci = clopper_pearson(n_matched, n_pred) if n_pred else (float("nan"),) * 2
    summary = {
        "n_fields": len(fields), "unit": unit, "match": s.match, "max_match_distance": max_d,
        "nuclear_radius": nuclear, "n_true": n_true, "n_pred": n_pred, "n_matched": n_matched,
        "recall": n_matched / n_true if n_true else float("nan"), "recall_ci95": list(rec_ci),
        "precision": n_matched / n_pred if n_pred else float("nan"), "precision_ci95": list(prec_ci),
        "median_distance": float(np.median(dist_matched)) if dist_matched.size else float("nan"),
        "within": within, "instance_scores": inst,
        "markers": ({**mk, "max_distance_um": s.marker_distance_um,
                     "fn_rate": mk["fn"] / mk["n_true"] if mk["n_true"] else float("nan"),
                     "fp_rate": mk["fp"] / mk["n_pred"] if mk["n_pred"] else float("nan")}
                    if unit == "um" else "skipped: needs the pixel size (--pixel-size-um)"),
        "chance_model": ("p0 = mean over real nuclei of the probability that one random centroid lands "
                         "within the radius (image: anywhere in the field; region: inside the same cell "
                         "region, at least one nuclear radius from its edge)"),
    }
    return {"summary": summary, "fields": field_rows, "objects": obj_rows,
            "dist_matched": dist_matched, "dist_nearest": dist_nearest, "field_data": fields}
