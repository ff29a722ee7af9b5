"""``cytogen evaluate shapes``: are generated objects shaped like real ones, as a distribution?

Both sides are folders of instance label images (``.tif``/``.tiff``, 2D or 3D, one object id per
object, any tool). Every object is described (:func:`cytogen.evaluate.shapes.object_descriptors`:
spherical harmonics in 3D, contour Fourier descriptors in 2D), the pooled descriptors of both
sides are standardised and reduced to 3 PCs (:func:`~cytogen.evaluate.shapes.shape_pca`), and the
kNN-purity divergence of Sun et al. 2022 (Eq 2) is computed per ``k`` with its permutation and
real-vs-real p values (:func:`cytogen.evaluate.purity.purity_test`).

Pixel size: ``pixel_size_um`` when given (one value or one per axis) wins; else each file's
metadata; when no file records it, 1 px (distances and sizes are then in px, and the summary says
so). Files that disagree (some with, some without metadata) are refused.

Writes, swapped in as one folder: ``OUT/summary.json``, ``OUT/objects.csv`` (one row per object:
set, image, label, size, centroid, hausdorff, star_shaped, pc1..pc3, descriptor d0..),
``OUT/shapes_pca.png``, ``OUT/shapes_purity.png``, ``OUT/shapes_reconstructions.png`` and
``OUT/report.html``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.errors import CytogenError
from cytogen.evaluate.purity import purity_test
from cytogen.evaluate.shapes import MIN_SIZE, ObjectShapes, object_descriptors, shape_pca
from cytogen.io.atomic import atomic_dir
from cytogen.io.images import read_image
from cytogen.report.figures import save_figure
from cytogen.report.html import Section, write_report
from cytogen.workflows.evaluate import check_out, image_files, write_csv, write_json

SUFFIXES = (".tif", ".tiff")
#: ``split_real_by="auto"`` splits the real set by whole images from this many images on.
MIN_IMAGES_TO_SPLIT = 10
OUTPUTS = ("summary.json", "objects.csv", "shapes_pca.png", "shapes_purity.png", "shapes_reconstructions.png",
           "report.html")


def _files(folder: str | Path, side: str) -> list[Path]:
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise CytogenError(f"--{side} {d}: not a folder; give a folder of instance label images (.tif)")
    files = [p for p in image_files(d).values() if p.is_file() and p.name.lower().endswith(SUFFIXES)]
    if not files:
        raise CytogenError(f"--{side} {d}: no .tif/.tiff label images in this folder; give a folder with one "
                           "instance label image per field")
    return files


def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    im = read_image(path)
    if im.data.shape[0] != 1:
        raise CytogenError(f"{path}: {im.data.shape[0]} channels; an instance label image has one channel "
                           "(save each structure's labels as its own file)")
    return im.data[0], im.pixel_size_um


def _pixel_size(given, found: dict[Path, tuple | None], ndim: int) -> tuple[dict[Path, tuple], str, str]:
    if given is not None:
        sp = tuple(float(v) for v in np.broadcast_to(np.asarray(given, np.float64).ravel(), (ndim,))) \
            if np.size(given) in (1, ndim) else None
        if sp is None or not all(np.isfinite(v) and v > 0 for v in sp):
            raise CytogenError(f"--pixel-size-um {given}: give one positive size or {ndim} (one per axis, "
                               f"{'z,y,x' if ndim == 3 else 'y,x'}) in um")
        return {p: sp for p in found}, "--pixel-size-um", "um"
    have = [p for p, v in found.items() if v is not None]
    if not have:
        return {p: (1.0,) * ndim for p in found}, "none recorded: 1 px per pixel, units are px", "px"
    if len(have) < len(found):
        missing = next(p for p, v in found.items() if v is None)
        raise CytogenError(f"{missing}: no pixel size in its metadata while {have[0]} has one; give "
                           "--pixel-size-um so that both sides are measured in um")
    return {p: tuple(v) for p, v in found.items()}, "image metadata", "um"


def _describe(files: list[Path], labels: dict[Path, np.ndarray], sizes: dict[Path, tuple], **kw) -> tuple:
    tables, ids = [], []
    for p in files:
        try:
            t = object_descriptors(labels.pop(p), sizes[p], **kw)
        except CytogenError as exc:
            raise CytogenError(f"{p}: {exc}") from None
        tables.append(t)
        ids.extend([p.stem] * len(t))
    return tables, ids


def _pool(tables: list[ObjectShapes]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([getattr(t, k) for t in tables]) for k in
            ("label", "size", "hausdorff_um", "star_shaped", "n_components", "kept_fraction",
             "concave_fraction")} | {
        "descriptors": np.vstack([t.descriptors for t in tables]),
        "centroid_um": np.vstack([t.centroid_um for t in tables])}


def _hd(h: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(h)), "mean": float(h.mean()), "max": float(h.max())} if len(h) else {}


def _examples(files_ids, tables, pooled, side: str, n: int = 2) -> list[dict]:
    """The median- and the largest-Hausdorff object of one side, with its crop mask."""
    from scipy import ndimage as ndi

    h = pooled["hausdorff_um"]
    if not len(h):
        return []
    picks = list(dict.fromkeys([int(np.argsort(h)[len(h) // 2]), int(np.argmax(h))]))[:n]
    flat = [(f, t, i) for f, t in zip(files_ids, tables) for i in range(len(t))]
    out = []
    for j in picks:
        f, t, i = flat[j]
        lab, _ = _read(f)
        lid = int(t.label[i])
        sl = ndi.find_objects((lab == lid).astype(np.int32))[0]
        out.append({"title": f"{side} {f.stem} #{lid}: HD {h[j]:.2f}", "mask": lab[sl] == lid,
                    "offset": np.array([s.start for s in sl]) * np.asarray(t.spacing), "shape": t.shapes[i],
                    "spacing": t.spacing})
    return out


def evaluate_shapes(real: str | Path, pred: str | Path, out: str | Path, *,
                    pixel_size_um: float | Sequence[float] | None = None, degree: int | None = None,
                    ks: Sequence[int] = (4, 8, 16, 32), n_permutations: int = 999, align: bool = False,
                    exclude_border: bool = False, min_size: int | None = None, seed: int = 0,
                    split_real_by: str = "auto") -> dict[str, Any]:
    """Compare object shapes of two folders of label images (module docstring); returns the summary.

    ``split_real_by``: ``"image"`` (the real-vs-real null splits whole images), ``"object"``, or
    ``"auto"`` (by image when the real folder holds at least :data:`MIN_IMAGES_TO_SPLIT` images:
    with fewer, whole-image halves are a handful of distinct splits and the null is too coarse).
    """
    from cytogen.report.shape_figures import pca_figure, purity_figure, reconstruction_figure

    t0 = time.time()
    check_out(out, OUTPUTS, "a shape evaluation")
    if split_real_by not in ("auto", "image", "object"):
        raise CytogenError(f"split_real_by must be auto, image or object, got {split_real_by!r}")
    files = {"real": _files(real, "real"), "pred": _files(pred, "pred")}
    labels, found = {}, {}
    for side, fs in files.items():
        for p in fs:
            labels[p], found[p] = _read(p)
    ndims = {p: lab.ndim for p, lab in labels.items()}
    if len(set(ndims.values())) != 1:
        p2 = next(p for p in ndims if ndims[p] != ndims[files["real"][0]])
        raise CytogenError(f"{p2} is {ndims[p2]}D but {files['real'][0]} is {ndims[files['real'][0]]}D; "
                           "compare 2D with 2D or 3D with 3D label images")
    nd = ndims[files["real"][0]]
    sizes, size_source, units = _pixel_size(pixel_size_um, found, nd)
    kw = dict(degree=degree, align=align, exclude_border=exclude_border, min_size=min_size)
    t_r, ids_r = _describe(files["real"], labels, sizes, **kw)
    t_g, ids_g = _describe(files["pred"], labels, sizes, **kw)
    pr, pg = _pool(t_r), _pool(t_g)
    for side, pool, tabs in (("real", pr, t_r), ("pred", pg, t_g)):
        if len(pool["label"]) < 2:
            sk = {k: sum(t.skipped[k] for t in tabs) for k in ("border", "small")}
            raise CytogenError(
                f"--{side} {Path(real if side == 'real' else pred)}: {len(pool['label'])} object(s) to compare "
                f"({sk['border']} left out at the border, {sk['small']} smaller than "
                f"{MIN_SIZE[nd] if min_size is None else min_size} px); at least 2 are needed: check that these "
                "are instance label images, or lower --min-size / drop --exclude-border")
    pca = shape_pca(pr["descriptors"], pg["descriptors"], n_components=3)
    xr, xg = pca.scores
    by_image = split_real_by == "image" or (split_real_by == "auto" and len(files["real"]) >= MIN_IMAGES_TO_SPLIT)
    res = purity_test(xr, xg, ks, n_permutations=n_permutations, seed=seed,
                      real_image_ids=ids_r if by_image else None)
    kind, deg = t_r[0].kind, t_r[0].degree
    summary: dict[str, Any] = {
        "real": str(real), "pred": str(pred), "ndim": nd, "n_images": {"real": len(t_r), "generated": len(t_g)},
        "n_objects": {"real": int(len(xr)), "generated": int(len(xg))},
        "skipped": {s: {k: sum(t.skipped[k] for t in tabs) for k in ("border", "small")}
                    for s, tabs in (("real", t_r), ("generated", t_g))},
        "pixel_size_source": size_source, "units": units,
        "pixel_size": {"real": sorted({str(sizes[p]) for p in files["real"]}),
                       "generated": sorted({str(sizes[p]) for p in files["pred"]})},
        "degree": deg, "descriptor_kind": kind, "aligned": bool(align),
        "descriptor_length": int(pr["descriptors"].shape[1]),
        "pca": {"fitted_on": "pooled real + generated descriptors, each column standardised by the pooled "
                             "mean and SD", "explained_variance_ratio": pca.explained_variance_ratio.tolist()},
        "purity": res,
        "score": "Sun et al. 2022 Eq 2: mean over pooled objects of KL(Bernoulli(p_i) || Bernoulli(q)), natural "
                 "log; p_i = generated fraction of the k nearest neighbours in PC space, q = m / (m + n)",
        "p_permutation": f"(1 + #label shuffles with score >= observed) / (1 + {n_permutations})",
        "p_real_vs_real": ("fraction (with +1) of random splits of the real objects "
                           f"({'by image' if by_image else 'by object'}, pseudo-generated part of fraction q) "
                           "whose score is >= the observed real-vs-generated score"),
        "real_split": "image" if by_image else "object",
        "hausdorff": {"real": _hd(pr["hausdorff_um"]), "generated": _hd(pg["hausdorff_um"]), "units": units},
        "not_star_shaped": {"real": int((~pr["star_shaped"]).sum()), "generated": int((~pg["star_shaped"]).sum())},
        "concave_over_1pct": {"real": int((pr["concave_fraction"] > 0.01).sum()),
                              "generated": int((pg["concave_fraction"] > 0.01).sum()),
                              "note": "objects where more than 1 % of the centroid's rays re-enter the object"},
        "multi_piece_objects": {"real": int((pr["n_components"] > 1).sum()),
                                "generated": int((pg["n_components"] > 1).sum()),
                                "note": "labels in several connected pieces: the largest piece is described"},
        "seed": seed, "n_permutations": n_permutations}
    rows = []
    for side, pool, ids, x in (("real", pr, ids_r, xr), ("generated", pg, ids_g, xg)):
        axes = "zyx"[-nd:]
        for i in range(len(x)):
            r = {"set": side, "image": ids[i], "label": int(pool["label"][i]), "size": float(pool["size"][i])}
            r.update({f"centroid_{a}": float(c) for a, c in zip(axes, pool["centroid_um"][i])})
            r.update(hausdorff=float(pool["hausdorff_um"][i]), star_shaped=bool(pool["star_shaped"][i]),
                     n_components=int(pool["n_components"][i]), kept_fraction=float(pool["kept_fraction"][i]),
                     concave_fraction=float(pool["concave_fraction"][i]))
            r.update({f"pc{j + 1}": float(v) for j, v in enumerate(x[i])})
            r.update({f"d{j}": float(v) for j, v in enumerate(pool["descriptors"][i])})
            rows.append(r)
    ex = (_examples(files["real"], t_r, pr, "real") + _examples(files["pred"], t_g, pg, "generated"))
    figs = {"shapes_pca.png": pca_figure(xr, xg, pca.explained_variance_ratio),
            "shapes_purity.png": purity_figure(res), "shapes_reconstructions.png": reconstruction_figure(ex, units)}
    summary["seconds"] = round(time.time() - t0, 2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        write_json(tmp / "summary.json", summary)
        write_csv(tmp / "objects.csv", rows)
        for name, fig in figs.items():
            save_figure(fig, tmp / name)
        _report(tmp / "report.html", summary, figs)
    summary["out"] = str(out)
    return summary


def _report(path: Path, s: dict, figs: dict) -> None:
    u = s["units"]
    table = [{"k": r["k"], "score (nats)": r["score"], "p permutation": r["p_permutation"],
              "p real vs real": r["p_real_vs_real"]} for r in s["purity"]]
    hd = [{"set": k, **v} for k, v in s["hausdorff"].items() if isinstance(v, dict) and v]
    intro = [f"{s['n_objects']['real']} real and {s['n_objects']['generated']} generated objects "
             f"({s['ndim']}D), descriptor {s['descriptor_kind']} of degree {s['degree']}; pixel size from "
             f"{s['pixel_size_source']} (units {u}). PCA explained variance "
             + ", ".join(f"{v:.2f}" for v in s["pca"]["explained_variance_ratio"]) + ".",
             s["score"] + ".", "p permutation: " + s["p_permutation"] + "; p real vs real: " + s["p_real_vs_real"]
             + ". Large p values: no evidence that the generated shapes differ from the real ones.",
             "Not star-shaped (a ray from the centroid re-enters the object: the radial function describes "
             f"the envelope only): real {s['not_star_shaped']['real']}, generated {s['not_star_shaped']['generated']}; "
             f"with more than 1 % of rays re-entering: real {s['concave_over_1pct']['real']}, generated "
             f"{s['concave_over_1pct']['generated']}. Labels in several pieces (largest described): real "
             f"{s['multi_piece_objects']['real']}, generated {s['multi_piece_objects']['generated']}."]
    sections = [Section("kNN-purity divergence", intro, [("per k", table), (f"reconstruction Hausdorff ({u})", hd)],
                        [("shape PCs, real vs generated", figs["shapes_pca.png"]),
                         ("score vs k with the null bands (5-95 %)", figs["shapes_purity.png"])]),
                Section("Reconstructions", ["Median and worst reconstruction error of each side."], [],
                        [("objects and their reconstruction", figs["shapes_reconstructions.png"])])]
    write_report(path, "Object shapes: real vs generated", sections, subtitle=f"{s['real']} vs {s['pred']}")
