"""Manifest CSV of unsupervised cell segmentation (``M.csv``): one row per field.

Columns
-------
``source`` (required)
    The cell image channel(s): one or more image specs separated by ``;``, stacked as channels
    (``path#c=K`` picks channel ``K``, 0-based, of a multi-channel file).
``nuclei``
    A nucleus image; markers by blob detection (or nucleus segmentation, recipe ``cellseg.markers``).
``nucleus_model``
    A cytogen translator model folder (``RUN/model``) that predicts a nucleus image from ``source``;
    markers are detected on the prediction (the paper's synthetic markers).
``markers``
    A label image whose objects' centroids are the markers.
``foreground``
    Optional mask image (nonzero = cells) used instead of the graph cut.
``scribbles``
    Optional label image (1 = background, 2 = cells, 0 = unlabelled) that trains the field's
    bright-field pixel classifier, whose probability is then cut.
``cells``
    Optional ground-truth cell labels, for evaluation only.
``split``
    ``train``, ``val`` or ``test`` (default ``train``).
``pixel_size_um``
    In-plane pixel size, overriding what the image files say.
``name``
    Field name, used for output files (default: stem of the first source file).

Every row needs a ``source`` and at least one marker source (``nuclei``, ``nucleus_model`` or
``markers``). Relative paths are resolved against the folder that holds the manifest.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cytogen.data.manifest import SPLITS, _spec_path, _split_specs
from cytogen.errors import CytogenError

COLUMNS = ("name", "source", "nuclei", "nucleus_model", "markers", "foreground", "scribbles", "cells",
           "split", "pixel_size_um")
#: Columns that can give the markers, in the order they are listed in messages.
MARKER_COLUMNS = ("nuclei", "nucleus_model", "markers")
_SINGLE = ("nuclei", "nucleus_model", "markers", "foreground", "scribbles", "cells")


@dataclass
class SegEntry:
    """One row of a segmentation manifest, paths resolved to absolute specs (``path[#c=K]``).

    Attributes
    ----------
    name : str
        Field name (unique in the manifest).
    source : list of str
        Cell image channel specs, stacked in order.
    nuclei, markers, foreground, scribbles, cells : str or None
        Image specs of the optional columns.
    nucleus_model : str or None
        Path of a translator model folder.
    split : str
        ``train``, ``val`` or ``test``.
    pixel_size_um : float or None
        In-plane pixel size from the manifest (wins over the files' metadata).
    """

    name: str
    source: list[str]
    nuclei: str | None = None
    nucleus_model: str | None = None
    markers: str | None = None
    foreground: str | None = None
    scribbles: str | None = None
    cells: str | None = None
    split: str = "train"
    pixel_size_um: float | None = None

    @property
    def marker_sources(self) -> list[str]:
        """The marker columns this row fills, in :data:`MARKER_COLUMNS` order."""
        return [c for c in MARKER_COLUMNS if getattr(self, c) is not None]


def _read_rows(path: Path) -> tuple[list[str], csv.DictReader]:
    if not path.is_file():
        raise CytogenError(f"{path}: segmentation manifest not found; check the path (a CSV with columns "
                           f"{', '.join(COLUMNS)})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as exc:
        raise CytogenError(f"{path}: cannot be read as a UTF-8 CSV manifest ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    unknown = sorted(set(header) - set(COLUMNS))
    if unknown:
        raise CytogenError(f"{path}: unknown column(s) {unknown}; the accepted columns are: {', '.join(COLUMNS)}")
    if "source" not in header:
        raise CytogenError(f"{path}: needs a 'source' column (the cell image); found {header or 'no header'}. "
                           f"Columns are: {', '.join(COLUMNS)}")
    if not set(MARKER_COLUMNS) & set(header):
        raise CytogenError(f"{path}: needs a marker source column, one of {', '.join(MARKER_COLUMNS)} "
                           f"(a nucleus image, a translator model folder, or a label image); found {header}")
    return header, reader


def _pixel_size(raw: str, where: str) -> float | None:
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise CytogenError(f"{where}, column 'pixel_size_um': {raw!r} is not a number; give um per pixel "
                           "(e.g. 0.65) or leave it empty") from None
    if not np.isfinite(value) or value <= 0:
        raise CytogenError(f"{where}, column 'pixel_size_um': must be a positive number, got {raw}")
    return value


def read_seg_manifest(path: str | Path, *, check_files: bool = True) -> list[SegEntry]:
    """Read and validate a segmentation manifest (``M.csv``).

    Parameters
    ----------
    path
        The CSV file.
    check_files
        Raise when a referenced file or model folder does not exist.

    Returns
    -------
    list of SegEntry
        In file order.

    Raises
    ------
    CytogenError
        Missing file, unknown columns (naming the accepted ones), a row without source or marker
        source, several images in a one-image column, a bad split or pixel size, duplicate names,
        missing files (naming the row and column).
    """
    path = Path(path)
    _, reader = _read_rows(path)
    base = path.parent
    entries: list[SegEntry] = []
    seen: dict[str, int] = {}
    for row_no, raw in enumerate(reader, start=1):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        lineno = reader.line_num
        where = f"{path}, row {row_no} (line {lineno})"
        source = _split_specs(row.get("source", ""), base)
        if not source:
            raise CytogenError(f"{where}, column 'source': empty; give the cell image path(s), ';'-separated")
        single: dict[str, str | None] = {}
        for col in _SINGLE:
            specs = _split_specs(row.get(col, ""), base)
            if len(specs) > 1:
                raise CytogenError(f"{where}, column '{col}': takes one image, got {len(specs)} "
                                   f"({row[col]!r}); pick a channel with 'path#c=K'")
            single[col] = specs[0] if specs else None
        if not any(single[c] for c in MARKER_COLUMNS):
            raise CytogenError(f"{where}: no marker source; fill one of the columns {', '.join(MARKER_COLUMNS)} "
                               "(a nucleus image, a translator model folder, or a label image)")
        split = row.get("split", "") or "train"
        if split not in SPLITS:
            raise CytogenError(f"{where}, column 'split': {split!r} is not one of {', '.join(SPLITS)}")
        pixel_size = _pixel_size(row.get("pixel_size_um", ""), where)
        name = row.get("name", "") or _spec_path(source[0]).name.split(".")[0]
        if name in seen:
            raise CytogenError(f"{where}, column 'name': duplicate field name {name!r} (also on row {seen[name]}); "
                               "names must be unique because outputs are written as <name>.tif")
        seen[name] = row_no
        if check_files:
            checks = [("source", s) for s in source] + [(c, v) for c, v in single.items() if v]
            for col, spec in checks:
                p = _spec_path(spec) if col != "nucleus_model" else Path(spec)
                if not p.exists():
                    raise CytogenError(f"{where}, column '{col}': {p} does not exist; fix the path in the manifest "
                                       "(relative paths are read from the manifest's folder)")
                if col == "nucleus_model" and not p.is_dir():
                    raise CytogenError(f"{where}, column 'nucleus_model': {p} is not a folder; give a translator "
                                       "model folder (RUN/model of 'cytogen train')")
        entries.append(SegEntry(name=name, source=source, split=split, pixel_size_um=pixel_size, **single))
    if not entries:
        raise CytogenError(f"{path}: manifest has no rows")
    return entries
