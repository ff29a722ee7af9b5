"""Positional analysis on real 3D hiPSC segmentations (Allen Institute; no intensity images).

``../shared/data/allen_3d_cell_nucleus_masks``: one 76 x 1024 x 1024 field of 30 matched cell and
nucleus labels (``aicsimage_test_segmentation``) and a 38 x 485 x 350 crop with cell, nucleus and a
binary structure segmentation (``fov_processing_pipeline_test_resources``). The voxel size is not
stored: the Allen pipeline's usual 0.29 um (z) x 0.108 um (y, x) is **assumed (unverified)**.

1. **Nuclei in their cells** (field): the nucleus is the usual frame centre, so here the frame is
   centred on the **cell centroid** (``centre="cell"``) and each nucleus centroid's ``r`` is its
   fractional offset from the cell centre towards the membrane along the same ray, with its
   direction in the cell's aligned frame (axis 1 = major axis, + towards the cell mass's long tail;
   axis 3 = +z). Reported: median offset, the fraction of nuclei on the - side of axis 1 (a sign
   test: does the nucleus sit away from the long tail?), the real-vs-real null (cells split at
   random in halves, KL and permutation p of single objects (the paper's) and, where there are at
   least 4 cells, of whole cells; large p expected) and, as a sensitivity check, nuclei
   vs points drawn uniformly in the same cells (small p expected: nuclei are central).
2. **Structure objects in the crop's cells**: the binary structure segmentation labelled into
   26-connected objects; the frame is centred on each cell's nucleus (shell radius: 0.5 = nucleus
   boundary). Real-vs-real null (cells split in halves) and structure vs uniform random points
   in the same cells (same number per cell).

3. **Shape vs position** of the structure objects (the paper's R^2): first PC of their
   spherical-harmonic descriptors (degree ``--shape-degree``, 8 by default for time; objects below
   27 voxels have none) regressed by OLS on the frame coordinates.

Both with all cells and with the cells cut by the lateral image border left out. Prints one JSON
line per analysis and writes ``positions_*.png`` under ``--out``.

    python benchmarks/positions_allen.py [--out DIR] [--permutations 999] [--splits 10] [--shape-degree 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from _bench import SHARED, emit, note
from scipy import stats
from skimage.measure import label

from cytogen.evaluate.spatial import Positions, cell_frames, object_positions, unit_coordinates
from cytogen.evaluate.spatial_density import positional_test, real_vs_real, shape_position_regression
from cytogen.report.figures import save_figure
from cytogen.report.spatial_figures import positions_figure

DATA = SHARED / "allen_3d_cell_nucleus_masks"
VOXEL_UM = (0.29, 0.108, 0.108)  # assumed (Allen 100x pipeline), not stored in the files
NOTE = "voxel 0.29 x 0.108 x 0.108 um assumed (Allen pipeline default, unverified)"


def uniform_points(cells: np.ndarray, per_cell: dict[int, int], rng: np.random.Generator) -> np.ndarray:
    """A label image of single-voxel objects drawn uniformly in each cell (``per_cell[c]`` of them)."""
    out = np.zeros(cells.shape, np.int32)
    k = 0
    for c, n in per_cell.items():
        vox = np.argwhere(cells == c)
        for v in vox[rng.choice(len(vox), size=min(n, len(vox)), replace=False)]:
            k += 1
            out[tuple(v)] = k
    return out


def _figure(a: Positions, b: Positions, test: dict, names: tuple[str, str], path: Path, title: str,
            radius: str) -> None:
    rad = {"real": a.rho if radius == "shell" else a.r, "generated": b.rho if radius == "shell" else b.r}
    summ = {"kl": test["kl"], "p_permutation": test["p_permutation"], "frame": {"radius": radius}}
    fig = positions_figure({"real": test["density_real"], "generated": test["density_generated"]}, rad, summ,
                           labels=names)
    fig.suptitle(f"{title}: KL {test['kl']:.3f}, permutation p {test['p_permutation']:.3g} ({NOTE})", fontsize=9)
    save_figure(fig, path)


def _subset(p: Positions, sel: np.ndarray) -> Positions:
    keys = ("object", "cell", "centroid_um", "distance_um", "membrane_um", "nucleus_um", "r", "rho", "r_nucleus",
            "in_nucleus", "direction", "theta", "phi")
    return Positions(**{k: getattr(p, k)[sel] for k in keys}, counts=p.counts)


def analyse(name: str, objects: np.ndarray, cells: np.ndarray, nuclei: np.ndarray | None, *, centre: str,
            radius: str, out: Path, perms: int, splits: int, seed: int) -> None:
    t0 = time.perf_counter()
    frames = cell_frames(cells, nuclei, VOXEL_UM, centre=centre)
    for excl in (False, True):
        tag = f"{name}{'_no_border' if excl else ''}"
        pos = object_positions(objects, cells, nuclei, VOXEL_UM, exclude_border=excl, centre=centre, frames=frames)
        pts = unit_coordinates(pos, radius)
        groups = pos.cell.astype(str)
        rec = {"benchmark": "positions_allen", "analysis": tag, "centre": centre, "radius": radius,
               "n_objects": len(pos), "n_cells": int(len(np.unique(pos.cell))), **pos.counts,
               "median_r": round(float(np.median(pos.r)), 3), "median_rho": round(float(np.median(pos.rho)), 3),
               "median_distance_um": round(float(np.median(pos.distance_um)), 2),
               "fraction_in_nucleus": round(float(np.mean(pos.in_nucleus)), 3), "voxel_um": VOXEL_UM, "note": NOTE}
        if centre == "cell":
            neg = int(np.sum(pos.direction[:, 0] < 0))
            rec.update({"fraction_axis1_negative": round(neg / len(pos), 3),
                        "sign_test_p": float(stats.binomtest(neg, len(pos)).pvalue),
                        "median_z_offset_um": round(float(np.median(pos.direction[:, 2] * pos.distance_um)), 2)})
        if len(np.unique(groups)) >= 2:
            rvr = real_vs_real(pts, groups, n_splits=splits, n_permutations=min(perms, 199), seed=seed)
            rec.update({"real_vs_real_kl_median": round(rvr["kl_median"], 4), "p_real_vs_real": rvr["p_median"],
                        "real_vs_real_p": [round(v, 3) for v in rvr["p"]],
                        "real_vs_real_fraction_p_below_0.05": rvr["fraction_p_below_0.05"]})
            if len(np.unique(groups)) >= 4:  # whole cells shuffled: objects of one cell are not independent
                rc = real_vs_real(pts, groups, n_splits=splits, n_permutations=min(perms, 199), seed=seed,
                                  permute_groups=True)
                rec.update({"p_real_vs_real_by_cell": rc["p_median"],
                            "real_vs_real_by_cell_p": [round(v, 3) for v in rc["p"]]})
            rng = np.random.default_rng(seed)
            half = np.isin(groups, rng.permutation(np.unique(groups))[: len(np.unique(groups)) // 2])
            t = positional_test(pts[half], pts[~half], bandwidth=rvr["bandwidth"], n_permutations=perms, seed=seed)
            _figure(_subset(pos, half), _subset(pos, ~half), t, ("half A", "half B"),
                    out / f"positions_{tag}_real_halves.png", f"{tag}: real cells split in halves", radius)
        per_cell = {int(c): int(n) for c, n in zip(*np.unique(pos.cell, return_counts=True))}
        ctrl_lab = uniform_points(cells, per_cell, np.random.default_rng(seed))
        ctrl = object_positions(ctrl_lab, cells, nuclei, VOXEL_UM, exclude_border=excl, centre=centre, frames=frames)
        t = positional_test(pts, unit_coordinates(ctrl, radius), n_permutations=perms, seed=seed)
        rec.update({"vs_uniform_kl": round(t["kl"], 4), "vs_uniform_p": t["p_permutation"],
                    "median_r_uniform": round(float(np.median(ctrl.r)), 3),
                    "median_rho_uniform": round(float(np.median(ctrl.rho)), 3), "bandwidth": round(t["bandwidth"], 3)})
        _figure(pos, ctrl, t, ("real", "uniform in the cells"), out / f"positions_{tag}_vs_uniform.png",
                f"{tag}: real vs uniform random points", radius)
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        emit(rec)


def shape_vs_position(objects: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, degree: int) -> None:
    """The paper's regression: first shape PC (SPHARM descriptors of :mod:`cytogen.evaluate.shapes`,
    PCA of these objects) on the frame position (unit-ball coordinates and shell radius)."""
    from cytogen.evaluate.shapes import object_descriptors, shape_pca

    t0 = time.perf_counter()
    pos = object_positions(objects, cells, nuclei, VOXEL_UM)
    sh = object_descriptors(objects, VOXEL_UM, degree=degree)
    pc1 = dict(zip(sh.label.tolist(), shape_pca(sh.descriptors, n_components=1).scores[0][:, 0]))
    sel = np.array([int(o) in pc1 for o in pos.object])
    x = np.column_stack([unit_coordinates(pos)[sel], pos.rho[sel]])
    reg = shape_position_regression(np.array([pc1[int(o)] for o in pos.object[sel]]), x)
    emit({"benchmark": "positions_allen", "analysis": "structure_shape_vs_position", "sh_degree": degree,
          "n_objects_in_cells": len(pos), "n_with_shape": int(sel.sum()), "skipped_by_shapes": sh.skipped,
          **{k: reg[k] for k in ("r2", "r2_adjusted", "n_objects", "p_value")},
          "predictors": "unit-ball x, y, z and the shell radius", "note": NOTE,
          "seconds": round(time.perf_counter() - t0, 1)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--permutations", type=int, default=999)
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape-degree", type=int, default=8,
                    help="spherical-harmonic degree of the shape-vs-position regression (0: skip it)")
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="positions_allen_"))
    out.mkdir(parents=True, exist_ok=True)
    note(f"figures in {out}; {NOTE}")
    f = DATA / "aicsimage_test_segmentation"
    cells = tifffile.imread(f / "input_1_cellWholeIndex.tiff")
    nuclei = tifffile.imread(f / "input_2_nucWholeIndex.tiff")
    analyse("nuclei_in_cells", nuclei, cells, None, centre="cell", radius="fraction", out=out,
            perms=a.permutations, splits=a.splits, seed=a.seed)
    del cells, nuclei
    g = DATA / "fov_processing_pipeline_test_resources"
    cells = tifffile.imread(g / "MembraneSegmentationReadPath.tiff")
    nuclei = tifffile.imread(g / "NucleusSegmentationReadPath.tiff")
    structure = label(tifffile.imread(g / "StructureSegmentationReadPath.tiff") > 0, connectivity=3)
    analyse("structure_in_crop_cells", structure, cells, nuclei, centre="nucleus", radius="shell", out=out,
            perms=a.permutations, splits=a.splits, seed=a.seed)
    if a.shape_degree:
        shape_vs_position(structure, cells, nuclei, a.shape_degree)


if __name__ == "__main__":
    main()
