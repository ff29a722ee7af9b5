"""``cytogen statcell perturbation``: condition shifts in latent spaces, permutation tests, Z'.

Public entry point :func:`perturbation` (re-exported by :mod:`cytogen.workflows.statcell_stats`).
Reads ``EMB/embeddings.csv`` (from ``cytogen statcell embed``) and writes, into a new OUT folder,
``shifts.csv``, ``projections.csv``, ``dose_response.csv``, ``zprime.csv``, ``summary.json`` and
``report.html``.
"""

from __future__ import annotations

import csv
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.errors import CytogenError
from cytogen.evaluate import latent as L
from cytogen.io.atomic import atomic_dir, write_json
from cytogen.report.html import Section, write_report

__all__ = ["perturbation", "read_table", "write_table", "refuse_nonempty", "progress"]


# ------------------------------------------------------------------ shared small helpers
def progress(msg: str) -> None:
    """One progress line on stderr."""
    print(f"[statcell] {msg}", file=sys.stderr, flush=True)


def refuse_nonempty(out: str | Path) -> Path:
    """``out`` as a Path; CytogenError if it exists and is not an empty folder."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CytogenError(f"{out}: output exists and is not an empty folder; choose a new --out or delete it")
    return out


def read_table(path: str | Path, what: str = "table") -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (CytogenError naming the file when missing or empty)."""
    path = Path(path)
    if not path.is_file():
        raise CytogenError(f"{path}: {what} not found; give the CSV written by the previous step")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    if not rows:
        raise CytogenError(f"{path}: {what} has no rows")
    return header, rows


def _cell(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else repr(float(v))
    return str(v)


def write_table(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Write rows as CSV (into a folder being built by atomic_dir, or atomically via a temp file)."""
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k, "")) for k in cols})


def _num(v: str) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ------------------------------------------------------------------ perturbation
def _space_columns(header: list[str], space: str, path: Path) -> list[str]:
    pat = re.compile(rf"^{re.escape(space)}_(\d+)$")
    cols = sorted((c for c in header if pat.match(c)), key=lambda c: int(pat.match(c).group(1)))
    if not cols:
        raise CytogenError(f"{path}: no columns {space}_0, {space}_1, ... for space {space!r}; spaces are "
                           f"column prefixes (zr, zt, pca) written by 'cytogen statcell embed'")
    return cols


def _parse_learn_on(learn_on: str | None, header: list[str], path: Path) -> tuple[str, list[str]] | None:
    if learn_on is None or str(learn_on).strip() == "":
        return None
    col, sep, vals = str(learn_on).partition("=")
    values = [v.strip() for v in vals.split(",") if v.strip()]
    if not sep or not col.strip() or not values:
        raise CytogenError(f"learn_on {learn_on!r} is not COL=V1,V2 (e.g. row=A,C)")
    if col.strip() not in header:
        raise CytogenError(f"{path}: learn_on column {col.strip()!r} not found (columns: {', '.join(header)})")
    return col.strip(), values


def _same(a: str, b: str) -> bool:
    x, y = _num(a), _num(b)
    return x == y if x is not None and y is not None else a.strip() == b.strip()


def perturbation(embeddings: str | Path, out: str | Path, *, condition: str, control: str,
                 treated: str | None = None, group_by: str | None = "structure",
                 spaces: tuple[str, ...] = ("zr", "zt"), baseline_columns: tuple[str, ...] = (),
                 learn_on: str | None = None, n_permutations: int = 2000, seed: int = 0,
                 well_column: str | None = "well") -> dict:
    """Shifts of each condition from the control in latent spaces, projections, dose-response, Z'.

    For every group (``group_by`` column, e.g. structure) and condition value other than
    ``control``: the Euclidean distance between the condition's and the control's centroids in
    each space (raw, and divided by the control's spread sqrt(trace cov)), its permutation p-value
    ((k + 1) / (n + 1) rule) and the Bonferroni-corrected p over all groups x conditions x spaces
    tested. Then per group and space the unit control -> ``treated`` direction, learned on the
    ``learn_on`` cells (all cells when None), with the learning cells' control centroid as the
    origin; every cell's projection on it; the dose-response of the projection on the held-out
    cells (the others; all when learn_on is None) with Spearman rho and a monotonicity check; and
    the Z'-factor of the projection between treated and control held-out cells, side by side with
    the Z' of each ``baseline_columns`` read-out (oriented on the learning cells so treated > control).

    Parameters
    ----------
    embeddings : path
        ``embeddings.csv`` (cells.csv columns + ``<space>_<k>`` columns).
    out : path
        New (or empty) output folder.
    condition, control, treated
        Condition column, its control value and the treated value of the direction and Z'
        (default: the largest value). Values compare as numbers when they parse as numbers.
    group_by : str or None
        Column of the groups (None or "" for one group "all").
    spaces : tuple of str
        Latent column prefixes.
    baseline_columns : tuple of str
        Per-cell read-outs to score like the projections (e.g. ``target_nc_ratio``).
    learn_on : str or None
        ``COL=V1,V2``: the cells learning the direction (and the baselines' orientation).
    n_permutations, seed
        Permutation test settings.
    well_column : str or None
        When this column exists, the Z' is also computed over the per-well means of the
        held-out control and treated wells (``z_prime_wells``; the screening convention, wells
        as replicates), beside the per-cell Z'.

    Returns
    -------
    dict
        Summary (also ``OUT/summary.json``).
    """
    t0 = time.perf_counter()
    path = Path(embeddings)
    out = refuse_nonempty(out)
    header, rows = read_table(path, "embeddings.csv")
    for col in [condition] + ([group_by] if group_by else []) + list(baseline_columns):
        if col not in header:
            raise CytogenError(f"{path}: column {col!r} not found (columns: {', '.join(header[:40])}...)")
    if int(n_permutations) < 1:
        raise CytogenError(f"n_permutations must be at least 1, got {n_permutations}")
    space_cols = {s: _space_columns(header, s, path) for s in spaces}
    learn = _parse_learn_on(learn_on, header, path)

    cond_raw = [r[condition].strip() for r in rows]
    numeric = all(_num(v) is not None for v in cond_raw)
    levels = sorted(set(cond_raw), key=(lambda v: _num(v)) if numeric else (lambda v: v))
    ctrl = next((v for v in levels if _same(v, str(control))), None)
    if ctrl is None:
        raise CytogenError(f"{path}: control value {control!r} not found in column {condition!r} "
                           f"(values: {', '.join(levels[:20])})")
    if treated is None:
        treat = levels[-1]
    else:
        treat = next((v for v in levels if _same(v, str(treated))), None)
        if treat is None:
            raise CytogenError(f"{path}: treated value {treated!r} not found in column {condition!r} "
                               f"(values: {', '.join(levels[:20])})")
    if treat == ctrl:
        raise CytogenError(f"treated value {treat!r} is the control; give --treated")
    cond = np.array(cond_raw)
    groups = np.array([r[group_by] for r in rows]) if group_by else np.array(["all"] * len(rows))
    is_learn = (np.array([any(_same(r[learn[0]], v) for v in learn[1]) for r in rows])
                if learn else np.ones(len(rows), bool))
    held = ~is_learn if learn else np.ones(len(rows), bool)
    if learn and not held.any():
        raise CytogenError(f"learn_on {learn_on!r} selects every cell: nothing is left to measure on")
    if learn and not is_learn.any():
        raise CytogenError(f"learn_on {learn_on!r} selects no cell of {path}")
    try:
        Z = {s: np.array([[float(r[c]) for c in cols] for r in rows]) for s, cols in space_cols.items()}
    except ValueError as exc:
        raise CytogenError(f"{path}: a latent column holds a non-number ({exc}); re-run 'cytogen statcell embed'") from None
    notes: list[str] = []
    base = {b: np.array([_num(r[b]) if _num(r[b]) is not None else np.nan for r in rows]) for b in baseline_columns}
    dose = np.array([_num(v) for v in cond_raw], float) if numeric else None
    wells = np.array([r[well_column] for r in rows]) if well_column and well_column in header else None
    progress(f"perturbation: {len(rows)} cells, {len(set(groups))} group(s), {len(levels)} condition values, "
             f"spaces {', '.join(spaces)}")

    # 1. shifts and permutation tests
    shifts: list[dict[str, Any]] = []
    for g in sorted(set(groups)):
        gm = groups == g
        c_mask = gm & (cond == ctrl)
        if c_mask.sum() < 2:
            progress(f"  group {g}: fewer than 2 control cells, skipped")
            continue
        for v in levels:
            if v == ctrl or (gm & (cond == v)).sum() < 1:
                continue
            v_mask = gm & (cond == v)
            for s in spaces:
                zc, zv = Z[s][c_mask], Z[s][v_mask]
                dist, _ = L.centroid_shift(zc, zv)
                spread = float(np.sqrt(np.trace(np.atleast_2d(np.cov(zc, rowvar=False)))))
                p = L.permutation_test(zc, zv, n_permutations, seed)
                shifts.append({"group": g, "condition": v, "space": s, "n_control": int(c_mask.sum()),
                               "n_condition": int(v_mask.sum()), "shift": dist,
                               "shift_sd": dist / spread if spread > 0 else float("nan"), "p": p})
        progress(f"  group {g}: shifts tested")
    m_tests = max(1, len(shifts))
    for r in shifts:
        r["p_bonferroni"] = L.bonferroni(r["p"], m_tests)
        r["significant"] = bool(r["p_bonferroni"] < 0.05)

    # 2. directions, projections, dose-response, Z'
    proj = {s: np.full(len(rows), np.nan) for s in spaces}
    zrows: list[dict[str, Any]] = []
    drows: list[dict[str, Any]] = []
    dsum: list[dict[str, Any]] = []
    readouts = list(spaces) + list(baseline_columns)
    for g in sorted(set(groups)):
        gm = groups == g
        lc, lt = gm & is_learn & (cond == ctrl), gm & is_learn & (cond == treat)
        hc, ht = gm & held & (cond == ctrl), gm & held & (cond == treat)
        values: dict[str, np.ndarray] = {}
        if lc.sum() < 1 or lt.sum() < 1:
            notes.append(f"group {g}: no learning cells of the control or of {treat!r}; no direction")
        for s in spaces:
            if lc.sum() < 1 or lt.sum() < 1:
                continue
            try:
                u = L.direction(Z[s][lc], Z[s][lt])
            except CytogenError:
                notes.append(f"group {g}, space {s}: control and treated centroids coincide; no direction")
                continue
            proj[s][gm] = L.project(Z[s][gm], Z[s][lc].mean(axis=0), u)
            values[s] = proj[s]
        for b in baseline_columns:
            x = base[b]
            okc, okt = lc & np.isfinite(x), lt & np.isfinite(x)
            sign = 1.0
            if okc.any() and okt.any() and x[okt].mean() < x[okc].mean():
                sign = -1.0
            values[b] = sign * x
        for name in readouts:
            if name not in values:
                continue
            v = values[name]
            pos, neg = v[ht & np.isfinite(v)], v[hc & np.isfinite(v)]
            zp = L.z_prime(pos, neg)
            lo, hi = L.z_prime_interval(pos, neg, n_boot=500, seed=seed)
            zrow = {"group": g, "readout": name, "kind": "latent" if name in spaces else "baseline",
                    "n_treated": len(pos), "n_control": len(neg), "z_prime": zp, "z_prime_lo": lo,
                    "z_prime_hi": hi, "mean_treated": float(pos.mean()) if len(pos) else float("nan"),
                    "mean_control": float(neg.mean()) if len(neg) else float("nan")}
            if wells is not None:
                wp, wn = _well_means(v, wells, ht), _well_means(v, wells, hc)
                zrow.update(n_wells_treated=len(wp), n_wells_control=len(wn), z_prime_wells=L.z_prime(wp, wn))
            zrows.append(zrow)
            if dose is not None:
                sel = gm & held & np.isfinite(v)
                dr = L.dose_response(v[sel], dose[sel])
                for i, d in enumerate(dr["doses"]):
                    drows.append({"group": g, "readout": name, "dose": d, "n": dr["n"][i], "mean": dr["mean"][i],
                                  "median": dr["median"][i], "sd": dr["sd"][i]})
                dsum.append({"group": g, "readout": name, "spearman_rho": dr["spearman_rho"],
                             "spearman_p": dr["spearman_p"], "n_violations": dr["n_violations"],
                             "monotone": dr["monotone"],
                             "n_significant_violations": dr["n_significant_violations"],
                             "monotone_within_noise": dr["monotone_within_noise"]})
    ratios = _shift_ratios(shifts, spaces)
    summary = {"embeddings": str(path), "out": str(out), "n_cells": len(rows), "condition": condition,
               "control": ctrl, "treated": treat, "numeric_condition": numeric, "group_by": group_by or None,
               "groups": sorted(set(groups.tolist())), "spaces": list(spaces),
               "baseline_columns": list(baseline_columns), "learn_on": learn_on,
               "n_learn": int(is_learn.sum()), "n_held_out": int(held.sum()), "n_tests": len(shifts),
               "n_permutations": int(n_permutations), "seed": int(seed),
               "zprime": {f"{r['group']}/{r['readout']}": r["z_prime"] for r in zrows},
               "dose_response": {f"{r['group']}/{r['readout']}": {k: r[k] for k in
                                 ("spearman_rho", "spearman_p", "monotone", "n_violations",
                                  "monotone_within_noise", "n_significant_violations")} for r in dsum},
               "shifts": [{k: r[k] for k in ("group", "condition", "space", "shift", "shift_sd", "p",
                                             "p_bonferroni")} for r in shifts],
               "zprime_wells": ({f"{r['group']}/{r['readout']}": r["z_prime_wells"] for r in zrows}
                                if wells is not None else None),
               "shift_ratio": ratios, "notes": notes, "n_significant": int(sum(r["significant"] for r in shifts)),
               "seconds": round(time.perf_counter() - t0, 2)}
    prow = [{"cell_id": r.get("cell_id", str(i)), "group": groups[i], condition: cond[i],
             "learn": bool(is_learn[i]) if learn else True, **{f"proj_{s}": proj[s][i] for s in spaces}}
            for i, r in enumerate(rows)]
    with atomic_dir(out) as tmp:
        tmp.mkdir(parents=True)
        write_table(tmp / "shifts.csv", shifts)
        write_table(tmp / "projections.csv", prow)
        write_table(tmp / "zprime.csv", zrows)
        write_table(tmp / "dose_response.csv", drows, ["group", "readout", "dose", "n", "mean", "median", "sd"])
        write_table(tmp / "dose_response_summary.csv", dsum,
                    ["group", "readout", "spearman_rho", "spearman_p", "n_violations", "monotone",
                     "n_significant_violations", "monotone_within_noise"])
        write_json(tmp / "summary.json", _clean(summary))
        _report(tmp / "report.html", summary, shifts, zrows, drows, dsum, proj, groups, cond, held, dose,
                spaces, readouts)
    progress(f"perturbation: wrote {out} in {summary['seconds']} s")
    return _clean(summary)


def _well_means(v: np.ndarray, wells: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``v`` per well over the cells in ``mask`` (finite values only)."""
    m = mask & np.isfinite(v)
    return np.array([v[m & (wells == w)].mean() for w in sorted(set(wells[m].tolist()))])


def _shift_ratios(shifts: list[dict[str, Any]], spaces: tuple[str, ...]) -> dict[str, Any]:
    """Per group and condition, the zt / zr shift ratio (raw and standardised) when both were tested."""
    if not ("zt" in spaces and "zr" in spaces):
        return {}
    by = {(r["group"], r["condition"], r["space"]): r for r in shifts}
    out: dict[str, Any] = {}
    for (g, v, s), r in by.items():
        if s != "zt" or (g, v, "zr") not in by:
            continue
        zr = by[(g, v, "zr")]
        out[f"{g}/{v}"] = {"zt_over_zr": r["shift"] / zr["shift"] if zr["shift"] > 0 else float("nan"),
                           "zt_over_zr_sd": (r["shift_sd"] / zr["shift_sd"]
                                             if zr["shift_sd"] and zr["shift_sd"] > 0 else float("nan"))}
    return out


def _report(path: Path, summary: dict, shifts: list, zrows: list, drows: list, dsum: list,
            proj: dict, groups: np.ndarray, cond: np.ndarray, held: np.ndarray, dose: np.ndarray | None,
            spaces: tuple[str, ...], readouts: list[str]) -> None:
    from cytogen.report import statcell_stats_figures as F

    sections = [Section("What was measured", text=[
        f"Condition column {summary['condition']!r}, control {summary['control']!r}, treated "
        f"{summary['treated']!r}; {summary['n_cells']} cells, {summary['n_tests']} shift tests "
        f"(Bonferroni over groups x conditions x spaces), {summary['n_permutations']} permutations each.",
        "Shift: Euclidean distance between the condition's and the control's centroids; shift_sd divides it "
        "by the control cells' spread sqrt(trace cov), so that spaces of different scales compare.",
        f"Direction learned on {summary['n_learn']} cells (learn_on={summary['learn_on']!r}); projections, "
        f"dose-response and Z' measured on {summary['n_held_out']} held-out cells. "
        "Z' = 1 - 3 (sd_treated + sd_control) / |mean_treated - mean_control| (Zhang et al. 1999): "
        "> 0.5 excellent, 0-0.5 marginal, < 0 overlapping. z_prime is over cells; z_prime_wells (when the "
        "embeddings have a well column) over the per-well means of the held-out wells."])]
    for g in summary["groups"]:
        sec = Section(f"Group {g}")
        gs = [r for r in shifts if r["group"] == g]
        if gs and dose is not None:
            curves = {s: ([float(r["condition"]) for r in gs if r["space"] == s],
                          [r["shift_sd"] for r in gs if r["space"] == s],
                          [r["p_bonferroni"] for r in gs if r["space"] == s]) for s in spaces}
            sec.figures.append(("centroid shift from the control per condition", F.shift_figure(curves)))
        gd = [r for r in drows if r["group"] == g]
        if gd:
            curves = {n: ([r["dose"] for r in gd if r["readout"] == n], [r["mean"] for r in gd if r["readout"] == n],
                          [r["sd"] for r in gd if r["readout"] == n]) for n in readouts
                      if any(r["readout"] == n for r in gd)}
            sec.figures.append(("dose-response: mean ± sd of each read-out per dose (held-out cells)",
                                F.dose_response_figure(curves)))
            gm = (groups == g) & held
            per_space = {s: {float(d): proj[s][gm & (dose == d) & np.isfinite(proj[s])]
                             for d in np.unique(dose[gm])} for s in spaces}
            sec.figures.append(("projections on the control -> treated direction per dose",
                                F.projection_violin_figure(per_space)))
        gz = [r for r in zrows if r["group"] == g]
        if gz:
            sec.figures.append(("Z'-factor of each read-out", F.zprime_figure(gz)))
        sec.tables += [("Z'-factor (held-out cells)", gz),
                       ("dose-response summary", [r for r in dsum if r["group"] == g]),
                       ("shifts from the control", gs)]
        sections.append(sec)
    write_report(path, "Statistical Cell: perturbation", sections, subtitle=summary["embeddings"])
