"""Statistical Cell statistics: ``cytogen statcell sweep | coupling | perturbation``.

- :func:`sweep`: models trained at evenly spaced beta; rate (mean KL summed over the latent
  dimensions, nats) and distortion (mean summed squared error) of the 10-sample ELBO on held-out
  cells; the rate/distortion plot; the 14 features of prior samples per beta (reference models).
- :func:`coupling`: Eq 4 of Donovan-Maiye et al. (2022) per cell and reference channel, and the
  differential coupling d_s of Eq 5 per structure (and condition), with bootstrap intervals.
- :func:`perturbation` (in :mod:`cytogen.workflows.statcell_perturbation`): condition shifts in
  the latent spaces, permutation tests, projections, dose-response and Z'-factor.

Each refuses an existing non-empty OUT, writes CSV/JSON and a ``report.html`` atomically, prints
progress on stderr and returns its summary (also ``OUT/summary.json``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.errors import CytogenError
from cytogen.evaluate import latent as L
from cytogen.io.atomic import atomic_dir, write_json
from cytogen.report.html import Section, write_report
from cytogen.workflows.statcell_perturbation import (_clean, perturbation, progress, refuse_nonempty,
                                                    write_table)

__all__ = ["coupling", "perturbation", "sweep"]

_BOOT = 1000
_MAX_GENERATED = 500


def _eval_indices(cellset: Any, split: str | None) -> tuple[np.ndarray, str]:
    """Cells of ``split``; the validation cells when it has none; all cells when split is None."""
    if split is None or split == "":
        return cellset.indices(None), "all"
    idx = cellset.indices(split)
    if len(idx):
        return idx, split
    idx = cellset.indices("val")
    if len(idx):
        progress(f"no cells of split {split!r}; using the {len(idx)} validation cells")
        return idx, "val"
    raise CytogenError(f"{cellset.root / 'cells.csv'}: no cells of split {split!r} and none of 'val'; "
                       f"give --split with a split that exists (or '' for all cells)")


# ------------------------------------------------------------------ sweep
def sweep(recipe: str | Path, data: str | Path, out: str | Path, *, betas: Sequence[float],
          max_steps: int | None = None, overrides: list[str] | None = None, split: str = "test") -> dict:
    """Train one model per beta and report rate, distortion and (reference models) generated features.

    Parameters
    ----------
    recipe : path
        A ``statcell_reference*`` or ``statcell_target*`` recipe.
    data : path
        ``CELLS/cells.csv``.
    out : path
        New (or empty) folder; run ``OUT/beta_<b>`` per beta.
    betas : sequence of float
        Values in [0, 1] (the CLI default 0.1, 0.3, ..., 0.9).
    max_steps : int, optional
        Training steps of each model (the recipe's otherwise).
    overrides : list of str, optional
        ``--set`` items applied to every model (``vae.beta`` is set per run and may not be given).
    split : str
        Cells the ELBO terms and features are measured on (the validation cells when empty).

    Returns
    -------
    dict
        Summary (also ``OUT/summary.json``): per beta the rate, distortion, ELBO, active dimensions.
    """
    from cytogen.config import load_recipe
    from cytogen.data.cellset import read_cellset
    from cytogen.predict.model_folder import load_statcell_folder
    from cytogen.predict.statcell import elbo_cells
    from cytogen.workflows.train import train

    t0 = time.perf_counter()
    out = refuse_nonempty(out)
    overrides = list(overrides or [])
    if any(o.split("=", 1)[0].strip() == "vae.beta" for o in overrides):
        raise CytogenError("sweep sets vae.beta for every model; give the values with --betas, not --set vae.beta")
    betas = [float(b) for b in betas]
    if not betas or any(not 0.0 <= b <= 1.0 for b in betas) or len(set(betas)) != len(betas):
        raise CytogenError(f"betas must be distinct values in [0, 1], got {betas}")
    rec = load_recipe(recipe, overrides)
    if rec.task not in ("statcell_reference", "statcell_target"):
        raise CytogenError(f"{recipe}: task {rec.task!r} is not a Statistical Cell model; use a "
                           f"statcell_reference*.yaml or statcell_target*.yaml recipe")
    cellset = read_cellset(data)
    idx, used_split = _eval_indices(cellset, split)
    out.mkdir(parents=True, exist_ok=True)
    is_ref = rec.task == "statcell_reference"
    rows: list[dict[str, Any]] = []
    gen_feats: dict[float, dict[str, np.ndarray]] = {}
    for b in sorted(betas):
        run = out / f"beta_{b:g}"
        progress(f"sweep: training beta={b:g} -> {run}")
        ts = train(recipe, data, run, overrides=[*overrides, f"vae.beta={b}"], max_steps=max_steps,
                   progress=False)
        model = load_statcell_folder(run / "model")
        est = elbo_cells(model, cellset, idx, n_samples=int(rec.vae.elbo_samples), seed=0)
        rd = L.rate_distortion(est["kl"], est["recon"])
        rows.append({"beta": b, "rate": rd["rate"], "distortion": rd["distortion"], "elbo": rd["elbo"],
                     "rate_sd": rd["rate_sd"], "distortion_sd": rd["distortion_sd"],
                     "n_active_dims": rd["n_active_dims"], "n_cells": rd["n_cells"],
                     "best_val_elbo": ts.get("best_val_elbo"), "steps": ts.get("steps"),
                     "train_seconds": ts.get("train_seconds"), "run": str(run)})
        if is_ref:
            gen_feats[b] = _generated_features(model, min(len(idx), _MAX_GENERATED), cellset)
        progress(f"sweep: beta={b:g} rate={rd['rate']:.4g} distortion={rd['distortion']:.4g}")
    real = _real_features(cellset, idx[:_MAX_GENERATED]) if is_ref else {}
    rates = np.array([r["rate"] for r in rows])
    dists = np.array([r["distortion"] for r in rows])
    # as beta falls (rows are in increasing beta) the rate should rise and the distortion fall
    summary = {"recipe": str(recipe), "data": str(data), "out": str(out), "task": rec.task, "split": used_split,
               "n_cells": int(len(idx)), "betas": sorted(betas), "max_steps": max_steps, "overrides": overrides,
               "per_beta": rows,
               "rate_spearman_vs_beta": _spearman(sorted(betas), rates),
               "distortion_spearman_vs_beta": _spearman(sorted(betas), dists),
               "features": "14 features of prior samples per beta" if is_ref else
               "not computed: generated-cell features are defined for the reference model",
               "seconds": round(time.perf_counter() - t0, 1)}
    feat_rows = [{"beta": "real", **{k: v[i] for k, v in real.items()}} for i in range(len(next(iter(real.values()), [])))]
    for b, f in gen_feats.items():
        feat_rows += [{"beta": b, **{k: v[i] for k, v in f.items()}} for i in range(len(next(iter(f.values()), [])))]
    _write_sweep_outputs(out, summary, rows, feat_rows, real, gen_feats)
    progress(f"sweep: wrote {out} in {summary['seconds']} s")
    return _clean(summary)


def _spearman(x: Sequence[float], y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(y) == 0:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def _generated_features(model: Any, n: int, cellset: Any) -> dict[str, np.ndarray]:
    from cytogen.evaluate.features import crop_features
    from cytogen.predict.statcell import sample_reference

    crops = sample_reference(model, max(1, n), seed=0)
    return _stack([crop_features(c, cellset.pixel_size_um) for c in crops])


def _real_features(cellset: Any, idx: np.ndarray) -> dict[str, np.ndarray]:
    from cytogen.evaluate.features import crop_features

    ref = list(cellset.reference_channels)
    return _stack([crop_features(np.asarray(cellset.images[i], np.float32)[ref], cellset.pixel_size_um)
                   for i in idx])


def _stack(dicts: list[dict[str, float]]) -> dict[str, np.ndarray]:
    if not dicts:
        return {}
    return {k: np.array([d.get(k, np.nan) for d in dicts], float) for k in dicts[0]}


def _write_sweep_outputs(out: Path, summary: dict, rows: list, feat_rows: list, real: dict, gen: dict) -> None:
    from cytogen.io.atomic import atomic_file
    from cytogen.report import statcell_stats_figures as F

    for name, table in (("sweep.csv", rows), ("features.csv", feat_rows)):
        if table:
            with atomic_file(out / name) as tmp:
                write_table(tmp, table)
    write_json(out / "summary.json", _clean(summary))
    fig = F.rate_distortion_figure([r["beta"] for r in rows], [r["rate"] for r in rows],
                                   [r["distortion"] for r in rows])
    sec = Section("Rate and distortion", text=[
        f"{summary['n_cells']} cells of split {summary['split']!r}; rate = mean over cells of the KL "
        "summed over latent dimensions (nats), distortion = mean summed squared error of the "
        "reconstruction (10-sample estimates). Lower beta should give more rate and less distortion."],
        tables=[("per beta", rows)], figures=[("rate vs distortion, labelled by beta", fig)])
    sections = [sec]
    if gen:
        names = [n for n in ("cell_area", "nucleus_area", "cell_intensity_mean", "nucleus_intensity_mean",
                             "cell_volume", "nucleus_volume") if n in real][:4]
        sections.append(Section("Features of generated cells per beta", text=[
            "Features measured the same way (segment_crop + cell_features on the crop) on real crops and on "
            "prior samples of each model."], figures=[("violins: real (red), generated per beta (blue)",
                                                       F.features_per_beta_figure(real, gen, names))]))
    write_report(out / "report.html", "Statistical Cell: beta sweep", sections, subtitle=summary["recipe"])


# ------------------------------------------------------------------ coupling
def coupling(target: str | Path, data: str | Path, out: str | Path, *, split: str | None = None,
             n_swaps: int = 16, condition: str | None = None, seed: int = 0, n_samples: int = 10) -> dict:
    """Coupling of each cell's structure to its cell channel and its nucleus (Eq 4) and d_s (Eq 5).

    For every cell i: c_i^r = ELBO(x_t | x_r, t) - mean_j ELBO(x_t | x_r with channel r from cell
    j, t), with j over ``n_swaps`` other random cells of the same structure (of the same split),
    for r = channel 0 (the cell: membrane image or binary cell mask) and r = channel 1 (DNA). The
    ELBO stands for log p, so the paper's likelihood ratio is this difference of logs; the mean is
    over the swapped ELBOs (log-likelihoods). The same seeded latent draws are used for the own and
    the swapped ELBOs, so the noise of the estimates largely cancels in the difference. Per
    structure (and per value of ``condition``): mean couplings with bootstrap 95 % intervals over
    cells, and d_s = (C_cell - C_nuc) / (|C_cell| + |C_nuc|) with its paired bootstrap interval.

    Returns
    -------
    dict
        Summary (also ``OUT/summary.json``); ``OUT/coupling.csv`` (cells.csv columns + elbo,
        elbo_swap_cell, elbo_swap_nucleus, coupling_cell, coupling_nucleus) and
        ``OUT/coupling_summary.csv``.
    """
    from cytogen.data.cellset import read_cellset
    from cytogen.predict.model_folder import load_statcell_folder
    from cytogen.predict.statcell import elbo_cells

    t0 = time.perf_counter()
    out = refuse_nonempty(out)
    if int(n_swaps) < 1:
        raise CytogenError(f"n_swaps must be at least 1, got {n_swaps}")
    if int(n_samples) < 1:
        raise CytogenError(f"n_samples must be at least 1, got {n_samples}")
    model = load_statcell_folder(target, kind="statcell_target")
    cellset = read_cellset(data)
    if condition and condition not in cellset.rows[0]:
        raise CytogenError(f"{cellset.root / 'cells.csv'}: condition column {condition!r} not found")
    idx, used_split = _eval_indices(cellset, split)
    if not len(idx):
        raise CytogenError(f"{cellset.root / 'cells.csv'}: no cells to measure")
    cell_name = "membrane" if cellset.meta.get("reference_cell_channel") == "membrane" else "cell_mask"
    structures = np.array([cellset.rows[i]["structure"] for i in idx])
    rng = np.random.default_rng(seed)
    progress(f"coupling: {len(idx)} cells, {n_swaps} swaps x 2 channels, {n_samples} ELBO samples")
    swapped = {0: np.full((len(idx), int(n_swaps)), np.nan), 1: np.full((len(idx), int(n_swaps)), np.nan)}
    partners = np.full((len(idx), int(n_swaps)), -1, dtype=np.int64)
    for s in sorted(set(structures)):
        pos = np.flatnonzero(structures == s)
        if len(pos) < 2:
            progress(f"  structure {s}: a single cell, no other cell to swap with (coupling nan)")
            continue
        for a in pos:
            others = pos[pos != a]
            partners[a] = rng.choice(others, int(n_swaps), replace=len(others) < int(n_swaps))
    ref_ch = list(cellset.reference_channels)
    own = np.full(len(idx), np.nan)
    chunks = np.array_split(np.arange(len(idx)), max(1, int(np.ceil(len(idx) / 256))))
    for chunk in chunks:
        # own and swapped ELBOs of a chunk share the seeded draws (common random numbers)
        own_ref = np.asarray(cellset.images[idx[chunk]], np.float32)[:, ref_ch]
        own[chunk] = elbo_cells(model, cellset, idx[chunk], n_samples=n_samples, reference_override=own_ref,
                                seed=seed)["elbo"]
        sel = partners[chunk, 0] >= 0
        ok = chunk[sel]
        for k in range(int(n_swaps) if len(ok) else 0):
            other = np.asarray(cellset.images[idx[partners[ok, k]]], np.float32)[:, ref_ch]
            for c in (0, 1):
                x_r = own_ref[sel].copy()
                x_r[:, c] = other[:, c]
                swapped[c][ok, k] = elbo_cells(model, cellset, idx[ok], n_samples=n_samples,
                                               reference_override=x_r, seed=seed)["elbo"]
        progress(f"  {chunk[-1] + 1}/{len(idx)} cells done")
    c_cell = L.coupling(own, swapped[0])
    c_nuc = L.coupling(own, swapped[1])
    rows = []
    for n, i in enumerate(idx):
        rows.append({**cellset.rows[i], "elbo": own[n], "elbo_swap_cell": np.nanmean(swapped[0][n])
                     if np.isfinite(swapped[0][n]).any() else np.nan,
                     "elbo_swap_nucleus": np.nanmean(swapped[1][n]) if np.isfinite(swapped[1][n]).any() else np.nan,
                     "coupling_cell": c_cell[n], "coupling_nucleus": c_nuc[n]})
    cond = np.array([cellset.rows[i][condition] for i in idx]) if condition else None
    srows = _coupling_groups(structures, cond, condition, c_cell, c_nuc, seed)
    summary = {"target": str(target), "data": str(data), "out": str(out), "split": used_split,
               "n_cells": int(len(idx)), "n_swaps": int(n_swaps), "n_samples": int(n_samples), "seed": int(seed),
               "condition": condition, "cell_channel": cell_name,
               "definition": "coupling_r = ELBO(own reference) - mean ELBO(reference channel r from other cells "
                             "of the same structure); d_s = (C_cell - C_nuc) / (|C_cell| + |C_nuc|)",
               "groups": [{k: r[k] for k in ("group", "n", "coupling_cell_mean", "coupling_nucleus_mean", "d_s",
                                             "d_s_lo", "d_s_hi")} for r in srows],
               "seconds": round(time.perf_counter() - t0, 1)}
    with atomic_dir(out) as tmp:
        tmp.mkdir(parents=True)
        write_table(tmp / "coupling.csv", rows)
        write_table(tmp / "coupling_summary.csv", srows)
        write_json(tmp / "summary.json", _clean(summary))
        from cytogen.report import statcell_stats_figures as F

        write_report(tmp / "report.html", "Statistical Cell: coupling", [Section("Coupling (Eq 4, 5)", text=[
            f"Channel 0 of the reference is the {cell_name.replace('_', ' ')}; channel 1 the DNA. "
            + summary["definition"] + f". {n_swaps} swaps per cell and channel, {n_samples} ELBO samples; "
            "intervals: percentile bootstrap over cells (95 %)."],
            tables=[("per structure" + (f" and {condition}" if condition else ""), srows)],
            figures=[("mean couplings and differential coupling", F.coupling_figure(srows, cell_name))])],
            subtitle=str(target))
    progress(f"coupling: wrote {out} in {summary['seconds']} s")
    return _clean(summary)


def _coupling_groups(structures: np.ndarray, cond: np.ndarray | None, condition: str | None,
                     c_cell: np.ndarray, c_nuc: np.ndarray, seed: int) -> list[dict[str, Any]]:
    keys = sorted(set(zip(structures, cond if cond is not None else [""] * len(structures))))
    out = []
    for s, v in keys:
        m = (structures == s) & ((cond == v) if cond is not None else True)
        m &= np.isfinite(c_cell) & np.isfinite(c_nuc)
        pair = np.stack([c_cell[m], c_nuc[m]], axis=1)
        row: dict[str, Any] = {"group": f"{s}" + (f" / {condition}={v}" if cond is not None else ""),
                               "structure": s}
        if cond is not None:
            row[condition] = v
        row["n"] = int(m.sum())
        for j, key in enumerate(("coupling_cell", "coupling_nucleus")):
            row[f"{key}_mean"] = float(pair[:, j].mean()) if len(pair) else float("nan")
            row[f"{key}_lo"], row[f"{key}_hi"] = L.bootstrap_interval(pair[:, j], np.mean, _BOOT, seed=seed)
        row["d_s"] = L.differential_coupling(pair[:, 0], pair[:, 1]) if len(pair) else float("nan")
        row["d_s_lo"], row["d_s_hi"] = L.bootstrap_interval(
            pair, lambda a: L.differential_coupling(a[:, 0], a[:, 1]), _BOOT, seed=seed)
        out.append(row)
    return out
