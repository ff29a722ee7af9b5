"""The Statistical Cell on a real dose series: FKHR-GFP translocation in U2OS cells.

``../shared/data/sbs_translocation`` holds plate rows A, C, E, G of a 96-well plate (one 640x640
field per well): GFP (the FKHR reporter, cytoplasmic at low dose, nuclear at high dose) and
Hoechst. Each row is a dose series: columns 1-2 dose 0 (negative controls), 3-11 doses 1-9,
column 12 dose 10 (positive control).

Steps (all through cytogen's Python API, the same calls as the CLI):

1. FIELDS.csv: dna = Hoechst, target = GFP, structure ``FKHR-GFP``, no membrane image (so the cells
   are segmented from the GFP foreground seeded by the nuclei and the reference's cell channel is
   the binary cell mask); metadata dose, control, row, column, well. Rows A and C are split
   ``train`` (the VAEs, the PCA baseline and the control->treated direction learn on them), rows E
   and G ``test`` (never seen by any fit; Z' and dose-response are measured there).
2. ``cells extract`` (64x64 crops).
3. ``train`` the reference and the target beta-VAE with the bundled 2D recipes, each for a
   wall-clock budget.
4. ``statcell embed`` (z_r, z_t and a PCA baseline with as many components as z_t).
5. ``statcell perturbation`` (condition dose, control 0, treated 10, direction learned on rows A, C;
   baseline column target_nc_ratio, the classical per-cell nuclear/cytoplasmic GFP ratio).

Prints one JSON line per step and a Markdown table of the per-dose shifts and the Z'-factors.

    python benchmarks/statcell_sbs.py [--minutes 4] [--out DIR] [--size 64,96]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from _bench import SHARED, emit, note

DATA = SHARED / "sbs_translocation"


def write_fields(out: Path) -> Path:
    """FIELDS.csv of the 48 wells (paths absolute; rows A, C train, E, G test)."""
    meta = {int(r["ImageNumber"]): r for r in csv.DictReader(open(DATA / "metadata.csv"))}
    rows = []
    for gfp in sorted(DATA.glob("Channel1-*.tif")):
        _, num, row, col = gfp.stem.split("-")
        m = meta[int(num)]
        rows.append({"name": f"{row}{col}", "dna": str(DATA / gfp.name.replace("Channel1", "Channel2")),
                     "target": str(gfp), "structure": "FKHR-GFP",
                     "split": "train" if row in ("A", "C") else "test",
                     "dose": m["SBS_Doses"], "control": m["SBS_Controls"], "row": row,
                     "column": col, "well": f"{row}-{col}"})
    from cytogen.workflows.evaluate import write_csv

    return write_csv(out / "FIELDS.csv", rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget per model")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--size", default="64,96",
                    help="crop size Y,X in pixels (aligned cells lie along X; 64,64 drops a third of them)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for both models")
    a = ap.parse_args()
    if not DATA.is_dir():
        note(f"{DATA} not found: this benchmark needs ../shared/data")
        return 1
    from cytogen.config import bundled_recipe
    from cytogen.workflows.cells_extract import extract_cells
    from cytogen.workflows.statcell import embed
    from cytogen.workflows.statcell_stats import perturbation
    from cytogen.workflows.train import train

    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="statcell_sbs_"))
    work.mkdir(parents=True, exist_ok=True)
    fields = write_fields(work)
    t0 = time.perf_counter()
    size = tuple(int(v) for v in a.size.split(","))
    cells = extract_cells(fields, work / "cells", size=size, progress=True)
    emit({"step": "extract", "n_cells": cells["n_cells"], "n_border_dropped": cells["n_border_dropped"],
          "n_too_big": cells.get("n_too_big"), "seconds": round(time.perf_counter() - t0, 1)})
    cells_csv = work / "cells" / "cells.csv"
    common = [f"train.max_time_min={a.minutes}", "train.max_steps=1000000",
              f"data.patch_size={list(size)}", *a.set]
    runs = {}
    for kind in ("reference", "target"):
        s = train(bundled_recipe(f"statcell_{kind}2d"), cells_csv, work / kind, overrides=common,
                  progress=False)
        runs[kind] = s
        emit({"step": f"train_{kind}", "steps": s["steps"], "seconds": s["train_seconds"],
              "best_val_elbo": s.get("best_val_elbo"), "images_per_second": s["images_per_second"],
              "precision": s["precision"]})
    latent = int(json.loads((work / "target" / "model" / "model.json").read_text())
                 ["architecture"]["kwargs"]["latent_dim"])
    e = embed(work / "reference" / "model", cells_csv, work / "emb", target=work / "target" / "model",
              pca=latent)
    emit({"step": "embed", **{k: v for k, v in e.items() if not isinstance(v, (list, dict))}})
    p = perturbation(work / "emb" / "embeddings.csv", work / "perturbation", condition="dose", control="0",
                     treated="10", spaces=("zr", "zt", "pca"), baseline_columns=("target_nc_ratio",),
                     learn_on="row=A,C", n_permutations=2000, seed=0)
    emit({"step": "perturbation", "summary": p})
    note(f"outputs in {work} (report: {work / 'perturbation' / 'report.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
