"""``cytogen evaluate exclusivity``: do predicted structures overlap where they should not?

Predictions come as one folder per structure (files matched by field name) or as one folder of
multi-channel images (one channel per structure). With ``--truth`` (the same layout, or a
manifest whose targets are the structures in the same order) it also reports, per structure, the
MSE and the region Jaccard of thresholded truth and prediction, and the exclusivity of the real
images as a reference. Values are on the stated common scale
(:mod:`cytogen.evaluate.structures`).

Writes ``OUT/summary.json`` (overall, per-structure and pairwise exclusivity pooled over all
pixels, the same for the truth, MSE and Jaccard), ``OUT/fields.csv`` (one row per field and
structure), ``OUT/pairwise.csv`` (one row per directed pair), ``OUT/exclusivity.png`` and
``OUT/report.html``, swapped in as one folder.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.data.manifest import read_manifest
from cytogen.errors import CytogenError
from cytogen.evaluate.exclusivity import exclusivity, exclusivity_map, pool_exclusivity
from cytogen.evaluate.structures import (SCALE_NOTES, SCALES, apply_scale, jaccard, jaccard_counts,
                                         pooled_scale, region_mask, truth_scaled)
from cytogen.io.atomic import atomic_dir
from cytogen.io.images import read_image, read_spec, stack_channels
from cytogen.report.exclusivity_figures import field_figure, summary_figure
from cytogen.report.figures import save_figure
from cytogen.report.html import Section, write_report
from cytogen.workflows.evaluate import check_out, image_files, write_csv, write_json

__all__ = ["OUTPUTS", "evaluate_exclusivity"]

OUTPUTS = ("summary.json", "fields.csv", "pairwise.csv", "exclusivity.png", "report.html")
_PREVIEW_FIELDS = 3


class _Source:
    """Per-field stacks ``(S, [Z,] Y, X)`` from folders (one per structure, or one multi-channel)."""

    def __init__(self, paths: list[str | Path], names: list[str] | None, what: str):
        self.what = what
        self.dirs = [Path(p).expanduser() for p in paths]
        if not self.dirs:
            raise CytogenError(f"--{what}: give one folder per structure, or one folder of multi-channel images")
        self.manifest = None
        if len(self.dirs) == 1 and self.dirs[0].suffix.lower() == ".csv" and what == "truth":
            self.manifest = {e.name: e for e in read_manifest(self.dirs[0])}
            self.files = {n: [] for n in self.manifest}
            self.names = names
            return
        for d in self.dirs:
            if not d.is_dir():
                raise CytogenError(f"--{what} {d}: not a folder; give folders of images (one per structure)")
        listing = [image_files(d) for d in self.dirs]
        for d, found in zip(self.dirs, listing):
            if not found:
                raise CytogenError(f"--{what} {d}: no images (.tif, .tiff, .png, .zarr) in this folder")
        common = sorted(set.intersection(*(set(f) for f in listing)))
        if not common:
            raise CytogenError(f"--{what}: no field name is present in all of {', '.join(map(str, self.dirs))}; "
                               "files of one field must have the same name in every structure's folder")
        self.unmatched = sorted(set.union(*(set(f) for f in listing)) - set(common))
        self.files = {n: [f[n] for f in listing] for n in common}
        if len(self.dirs) == 1:
            self.names = names
        else:
            self.names = names or _dir_names(self.dirs)

    def read(self, field: str) -> np.ndarray:
        if self.manifest is not None:
            e = self.manifest.get(field)
            if e is None:
                raise CytogenError(f"--truth {self.dirs[0]}: no row named {field!r} for the prediction of that name")
            img = stack_channels([read_spec(s) for s in e.target])
        elif len(self.files[field]) == 1:
            img = read_image(self.files[field][0])
        else:
            imgs = [read_image(p) for p in self.files[field]]
            for p, im in zip(self.files[field], imgs):
                if im.data.shape[0] != 1:
                    raise CytogenError(f"{p}: has {im.data.shape[0]} channels, but a structure's folder holds "
                                       "one-channel images; give one folder of multi-channel images instead")
            img = stack_channels(imgs)
        if self.names is None:
            self.names = img.channel_names or [f"ch{i}" for i in range(img.data.shape[0])]
        data = np.asarray(img.data, np.float32)
        if data.shape[0] != len(self.names):
            raise CytogenError(f"--{self.what}, field {field!r}: {data.shape[0]} channel(s) for "
                               f"{len(self.names)} structures {self.names}; every field needs one per structure")
        return data


def _dir_names(dirs: list[Path]) -> list[str]:
    names = [d.name for d in dirs]
    if len(set(names)) < len(names):
        names = [f"{d.parent.name}/{d.name}" for d in dirs]
    if len(set(names)) < len(names):
        raise CytogenError(f"structure folders {', '.join(map(str, dirs))} do not have distinct names; "
                           "name the structures with --names A,B,...")
    return names


def _preview(stack: np.ndarray) -> np.ndarray:
    """2D view for figures: max over Z, at most ~512 px a side."""
    a = stack.max(axis=1) if stack.ndim == 4 else stack
    step = max(1, int(np.ceil(max(a.shape[1:]) / 512)))
    return np.ascontiguousarray(a[:, ::step, ::step])


def _field_rows(field: str, names: list[str], res, truth_res, mse, jac) -> list[dict[str, Any]]:
    rows = []
    for i, n in enumerate(names):
        row = {"field": field, "structure": n, "overall": res.overall, "exclusivity": res.per_structure[n],
               "fraction_highest": res.fraction_highest[n]}
        if truth_res is not None:
            row.update({"truth_exclusivity": truth_res.per_structure[n], "mse": mse[i], "jaccard": jac[i][2]})
        rows.append(row)
    return rows


def evaluate_exclusivity(pred: list[str | Path], out: str | Path, *, truth: list[str | Path] | None = None,
                         names: list[str] | None = None, scale: str | None = None,
                         percentiles: tuple[float, float] = (1.0, 99.8),
                         threshold: str | float = "otsu", progress: bool = False) -> dict[str, Any]:
    """Exclusivity of predicted structures, pooled over fields (see the module docstring).

    Parameters
    ----------
    pred : list of paths
        One folder per structure, or one folder of multi-channel predictions.
    out : path
        New output folder.
    truth : list of paths, optional
        The real images in the same layout (or one manifest CSV, targets in structure order).
    names : list of str, optional
        Structure names (default: folder names, else the images' channel names).
    scale : str, optional
        One of :data:`~cytogen.evaluate.structures.SCALES`; default ``truth`` with a truth, else
        ``percentile``.
    percentiles : (float, float)
        Percentiles of the ``truth`` and ``percentile`` scales.
    threshold : str or float
        Region threshold for the Jaccard index (otsu/li/triangle of each image, or a value on the
        common scale).

    Returns
    -------
    dict
        The content of ``summary.json``.
    """
    scale = scale or ("truth" if truth else "percentile")
    if scale not in SCALES:
        raise CytogenError(f"--scale {scale!r}: choose one of {', '.join(SCALES)}")
    if scale == "truth" and not truth:
        raise CytogenError("--scale truth needs --truth (the real images); use --scale percentile, minmax or none")
    if not percentiles[0] < percentiles[1]:
        raise CytogenError(f"--percentiles {percentiles}: the low percentile must be below the high one")
    check_out(out, OUTPUTS, "an exclusivity evaluation")
    src = _Source(pred, names, "pred")
    ref = _Source(truth, src.names, "truth") if truth else None
    fields = list(src.files)
    params = None
    if scale in ("percentile", "minmax"):
        params = pooled_scale((src.read(f) for f in fields), scale, percentiles)
    results, truth_results, rows, previews = [], [], [], []
    sq = inter = union = n_pix = 0
    for k, f in enumerate(fields):
        p = src.read(f)
        names = src.names
        if ref is not None:
            ref.names = names
        t = ref.read(f) if ref is not None else None
        if t is not None and t.shape != p.shape:
            raise CytogenError(f"field {f!r}: prediction shape {p.shape} differs from the truth's {t.shape}")
        if scale == "truth":
            p, t = truth_scaled(p, t, percentiles, name=f"field {f!r}")
        elif params is not None:
            p = apply_scale(p, params)
            t = apply_scale(t, params) if t is not None else None
        try:
            res = exclusivity(p, names)
            t_res = exclusivity(t, names) if t is not None else None
        except CytogenError as exc:
            raise CytogenError(f"field {f!r}: {exc}") from None
        results.append(res)
        mse, jac = None, None
        if t is not None:
            truth_results.append(t_res)
            mse = [float(np.mean((p[i] - t[i]) ** 2)) for i in range(len(names))]
            jac = []
            for i in range(len(names)):
                a, b = jaccard_counts(region_mask(t[i], threshold), region_mask(p[i], threshold))
                jac.append((a, b, jaccard(a, b)))
            sq = sq + np.array([m * p[i].size for i, m in enumerate(mse)])
            inter = inter + np.array([j[0] for j in jac])
            union = union + np.array([j[1] for j in jac])
            n_pix += p[0].size
        rows += _field_rows(f, names, res, t_res, mse, jac)
        if progress:
            print(f"exclusivity: field {k + 1}/{len(fields)} {f} done", file=sys.stderr, flush=True)
        if k < _PREVIEW_FIELDS:
            previews.append((f, _preview(p), exclusivity_map(p).max(axis=0) if p.ndim == 4 else exclusivity_map(p),
                             _preview(t) if t is not None else None))
    names = src.names
    pooled = pool_exclusivity(results)
    summary: dict[str, Any] = {
        "structures": names, "n_fields": len(fields), "fields": fields,
        "unmatched_files": getattr(src, "unmatched", []),
        "scale": scale, "scale_note": SCALE_NOTES[scale],
        "percentiles": list(percentiles) if scale in ("truth", "percentile") else None,
        "units": "fractions of the scale's range (1.0 = the scale's bright level)" if scale != "none"
                 else "the predictions' own units",
        "pooling": "sums over all pixels of all fields (a large field weighs more)",
        "prediction": pooled.to_dict(),
    }
    if ref is not None:
        summary["truth"] = pool_exclusivity(truth_results).to_dict()
        summary["mse"] = dict(zip(names, (sq / n_pix).tolist()))
        summary["jaccard"] = {n: jaccard(int(a), int(b)) for n, a, b in zip(names, inter, union)}
        summary["threshold"] = threshold
    pair_rows = [{"from": a, "to": b, "prediction": summary["prediction"]["pairwise"][a][b],
                  **({"truth": summary["truth"]["pairwise"][a][b]} if ref is not None else {})}
                 for a in names for b in names if a != b]
    _write(Path(out), summary, rows, pair_rows, pooled, previews)
    return summary


def _write(out: Path, summary, rows, pair_rows, pooled, previews) -> None:
    names = summary["structures"]
    overview = summary_figure(summary)
    table = [{"structure": n, "exclusivity": summary["prediction"]["per_structure"][n],
              "fraction highest": summary["prediction"]["fraction_highest"][n],
              **({"truth exclusivity": summary["truth"]["per_structure"][n], "MSE": summary["mse"][n],
                  "Jaccard": summary["jaccard"][n]} if "truth" in summary else {})} for n in names]
    overall = [{"set": "prediction", "overall exclusivity": summary["prediction"]["overall"]}]
    if "truth" in summary:
        overall.append({"set": "truth (real images)", "overall exclusivity": summary["truth"]["overall"]})
    sections = [
        Section("Exclusivity", text=[
            "At each pixel: the highest predicted structure minus the second highest (Sun et al. 2022). "
            "Overall: its mean over all pixels; per structure: over the pixels where that structure is "
            "highest; pairwise A over B: mean of A - B over the pixels where A is highest (directed).",
            f"Scale: {summary['scale']} - {summary['scale_note']}. Units: {summary['units']}. "
            f"Pooling: {summary['pooling']}."],
            tables=[("Overall", overall), ("Per structure", table)],
            figures=[("Per-structure exclusivity and directed pairwise exclusivity (row over column)", overview)]),
        Section("Fields", figures=[(f"{f}: structures, exclusivity map", field_figure(f, p, m, names, t))
                                   for f, p, m, t in previews],
                tables=[("Per field and structure", rows)]),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        write_json(tmp / "summary.json", summary)
        write_csv(tmp / "fields.csv", rows)
        write_csv(tmp / "pairwise.csv", pair_rows)
        save_figure(overview, tmp / "exclusivity.png")
        write_report(tmp / "report.html", "cytogen evaluate exclusivity", sections,
                     subtitle=f"{summary['n_fields']} field(s), structures: {', '.join(names)}")
