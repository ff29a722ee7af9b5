"""``cytogen cells extract``: single-cell crops of a set of fields -> a CELLS folder.

Reads FIELDS.csv (one row per field), reads or derives the instance masks of cells and nuclei,
crops every whole cell (:func:`cytogen.data.cells.field_cells`) and writes the set with
:func:`cytogen.data.cellset.write_cellset`, with an HTML report and a montage of example crops.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cytogen.data.cells import field_cells, preprocess_field
from cytogen.data.cellset import write_cellset
from cytogen.errors import CytogenError
from cytogen.io.atomic import write_json
from cytogen.evaluate.features import feature_names, feature_units
from cytogen.io.images import read_spec
from cytogen.segment.cells import CELLS_METHOD, NUCLEI_METHOD, match_nuclei, segment_cells, segment_nuclei

__all__ = ["FieldSpec", "extract_cells", "read_fields"]

KNOWN = ("name", "dna", "target", "structure", "membrane", "cells", "nuclei", "split", "pixel_size_um")
IMAGE_COLUMNS = ("dna", "target", "membrane", "cells", "nuclei")
ROW_COLUMNS = ("cell_id", "field", "cell_label", "structure", "structure_index", "split", "crop_file",
               "crop_index", "crop_pixel_size_um", "centroid_z", "centroid_y", "centroid_x", "angle_deg",
               "flipped", "scale", "target_nc_ratio", *feature_names(2), *feature_names(3))
PREPROCESSING = ("per channel: the field's most frequent intensity subtracted, negatives set to 0; "
                 "outside the cell's mask set to 0; major axis of the cell mask turned onto X, centred on "
                 "the nucleus centroid, flipped so the cell mask's skew along Y and X is positive; padded "
                 "to the crop size; each channel divided by its maximum inside the cell (blank stays 0)")


@dataclass
class FieldSpec:
    """One row of FIELDS.csv (image specs resolved against the CSV's folder)."""

    name: str
    row: int
    images: dict[str, str]
    structure: str
    split: str
    pixel_size_um: tuple[float, ...] | None
    metadata: dict[str, str] = field(default_factory=dict)


def _parse_pixel(text: str, where: str) -> tuple[float, ...] | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        vals = tuple(float(t) for t in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) not in (1, 2, 3) or not all(np.isfinite(v) and v > 0 for v in vals):
        raise CytogenError(f"{where}: pixel_size_um {text!r} must be one positive number (in-plane um) or "
                           "'z,y,x' (e.g. 0.29,0.108,0.108).")
    return vals


def read_fields(path: str | Path) -> tuple[list[FieldSpec], set[str]]:
    """Parse FIELDS.csv; returns the fields and the image columns present.

    Raises
    ------
    CytogenError
        Missing file or columns, empty cells, duplicate names, metadata names that clash.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CytogenError(f"{path}: no such file; give FIELDS.csv with columns name, dna, target, structure "
                           "(optional membrane, cells, nuclei, split, pixel_size_um).")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        raw = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    present = {c for c in IMAGE_COLUMNS if c in cols}
    fix = "add the column (or rename it) and run again"
    if "name" not in cols:
        raise CytogenError(f"{path}: column 'name' is missing (columns: {cols}); {fix}.")
    if "dna" not in present and "nuclei" not in present:
        raise CytogenError(f"{path}: needs a 'dna' column (nucleus image) or a 'nuclei' column (nucleus labels); "
                           f"columns: {cols}; {fix}.")
    if "target" in present and "structure" not in cols:
        raise CytogenError(f"{path}: column 'structure' (the target structure's name) is missing; {fix}.")
    if "cells" not in present and not ({"membrane", "target"} & present):
        raise CytogenError(f"{path}: without a 'cells' column the cells are segmented from a 'membrane' or "
                           f"'target' image, but neither column exists; {fix}.")
    clash = [c for c in cols if c not in KNOWN and c in ROW_COLUMNS]
    if clash:
        raise CytogenError(f"{path}: metadata column(s) {clash} clash with columns of cells.csv; rename them.")
    if not raw:
        raise CytogenError(f"{path}: has no rows; add one row per field.")
    fields, seen = [], set()
    for i, r in enumerate(raw, start=2):
        where = f"{path}, row {i}"
        name = r.get("name", "")
        if not name or name in seen:
            raise CytogenError(f"{where}: name {name!r} is {'empty' if not name else 'used twice'}; give "
                               "every field a unique name.")
        seen.add(name)
        images = {c: r[c] for c in present if r.get(c)}
        if "target" in present and not r.get("target"):
            raise CytogenError(f"{where}: column 'target' is empty; fill it for every field.")
        if "dna" not in images and "nuclei" not in images:
            raise CytogenError(f"{where}: neither 'dna' nor 'nuclei' is given; fill one.")
        if "cells" not in images and not ({"membrane", "target"} & set(images)):
            raise CytogenError(f"{where}: no 'cells' labels and no 'membrane'/'target' image to segment "
                               "cells from; fill one.")
        images = {c: str(_resolve(v, path.parent)) for c, v in images.items()}
        meta = {c: r.get(c, "") for c in cols if c not in KNOWN}
        fields.append(FieldSpec(name=name, row=i, images=images,
                                structure=r.get("structure", "") if "target" in present else "",
                                split=r.get("split", "") or "train",
                                pixel_size_um=_parse_pixel(r.get("pixel_size_um", ""), where), metadata=meta))
    return fields, present


def _resolve(spec: str, base: Path) -> str:
    p = spec.split("#c=")[0]
    return spec if Path(p).expanduser().is_absolute() else str(base / spec)


def _read(f: FieldSpec, col: str, csv_path: Path):
    spec = f.images[col]
    try:
        img = read_spec(spec)
    except CytogenError as exc:
        raise CytogenError(f"{csv_path}, row {f.row}, column {col!r}: {exc}") from None
    if img.data.shape[0] != 1:
        raise CytogenError(f"{csv_path}, row {f.row}, column {col!r}: {spec} has {img.data.shape[0]} channels; "
                           "pick one with '#c=K' (e.g. file.tif#c=0).")
    return img.data[0], img.pixel_size_um


def _spacing(f: FieldSpec, shape, file_px, flag: float | None) -> tuple[tuple[float, ...], bool, str]:
    """Pixel size per axis: --pixel-size-um (in-plane) > CSV column > image metadata; z step from CSV or file."""
    nd = len(shape)
    col = f.pixel_size_um
    csv_z = col[0] if col is not None and len(col) == 3 and nd == 3 else None
    file_z = file_px[0] if file_px is not None and nd == 3 else None
    if flag is not None:
        plane, src = (flag, flag), "--pixel-size-um"
    elif col is not None:
        plane, src = ((col[0], col[0]) if len(col) == 1 else col[-2:]), "FIELDS.csv"
    elif file_px is not None:
        plane, src = tuple(file_px[-2:]), "image metadata"
    else:
        return (1.0,) * nd, False, "unknown"
    if nd == 2:
        return tuple(float(v) for v in plane), True, src
    z = csv_z or file_z
    if z is None:
        z, src = plane[0], src + " (z step unknown: taken equal to the in-plane size)"
    return (float(z), *map(float, plane)), True, src


def _field(f: FieldSpec, csv_path: Path, present: set[str], *, flag_px, size, projection, rescale,
           crop_px, min_cell_area_px):
    arrays, file_px = {}, None
    for col in IMAGE_COLUMNS:
        if col in f.images:
            arrays[col], px = _read(f, col, csv_path)
            file_px = file_px or px
    shapes = {c: a.shape for c, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise CytogenError(f"{csv_path}, row {f.row} ({f.name}): images differ in shape {shapes}; every image "
                           "of a field must cover the same pixels.")
    shape = next(iter(shapes.values()))
    spacing, known, src = _spacing(f, shape, file_px, flag_px)
    dims = 2 if (len(shape) == 2 or projection) else 3
    if len(size) != dims:
        hint = "--size Z,Y,X or --projection" if dims == 3 else "--size Y,X"
        raise CytogenError(f"{csv_path}, row {f.row} ({f.name}): a {len(shape)}D field gives {dims}D crops, but "
                           f"--size is {list(size)}; use {hint}.")
    if crop_px is not None and not known:
        raise CytogenError(f"{csv_path}, row {f.row} ({f.name}): --crop-pixel-size-um needs the field's pixel "
                           "size; add a pixel_size_um column or pass --pixel-size-um.")
    seg_sp = spacing if known else None
    method = {}
    dna = arrays.get("dna")
    if "nuclei" in arrays:
        nuclei, method["nuclei"] = arrays["nuclei"].astype(np.int32), "given"
    else:
        nuclei = segment_nuclei(dna, seg_sp)
        method["nuclei"] = NUCLEI_METHOD.format(
            sigma="0.5 um" if known else "1 px", dist="3 um" if known else "5 px",
            min_size=("8 um^2" if len(shape) == 2 else "8 um^3") if known else "20 px")
    if "cells" in arrays:
        cells, method["cells"] = arrays["cells"].astype(np.int32), "given"
    else:
        source = "membrane" if "membrane" in arrays else "target"
        cells = segment_cells(arrays[source], nuclei, seg_sp, membrane=source == "membrane")
        method["cells"] = CELLS_METHOD.format(source=source, sigma="1 um" if known else "2 px")
    nuclei = match_nuclei(cells, nuclei)
    channels = [(cells > 0).astype(np.float32) if "membrane" not in arrays else preprocess_field(arrays["membrane"]),
                preprocess_field(dna) if dna is not None else (nuclei > 0).astype(np.float32)]
    is_mask = ["membrane" not in arrays, dna is None]
    target = None
    if "target" in arrays:
        target = preprocess_field(arrays["target"])
        channels.append(target)
        is_mask.append(False)
    out_px = None if crop_px is None else (crop_px,) * dims
    fc = field_cells(channels, is_mask, cells, nuclei, size, target=target, spacing=spacing,
                     spacing_known=known, out_pixel_size=out_px, rescale=rescale, projection=projection,
                     min_cell_area_px=min_cell_area_px)
    info = {"dims": dims, "field_dims": len(shape), "spacing": list(spacing) if known else None,
            "pixel_size_source": src, "method": method, "reference_cell_channel":
            "membrane" if "membrane" in arrays else "mask", "dna_channel": "image" if dna is not None else "mask"}
    return fc, info


def _montage(crops: list[np.ndarray], n: int = 32, seed: int = 0) -> bytes | None:
    from matplotlib.figure import Figure

    from cytogen.report.figures import figure_png_bytes

    if not crops:
        return None
    pick = np.sort(np.random.default_rng(seed).choice(len(crops), size=min(n, len(crops)), replace=False))
    ncol = min(8, len(pick))
    nrow = int(np.ceil(len(pick) / ncol))
    fig = Figure(figsize=(1.4 * ncol, 1.4 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, k in zip(axes.ravel(), pick):
        c = np.asarray(crops[k], dtype=np.float32)
        if c.ndim == 4:
            c = c.max(axis=1)
        rgb = np.zeros((*c.shape[1:], 3), dtype=np.float32)
        rgb[..., : min(3, c.shape[0])] = np.moveaxis(c[:3], 0, -1)
        if c.shape[0] > 0:
            rgb[..., 0] *= 0.5  # the cell channel dimmer, so DNA (green) and target (blue) show
        ax.imshow(np.clip(rgb, 0, 1), interpolation="nearest")
    fig.tight_layout()
    return figure_png_bytes(fig, dpi=90)


def extract_cells(data, out, *, size=(64, 64), projection=False, rescale=False, crop_pixel_size_um=None,
                  pixel_size_um=None, min_cell_area_px=30, progress=True) -> dict:
    """Crop, align and normalise every whole cell of the fields of ``data`` into the CELLS folder ``out``.

    Parameters
    ----------
    data : str or pathlib.Path
        FIELDS.csv (see the README: name, dna, target, structure[, membrane, cells, nuclei, split,
        pixel_size_um]; other columns are metadata copied to every cell's row).
    out : str or pathlib.Path
        New folder (refused if it exists and is not empty).
    size : tuple of int
        Crop size: ``(Y, X)`` or ``(Z, Y, X)``.
    projection, rescale, crop_pixel_size_um, pixel_size_um, min_cell_area_px
        See ``cytogen cells extract --help``.
    progress : bool
        One line per field on stderr.

    Returns
    -------
    dict
        The summary (also ``out/summary.json``).
    """
    from cytogen.report.html import Section, render_html

    t0 = time.time()
    csv_path = Path(data).expanduser()
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CytogenError(f"{out}: already exists and is not empty; choose a new --out.")
    size = tuple(int(s) for s in size)
    if len(size) not in (2, 3) or min(size) < 4:
        raise CytogenError(f"--size {list(size)}: give 2 or 3 sizes of at least 4 pixels, e.g. 64,64 or 32,64,64.")
    for name, v in (("--crop-pixel-size-um", crop_pixel_size_um), ("--pixel-size-um", pixel_size_um)):
        if v is not None and not (np.isfinite(v) and v > 0):
            raise CytogenError(f"{name} {v}: must be a positive size in um.")
    fields, present = read_fields(csv_path)
    crops, rows, per_field, infos = [], [], [], []
    totals = {"n_cells": 0, "n_border_dropped": 0, "n_too_big": 0, "n_small": 0, "n_no_nucleus": 0}
    for k, f in enumerate(fields, start=1):
        t1 = time.time()
        fc, info = _field(f, csv_path, present, flag_px=pixel_size_um, size=size, projection=projection,
                          rescale=rescale, crop_px=crop_pixel_size_um, min_cell_area_px=min_cell_area_px)
        if infos and (info["dims"], info["field_dims"]) != (infos[0]["dims"], infos[0]["field_dims"]):
            raise CytogenError(f"{csv_path}, row {f.row} ({f.name}): a {info['field_dims']}D field among "
                               f"{infos[0]['field_dims']}D ones; make one FIELDS.csv per dimensionality.")
        if infos and (info["reference_cell_channel"], info["dna_channel"]) != (
                infos[0]["reference_cell_channel"], infos[0]["dna_channel"]):
            raise CytogenError(f"{csv_path}, row {f.row} ({f.name}): its cell/dna channels are "
                               f"{info['reference_cell_channel']}/{info['dna_channel']} but the first field's "
                               f"{infos[0]['reference_cell_channel']}/{infos[0]['dna_channel']}; fill the "
                               "membrane/dna columns for every field or for none.")
        infos.append(info)
        for r in fc.rows:
            rows.append({"cell_id": f"{f.name}/{r['cell_label']}", "field": f.name, "cell_label": r["cell_label"],
                         "structure": f.structure, "structure_index": 0, "split": f.split, "crop_file": "crops.npy",
                         "crop_index": 0, **{c: v for c, v in r.items() if c != "cell_label"}, **f.metadata})
        crops.extend(fc.crops)
        for key in totals:
            totals[key] += fc.counts[key]
        per_field.append({"field": f.name, **fc.counts})
        if progress:
            print(f"[{k}/{len(fields)}] {f.name}: {fc.counts['n_cells']} cells (border {fc.counts['n_border_dropped']}"
                  f", too big {fc.counts['n_too_big']}, small {fc.counts['n_small']}, no nucleus "
                  f"{fc.counts['n_no_nucleus']}) {time.time() - t1:.1f}s", file=sys.stderr, flush=True)
    dims = infos[0]["dims"]
    structures = sorted({f.structure for f in fields})
    for r in rows:
        r["structure_index"] = structures.index(r["structure"])
    has_target = "target" in present
    n_ch = 3 if has_target else 2
    images = np.stack(crops) if crops else np.zeros((0, n_ch, *size), dtype=np.float16)
    known = all(i["spacing"] is not None for i in infos)
    crop_px = ([crop_pixel_size_um] * dims if crop_pixel_size_um is not None
               else (list(infos[0]["spacing"][-dims:]) if known else None))
    seg = {k: "; ".join(sorted({i["method"][k] for i in infos})) for k in ("nuclei", "cells")}
    meta = {"dims": dims, "size": list(size), "channels": ["cell", "dna", "target"][:n_ch],
            "reference_channels": [0, 1], "target_channel": 2 if has_target else None, "structures": structures,
            "pixel_size_um": crop_px, "pixel_size_unit": "um" if known else "px",
            "source_pixel_size_um": infos[0]["spacing"], "pixel_size_source": sorted({i["pixel_size_source"] for i in infos}),
            "reference_cell_channel": infos[0]["reference_cell_channel"], "dna_channel": infos[0]["dna_channel"],
            "segmentation": seg, "preprocessing": PREPROCESSING, "projection": bool(projection and infos[0]["field_dims"] == 3),
            "rescale": bool(rescale), "min_cell_area_px": int(min_cell_area_px), **totals, "fields": len(fields),
            "feature_units": {**feature_units(dims, known), "target_nc_ratio": "1"}, "source": str(csv_path)}
    if not rescale:
        meta["n_too_big"] = totals["n_too_big"]
    summary = {"out": str(out), **totals, "n_fields": len(fields), "dims": dims, "size": list(size),
               "seconds": round(time.time() - t0, 2)}
    montage = _montage(crops)
    sections = [Section("Counts", text=[f"{totals['n_cells']} cells from {len(fields)} fields; crops {list(size)} "
                                        f"px, pixel size {crop_px} {meta['pixel_size_unit']}.",
                                        f"Nuclei: {seg['nuclei']}. Cells: {seg['cells']}.", f"Preprocessing: {PREPROCESSING}."],
                        tables=[("Per field", per_field)])]
    if montage is not None:
        sections.append(Section("Example crops", text=["Red: cell (dimmed), green: DNA, blue: target; 3D crops "
                                                       "shown as maximum projections."], figures=[("crops", montage)]))
    extra = {"summary.json": json.dumps(summary, indent=2),
             "report.html": render_html("cytogen cells extract", sections, subtitle=str(csv_path))}
    if montage is not None:
        extra["montage.png"] = montage
    write_cellset(out, images, rows, meta, extra_files=extra)
    summary["seconds"] = round(time.time() - t0, 2)
    write_json(out / "summary.json", summary)  # again, with the time including the writing
    return summary
