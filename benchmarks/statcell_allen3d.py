"""The 3D reference beta-VAE on real hiPSC cell + nucleus segmentations (Allen Institute).

``../shared/data/allen_3d_cell_nucleus_masks`` holds algorithmic 3D instance segmentations of
matched cells and nuclei (no intensity images): one 76x1024x1024 field with 30 cells and one
38x485x350 crop with a few more. The masks are the images ("masks as images"): the reference's
cell channel is the binary cell mask and its DNA channel the binary nucleus mask. The voxel size is
not stored; the Allen pipeline's usual 0.29 um (z) x 0.108 um (y, x) is assumed (unverified, stated
in every output) and every cell is resampled to isotropic ``--crop-um`` voxels.

Steps: FIELDS.csv -> ``cells extract`` (3D crops) -> ``train`` statcell_reference3d for a wall-clock
budget -> ``statcell features`` (the 3D shape features of real cells vs cells sampled from the
prior, with KS distances) and ``statcell sample``. Prints one JSON line per step.

    python benchmarks/statcell_allen3d.py [--minutes 4] [--out DIR] [--size 32,64,64] [--crop-um 1.0] [--rescale]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _bench import SHARED, emit, note

DATA = SHARED / "allen_3d_cell_nucleus_masks"
VOXEL_UM = "0.29,0.108,0.108"  # assumed (Allen 100x pipeline), not stored in the files


def write_fields(out: Path) -> Path:
    """FIELDS.csv of the two segmentations: the large field trains (10 whole cells), the small crop
    validates (2 whole cells); an automatic hold-out by field would take the large one."""
    a = DATA / "aicsimage_test_segmentation"
    b = DATA / "fov_processing_pipeline_test_resources"
    rows = [
        {"name": "aics_fov", "cells": str(a / "input_1_cellWholeIndex.tiff"),
         "nuclei": str(a / "input_2_nucWholeIndex.tiff"), "structure": "", "split": "train",
         "pixel_size_um": VOXEL_UM, "source": "aicsimage"},
        {"name": "fov_pipeline_crop", "cells": str(b / "MembraneSegmentationReadPath.tiff"),
         "nuclei": str(b / "NucleusSegmentationReadPath.tiff"), "structure": "", "split": "val",
         "pixel_size_um": VOXEL_UM, "source": "fov_processing_pipeline"},
    ]
    from cytogen.workflows.evaluate import write_csv

    return write_csv(out / "FIELDS.csv", rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--size", default="32,64,64")
    ap.add_argument("--crop-um", type=float, default=1.0)
    ap.add_argument("--rescale", action="store_true", help="shrink cells that do not fit (scale recorded)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    if not DATA.is_dir():
        note(f"{DATA} not found: this benchmark needs ../shared/data")
        return 1
    from cytogen.config import bundled_recipe
    from cytogen.workflows.cells_extract import extract_cells
    from cytogen.workflows.statcell import features, sample
    from cytogen.workflows.train import train

    size = tuple(int(s) for s in a.size.split(","))
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="statcell_allen3d_"))
    work.mkdir(parents=True, exist_ok=True)
    fields = write_fields(work)
    t0 = time.perf_counter()
    cells = extract_cells(fields, work / "cells", size=size, crop_pixel_size_um=a.crop_um, rescale=a.rescale,
                          progress=True)
    emit({"step": "extract", "n_cells": cells["n_cells"], "n_border_dropped": cells["n_border_dropped"],
          "n_too_big": cells.get("n_too_big"), "seconds": round(time.perf_counter() - t0, 1),
          "voxel_um_assumed": VOXEL_UM})
    cells_csv = work / "cells" / "cells.csv"
    s = train(bundled_recipe("statcell_reference3d"), cells_csv, work / "reference",
              overrides=[f"train.max_time_min={a.minutes}", "train.max_steps=1000000",
                         f"data.patch_size={list(size)}", *a.set], progress=False)
    emit({"step": "train_reference3d", "steps": s["steps"], "seconds": s["train_seconds"],
          "best_val_elbo": s.get("best_val_elbo"), "precision": s["precision"]})
    f = features(work / "reference" / "model", cells_csv, work / "features", split=None, seed=0)
    emit({"step": "features", "summary": f})
    sm = sample(work / "reference" / "model", work / "samples", n=16, seed=0)
    emit({"step": "sample", "summary": sm})
    note(f"outputs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
