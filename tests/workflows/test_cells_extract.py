"""End to end: FIELDS.csv -> CELLS (synthetic fields written as TIFFs here), the CLI, and real SBS fields."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from cytogen.data.cellset import read_cellset
from cytogen.errors import CytogenError
from cytogen.io.images import Image, write_image
from cytogen.synth.cells import synth_field
from cytogen.workflows.cells_extract import extract_cells


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    d = tmp_path_factory.mktemp("fields")
    lines = ["name,dna,target,structure,cells,nuclei,split,pixel_size_um,dose,well"]
    for i in range(3):
        f = synth_field((192, 192), seed=i, pixel_size_um=1.0)
        write_image(d / f"f{i}.tif", Image(f.image, "CYX", f.pixel_size_um))
        write_image(d / f"c{i}.tif", Image(f.cells[None].astype(np.uint16), "CYX"))
        write_image(d / f"n{i}.tif", Image(f.nuclei[None].astype(np.uint16), "CYX"))
        lines.append(f"f{i},f{i}.tif#c=2,f{i}.tif#c=0,{'actin' if i else 'other'},c{i}.tif,n{i}.tif,"
                     f"{'test' if i == 2 else 'train'},1.0,{i * 5},A-0{i}")
    (d / "FIELDS.csv").write_text("\n".join(lines) + "\n")
    return d


def test_extract_given_masks(fields, tmp_path):
    s = extract_cells(fields / "FIELDS.csv", tmp_path / "C", size=(48, 48), progress=False)
    assert s["n_cells"] > 5 and s["n_fields"] == 3 and s["dims"] == 2
    cs = read_cellset(tmp_path / "C")
    assert cs.images.shape == (s["n_cells"], 3, 48, 48) and cs.images.dtype == np.float16
    cols = list(cs.rows[0])
    assert cols[:14] == ["cell_id", "field", "cell_label", "structure", "structure_index", "split", "crop_file",
                         "crop_index", "crop_pixel_size_um", "centroid_y", "centroid_x", "angle_deg", "flipped",
                         "scale"]
    assert cols[-3:] == ["target_nc_ratio", "dose", "well"] and "cell_circularity" in cols
    r = next(r for r in cs.rows if r["field"] == "f2")
    assert r["dose"] == "10" and r["well"] == "A-02" and r["split"] == "test" and r["structure"] == "actin"
    assert cs.structures == ["actin", "other"] and cs.meta["segmentation"] == {"nuclei": "given", "cells": "given"}
    assert cs.meta["feature_units"]["cell_area"] == "um^2" and cs.pixel_size_um == (1.0, 1.0)
    assert set(np.unique(cs.images[:, 0])) <= {0.0, 1.0}  # the reference cell channel is the binary mask
    assert np.isfinite(cs.images.astype(np.float32)).all() and float(cs.images.max()) == 1.0
    assert (tmp_path / "C" / "montage.png").is_file() and "cells" in (tmp_path / "C" / "report.html").read_text()
    with pytest.raises(CytogenError, match="choose a new --out"):
        extract_cells(fields / "FIELDS.csv", tmp_path / "C", size=(48, 48), progress=False)


def test_derived_masks_and_resampling(fields, tmp_path):
    text = (fields / "FIELDS.csv").read_text().splitlines()
    rows = [",".join(line.split(",")[:4] + line.split(",")[6:]) for line in text]  # drop cells, nuclei
    (fields / "derived.csv").write_text("\n".join(rows) + "\n")
    s = extract_cells(fields / "derived.csv", tmp_path / "D", size=(32, 32), crop_pixel_size_um=2.0,
                      progress=False)
    cs = read_cellset(tmp_path / "D")
    assert s["n_cells"] > 5 and cs.pixel_size_um == (2.0, 2.0) and cs.rows[0]["crop_pixel_size_um"] == "2.0"
    assert "watershed" in cs.meta["segmentation"]["cells"] and "Otsu" in cs.meta["segmentation"]["nuclei"]


def test_cli_exit_codes(fields, tmp_path):
    run = [sys.executable, "-m", "cytogen", "cells", "extract"]
    ok = subprocess.run(run + ["--data", str(fields / "FIELDS.csv"), "--out", str(tmp_path / "E"), "--size", "48,48"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "[3/3] f2" in ok.stderr and '"n_cells"' in ok.stdout
    with open(fields / "FIELDS.csv") as fh:
        rows = list(csv.DictReader(fh))
    with open(tmp_path / "bad.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["name", "target", "structure", "cells"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("name", "target", "structure", "cells")} for r in rows)
    bad = subprocess.run(run + ["--data", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "F")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "'dna'" in bad.stderr
    assert not (tmp_path / "F").exists()


def test_real_sbs_fields(shared_path, tmp_path):
    d = shared_path("sbs_translocation")
    with open(tmp_path / "F.csv", "w") as fh:
        fh.write("name,dna,target,structure,dose\n")
        for nn, well, dose in (("01", "A-01", 0), ("12", "A-12", 10)):
            fh.write(f"{well},{d}/Channel2-{nn}-{well}.tif,{d}/Channel1-{nn}-{well}.tif,FKHR-GFP,{dose}\n")
    s = extract_cells(tmp_path / "F.csv", tmp_path / "C", size=(64, 64), progress=False)
    cs = read_cellset(tmp_path / "C")
    per_field = {f: sum(r["field"] == f for r in cs.rows) for f in ("A-01", "A-12")}
    assert all(20 <= n <= 400 for n in per_field.values()), per_field
    assert s["n_border_dropped"] > 0
    assert set(np.unique(cs.images[:, 0])) == {0.0, 1.0}
    assert cs.meta["pixel_size_um"] is None and cs.rows[0]["crop_pixel_size_um"] == ""
    ratio = {f: np.nanmedian([float(r["target_nc_ratio"] or "nan") for r in cs.rows if r["field"] == f])
             for f in per_field}
    assert ratio["A-12"] > ratio["A-01"]  # GFP moves into the nucleus at the high dose
