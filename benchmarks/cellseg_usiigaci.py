"""Unsupervised cell segmentation against real manual whole-cell outlines (phase contrast).

``../shared/data/usiigaci_phase``: 12 fields of 1022x1024 phase contrast (0.87 um/px), 704 cells
outlined by hand, no nucleus channel. The cells are large (median major axis 70-110 px), so every
field is binned 2x2 (1.74 um/px, mean of 2x2 blocks; labels by nearest neighbour) and the
segmenter uses 96 x 96 patches. Fixed split by field: set02-set09 train (8 fields), set10, set11,
set12, set14 test (4 fields, 274 cells).

Foreground: the bright-field route of the paper: a random forest on Gaussian / variance /
Laplacian features trained from scribbles, then the graph cut of its probability. Scribbles are
drawn automatically from each field's manual labels (12 short strokes inside cells, 12 in the
background near cells), standing in for the strokes per class a user draws (the paper: 5-6).
The scribbles of a test field come from its own labels, as a user would scribble on each image:
a weak use of the truth, for the foreground only.

Two marker sources:
- ``labels``: the centroids of the manual outlines (``markers`` column; tests boundary accuracy
  alone);
- ``detected``: from the image only: peaks of the distance transform of the scribble-classifier
  foreground, found by blob detection (``nuclei`` column = that distance map; the whole pipeline).

Each with the model and with the propagation baseline; ``evaluate cells`` against the manual
labels of the test fields.

    python benchmarks/cellseg_usiigaci.py [--minutes 6] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from _bench import SHARED, emit, note
from _cellseg import score, segment, table, train_segmenter, write_rows

DATA = SHARED / "usiigaci_phase"
TEST = ("set10", "set11", "set12", "set14")
BIN = 2


def scribbles_from_labels(labels: np.ndarray, rng: np.random.Generator, n: int = 12, length: int = 40) -> np.ndarray:
    """1 = background, 2 = cells: ``n`` 3-px-wide horizontal strokes per class, each kept inside
    cells eroded by 2 px (cells) or in the background 3-15 px from a cell (where a user scribbles
    to teach the classifier the halo and the gaps between cells)."""
    from scipy import ndimage as ndi

    cells = ndi.binary_erosion(labels > 0, iterations=2)
    d = ndi.distance_transform_edt(labels == 0)
    near = (d > 3) & (d < 15)
    out = np.zeros(labels.shape, np.uint8)
    for value, allowed in ((2, cells), (1, near)):
        ys, xs = np.nonzero(allowed)
        for i in rng.choice(ys.size, size=min(n, ys.size), replace=False):
            y, x = ys[i], xs[i]
            sl = (slice(max(0, y - 1), y + 2), slice(max(0, x - length // 2), x + length // 2))
            out[sl][allowed[sl]] = value
    return out


def prepare(work: Path) -> tuple[Path, dict]:
    from skimage.transform import downscale_local_mean

    from cytogen.io.images import Image, read_image, write_image
    from cytogen.segment.foreground import foreground_mask
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    rows, n_cells = [], {"train": 0, "test": 0}
    for phase in sorted(DATA.glob("set*_phase.tif")):
        name = phase.name.split("_")[0]
        img = read_image(phase)
        px = (img.pixel_size_um or (0.8708, 0.8708))[-1] * BIN
        data = np.asarray(img.data, np.float32).reshape(img.data.shape[-2:])
        h, w = (s // BIN * BIN for s in data.shape)
        binned = downscale_local_mean(data[:h, :w], (BIN, BIN)).astype(np.float32)
        lab = np.asarray(read_image(DATA / f"{name}_cells_labels.tif").data).reshape(data.shape)
        lab = lab[:h:BIN, :w:BIN].astype(np.uint16)
        scrib = scribbles_from_labels(lab, rng)
        fg = foreground_mask(binned, scribbles=scrib)
        dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg).astype(np.float32), 2.0)
        paths = {}
        for key, arr in (("source", binned), ("cells", lab), ("markers", lab), ("scribbles", scrib),
                         ("nuclei", dist)):
            paths[key] = work / "fields" / f"{name}_{key}.tif"
            if key != "markers":
                paths[key].parent.mkdir(parents=True, exist_ok=True)
                write_image(paths[key], Image(arr[None] if arr.ndim == 2 else arr, axes="CYX",
                                              pixel_size_um=(px, px)))
        paths["markers"] = paths["cells"]
        split = "test" if name in TEST else "train"
        n_cells[split] += int(len(np.unique(lab)) - 1)
        rows.append({"name": name, "source": str(paths["source"]), "markers": str(paths["markers"]),
                     "nuclei": str(paths["nuclei"]), "scribbles": str(paths["scribbles"]),
                     "cells": str(paths["cells"]), "split": split, "pixel_size_um": px})
    return write_rows(work / "M.csv", rows), n_cells


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget per segmenter")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="segmenter recipe override")
    a = ap.parse_args()
    if not DATA.is_dir():
        note(f"{DATA} not found: this benchmark needs ../shared/data")
        return 1
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="cellseg_usiigaci_"))
    work.mkdir(parents=True, exist_ok=True)
    m, n_cells = prepare(work)
    emit({"step": "data", "cells": n_cells, "test_fields": list(TEST), "binning": BIN, "pixel_size_um": 0.8708 * BIN})
    common = ["data.patch_size=[96,96]", "cellseg.nucleus_diameter_um=50", "cellseg.min_distance_um=25", *a.set]
    results = []
    for source, label in (("markers", "labels"), ("nuclei", "detected")):
        run = work / f"cellseg_{label}"
        train_segmenter(m, run, a.minutes, [*common, f"cellseg.marker_source={source}"], name=f"cellseg_{label}")
        for method in ("model", "propagate"):
            out = work / f"seg_{method}_{label}"
            segment(run / "model" if method == "model" else None, m, out, f"{method}_{label}_markers",
                    method=method, split="test", markers_from=source,
                    settings={"nucleus_diameter_um": 50.0, "min_distance_um": 25.0})
            results.append(score(out, m, work / f"eval_{method}_{label}", f"{method}, {label} markers",
                                 split="test"))
    print(table(results))
    note(f"outputs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
