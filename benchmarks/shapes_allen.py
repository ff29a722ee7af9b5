"""Spherical-harmonic shapes of real 3D nuclei and cells (Allen Institute segmentations).

``../shared/data/allen_3d_cell_nucleus_masks/aicsimage_test_segmentation``: one 76 x 1024 x 1024
field, 30 matched cells (``input_1_cellWholeIndex.tiff``) and nuclei (``input_2_nucWholeIndex.tiff``).
The voxel size is not stored; the Allen pipeline's usual 0.29 um (z) x 0.108 um (y, x) is
**assumed (unverified)** and stated in every line. No downsampling: every object is described at
full resolution.

Prints one JSON line per result:

- ``descriptors``: per structure and degree (31 as the paper, and a smaller one), the number of
  objects, time, reconstruction Hausdorff distance (um; median, max), non-star-shaped and
  multi-piece counts (a label in several connected pieces: the largest is described);
- ``null``: the real-vs-real null of Sun et al.: the 30 objects split at random into halves
  (``--splits`` times), kNN-purity per k with its permutation p (large p expected);
- ``control``: nuclei vs cells as two "sets" (different shapes: small p expected);
- ``cli``: ``cytogen evaluate shapes`` on one random split of the nuclei and on nuclei vs cells,
  with its figures (``--figures`` copies them, default ``docs/figures/shapes_allen_*.png``).

    python benchmarks/shapes_allen.py [--degrees 31,12] [--splits 20] [--permutations 999] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench import SHARED, emit, note

DATA = SHARED / "allen_3d_cell_nucleus_masks" / "aicsimage_test_segmentation"
FILES = {"cells": "input_1_cellWholeIndex.tiff", "nuclei": "input_2_nucWholeIndex.tiff"}
VOXEL_UM = (0.29, 0.108, 0.108)
VOXEL_NOTE = "assumed Allen pipeline voxel 0.29 x 0.108 x 0.108 um (z, y, x), not stored in the files: unverified"
REPO = Path(__file__).resolve().parents[1]


def _labels(name: str) -> np.ndarray:
    from cytogen.io.images import read_image

    return read_image(DATA / FILES[name]).data[0]


def _border(lab: np.ndarray) -> int:
    from scipy import ndimage as ndi

    return sum(1 for s in ndi.find_objects(lab) if s is not None
               and any(a.start == 0 or a.stop == n for a, n in zip(s[1:], lab.shape[1:])))


def _null(x: np.ndarray, structure: str, degree: int, splits: int, perms: int, seed: int) -> None:
    from cytogen.evaluate.purity import purity_test

    rng = np.random.default_rng(seed)
    ps: dict[int, list[float]] = {4: [], 8: []}
    scores: dict[int, list[float]] = {4: [], 8: []}
    for s in range(splits):
        order = rng.permutation(len(x))
        half = len(x) // 2
        for r in purity_test(x[order[:half]], x[order[half:]], ks=(4, 8), n_permutations=perms, seed=s):
            ps[r["k"]].append(r["p_permutation"])
            scores[r["k"]].append(r["score"])
    for k in ps:
        p = np.array(ps[k])
        emit({"result": "null", "structure": structure, "degree": degree, "k": k, "n_splits": splits,
              "halves": [len(x) // 2, len(x) - len(x) // 2], "median_score": float(np.median(scores[k])),
              "median_p_permutation": float(np.median(p)), "min_p": float(p.min()),
              "fraction_p_above_0.05": float(np.mean(p > 0.05)), "voxel": VOXEL_NOTE})


def _write_split(lab: np.ndarray, ids: np.ndarray, folder: Path) -> None:
    from cytogen.io.images import Image, write_image

    folder.mkdir(parents=True)
    keep = np.where(np.isin(lab, ids), lab, 0).astype(np.uint16)
    write_image(folder / "field.tif", Image(keep[None], "CZYX", VOXEL_UM))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--degrees", default="31,12")
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--permutations", type=int, default=999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the cytogen evaluate shapes folders here")
    ap.add_argument("--figures", default=str(REPO / "docs" / "figures"), help="copy the figures here ('' = no)")
    a = ap.parse_args()
    if not DATA.is_dir():
        note(f"{DATA} not found: this benchmark needs ../shared/data")
        return 1
    from cytogen.evaluate.purity import purity_test
    from cytogen.evaluate.shapes import object_descriptors, shape_pca
    from cytogen.workflows.evaluate_shapes import evaluate_shapes

    labs = {k: _labels(k) for k in FILES}
    descs: dict[tuple[str, int], np.ndarray] = {}
    for deg in [int(v) for v in a.degrees.split(",")]:
        for name, lab in labs.items():
            t0 = time.time()
            t = object_descriptors(lab, VOXEL_UM, degree=deg)
            dt = time.time() - t0
            descs[name, deg] = t.descriptors
            emit({"result": "descriptors", "structure": name, "degree": deg, "descriptor": t.kind,
                  "n_objects": len(t), "touching_xy_border": _border(lab), "seconds": round(dt, 1),
                  "seconds_per_object": round(dt / max(1, len(t)), 2),
                  "hausdorff_um_median": round(float(np.median(t.hausdorff_um)), 3),
                  "hausdorff_um_max": round(float(t.hausdorff_um.max()), 3),
                  "hausdorff_um_mean": round(float(t.hausdorff_um.mean()), 3),
                  "not_star_shaped": int((~t.star_shaped).sum()),
                  "concave_over_1pct": int((t.concave_fraction > 0.01).sum()),
                  "median_concave_fraction": float(np.median(t.concave_fraction)),
                  "multi_piece": int((t.n_components > 1).sum()),
                  "median_kept_fraction": float(np.median(t.kept_fraction)), "voxel": VOXEL_NOTE})
        for name in labs:
            x = shape_pca(descs[name, deg]).scores[0]
            _null(x, name, deg, a.splits, a.permutations, a.seed)
        pca = shape_pca(descs["nuclei", deg], descs["cells", deg])
        for r in purity_test(*pca.scores, ks=(4, 8, 16), n_permutations=a.permutations, seed=a.seed):
            emit({"result": "control", "real": "nuclei", "generated": "cells", "degree": deg, "k": r["k"],
                  "score": r["score"], "p_permutation": r["p_permutation"], "p_real_vs_real": r["p_real_vs_real"]})
    deg = int(a.degrees.split(",")[0])
    root = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="shapes_allen_"))
    ids = np.setdiff1d(np.unique(labs["nuclei"]), [0])
    order = np.random.default_rng(a.seed).permutation(ids)
    _write_split(labs["nuclei"], order[: len(ids) // 2], root / "in" / "nuclei_a")
    _write_split(labs["nuclei"], order[len(ids) // 2:], root / "in" / "nuclei_b")
    _write_split(labs["cells"], ids, root / "in" / "cells")
    for tag, real, pred in (("nuclei_halves", "nuclei_a", "nuclei_b"), ("nuclei_vs_cells", "nuclei_a", "cells")):
        s = evaluate_shapes(root / "in" / real, root / "in" / pred, root / tag, degree=deg, ks=(4, 8),
                            n_permutations=a.permutations, seed=a.seed)
        emit({"result": "cli", "run": tag, "out": str(root / tag), "degree": deg, "n_objects": s["n_objects"],
              "purity": [{k: r.get(k) for k in ("k", "score", "p_permutation", "p_real_vs_real")} for r in s["purity"]],
              "seconds": s["seconds"], "voxel": VOXEL_NOTE})
        if a.figures:
            for f in ("shapes_pca.png", "shapes_purity.png", "shapes_reconstructions.png"):
                shutil.copy(root / tag / f, Path(a.figures) / f"shapes_allen_{tag}_{f.split('_', 1)[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
