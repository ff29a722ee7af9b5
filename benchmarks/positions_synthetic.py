"""Positional analysis on cytogen's synthetic cells with organelles (known positions).

Real set: the cytoplasmic organelles of ``write_synthetic_dataset(..., organelles=True, seed=0)``
(the nucleoli, which the organelle labels also hold, are left out: objects with most pixels in a
nucleus). Generated sets, each scored with ``cytogen.workflows.evaluate_positions`` against the real:

- ``same_seedK``: the organelles of other seeds (same distribution: should not be detected, p > 0.05);
- ``in_nucleus_seedK``: the same organelles with each object's pixels moved so that its centroid
  lands on a random voxel of its cell's nucleus (should be detected, p < 0.01);
- ``pulled_F_seedK``: each object moved a fraction F of the way towards its nucleus centroid
  (a subtler shift, to see where detection starts).

Prints one JSON line per comparison (KL, p values, medians, seconds) and keeps every OUT folder
(summary.json, objects.csv, positions.png, report.html) under ``--out``.

    python benchmarks/positions_synthetic.py [--fields 6] [--size 256] [--permutations 999] [--seeds 1,2,3]
        [--pull 0.05,0.1,0.25] [--depth 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench import emit, note

from cytogen.io.images import Image, read_image, write_image
from cytogen.synth.cells import write_synthetic_dataset
from cytogen.workflows.evaluate_positions import evaluate_positions


def cytoplasmic(organelles: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Organelle labels without the nucleoli (objects with most of their pixels in a nucleus)."""
    ids = np.unique(organelles[organelles > 0])
    inside = np.bincount(organelles[nuclei > 0].ravel(), minlength=organelles.max() + 1)
    total = np.bincount(organelles.ravel(), minlength=organelles.max() + 1)
    out = organelles.copy()
    out[np.isin(organelles, ids[inside[ids] > 0.5 * total[ids]])] = 0
    return out


def moved(objects: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, rng: np.random.Generator,
          pull: float | None) -> np.ndarray:
    """Objects shifted into their cell's nucleus (``pull=None``: centroid on a random nucleus voxel)
    or a fraction ``pull`` of the way towards the nucleus centroid."""
    out = np.zeros_like(objects)
    for lab in np.unique(objects[objects > 0]):
        idx = np.argwhere(objects == lab)
        c = idx.mean(0)
        cell = cells[tuple(np.rint(c).astype(int))]
        nuc = np.argwhere((nuclei > 0) & (cells == cell)) if cell else np.zeros((0, objects.ndim), int)
        if not len(nuc):
            continue
        target = nuc[rng.integers(len(nuc))] if pull is None else c + pull * (nuc.mean(0) - c)
        new = idx + np.rint(target - c).astype(int)
        new = new[np.all((new >= 0) & (new < objects.shape), axis=1)]
        out[tuple(new.T)] = lab
    return out


def make_set(root: Path, seed: int, fields: int, shape: tuple[int, ...]) -> Path:
    src = root / f"synth{seed}"
    if not src.exists():
        write_synthetic_dataset(src, n_fields=fields, shape=shape, organelles=True, seed=seed)
    return src / "masks"


def write_objects(masks: Path, out: Path, how: str, seed: int) -> Path:
    """``how``: ``same``, ``in_nucleus`` or ``pulled_F``."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    for f in sorted(masks.glob("*_organelles.tif")):
        stem = f.name[: -len("_organelles.tif")]
        im = read_image(f)
        cells, nuclei = (read_image(masks / f"{stem}_{k}.tif").data[0] for k in ("cells", "nuclei"))
        org = cytoplasmic(im.data[0], nuclei)
        if how != "same":
            org = moved(org, cells, nuclei, rng, None if how == "in_nucleus" else float(how.split("_")[1]))
        write_image(out / f.name, Image(org[None].astype(np.int32), "CYX" if org.ndim == 2 else "CZYX",
                                        im.pixel_size_um, None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fields", type=int, default=6)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--depth", type=int, default=0, help="z planes (0: 2D)")
    ap.add_argument("--permutations", type=int, default=999)
    ap.add_argument("--seeds", default="1,2,3", help="generated-set seeds (the real set is seed 0)")
    ap.add_argument("--pull", default="0.05,0.1,0.25", help="fractions of the way to the nucleus centre")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    root = Path(a.out or tempfile.mkdtemp(prefix="positions_synth_"))
    root.mkdir(parents=True, exist_ok=True)
    shape = (a.size, a.size) if a.depth == 0 else (a.depth, a.size, a.size)
    note(f"writing to {root}")
    real_masks = make_set(root, 0, a.fields, shape)
    real = write_objects(real_masks, root / "objects_real", "same", 0)
    hows = ["same", "in_nucleus"] + [f"pulled_{p}" for p in a.pull.split(",") if p]
    for seed in (int(s) for s in a.seeds.split(",")):
        masks = make_set(root, seed, a.fields, shape)
        for how in hows:
            name = f"{how}_seed{seed}"
            pred = write_objects(masks, root / f"objects_{name}", how, seed)
            t0 = time.perf_counter()
            s = evaluate_positions(real, pred, f"{real_masks}/*_cells.tif", f"{real_masks}/*_nuclei.tif",
                                   root / f"eval_{name}", pred_cells=f"{masks}/*_cells.tif",
                                   pred_nuclei=f"{masks}/*_nuclei.tif", n_permutations=a.permutations, seed=seed)
            emit({"benchmark": "positions_synthetic", "set": name, "ndim": len(shape), "fields": a.fields,
                  "n_real": s["n_objects_real"], "n_generated": s["n_objects_generated"],
                  "cells_real": s["n_cells_real"], "kl": round(s["kl"], 4), "p_permutation": s["p_permutation"],
                  "p_real_vs_real": s["p_real_vs_real"], "median_rho_real": round(s["median_rho_real"], 3),
                  "median_rho_generated": round(s["median_rho_generated"], 3),
                  "expected": "p > 0.05" if how == "same" else ("p < 0.01" if how == "in_nucleus" else "shift"),
                  "seconds": round(time.perf_counter() - t0, 1), "out": str(root / f"eval_{name}")})


if __name__ == "__main__":
    main()
