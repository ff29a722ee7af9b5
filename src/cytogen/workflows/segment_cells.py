"""``cytogen segment cells``: whole-cell label images from a cell image and one marker per nucleus.

Two methods on the same markers and foreground (:func:`cytogen.workflows.cellseg_inputs.prepare_inputs`):

- ``model``: the unsupervised marker-controlled segmenter of ``cytogen train
  configs/cellseg_consistency2d.yaml`` applied to a patch around every marker, the patches
  integrated by highest probability (:func:`cytogen.segment.assemble.segment_with_patches`);
- ``propagate``: the classical baseline, seeded watershed of the cell image from the markers inside
  the foreground (:func:`cytogen.segment.propagate.propagate`).

Outputs (``OUT/``, built in a temporary folder and swapped in only once complete):
``<name>.tif`` (uint16 labels, label ``i + 1`` = marker ``i``, the pixel size in the metadata; with
``output_format="ome-zarr"`` instead ``<name>.ome.zarr``: the source channels as read, with the
labels as NGFF ``labels/cells``),
``foreground/<name>.tif`` (uint8 mask used), ``markers.csv`` (``name, marker, y, x, source``;
``marker`` is the label the marker's cell gets), ``summary.json`` and ``report.html``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.config import CellSegConfig
from cytogen.data.seg_manifest import SegEntry, read_seg_manifest
from cytogen.errors import CytogenError
from cytogen.evaluate.markers import marker_errors
from cytogen.io.atomic import atomic_dir
from cytogen.io.images import Image, write_image
from cytogen.io.ome_zarr import write_ome_zarr
from cytogen.report.cellseg_figures import OverlayPanel, cellseg_overlay_figure, overlay_panel
from cytogen.report.html import Section, write_report
from cytogen.workflows.cellseg_inputs import SegInputs, patch_sigma_px, prepare_inputs, resolve_settings
from cytogen.workflows.evaluate import write_csv, write_json

__all__ = ["METHODS", "MARKER_DISTANCE", "segment_cells"]

METHODS = ("model", "propagate")
#: Pairing distance of marker false negatives / positives (um; px when the pixel size is unknown).
MARKER_DISTANCE = 15.0
MAX_LABELS = 65535
MAX_OVERLAYS = 6
_COUNTS = ("n_true", "n_pred", "tp", "fn", "fp")


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------- checks
def _check_out(out: Path, entries: list[SegEntry]) -> None:
    """``OUT`` is replaced as a whole: refuse anything but a new folder or a previous segmentation,
    and a folder that holds (or is inside) the inputs."""
    out_r = out.resolve()
    for e in entries:
        for spec in [*e.source, e.nuclei, e.markers, e.foreground, e.scribbles, e.cells, e.nucleus_model]:
            if spec is None:
                continue
            p = Path(spec.partition("#")[0] if spec != e.nucleus_model else spec).resolve()
            if p == out_r or out_r in p.parents:
                raise CytogenError(f"{out}: holds the input {p} of field {e.name!r}; choose a separate --out "
                                   "so inputs can never be overwritten")
    if out.is_file():
        raise CytogenError(f"{out}: is a file; give a new --out folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "summary.json").is_file():
        raise CytogenError(f"{out}: exists and is not the output of 'cytogen segment cells' (no summary.json); "
                           "give a new --out folder (it is replaced as a whole)")


def _select(entries: list[SegEntry], split: str | None, data: Path) -> list[SegEntry]:
    if split in (None, "all"):
        return entries
    chosen = [e for e in entries if e.split == split]
    if not chosen:
        splits = sorted({e.split for e in entries})
        raise CytogenError(f"{data}: no rows with split={split}; the manifest has {', '.join(splits)} "
                           "(or omit --split for every row)")
    return chosen


# --------------------------------------------------------------------------------- methods
class _ModelMethod:
    """A loaded cell segmenter and what it was trained with."""

    def __init__(self, model_dir: str | Path, batch_size: int):
        import torch

        from cytogen.predict.model_folder import load_cellseg_folder

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_cellseg_folder(model_dir, device=self.device)
        meta = self.model.meta
        known = {f.name for f in dataclasses.fields(CellSegConfig)}
        self.settings = resolve_settings({k: v for k, v in (meta.get("cellseg") or {}).items() if k in known})
        self.size = tuple(int(s) for s in meta["patch_size"])
        self.n_channels = self.model.in_channels - 1
        if self.model.dims != 2 or len(self.size) != 2:
            raise CytogenError(f"{model_dir}: a {self.model.dims}D segmenter; 'segment cells' takes 2D models")
        self.batch_size = batch_size
        self.normalizer = self.model.source_norm

    def predict(self, patches: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)).to(self.device)
            y = torch.sigmoid(self.model.net(x).float())
        return y[:, 0].cpu().numpy()

    def segment(self, inp: SegInputs, threshold: float) -> np.ndarray:
        from cytogen.segment.assemble import segment_with_patches

        if inp.image.shape[0] != self.n_channels:
            raise CytogenError(
                f"field {inp.name!r}: the source has {inp.image.shape[0]} channel(s) but the model was trained on "
                f"{self.n_channels} ({', '.join(self.model.meta.get('source_channels', [])[:-1])}); give the same "
                "channels in the 'source' column (';'-separated, path#c=K picks one)")
        sigma = patch_sigma_px(self.settings, inp.pixel_size_um)
        return segment_with_patches(self.predict, inp.image, inp.markers, self.size, sigma,
                                    chunk=self.batch_size, threshold=threshold)


def _propagate(inp: SegInputs) -> np.ndarray:
    from cytogen.segment.propagate import propagate

    return propagate(inp.image, inp.markers, inp.foreground)


# --------------------------------------------------------------------------------- markers
def _marker_errors(inp: SegInputs) -> dict[str, Any] | None:
    if inp.reference_markers is None:
        return None
    ps = inp.pixel_size_um
    scale = np.asarray(ps if ps is not None else (1.0, 1.0), dtype=float)
    err = marker_errors(inp.reference_markers * scale, inp.markers * scale, MARKER_DISTANCE)
    return {**err, "unit": "um" if ps is not None else "px", "reference": inp.reference_source}


def _pool_errors(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    errs = [r["marker_errors"] for r in rows if r.get("marker_errors")]
    if not errs:
        return None
    tot = {k: int(sum(e[k] for e in errs)) for k in _COUNTS}
    units = sorted({e["unit"] for e in errs})
    return {**tot, "fn_rate": tot["fn"] / tot["n_true"] if tot["n_true"] else 0.0,
            "fp_rate": tot["fp"] / tot["n_pred"] if tot["n_pred"] else 0.0,
            "max_distance": MARKER_DISTANCE, "unit": " and ".join(units), "n_fields": len(errs),
            "reference": sorted({e["reference"] for e in errs}),
            "note": None if units == ["um"] else f"fields without a pixel size pair markers within "
                                                 f"{MARKER_DISTANCE:g} px instead of um"}


# --------------------------------------------------------------------------------- report
def _fmt_err(e: dict[str, Any] | None) -> str:
    if not e:
        return "n/a"
    return f"FN {e['fn_rate']:.3f} ({e['fn']}/{e['n_true']}), FP {e['fp_rate']:.3f} ({e['fp']}/{e['n_pred']})"


def _sections(summary: dict[str, Any], panels: list[OverlayPanel]) -> list[Section]:
    s = summary
    head = [f"Method: {s['method']}" + (f" (model {s['model']})" if s.get("model") else " (seeded propagation "
            "baseline: watershed of the cell image from the markers inside the foreground)")
            + f". {s['n_fields']} field(s), {s['n_markers']} markers ({s['marker_source']}), {s['n_cells']} cells, "
            f"{s['seconds']:.1f} s.",
            (f"Cell probability threshold {s['threshold']:g}, patch size {s['patch_size']}. " if s["method"] == "model"
             else "") + "Labels: cell k of a field grew from its marker k of markers.csv."]
    sections = [Section("Segmentation", head)]
    pooled = s["marker_errors"]
    if pooled:
        sections.append(Section("Markers against reference markers", [
            f"Pairs within {pooled['max_distance']:g} {pooled['unit']} (one-to-one), reference: "
            f"{', '.join(pooled['reference'])}. Pooled over {pooled['n_fields']} field(s): {_fmt_err(pooled)}."
            + (f" Note: {pooled['note']}." if pooled["note"] else "")]))
    table = [{"name": r["name"], "split": r["split"], "shape": "x".join(map(str, r["shape"])),
              "markers": r["n_markers"], "cells": r["n_cells"], "marker source": r["marker_source"],
              "foreground": f"{r['foreground_source']} ({r['foreground_fraction']:.2f})",
              "marker errors": _fmt_err(r.get("marker_errors")), "seconds": r["seconds"]} for r in s["fields"]]
    sections.append(Section("Per field", tables=[("fields", table)]))
    if panels:
        shown = f"the first {len(panels)} of {s['n_fields']} fields" if len(panels) < s["n_fields"] else "every field"
        sections.append(Section("Overlays", [f"Cell outlines (one colour per cell) on the grey cell image, "
                                             f"markers as white dots, reference markers as yellow rings; {shown}."],
                                figures=[("cell outlines and markers", cellseg_overlay_figure(panels))]))
    return sections


# --------------------------------------------------------------------------------- main
#: ``cellseg`` settings that may change at segmentation time (markers and foreground; the loss
#: weights, patch and Gaussian are the model's).
INFERENCE_KEYS = ("markers", "nucleus_diameter_px", "nucleus_diameter_um", "threshold_rel", "min_distance_px",
                  "min_distance_um", "min_size_px", "min_size_um2", "kappa", "alpha", "foreground_sigma_px",
                  "foreground_sigma_um")


def _inference_settings(given: dict[str, Any] | None) -> dict[str, Any]:
    """Validated marker / foreground overrides (types and ranges as in a recipe)."""
    if not given:
        return {}
    bad = sorted(set(given) - set(INFERENCE_KEYS))
    if bad:
        raise CytogenError(f"segment cells: cellseg setting(s) {bad} cannot change after training; settable here: "
                           f"{', '.join(INFERENCE_KEYS)}")
    from dataclasses import asdict

    from cytogen.config import recipe_from_dict

    checked = recipe_from_dict({"cellseg": dict(given)}, "segment cells --set").cellseg
    return {k: asdict(checked)[k] for k in given}


def segment_cells(model_dir: str | Path | None, data: str | Path, out: str | Path, *, method: str = "model",
                  split: str | None = None, markers_from: str | None = None, threshold: float | None = None,
                  batch_size: int = 256, settings: dict[str, Any] | None = None,
                  output_format: str = "tif", progress: bool = True) -> dict[str, Any]:
    """Segment the cells of every field of ``M.csv`` and write ``OUT/`` as one folder.

    Parameters
    ----------
    model_dir
        ``RUN/model`` of a cellseg training (method ``model``); None for ``propagate``.
    data
        The segmentation manifest (:func:`cytogen.data.seg_manifest.read_seg_manifest`).
    out
        Output folder (new, or a previous output of this command; replaced as a whole).
    method
        ``"model"`` or ``"propagate"`` (the seeded-watershed baseline, default ``cellseg`` settings).
    split
        Only rows of this split (None or ``"all"``: every row).
    markers_from
        ``nuclei``, ``nucleus_model`` or ``markers`` when rows give several; the others then serve as
        reference markers.
    threshold
        Background below this cell probability (model; default: the model's ``cellseg.threshold``).
    batch_size
        Patches per model call.
    settings
        ``cellseg`` marker and foreground settings (keys of :data:`INFERENCE_KEYS`, e.g.
        ``{"nucleus_diameter_um": 12}``) over the model's (method ``model``) or the defaults
        (``propagate``): give the baseline the markers the model was trained with.
    output_format
        ``"tif"`` (``<name>.tif`` labels) or ``"ome-zarr"`` (``<name>.ome.zarr``: the source
        channels with the labels as NGFF ``labels/cells``, pixel size kept, pyramids in both).
    progress
        One line per field on stderr.

    Returns
    -------
    dict
        The ``summary.json`` content: ``out, method, model, data, split, n_fields, n_markers, n_cells,
        marker_source, threshold, patch_size, seconds, fields`` (one row per field) and ``marker_errors``
        (pooled false-negative / false-positive rates at 15 um against the reference markers, or None),
        ``warnings`` (list of str; also issued as ``UserWarning``: markers but no cell at all).

    Raises
    ------
    CytogenError
        Bad manifest, model or settings; a field of more than 65535 markers; an ``OUT`` that is not new.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise CytogenError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if method == "model" and model_dir is None:
        raise CytogenError("method 'model' needs a model folder (RUN/model); or use method 'propagate'")
    if output_format not in ("tif", "ome-zarr"):
        raise CytogenError(f"segment cells: output format {output_format!r} is not one of tif, ome-zarr")
    if int(batch_size) < 1:
        raise CytogenError(f"batch size must be >= 1, got {batch_size}")
    if threshold is not None and not 0.0 < float(threshold) < 1.0:
        raise CytogenError(f"threshold must lie in (0, 1), got {threshold} (the paper: 0.5)")
    data, out = Path(data), Path(out)
    entries = _select(read_seg_manifest(data), split, data)
    _check_out(out, entries)
    runner = _ModelMethod(model_dir, int(batch_size)) if method == "model" else None
    settings = {**(runner.settings if runner else resolve_settings(None)), **_inference_settings(settings)}
    thr = float(threshold) if threshold is not None else float(settings["threshold"])
    normalizer = runner.normalizer if runner else None
    rows: list[dict[str, Any]] = []
    marker_rows: list[dict[str, Any]] = []
    panels: list[OverlayPanel] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        (tmp / "foreground").mkdir(parents=True)
        for i, entry in enumerate(entries, 1):
            tf = time.perf_counter()
            inp = prepare_inputs(entry, settings, markers_from=markers_from, normalizer=normalizer)
            n = len(inp.markers)
            if n > MAX_LABELS:
                raise CytogenError(f"field {entry.name!r}: {n} markers, but uint16 label images hold at most "
                                   f"{MAX_LABELS} cells; split the field into smaller images")
            labels = runner.segment(inp, thr) if runner else _propagate(inp)
            if output_format == "ome-zarr":
                write_ome_zarr(tmp / f"{entry.name}.ome.zarr", inp.raw.data, "CYX", inp.pixel_size_um,
                               inp.raw.channel_names, "zlib", labels={"cells": labels.astype(np.uint16)})
            else:
                write_image(tmp / f"{entry.name}.tif", Image(labels.astype(np.uint16)[None], "CYX",
                                                             inp.pixel_size_um))
            write_image(tmp / "foreground" / f"{entry.name}.tif",
                        Image(inp.foreground.astype(np.uint8)[None], "CYX", inp.pixel_size_um))
            marker_rows += [{"name": entry.name, "marker": k + 1, "y": float(y), "x": float(x),
                             "source": inp.marker_source} for k, (y, x) in enumerate(inp.markers)]
            n_cells = int(np.count_nonzero(np.unique(labels)))
            row = {"name": entry.name, "split": entry.split, "shape": list(labels.shape), "n_markers": n,
                   "n_cells": n_cells, "marker_source": inp.marker_source,
                   "foreground_source": inp.foreground_source,
                   "foreground_fraction": float(inp.foreground.mean()),
                   "pixel_size_um": None if inp.pixel_size_um is None else list(inp.pixel_size_um),
                   "marker_errors": _marker_errors(inp), "seconds": round(time.perf_counter() - tf, 3)}
            rows.append(row)
            if len(panels) < MAX_OVERLAYS:
                panels.append(overlay_panel(entry.name, inp.image, labels, inp.markers, inp.reference_markers))
            _say(progress, f"[{i}/{len(entries)}] {entry.name}: {n} markers ({inp.marker_source}) -> {n_cells} "
                           f"cells, foreground {row['foreground_fraction']:.2f} ({inp.foreground_source}), "
                           f"{row['seconds']:.1f} s")
        if marker_rows:
            write_csv(tmp / "markers.csv", marker_rows)
        else:
            (tmp / "markers.csv").write_text("name,marker,y,x,source\n")
        sources = sorted({r["marker_source"] for r in rows})
        summary = {"out": str(out), "method": method, "model": None if model_dir is None else str(model_dir),
                   "data": str(data), "split": split or "all", "n_fields": len(rows),
                   "n_markers": int(sum(r["n_markers"] for r in rows)), "n_cells": int(sum(r["n_cells"] for r in rows)),
                   "marker_source": sources[0] if len(sources) == 1 else ", ".join(sources),
                   "threshold": thr if method == "model" else None,
                   "patch_size": list(runner.size) if runner else None,
                   "settings": settings, "marker_errors": _pool_errors(rows), "fields": rows,
                   "output_format": output_format}
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        summary["warnings"] = []
        if summary["n_markers"] and not summary["n_cells"]:  # e.g. an under-trained model below the threshold
            why = (f"every patch probability stayed below the threshold {thr}; the model may be under-trained "
                   "(see its train_summary.json) or the foreground empty; try more steps or a lower --threshold"
                   if method == "model" else "the foreground holds none of the markers; check the foreground "
                   "(DIR/foreground/<name>.tif) and the marker settings")
            summary["warnings"].append(f"{summary['n_markers']} markers but no cell: {why}.")
            warnings.warn(f"{out}: {summary['warnings'][-1]}", stacklevel=2)
        write_report(tmp / "report.html", "cytogen: cell segmentation", _sections(summary, panels),
                     subtitle=f"data: {data}; method: {method}")
        write_json(tmp / "summary.json", summary)
    if progress and summary["marker_errors"]:
        _say(progress, f"markers vs reference ({', '.join(summary['marker_errors']['reference'])}): "
                       f"{_fmt_err(summary['marker_errors'])}")
    return summary
