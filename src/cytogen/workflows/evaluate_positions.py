"""``cytogen evaluate positions``: are generated objects where real ones are, in the cell frame?

Each side (real, generated) is a set of object instance label images (2D or 3D) with cell and
nucleus instance labels of the same fields. Every object centroid is mapped into its cell's
normalised frame (:mod:`cytogen.evaluate.spatial`: nucleus centre 0, nucleus boundary 0.5,
membrane 1 by default); the two sets of frame points are compared by the KL divergence of their
kernel densities with a permutation p value, and the real-vs-real null of real cells split in
halves (:mod:`cytogen.evaluate.spatial_density`). Optionally the first shape PC of the objects
(:mod:`cytogen.evaluate.shapes`) is regressed on position (R^2, as Sun et al. 2022).

Label files are given as a folder, a glob pattern or a list of files. An object file pairs with
the cell (and nucleus) file of the same name, else with the one whose name is the same once the
last ``_word`` of both is dropped, so ``masks/field_000_organelles.tif`` pairs with
``masks/field_000_cells.tif`` (the layout of :func:`cytogen.synth.cells.write_synthetic_dataset`).
Writes ``OUT/summary.json``, ``OUT/objects.csv``, ``OUT/positions.png`` and ``OUT/report.html``,
swapped in as one folder.
"""

from __future__ import annotations

import glob
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.errors import CytogenError
from cytogen.evaluate.spatial import Positions, concat_positions, object_positions, unit_coordinates
from cytogen.evaluate.spatial_density import positional_test, real_vs_real, shape_position_regression
from cytogen.io.atomic import atomic_dir
from cytogen.io.images import read_image
from cytogen.workflows.evaluate import IMAGE_SUFFIXES, check_out, field_name, write_csv, write_json
from cytogen.workflows.evaluate_cells import read_labels

OUTPUTS = ("summary.json", "objects.csv", "positions.png", "report.html")


def list_labels(spec: str | Path | Sequence[str | Path], what: str) -> dict[str, Path]:
    """Label files of a folder, glob pattern or list of files, by field name (file name without suffix)."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir() and not p.name.lower().endswith(".zarr"):
            files += sorted(f for f in p.iterdir() if field_name(f) and not f.name.startswith("."))
        elif p.exists():
            files.append(p)
        elif any(ch in str(item) for ch in "*?["):
            files += sorted(Path(f) for f in glob.glob(str(p)))
        else:
            raise CytogenError(f"{what}: {item} does not exist; give a folder, a glob pattern or label files")
    out: dict[str, Path] = {}
    for f in files:
        name = field_name(f)
        if name is None:
            raise CytogenError(f"{what}: {f} is not a label image ({', '.join(IMAGE_SUFFIXES)})")
        if name in out:
            raise CytogenError(f"{what}: two files for field {name!r} ({out[name]} and {f}); keep one")
        out[name] = f
    if not out:
        raise CytogenError(f"{what}: no label images in {spec}")
    return out


def _stem(name: str) -> str:
    return name.rsplit("_", 1)[0] if "_" in name else name


def pair_files(objects: dict[str, Path], others: dict[str, Path], what: str, other_what: str) -> dict[str, Path]:
    """For each object field, its ``others`` file (same name, else same name without the last ``_word``)."""
    by_stem: dict[str, list[str]] = {}
    for n in others:
        by_stem.setdefault(_stem(n), []).append(n)
    out, missing = {}, []
    for name in objects:
        if name in others:
            out[name] = others[name]
        elif len(by_stem.get(_stem(name), [])) == 1:
            out[name] = others[by_stem[_stem(name)][0]]
        else:
            missing.append(name)
    if missing:
        raise CytogenError(f"{what}: no {other_what} file matches {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''} (files pair by name: 'a.tif' with 'a.tif', or "
                           f"'a_objects.tif' with 'a_cells.tif'); {other_what} has {', '.join(list(others)[:5])}")
    return out


def _read(path: Path, where: str) -> tuple[np.ndarray, tuple[float, ...] | None]:
    im = read_image(path)
    return read_labels(im, where), im.pixel_size_um


def measure_side(objects: str | Path | Sequence, cells: str | Path | Sequence, nuclei: str | Path | Sequence | None,
                 what: str, *, pixel_size_um: Sequence[float] | None = None, exclude_border: bool = False,
                 centre: str = "nucleus", align: str = "xy") -> tuple[Positions, dict]:
    """Positions of every object of one side, pooled over its fields; and the pixel size used."""
    obj = list_labels(objects, f"{what} objects")
    cel = pair_files(obj, list_labels(cells, f"{what} cells"), f"{what} objects", "cells")
    nuc = pair_files(obj, list_labels(nuclei, f"{what} nuclei"), f"{what} objects", "nuclei") if nuclei else None
    tables, names, sizes = [], [], set()
    for name, path in obj.items():
        o, sp_o = _read(path, f"{what} objects {path}")
        c, sp_c = _read(cel[name], f"{what} cells {cel[name]}")
        n = _read(nuc[name], f"{what} nuclei {nuc[name]}")[0] if nuc else None
        for other, p in ((c, cel[name]), (n, nuc[name] if nuc else None)):
            if other is not None and other.shape != o.shape:
                raise CytogenError(f"{what} field {name!r}: objects {path} are {o.shape} but {p} is {other.shape}; "
                                   "give labels of the same field at the same size")
        sp = pixel_size_um if pixel_size_um is not None else (sp_o or sp_c)
        if sp is not None and len(sp) == 1:
            sp = tuple(sp) * o.ndim
        if sp is not None and len(sp) != o.ndim:
            raise CytogenError(f"--pixel-size-um gives {len(sp)} values but {path} is {o.ndim}D; give one value or "
                               f"one per axis ({'z, ' if o.ndim == 3 else ''}y, x)")
        sizes.add(None if sp is None else tuple(float(v) for v in sp))
        try:
            tables.append(object_positions(o, c, n, sp, exclude_border=exclude_border, centre=centre, align=align))
        except CytogenError as exc:
            raise CytogenError(f"{what} field {name!r} ({path}): {exc}") from None
        names.append(name)
    ndims = {t.centroid_um.shape[1] for t in tables}
    if len(ndims) > 1:
        raise CytogenError(f"{what}: mixes 2D and 3D label images; give one kind")
    pos = concat_positions(tables, names)
    if len(pos) == 0:
        raise CytogenError(f"{what}: none of the {pos.counts['n_objects_in_image']} objects in {len(names)} field(s) "
                           f"lies in a usable cell ({pos.counts['dropped_outside_cells']} outside cells, "
                           f"{pos.counts['dropped_no_nucleus']} in cells without nucleus, "
                           f"{pos.counts['dropped_border_cells']} in border cells); check that objects, cells and "
                           "nuclei are labels of the same fields")
    if None in sizes:
        warnings.warn(f"{what}: no pixel size given or stored; distances are in pixels (give --pixel-size-um)",
                      stacklevel=2)
    return pos, {"pixel_size_um": sorted(s for s in sizes if s is not None), "n_fields": len(names),
                 "units": "px" if None in sizes else "um"}


def _rows(side: str, pos: Positions) -> list[dict[str, Any]]:
    d = pos.centroid_um.shape[1]
    axes = "zyx"[-d:]
    rows = []
    for i in range(len(pos)):
        r: dict[str, Any] = {"set": side, "file": pos.file[i], "object": int(pos.object[i]), "cell": int(pos.cell[i])}
        r.update({f"centroid_{a}_um": float(v) for a, v in zip(axes, pos.centroid_um[i])})
        r.update({"distance_um": float(pos.distance_um[i]), "nucleus_um": float(pos.nucleus_um[i]),
                  "membrane_um": float(pos.membrane_um[i]), "r": float(pos.r[i]), "rho": float(pos.rho[i]),
                  "in_nucleus": bool(pos.in_nucleus[i]), "theta_deg": float(np.degrees(pos.theta[i]))})
        if d == 3:
            r["phi_deg"] = float(np.degrees(pos.phi[i]))
        r.update({f"frame_{k + 1}": float(v) for k, v in enumerate(pos.direction[i] * pos.rho[i])})
        rows.append(r)
    return rows


def _shape_regression(side: dict[str, Any], pos: dict[str, Positions], radius: str, sizes: dict) -> dict:
    """First shape PC (pooled PCA of both sides) regressed on the frame coordinates, per side."""
    from cytogen.evaluate.shapes import object_descriptors, shape_pca

    desc, keys = {}, {}
    for s in ("real", "generated"):
        files = list_labels(side[s], f"{s} objects")
        mats, k = [], []
        for name in sorted(set(pos[s].file)):
            o, sp = _read(files[name], f"{s} objects {files[name]}")
            sh = object_descriptors(o, sizes[s] or sp)
            mats.append(sh.descriptors)
            k += [(name, int(lab)) for lab in sh.label]
        desc[s], keys[s] = np.vstack(mats), k
    pca = shape_pca(desc["real"], desc["generated"], n_components=1)
    out = {}
    for j, s in enumerate(("real", "generated")):
        pc1 = dict(zip(keys[s], pca.scores[j][:, 0]))
        p = pos[s]
        sel = [i for i in range(len(p)) if (p.file[i], int(p.object[i])) in pc1]
        x = np.column_stack([unit_coordinates(p, radius)[sel], (p.rho if radius == "shell" else p.r)[sel]])
        y = np.array([pc1[(p.file[i], int(p.object[i]))] for i in sel])
        out[s] = shape_position_regression(y, x) if len(y) > x.shape[1] + 1 else {"note": "too few objects"}
        out[s]["n_objects_without_shape"] = len(p) - len(sel)  # too small or cut by the border for descriptors
    out["predictors"] = "frame coordinates (unit disc/ball) and the radius; response: PC1 of the pooled descriptors"
    return out


def evaluate_positions(real: Any, pred: Any, cells: Any, nuclei: Any, out: str | Path, *,
                       pred_cells: Any = None, pred_nuclei: Any = None, pixel_size_um: Sequence[float] | None = None,
                       n_permutations: int = 1000, bandwidth: float | None = None, seed: int = 0,
                       exclude_border: bool = False, radius: str = "shell", align: str = "xy",
                       permute_by: str = "object", real_splits: int = 10, shape_vs_position: bool = False,
                       centre: str = "nucleus", real_split_by: str = "cell") -> dict[str, Any]:
    """Compare the positions of real and generated objects (module docstring); returns ``summary.json``."""
    from cytogen.report.spatial_figures import positions_figure, positions_report

    if n_permutations < 0 or real_splits < 0:
        raise CytogenError("--permutations and --real-splits must be >= 0")
    if permute_by not in ("object", "cell"):
        raise CytogenError(f"--permute-by must be 'object' or 'cell', got {permute_by!r}")
    t0 = time.perf_counter()
    check_out(out, OUTPUTS, "a position evaluation")
    if real_split_by not in ("cell", "image"):
        raise CytogenError(f"--real-split-by must be 'cell' or 'image', got {real_split_by!r}")
    if centre not in ("nucleus", "cell"):
        raise CytogenError(f"--centre must be 'nucleus' or 'cell', got {centre!r}")
    if centre == "nucleus" and not nuclei:
        raise CytogenError("give --nuclei (the frame is centred on each cell's nucleus), or --centre cell")
    kw = {"pixel_size_um": pixel_size_um, "exclude_border": exclude_border, "align": align, "centre": centre}
    pos, info = {}, {}
    pos["real"], info["real"] = measure_side(real, cells, nuclei, "real", **kw)
    pos["generated"], info["generated"] = measure_side(pred, pred_cells or cells, pred_nuclei or nuclei,
                                                       "generated", **kw)
    pts = {s: unit_coordinates(p, radius) for s, p in pos.items()}
    if pts["real"].shape[1] != pts["generated"].shape[1]:
        raise CytogenError("real labels are 2D and generated ones 3D (or the reverse); compare like with like")
    groups = {s: np.char.add(np.char.add(p.file.astype(str), ":"), p.cell.astype(str)) for s, p in pos.items()}
    test = positional_test(pts["real"], pts["generated"], bandwidth=bandwidth, n_permutations=n_permutations,
                           seed=seed, groups=(groups["real"], groups["generated"]) if permute_by == "cell" else None)
    dens = {"real": test.pop("density_real"), "generated": test.pop("density_generated")}
    rvr = None
    split_groups = groups["real"] if real_split_by == "cell" else pos["real"].file.astype(str)
    if real_splits and len(np.unique(split_groups)) >= 2:
        rvr = real_vs_real(pts["real"], split_groups, n_splits=real_splits,
                           n_permutations=min(n_permutations, 200), bandwidth=test["bandwidth"], seed=seed,
                           permute_groups=permute_by == "cell")
        rvr["split_by"] = real_split_by
    summary: dict[str, Any] = {
        "frame": {"radius": radius, "centre": f"{centre} centroid", "align": align,
                  "meaning": "0 = nucleus centre, 0.5 = nucleus boundary, 1 = membrane"
                  if radius == "shell" and centre == "nucleus"
                  else f"fractional distance: 0 = {centre} centre, 1 = membrane"},
        **{f"n_objects_{s}": len(p) for s, p in pos.items()},
        **{f"n_cells_{s}": int(len(np.unique(groups[s]))) for s in pos},
        "counts": {s: p.counts for s, p in pos.items()}, "inputs": info,
        "kl": test["kl"], "kl_reverse": test["kl_reverse"], "p_permutation": test["p_permutation"],
        "p_real_vs_real": None if rvr is None else rvr["p_median"], "test": test, "real_vs_real": rvr,
        **{f"median_r_{s}": float(np.median(p.r)) for s, p in pos.items()},
        **{f"median_rho_{s}": float(np.median(p.rho)) for s, p in pos.items()},
        **{f"fraction_in_nucleus_{s}": float(np.mean(p.in_nucleus)) for s, p in pos.items()},
        "exclude_border": exclude_border, "seed": seed}
    if shape_vs_position:
        sizes = {"real": pixel_size_um, "generated": pixel_size_um}
        summary["shape_vs_position"] = _shape_regression({"real": real, "generated": pred}, pos, radius, sizes)
    rows = _rows("real", pos["real"]) + _rows("generated", pos["generated"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        write_json(tmp / "summary.json", summary)
        write_csv(tmp / "objects.csv", rows)
        fig = positions_figure(dens, {s: p.rho if radius == "shell" else p.r for s, p in pos.items()}, summary)
        positions_report(tmp / "report.html", fig, summary, tmp / "positions.png")
    summary["out"] = str(out)
    return summary
