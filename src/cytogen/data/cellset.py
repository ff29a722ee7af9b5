"""The CELLS folder: single-cell crops of the Statistical Cell, read and written as one set.

A CELLS folder (written by ``cytogen cells extract``) holds

- ``crops.npy``: one float16 array ``(N, C, *size)`` with values in ``[0, 1]``; channel 0 = the
  cell (binary mask, or the membrane image), 1 = DNA, 2 = the target structure (when there is one);
- ``cells.csv``: one row per crop, in crop order (row ``i`` describes ``crops[i]``): ids, structure,
  split, alignment, features and the field's metadata columns;
- ``cells.json``: what the set is (format, dims, size, channels, pixel size, how it was made);
- ``report.html`` and ``montage.png`` (for a person; not read back).

:func:`read_cellset` opens one without reading the crops into memory (memory-mapped);
:func:`write_cellset` writes one atomically (the folder appears complete or not at all).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cytogen.errors import CytogenError
from cytogen.io.atomic import atomic_dir

CELLS_FORMAT = "cytogen-cells"
CELLS_VERSION = 1

__all__ = ["CELLS_FORMAT", "CELLS_VERSION", "CellSet", "read_cellset", "write_cellset"]


@dataclass
class CellSet:
    """An opened CELLS folder.

    Attributes
    ----------
    root : pathlib.Path
        The CELLS folder.
    meta : dict
        Contents of ``cells.json``.
    rows : list of dict
        ``cells.csv`` rows (all values strings), in crop order: ``rows[i]`` describes ``images[i]``.
    images : numpy.ndarray
        ``crops.npy`` memory-mapped read-only: float16 ``(N, C, *size)`` in ``[0, 1]``.
    """

    root: Path
    meta: dict
    rows: list[dict[str, str]]
    images: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dims(self) -> int:
        """2 or 3: spatial dimensions of the crops."""
        return int(self.meta["dims"])

    @property
    def size(self) -> tuple[int, ...]:
        """Crop size in pixels, ``(Y, X)`` or ``(Z, Y, X)``."""
        return tuple(int(s) for s in self.meta["size"])

    @property
    def channels(self) -> list[str]:
        """Channel names, e.g. ``["cell", "dna", "target"]``."""
        return [str(c) for c in self.meta["channels"]]

    @property
    def reference_channels(self) -> list[int]:
        """Indices of the reference channels (cell, DNA): ``[0, 1]``."""
        return [int(c) for c in self.meta.get("reference_channels", [0, 1])]

    @property
    def target_channel(self) -> int | None:
        """Index of the target channel (2), or None for a set made without a target image."""
        t = self.meta.get("target_channel")
        return None if t is None else int(t)

    @property
    def structures(self) -> list[str]:
        """Sorted unique structure names; ``structure_index`` indexes into this list."""
        return sorted({str(s) for s in self.meta.get("structures", [r["structure"] for r in self.rows])})

    @property
    def pixel_size_um(self) -> tuple[float, ...] | None:
        """Pixel size of the crops in um (one per spatial axis), or None when unknown."""
        p = self.meta.get("pixel_size_um")
        return None if p is None else tuple(float(v) for v in p)

    def indices(self, split: str | None = None) -> np.ndarray:
        """Row indices (int64) of the cells of one split (``None``: all); empty if none has it."""
        if split is None:
            return np.arange(len(self.rows), dtype=np.int64)
        return np.array([i for i, r in enumerate(self.rows) if r.get("split", "") == split], dtype=np.int64)

    def structure_index(self) -> np.ndarray:
        """``(N,)`` int64: each cell's structure as an index into :attr:`structures`."""
        lookup = {s: i for i, s in enumerate(self.structures)}
        try:
            return np.array([lookup[r["structure"]] for r in self.rows], dtype=np.int64)
        except KeyError as exc:
            raise CytogenError(
                f"{self.root / 'cells.csv'}: structure {exc.args[0]!r} of a cell is not among the "
                f"structures {self.structures} of cells.json; re-run 'cytogen cells extract'."
            ) from None


def _root_of(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_file() and p.name == "cells.csv":
        return p.parent
    if p.is_dir():
        return p
    if p.suffix.lower() == ".csv" and not p.exists():
        raise CytogenError(f"{p}: no such file; give the cells.csv of a CELLS folder made by "
                           "'cytogen cells extract'.")
    if p.is_file():
        raise CytogenError(f"{p}: not a CELLS folder or its cells.csv; make one with "
                           "'cytogen cells extract --data FIELDS.csv --out CELLS'.")
    raise CytogenError(f"{p}: no such folder; make it with 'cytogen cells extract --data FIELDS.csv --out {p}'.")


def read_cellset(path: str | Path) -> CellSet:
    """Open a CELLS folder (or its ``cells.csv``); the crops are memory-mapped, not read.

    Parameters
    ----------
    path : str or pathlib.Path
        The CELLS folder, or ``CELLS/cells.csv``.

    Returns
    -------
    CellSet

    Raises
    ------
    CytogenError
        Missing files, another format or version, rows and crops that do not match.
    """
    root = _root_of(path)
    for name in ("cells.json", "cells.csv", "crops.npy"):
        if not (root / name).is_file():
            raise CytogenError(f"{root}: {name} is missing, so this is not a complete CELLS folder; "
                               "re-run 'cytogen cells extract' into a new --out.")
    try:
        meta = json.loads((root / "cells.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CytogenError(f"{root / 'cells.json'}: cannot be read as JSON ({exc}); re-run "
                           "'cytogen cells extract'.") from None
    if not isinstance(meta, dict) or meta.get("format") != CELLS_FORMAT:
        raise CytogenError(f"{root / 'cells.json'}: format is not {CELLS_FORMAT!r}; this folder was not "
                           "written by 'cytogen cells extract'.")
    if int(meta.get("version", -1)) > CELLS_VERSION:
        raise CytogenError(f"{root / 'cells.json'}: version {meta.get('version')} is newer than this "
                           f"cytogen reads ({CELLS_VERSION}); upgrade cytogen.")
    for key in ("dims", "size", "channels"):
        if key not in meta:
            raise CytogenError(f"{root / 'cells.json'}: key {key!r} is missing; re-run 'cytogen cells extract'.")
    with open(root / "cells.csv", newline="", encoding="utf-8") as fh:
        rows = [dict(r) for r in csv.DictReader(fh)]
    try:
        images = np.load(root / "crops.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise CytogenError(f"{root / 'crops.npy'}: cannot be read ({exc}); re-run 'cytogen cells extract'.") from None
    size = tuple(int(s) for s in meta["size"])
    if images.ndim != 2 + len(size) or tuple(images.shape[2:]) != size:
        raise CytogenError(f"{root / 'crops.npy'}: shape {images.shape} does not match the size {list(size)} "
                           "of cells.json; the folder is damaged, re-run 'cytogen cells extract'.")
    if images.shape[0] != len(rows):
        raise CytogenError(f"{root}: crops.npy holds {images.shape[0]} crops but cells.csv {len(rows)} rows; "
                           "the folder is damaged, re-run 'cytogen cells extract'.")
    for i, r in enumerate(rows):
        if "crop_index" in r and r["crop_index"] != "" and int(r["crop_index"]) != i:
            raise CytogenError(f"{root / 'cells.csv'}: row {i + 2} has crop_index {r['crop_index']}, "
                               f"expected {i} (rows must be in crop order); do not sort cells.csv in place.")
    return CellSet(root=root, meta=meta, rows=rows, images=images)


def _csv_text(rows: list[Mapping]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k, "")) for k in cols})
    return buf.getvalue()


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else repr(float(v))
    return str(v)


def write_cellset(out: str | Path, images: np.ndarray, rows: list[dict], meta: dict, *,
                  extra_files: Mapping[str, bytes | str] | None = None) -> Path:
    """Write a CELLS folder atomically.

    Parameters
    ----------
    out : str or pathlib.Path
        Destination folder (replaced as a whole if it exists: callers refuse existing ones).
    images : numpy.ndarray
        ``(N, C, *size)`` crops in ``[0, 1]``; stored as float16.
    rows : list of dict
        One per crop, in crop order; columns in the order of first appearance. ``crop_index``
        and ``crop_file`` are set here.
    meta : dict
        cells.json; ``format``, ``version``, ``n_cells``, ``dims``, ``size`` and ``structures`` are
        filled in when missing.
    extra_files : mapping, optional
        ``{name: bytes or text}`` written into the folder too (report, montage, summary).

    Returns
    -------
    pathlib.Path
        The folder.
    """
    out = Path(out).expanduser()
    images = np.asarray(images)
    if images.ndim not in (4, 5):
        raise CytogenError(f"{out}: crops must be (N, C, Y, X) or (N, C, Z, Y, X), got shape {images.shape}.")
    if images.shape[0] != len(rows):
        raise CytogenError(f"{out}: {images.shape[0]} crops but {len(rows)} rows; give one row per crop.")
    rows = [dict(r) for r in rows]
    for i, r in enumerate(rows):
        r["crop_file"] = "crops.npy"
        r["crop_index"] = i
    meta = dict(meta)
    meta["format"], meta["version"] = CELLS_FORMAT, CELLS_VERSION
    meta.setdefault("dims", images.ndim - 2)
    meta.setdefault("size", list(images.shape[2:]))
    meta.setdefault("structures", sorted({str(r.get("structure", "")) for r in rows}))
    meta["n_cells"] = len(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        np.save(tmp / "crops.npy", np.clip(np.nan_to_num(images.astype(np.float32)), 0, 1).astype(np.float16))
        (tmp / "cells.csv").write_text(_csv_text(rows) if rows else "cell_id\n", encoding="utf-8")
        (tmp / "cells.json").write_text(json.dumps(meta, indent=2, default=_json_default), encoding="utf-8")
        for name, content in (extra_files or {}).items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            (tmp / name).write_bytes(data)
    return out


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
