"""cytogen segment cells: the propagation baseline and a saved cell segmenter end to end, marker errors,
known-answer integration through the model path, and bad inputs."""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cytogen.cli import main
from cytogen.config import CellSegConfig
from cytogen.data.marker_patches import patch_origins
from cytogen.data.normalize import Normalizer
from cytogen.errors import CytogenError
from cytogen.io.images import Image, read_image, write_image
from cytogen.models import build_model
from cytogen.predict.model_folder import save_cellseg_folder, save_model_folder
from cytogen.segment.markers import markers_from_labels
from cytogen.synth.cells import synth_field
from cytogen.workflows import segment_cells as sc_mod
from cytogen.workflows.segment_cells import segment_cells

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = {"name": "unet", "dims": 2, "in_channels": 2, "out_channels": 1, "kwargs": {"depth": 2, "base_channels": 4}}
PATCH = [32, 32]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two synthetic 128 x 128 fields at 1 um/px: cell image (actin), nuclei, nucleus labels, exact cells."""
    root = tmp_path_factory.mktemp("segcells")
    data = root / "data"
    fields = []
    for k in range(2):
        f = synth_field(shape=(128, 128), pixel_size_um=1.0, seed=k, n_cells=6)
        ps = (1.0, 1.0)
        write_image(data / f"cell{k}.tif", Image(f.image[0:1], "CYX", ps))
        write_image(data / f"nuc{k}.tif", Image(f.image[2:3], "CYX", ps))
        write_image(data / f"nl{k}.tif", Image(f.nuclei[None].astype(np.uint16), "CYX", ps))
        write_image(data / f"cells{k}.tif", Image(f.cells[None].astype(np.uint16), "CYX", ps))
        write_image(data / f"fg{k}.tif", Image((f.cells[None] > 0).astype(np.uint8), "CYX", ps))
        fields.append(f)
    rows = ["name,source,nuclei,markers,foreground,cells,split"]
    rows += [f"f{k},cell{k}.tif,nuc{k}.tif,nl{k}.tif,fg{k}.tif,cells{k}.tif,{('train', 'test')[k]}" for k in range(2)]
    (data / "M.csv").write_text("\n".join(rows) + "\n")
    (data / "nuclei_only.csv").write_text("name,source,nuclei\nf0,cell0.tif,nuc0.tif\n")
    return root, fields


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _cellseg_folder(folder: Path, *, bias: float | None = None, **cellseg) -> Path:
    torch.manual_seed(0)
    net = build_model("unet", in_channels=2, out_channels=1, dims=2, depth=2, base_channels=4).eval()
    if bias is not None:  # a constant segmenter: sigmoid(bias) at every pixel of every patch
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            for p in net.parameters():
                p.zero_()
            convs[-1].bias.fill_(bias)
    settings = {**dataclasses.asdict(CellSegConfig()), "sigma_px": 5.0, **cellseg}
    return save_cellseg_folder(folder, net, architecture=ARCH, source_norm=Normalizer(), source_channels=["actin"],
                               pixel_size_um=[1.0, 1.0], patch_size=PATCH, cellseg=settings)


def test_propagate_baseline_end_to_end_through_the_cli(world, tmp_path):
    root, fields = world
    data = root / "data"
    before = _digest(data)
    out = tmp_path / "prop"
    assert main(["segment", "cells", "--method", "propagate", "--data", str(data / "M.csv"), "--out", str(out),
                 "--markers-from", "markers"]) == 0
    assert _digest(data) == before  # inputs untouched
    s = json.loads((out / "summary.json").read_text())
    assert s["method"] == "propagate" and s["n_fields"] == 2 and s["marker_source"] == "markers"
    for k, f in enumerate(fields):
        lab = read_image(out / f"f{k}.tif")
        assert lab.data.dtype == np.uint16 and lab.data.shape == (1, 128, 128)
        assert lab.pixel_size_um == pytest.approx((1.0, 1.0))
        n_markers = len(markers_from_labels(f.nuclei))
        ids = set(np.unique(lab.data)) - {0}
        assert ids <= set(range(1, n_markers + 1))
        assert len(ids) >= n_markers - 1  # one cell per marker (inside the given foreground)
        assert not np.any(lab.data[0][f.cells == 0])  # nothing outside the foreground mask
        fg = read_image(out / "foreground" / f"f{k}.tif").data[0]
        np.testing.assert_array_equal(fg > 0, f.cells > 0)
    rows = (out / "markers.csv").read_text().splitlines()
    assert rows[0] == "name,marker,y,x,source" and len(rows) == 1 + s["n_markers"]
    # markers.csv row k of a field is label k: its marker lies in the label's cell
    first = [r.split(",") for r in rows[1:] if r.startswith("f0,")]
    lab0 = read_image(out / "f0.tif").data[0]
    inside = [lab0[int(round(float(y))), int(round(float(x)))] == int(m) for _, m, y, x, _ in first]
    assert np.mean(inside) >= 0.8
    # label centroids vs nucleus-image blobs: paired within 15 um, reported pooled and per field
    err = s["marker_errors"]
    assert err["unit"] == "um" and err["max_distance"] == 15.0 and err["reference"] == ["nuclei"]
    assert err["n_pred"] == s["n_markers"] and err["fn_rate"] <= 0.2 and err["fp_rate"] <= 0.2
    assert sum(r["marker_errors"]["tp"] for r in s["fields"]) == err["tp"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Markers against reference markers" in html
    assert len(html) < 1_000_000
    # --split picks rows; a second run replaces the previous output as a whole
    assert main(["segment", "cells", "--method", "propagate", "--data", str(data / "M.csv"), "--out", str(out),
                 "--markers-from", "nuclei", "--split", "test"]) == 0
    assert sorted(p.name for p in out.glob("*.tif")) == ["f1.tif"]
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["split"] == "test" and s2["marker_errors"]["reference"] == ["markers"]


def test_untrained_model_runs_end_to_end(world, tmp_path):
    root, _ = world
    model = _cellseg_folder(tmp_path / "model")
    out = tmp_path / "seg"
    assert main(["segment", "cells", str(model), "--data", str(root / "data" / "nuclei_only.csv"), "--out",
                 str(out), "--batch-size", "4"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["method"] == "model" and s["marker_source"] == "nuclei" and s["patch_size"] == PATCH
    assert s["marker_errors"] is None  # no reference markers in this manifest
    lab = read_image(out / "f0.tif")
    assert lab.data.dtype == np.uint16 and lab.pixel_size_um == pytest.approx((1.0, 1.0))
    assert lab.data.max() <= s["n_markers"]


@pytest.mark.parametrize("bias, threshold, covered", [(5.0, None, True), (np.log(0.6 / 0.4), 0.7, False),
                                                      (np.log(0.6 / 0.4), 0.5, True)])
def test_constant_model_gives_the_known_integration(world, tmp_path, bias, threshold, covered):
    """Every patch says p = sigmoid(bias) everywhere: above the threshold each pixel belongs to the lowest
    marker whose patch covers it (ties go to the first marker), whatever the chunking."""
    root, fields = world
    model = _cellseg_folder(tmp_path / "model", bias=bias)
    s = segment_cells(model, root / "data" / "M.csv", tmp_path / "out", split="train", markers_from="markers",
                      threshold=threshold, batch_size=3, progress=False)
    lab = read_image(tmp_path / "out" / "f0.tif").data[0].astype(np.int64)
    markers = markers_from_labels(fields[0].nuclei)
    expect = np.zeros((128, 128), np.int64)
    if covered:
        for i in range(len(markers) - 1, -1, -1):  # lower index painted last wins
            y0, x0 = patch_origins(markers[i:i + 1], PATCH)[0]
            expect[max(y0, 0):max(y0 + 32, 0), max(x0, 0):max(x0 + 32, 0)] = i + 1
    np.testing.assert_array_equal(lab, expect)
    assert s["threshold"] == (0.5 if threshold is None else threshold)
    assert s["n_cells"] == len(np.unique(expect)) - 1


def test_a_model_that_finds_no_cell_says_so(world, tmp_path):
    """p = sigmoid(-5) everywhere: markers but no cell is a warning in the summary, not a quiet success."""
    root, _ = world
    model = _cellseg_folder(tmp_path / "model", bias=-5.0)
    with pytest.warns(UserWarning, match="no cell"):
        s = segment_cells(model, root / "data" / "M.csv", tmp_path / "out", split="train", markers_from="markers",
                          progress=False)
    assert s["n_markers"] > 0 and s["n_cells"] == 0 and "under-trained" in s["warnings"][0]
    ok = segment_cells(_cellseg_folder(tmp_path / "m2", bias=5.0), root / "data" / "M.csv",
                       tmp_path / "out2", split="train", markers_from="markers", progress=False)
    assert ok["n_cells"] > 0 and ok["warnings"] == []


def test_bad_inputs_raise_one_clear_error(world, tmp_path, monkeypatch):
    root, _ = world
    data = root / "data"

    def run(csv_body=None, csv=None, **kw):
        if csv_body is not None:
            csv = tmp_path / "bad.csv"
            csv.write_text(csv_body)
        kw.setdefault("method", "propagate")
        return segment_cells(kw.pop("model", None), csv, kw.pop("out", tmp_path / "o"), progress=False, **kw)

    with pytest.raises(CytogenError, match="needs a 'source' column"):
        run(f"name,nuclei\nf,{data / 'nuc0.tif'}\n")
    with pytest.raises(CytogenError, match="needs a marker source column"):
        run(f"name,source\nf,{data / 'cell0.tif'}\n")
    with pytest.raises(CytogenError, match="row 1 .*no marker source"):
        run(f"name,source,nuclei,markers\nf,{data / 'cell0.tif'},,\n")
    with pytest.raises(CytogenError, match="column 'nuclei': .*missing.tif does not exist"):
        run(f"name,source,nuclei\nf,{data / 'cell0.tif'},{data / 'missing.tif'}\n")
    with pytest.raises(CytogenError, match="several marker sources .*--markers-from"):
        run(csv=data / "M.csv")
    with pytest.raises(CytogenError, match="no rows with split=val"):
        run(csv=data / "M.csv", split="val", markers_from="nuclei")
    with pytest.raises(CytogenError, match="needs a model folder"):
        run(csv=data / "M.csv", method="model")
    # a translator folder is no cell segmenter
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=2, base_channels=4)
    save_model_folder(tmp_path / "translator", net, architecture={**ARCH, "in_channels": 1},
                      source_norm=Normalizer(), target_norm=Normalizer(), source_channels=["a"],
                      target_channels=["b"], pixel_size_um=None, patch_size=PATCH)
    with pytest.raises(CytogenError, match="not a cell segmenter"):
        run(csv=data / "nuclei_only.csv", method="model", model=tmp_path / "translator")
    # a segmenter trained on 2 source channels given 1
    torch.manual_seed(0)
    net3 = build_model("unet", in_channels=3, out_channels=1, dims=2, depth=2, base_channels=4)
    save_cellseg_folder(tmp_path / "m3", net3, architecture={**ARCH, "in_channels": 3}, source_norm=Normalizer(),
                        source_channels=["a", "b"], pixel_size_um=None, patch_size=PATCH, cellseg={})
    with pytest.raises(CytogenError, match="1 channel.*trained on 2"):
        run(csv=data / "nuclei_only.csv", method="model", model=tmp_path / "m3")
    # OUT: not someone else's folder, never the inputs' folder
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep")
    with pytest.raises(CytogenError, match="not the output of 'cytogen segment cells'"):
        run(csv=data / "nuclei_only.csv", out=tmp_path / "busy")
    with pytest.raises(CytogenError, match="holds the input"):
        run(csv=data / "nuclei_only.csv", out=data)
    # more cells than uint16 labels hold
    monkeypatch.setattr(sc_mod, "MAX_LABELS", 2)
    with pytest.raises(CytogenError, match="uint16 label images hold at most 2 cells"):
        run(csv=data / "nuclei_only.csv", out=tmp_path / "big")
    assert not (tmp_path / "big").exists() and not (tmp_path / "o").exists()  # no partial output
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep"
    # through the CLI: exit 2, no traceback
    assert main(["segment", "cells", "--method", "propagate", "--data", str(data / "M.csv"), "--out",
                 str(tmp_path / "cli")]) == 2


def test_marker_errors_in_pixels_without_a_pixel_size(world, tmp_path):
    _, fields = world
    f = fields[1]
    write_image(tmp_path / "c.tif", Image(f.image[0:1], "CYX"))  # no pixel size anywhere
    write_image(tmp_path / "n.tif", Image(f.image[2:3], "CYX"))
    write_image(tmp_path / "l.tif", Image(f.nuclei[None].astype(np.uint16), "CYX"))
    write_image(tmp_path / "m.tif", Image((f.cells[None] > 0).astype(np.uint8), "CYX"))
    (tmp_path / "M.csv").write_text("name,source,nuclei,markers,foreground\nf,c.tif,n.tif,l.tif,m.tif\n")
    s = segment_cells(None, tmp_path / "M.csv", tmp_path / "out", method="propagate", markers_from="nuclei",
                      progress=False)
    err = s["marker_errors"]
    assert err["unit"] == "px" and "15 px" in err["note"]
    assert s["fields"][0]["pixel_size_um"] is None and read_image(tmp_path / "out" / "f.tif").pixel_size_um is None
    assert "15 px instead of um" in (tmp_path / "out" / "report.html").read_text()


def test_marker_settings_override_takes_effect_and_training_settings_are_refused(world, tmp_path):
    root, _ = world
    m = root / "data" / "nuclei_only.csv"
    base = segment_cells(None, m, tmp_path / "a", method="propagate", progress=False)
    # blobs searched at three times the nucleus size, merged within 40 px: fewer markers
    big = segment_cells(None, m, tmp_path / "b", method="propagate", progress=False,
                        settings={"nucleus_diameter_px": 30.0, "min_distance_px": 40.0})
    assert big["n_markers"] < base["n_markers"]
    assert big["settings"]["min_distance_px"] == 40.0
    with pytest.raises(CytogenError, match="cannot change after training"):
        segment_cells(None, m, tmp_path / "c", method="propagate", progress=False, settings={"lam": 1.0})
    with pytest.raises(CytogenError, match="must be > 0"):
        segment_cells(None, m, tmp_path / "d", method="propagate", progress=False,
                      settings={"nucleus_diameter_px": -1.0})
    assert main(["segment", "cells", "--method", "propagate", "--data", str(m), "--out", str(tmp_path / "e"),
                 "--set", "cellseg.nucleus_diameter_px=30", "--set", "cellseg.min_distance_px=40"]) == 0
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["n_markers"] == big["n_markers"]
    assert main(["segment", "cells", "--method", "propagate", "--data", str(m), "--out", str(tmp_path / "f"),
                 "--set", "train.max_steps=3"]) == 2
