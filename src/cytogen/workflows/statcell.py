"""``cytogen statcell embed|sample|walk|features``: the Statistical Cell's analyses of one model pair.

Glue only: reads a CELLS folder (:mod:`cytogen.data.cellset`) and model folders
(:mod:`cytogen.predict.model_folder`), runs :mod:`cytogen.predict.statcell`, measures with
:mod:`cytogen.evaluate.features` and :mod:`cytogen.evaluate.latent`, and writes one new output
folder per call (atomically: complete or absent) with CSV/JSON, figures and an HTML report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.errors import CytogenError
from cytogen.evaluate import latent
from cytogen.io.atomic import atomic_dir, write_bytes
from cytogen.predict import statcell as sc
from cytogen.report import statcell_figures as figs
from cytogen.report.figures import figure_png_bytes
from cytogen.report.html import Section
from cytogen.workflows.evaluate import write_csv
from cytogen.workflows.statcell_support import (
    CropRows,
    cell_indices,
    check_cells,
    check_out,
    check_pair,
    compare_features,
    finish,
    fmt,
    kl_mean,
    latent_regression,
    load_model,
    measure,
    open_cells_and_models,
    save_npy,
    say,
    structure_id,
)

__all__ = ["embed", "features", "sample", "walk"]

#: Cells used to fit the PCA baseline are capped so the data matrix stays under this many values.
PCA_MAX_VALUES = 50_000_000


# ---------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------
def _pca_baseline(cs, idx: np.ndarray, n: int) -> tuple[np.ndarray, dict]:
    if cs.target_channel is None:
        raise CytogenError(f"{cs.root}: --pca is the PCA of the target crops, but this set has no target channel")
    fit = cs.indices("train")
    fit_on = "train" if len(fit) > n else "all"
    if fit_on == "all":
        fit = cs.indices(None)
    n_pix = int(np.prod(cs.size))
    cap = max(n + 1, PCA_MAX_VALUES // n_pix)
    if len(fit) > cap:
        fit = np.sort(np.random.default_rng(0).choice(fit, cap, replace=False))
    if n > min(len(fit), n_pix):
        raise CytogenError(f"--pca {n}: at most {min(len(fit), n_pix)} components for {len(fit)} cells of "
                           f"{n_pix} pixels")
    t = cs.target_channel
    mean, comps, ratio = latent.pca_fit(np.asarray(cs.images[fit, t], np.float32).reshape(len(fit), -1), n)
    scores = np.concatenate([latent.pca_transform(np.asarray(cs.images[idx[s:s + 1024], t], np.float32)
                                                  .reshape(-1, n_pix), mean, comps)
                             for s in range(0, len(idx), 1024)])
    return scores, {"n_components": n, "fit_on": fit_on, "n_fit": int(len(fit)),
                    "explained_ratio": [float(r) for r in ratio]}


def embed(reference: str | Path, data: str | Path, out: str | Path, *, target: str | Path | None = None,
          split: str | None = None, batch_size: int = 64, pca: int = 0) -> dict[str, Any]:
    """Posterior means z_r (and z_t) of every cell (or one split) -> ``OUT/embeddings.csv``.

    Also ``OUT/dimensions.csv`` (space, dim, rank_by_mad, mad, kl_mean), ``summary.json`` and
    ``report.html`` (pair plot of the top four dimensions by MAD, KL per dimension). With
    ``pca > 0`` the columns ``pca_0..`` hold a linear baseline: PCA of the flattened target
    crops, fitted on the cells of split ``train`` (all cells if there are too few).
    """

    t0 = time.time()
    out = check_out(out)
    if pca < 0:
        raise CytogenError(f"--pca must be 0 (off) or a number of components, got {pca}")
    cs, ref, tgt = open_cells_and_models(data, reference, target)
    idx = cell_indices(cs, split)
    say(f"embedding {len(idx)} cells")
    z = sc.embed_cells(ref, tgt, cs, idx, batch_size=batch_size, progress=say)
    pca_scores, pca_info = _pca_baseline(cs, idx, pca) if pca else (None, None)
    rows = []
    for k, i in enumerate(idx):
        row: dict[str, Any] = dict(cs.rows[int(i)])
        for space, arr in z.items():
            row.update({f"{space}_{d}": fmt(v) for d, v in enumerate(arr[k])})
        if pca_scores is not None:
            row.update({f"pca_{d}": fmt(v) for d, v in enumerate(pca_scores[k])})
        rows.append(row)
    models = {"zr": ref, "zt": tgt}
    dims, spaces, sections = [], {}, []
    for space, arr in z.items():
        order, mad = latent.rank_by_mad(arr)
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        kl = kl_mean(models[space])
        dims += [{"space": space, "dim": d, "rank_by_mad": int(rank[d]), "mad": fmt(mad[d]), "kl_mean": fmt(kl[d])}
                 for d in range(arr.shape[1])]
        spaces[space] = {"latent_dim": int(arr.shape[1]), "top_dims_by_mad": [int(d) for d in order[:8]],
                         "n_kl_above_0.6": int(np.sum(kl > 0.6)) if np.isfinite(kl).any() else None,
                         "model": str(models[space].folder)}
        top = order[: min(4, arr.shape[1])]
        sections.append(Section(f"{space}: top dimensions by mean absolute deviation", figures=[
            (f"pairwise {space} posterior means of the top {len(top)} dimensions by MAD",
             figs.pair_plot_figure(arr[:, top], [f"{space}_{d}" for d in top]))],
            tables=[("top dimensions", [r for r in dims if r["space"] == space and r["rank_by_mad"] < 10])]))
    kls = {s: kl_mean(models[s]) for s in z if np.isfinite(kl_mean(models[s])).any()}
    if kls:
        sections.append(Section("KL per dimension (validation mean, from the model folder)",
                                figures=[("mean KL per latent dimension, sorted", figs.kl_bar_figure(kls))]))
    summary = {"out": str(out), "data": str(data), "split": split, "n_cells": int(len(idx)),
               "spaces": spaces, "pca": pca_info, "seconds": round(time.time() - t0, 2)}
    if pca_info:
        sections.append(Section("Linear baseline", [
            f"PCA of the target crops ({pca} components, fitted on {pca_info['n_fit']} cells of "
            f"'{pca_info['fit_on']}'); explained variance {sum(pca_info['explained_ratio']):.3f}."]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        write_csv(tmp / "embeddings.csv", rows)
        write_csv(tmp / "dimensions.csv", dims)
        finish(tmp, summary, "cytogen statcell embed",
                [Section("Summary", [f"{len(idx)} cells of {cs.root} (split {split or 'all'}) embedded."])]
                + sections, f"reference: {reference}; target: {target}")
    say(f"wrote {out} in {summary['seconds']} s")
    return summary


# ---------------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------------
def _find_cell(cs, cell: str) -> int:
    for i, r in enumerate(cs.rows):
        if r.get("cell_id") == cell:
            return i
    ids = [r.get("cell_id") for r in cs.rows]
    shown = ", ".join(map(str, ids[:20])) + (f", ... ({len(ids)} in all)" if len(ids) > 20 else "")
    raise CytogenError(f"{cs.root / 'cells.csv'}: no cell {cell!r} (--cell); valid cell_id values: {shown}")


def sample(reference: str | Path, out: str | Path, *, target: str | Path | None = None,
           structure: str | None = None, n: int = 16, data: str | Path | None = None,
           cell: str | None = None, seed: int = 0) -> dict[str, Any]:
    """New cells from the prior, or draws of a structure in a real cell's reference.

    - reference only: ``n`` cells z_r ~ N(0, I) -> ``OUT/samples.npy`` ``(n, 2, *size)``;
    - with ``target`` and ``structure``: each sampled reference gets one draw of the structure
      -> ``(n, 3, *size)`` (cell, dna, target);
    - with ``target``, ``data`` and ``cell``: ``n`` draws of the structure (default: the cell's
      own) in that real cell's reference -> ``(n, 3, *size)``; the montage starts with the real cell.

    Also ``montage.png``, ``summary.json`` and ``report.html``.
    """
    t0 = time.time()
    out = check_out(out)
    if n < 1:
        raise CytogenError(f"--n must be at least 1, got {n}")
    if (data is None) != (cell is None):
        raise CytogenError("--data and --cell go together: give both (draws in a real cell) or neither")
    if (structure is not None or cell is not None) and target is None:
        raise CytogenError("--structure and --cell draw a target structure: give --target TGT/model")
    ref = load_model(reference, "statcell_reference")
    tgt = load_model(target, "statcell_target") if target is not None else None
    check_pair(ref, tgt)
    summary: dict[str, Any] = {"out": str(out), "n": int(n), "seed": int(seed), "reference": str(reference),
                               "target": None if target is None else str(target)}
    if cell is not None:
        from cytogen.data.cellset import read_cellset

        cs = read_cellset(data)
        check_cells(cs, ref, tgt)
        i = _find_cell(cs, cell)
        own = cs.rows[i].get("structure")
        s_name = structure if structure is not None else own
        s = structure_id(tgt, s_name)
        real = np.asarray(cs.images[i], np.float32)
        x_r = real[list(cs.reference_channels)]
        draws = sc.sample_target(tgt, x_r, s, n, seed=seed)
        samples = np.concatenate([np.repeat(x_r[None], n, axis=0), draws], axis=1)
        shown = [real] + list(samples)
        titles = [f"real {cell} ({own})"] + [f"{s_name} draw {k}" for k in range(n)]
        what = f"{n} draws of {s_name} in the reference of real cell {cell} (its own structure: {own})"
        summary.update({"mode": "cell", "cell": cell, "structure": s_name, "cell_structure": own})
    else:
        if target is not None and structure is None:
            raise CytogenError(f"--target needs --structure: one of {list(tgt.structures)}")
        refs = sc.sample_reference(ref, n, seed=seed)
        if tgt is not None:
            s = structure_id(tgt, structure)
            draws = sc.sample_target(tgt, refs, s, 1, seed=seed + 1)[:, 0]
            samples = np.concatenate([refs, draws], axis=1)
            what = f"{n} cells from the reference prior, each with one draw of {structure}"
            summary.update({"mode": "prior+structure", "structure": structure})
        else:
            samples, what = refs, f"{n} cells from the reference prior z_r ~ N(0, I)"
            summary["mode"] = "prior"
        shown, titles = list(samples), [f"sample {k}" for k in range(n)]
    summary.update({"shape": list(samples.shape), "what": what, "seconds": round(time.time() - t0, 2)})
    montage = figure_png_bytes(figs.montage_figure(shown, titles))  # rendered once: file and report
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        save_npy(tmp / "samples.npy", samples)
        write_bytes(tmp / "montage.png", montage)
        finish(tmp, summary, "cytogen statcell sample",
                [Section("Samples", [what + ". Red: cell, blue: DNA, green: target; 3D as max projections."],
                         figures=[("samples", montage)])], f"seed {seed}")
    say(f"wrote {out}: {what}")
    return summary


# ---------------------------------------------------------------------------------------------
# walk
# ---------------------------------------------------------------------------------------------
def _trend(values: np.ndarray) -> float:
    from scipy.stats import spearmanr

    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    if ok.sum() < 3 or np.ptp(v[ok]) == 0:
        return float("nan")
    return float(spearmanr(np.flatnonzero(ok), v[ok]).statistic)


def walk(reference: str | Path, data: str | Path, out: str | Path, *, target: str | Path | None = None,
         n_dims: int = 4, steps: int = 9, span_sd: float = 2.0, split: str | None = None) -> dict[str, Any]:
    """Walks along the top ``n_dims`` reference dimensions (ranked by MAD of the cells' z_r).

    Each walk goes in ``steps`` points from ``-span_sd`` to ``+span_sd`` standard deviations of
    that dimension over the cells, all other dimensions 0, decoded -> ``OUT/walk.npy``
    ``(n_dims, steps, C, *size)``, ``walk.png`` and ``walk.csv`` (the features of every decoded
    image; ``summary.json`` names the feature each dimension moves most, by Spearman rho over
    the steps). With ``target`` the first structure of the target model is decoded in every
    walked reference at z_t = 0 (the prior mean), so C = 3.
    """
    from cytogen.evaluate.features import crop_features, feature_names

    t0 = time.time()
    out = check_out(out)
    if steps < 2 or not span_sd > 0:
        raise CytogenError(f"--steps must be >= 2 and --span-sd > 0, got {steps} and {span_sd}")
    cs, ref, tgt = open_cells_and_models(data, reference, target)
    if not 1 <= n_dims <= ref.latent_dim:
        raise CytogenError(f"--n-dims must be between 1 and the latent size {ref.latent_dim}, got {n_dims}")
    idx = cell_indices(cs, split)
    zr = sc.embed_cells(ref, None, cs, idx, progress=say)["zr"]
    order, mad = latent.rank_by_mad(zr)
    chosen = order[:n_dims]
    sd = zr[:, chosen].std(axis=0)
    pos = np.linspace(-span_sd, span_sd, steps)
    z = np.zeros((n_dims * steps, ref.latent_dim), np.float32)
    for r, d in enumerate(chosen):
        z[r * steps:(r + 1) * steps, d] = pos * sd[r]
    images = sc.decode_reference(ref, z)
    summary: dict[str, Any] = {"out": str(out), "split": split, "n_cells": int(len(idx)), "steps": int(steps),
                               "span_sd": float(span_sd)}
    if tgt is not None:
        s_name = tgt.structures[0]
        t_img = sc.decode_target(tgt, np.zeros((len(z), tgt.latent_dim), np.float32), images, 0)
        images = np.concatenate([images, t_img], axis=1)
        summary["target"] = {"structure": s_name, "z_t": "0 (prior mean)",
                             "why": "the first structure of the target model, decoded at its prior mean"}
    walk_arr = images.reshape(n_dims, steps, *images.shape[1:])
    names = feature_names(cs.dims)
    rows, kl, dims_info = [], kl_mean(ref), []
    for r, d in enumerate(chosen):
        feats = [crop_features(walk_arr[r, k], cs.pixel_size_um) for k in range(steps)]
        for k, f in enumerate(feats):
            rows.append({"dim": int(d), "rank_by_mad": r, "step": k, "position_sd": fmt(pos[k]),
                         "z": fmt(pos[k] * sd[r]), **{n_: fmt(f[n_]) for n_ in names}})
        rho = {n_: _trend([f[n_] for f in feats]) for n_ in names}
        best = max((n_ for n_ in names if np.isfinite(rho[n_])), key=lambda n_: abs(rho[n_]), default=None)
        dims_info.append({"dim": int(d), "rank_by_mad": r, "mad": float(mad[d]), "sd": float(sd[r]),
                          "kl_mean": float(kl[d]), "most_moved_feature": best,
                          "spearman_rho": None if best is None else rho[best]})
    summary.update({"dims": dims_info, "shape": list(walk_arr.shape), "seconds": round(time.time() - t0, 2)})
    labels = [f"zr_{i['dim']}: {i['most_moved_feature'] or '-'}" for i in dims_info]
    fig = figure_png_bytes(figs.walk_figure(walk_arr, labels, [f"{p:+.1f} sd" for p in pos]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        save_npy(tmp / "walk.npy", walk_arr)
        write_bytes(tmp / "walk.png", fig)
        write_csv(tmp / "walk.csv", rows)
        finish(tmp, summary, "cytogen statcell walk", [
            Section("Latent walks", [f"Top {n_dims} reference dimensions by mean absolute deviation over "
                                     f"{len(idx)} cells; {steps} steps from -{span_sd:g} to +{span_sd:g} sd, "
                                     "other dimensions 0. Row labels: the feature each walk moves most."],
                    figures=[("walks", fig)], tables=[("dimensions", dims_info)])], f"data: {data}")
    say(f"wrote {out}")
    return summary


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------
def features(reference: str | Path, data: str | Path, out: str | Path, *, split: str | None = "test",
             n_generated: int | None = None, kl_threshold: float = 0.6, seed: int = 0) -> dict[str, Any]:
    """The 14 features of real cells (one split) and of generated cells; the latent regression.

    Real crops and decoded prior samples are segmented alike
    (:func:`cytogen.evaluate.features.crop_features`). Writes ``OUT/features.csv`` (``source``
    real|generated), ``comparison.csv`` (real vs generated mean, sd and the Kolmogorov-Smirnov
    distance per feature), ``regression.csv`` (held-out R^2 of a linear map from the informative
    z_r dimensions, KL > ``kl_threshold``, to each of the top 5 PCs of the z-scored real
    features, with explained variance and loadings), ``violins.png``, ``summary.json`` and
    ``report.html``. 3D crops use the 3D feature names; figures show maximum projections.
    """
    from cytogen.evaluate.features import feature_names, feature_units

    t0 = time.time()
    out = check_out(out)
    cs, ref, _ = open_cells_and_models(data, reference)
    idx = cell_indices(cs, split)
    n_gen = len(idx) if n_generated is None else int(n_generated)
    if n_gen < 1:
        raise CytogenError(f"--n-generated must be at least 1, got {n_generated}")
    names = feature_names(cs.dims)
    units = feature_units(cs.dims, cs.pixel_size_um is not None)
    real = measure(CropRows(cs, idx), names, cs.pixel_size_um, "real")
    gen_imgs = sc.sample_reference(ref, n_gen, seed=seed)
    gen = measure(gen_imgs, names, cs.pixel_size_um, "generated")
    table = compare_features(names, real, gen, units)
    zr = sc.embed_cells(ref, None, cs, idx, progress=say)["zr"]
    reg = latent_regression(ref, zr, real, names, kl_threshold, seed)
    rows = [{"source": "real", "cell_id": cs.rows[int(i)].get("cell_id", str(i)),
             "structure": cs.rows[int(i)].get("structure", ""), **{n: fmt(v) for n, v in zip(names, real[k])}}
            for k, i in enumerate(idx)]
    rows += [{"source": "generated", "cell_id": f"sample_{k}", "structure": "",
              **{n: fmt(v) for n, v in zip(names, gen[k])}} for k in range(n_gen)]
    violins = figure_png_bytes(figs.violin_figure({n: real[:, j] for j, n in enumerate(names)},
                                                  {n: gen[:, j] for j, n in enumerate(names)}, units))
    summary = {"out": str(out), "split": split, "n_real": int(len(idx)), "n_generated": n_gen, "seed": seed,
               "units": units, "features": {r["feature"]: {k: r[k] for k in ("real_mean", "generated_mean", "ks")}
                                            for r in table},
               "regression": {"kl_threshold": kl_threshold, "dims": reg["dims"], "notes": reg["notes"],
                              "r2": [r["r2_heldout"] for r in reg["rows"]],
                              "explained_ratio": [r["explained_variance_ratio"] for r in reg["rows"]],
                              "explained_total": reg.get("explained_total"),
                              "explained_by_latent": reg.get("explained_by_latent")},
               "seconds": round(time.time() - t0, 2)}
    sections = [
        Section("Real vs generated", [f"{len(idx)} real cells (split {split or 'all'}) and {n_gen} cells from "
                                      "the reference prior, segmented alike (Otsu per channel). Red: real, "
                                      "blue: generated."],
                tables=[("features", table)], figures=[("feature distributions", violins)]),
        Section("Examples", figures=[("real (first row) and generated cells", figs.montage_figure(
            [np.asarray(cs.images[int(i)], np.float32) for i in idx[:8]] + list(gen_imgs[:8])))]),
        Section("Latent -> feature regression", [
            f"Linear regression from {len(reg['dims'])} z_r dimensions {reg['dims'][:20]} to the top principal "
            "components of the z-scored real features; R^2 on 10 % held out."] + reg["notes"],
            tables=[("per principal component", reg["rows"])],
            figures=[("held-out R^2 per PC", figs.r2_bar_figure([r["pc"] for r in reg["rows"]],
                                                                 [r["r2_heldout"] for r in reg["rows"]],
                                                                 [r["explained_variance_ratio"] for r in reg["rows"]]))]
            if reg["rows"] else [])]
    if np.isfinite(kl_mean(ref)).any():
        sections.append(Section("KL per dimension", figures=[("mean KL per z_r dimension",
                                                              figs.kl_bar_figure({"zr": kl_mean(ref)}, kl_threshold))]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        write_csv(tmp / "features.csv", rows)
        write_csv(tmp / "comparison.csv", table)
        write_csv(tmp / "regression.csv", reg["rows"] or [{"note": "; ".join(reg["notes"])}])
        write_bytes(tmp / "violins.png", violins)
        finish(tmp, summary, "cytogen statcell features", sections, f"reference: {reference}; data: {data}")
    say(f"wrote {out} in {summary['seconds']} s")
    return summary
