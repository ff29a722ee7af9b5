"""``cytogen evaluate cells``: outputs, known answers on synthetic labels, folder agreement, bad inputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cytogen.cli import main
from cytogen.evaluate.cells import cell_scores, pool_cell_scores
from cytogen.io.images import Image, read_image, write_image
from cytogen.synth.cells import write_synthetic_dataset
from cytogen.workflows.evaluate_cells import OUTPUTS, evaluate_cells


def _write_labels(path: Path, lab: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, Image(data=lab[None].astype(np.uint16), axes="CYX", pixel_size_um=(0.5, 0.5)))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Synthetic segment.csv (4 fields) and predictions: field 0 exact, 1 with a cell dropped,
    2 shifted by 3 px, 3 with two touching cells merged."""
    root = tmp_path_factory.mktemp("evalcells")
    write_synthetic_dataset(root / "data", n_fields=4, shape=(96, 96), seed=5, crowded_fraction=0.5)
    m = root / "data" / "segment.csv"
    truth, pred = {}, {}
    for r in _rows(m):
        t = read_image(root / "data" / r["cells"]).data[0].astype(np.int32)
        truth[r["name"]] = t
        p = t.copy()
        if r["name"] == "field_001":
            p[p == p.max()] = 0
        elif r["name"] == "field_002":
            p = np.zeros_like(t)
            p[:, 3:] = t[:, :-3]
        elif r["name"] == "field_003":
            pairs = [(a, b) for a, b in zip(t[:, :-1].ravel(), t[:, 1:].ravel()) if a and b and a != b]
            a, b = pairs[0]
            p[p == b] = a
        pred[r["name"]] = p
        _write_labels(root / "pred" / f"{r['name']}.tif", p)
    for junk in ("markers.csv", "summary.json", "report.html"):  # what 'segment cells' writes beside
        (root / "pred" / junk).write_text("x")
    return {"root": root, "manifest": m, "truth": truth, "pred": pred, "rows": _rows(m)}


def test_cli_writes_all_outputs_with_the_known_scores(world, capsys):
    root = world["root"]
    out = root / "e1"
    capsys.readouterr()
    assert main(["evaluate", "cells", "--pred", str(root / "pred"), "--truth", str(world["manifest"]),
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    s = json.loads((out / "summary.json").read_text())
    assert printed["miou_matched"] == pytest.approx(s["miou_matched"])
    names = sorted(world["truth"])
    expected = pool_cell_scores([cell_scores(world["truth"][n], world["pred"][n]) for n in names])
    for k in ("n_true", "n_pred", "n_matched", "miou_matched", "miou_all_true", "ap50", "f1_50", "pq50"):
        assert s[k] == pytest.approx(expected[k]), k
    assert s["n_fields"] == 4 and s["truth_kind"] == "ground-truth labels" and s["n_pred_unscored"] == 0
    assert s["n_pred"] == s["n_true"] - 2  # one cell dropped, two merged into one
    assert 0.5 < s["miou_matched"] < 1 and s["miou_all_true"] < s["miou_matched"]
    assert len(s["ap"]) == len(s["thresholds"]) == 10 and s["ap"][0] == s["ap50"]
    assert all(a >= b for a, b in zip(s["ap"], s["ap"][1:]))  # AP falls with the threshold
    lo, hi = s["miou_matched_ci95"]
    assert lo <= s["miou_matched"] <= hi
    assert {"miou_matched", "miou_all_true", "ap", "pq"} <= set(s["definitions"])
    per = {r["name"]: r for r in _rows(out / "cells_per_field.csv")}
    assert float(per["field_000"]["miou_matched"]) == 1.0 and float(per["field_000"]["ap50"]) == 1.0
    assert int(per["field_001"]["n_pred"]) == int(per["field_001"]["n_true"]) - 1
    assert float(per["field_001"]["miou_matched"]) == 1.0 and float(per["field_001"]["recall50"]) < 1
    assert float(per["field_002"]["miou_matched"]) < 1 and per["field_002"]["split"] in ("train", "val", "test")
    scores = _rows(out / "scores.csv")
    assert [float(r["threshold"]) for r in scores] == pytest.approx(s["thresholds"])
    assert float(scores[0]["ap"]) == pytest.approx(s["ap50"])
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "mIoU of matched cells" in html
    assert (out / "ap_vs_iou.png").read_bytes()[:4] == b"\x89PNG"


def test_split_selects_manifest_rows(world):
    root = world["root"]
    split = world["rows"][0]["split"]
    want = [r["name"] for r in world["rows"] if r["split"] == split]
    s = evaluate_cells(root / "pred", world["manifest"], root / "e2", split=split)
    assert s["n_fields"] == len(want) and [r["name"] for r in s["per_field"]] == want
    assert s["n_true"] == sum(len(np.unique(world["truth"][n])) - 1 for n in want)


def test_folder_against_folder_is_agreement_and_swaps_precision_and_recall(world):
    root = world["root"]
    other = root / "other"
    for name, t in world["truth"].items():
        _write_labels(other / f"{name}.tif", t)
    (other / "notes.txt").write_text("not a label image")
    a = evaluate_cells(root / "pred", other, root / "e3")
    b = evaluate_cells(other, root / "pred", root / "e4")
    assert a["truth_kind"] == b["truth_kind"] == "another segmentation" and a["n_fields"] == 4
    assert a["n_true"] == b["n_pred"] and a["n_pred"] == b["n_true"]
    assert a["miou_matched"] == pytest.approx(b["miou_matched"])  # the matching is symmetric
    assert a["precision50"] == pytest.approx(b["recall50"]) and a["ap50"] == pytest.approx(b["ap50"])
    m = evaluate_cells(root / "pred", world["manifest"], root / "e5")
    assert a["miou_matched"] == pytest.approx(m["miou_matched"]) and a["ap"] == pytest.approx(m["ap"])
    same = evaluate_cells(other, other, root / "e6")
    assert same["miou_matched"] == same["ap50"] == same["pq50"] == 1.0


def _bad(world, argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(["evaluate", "cells", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cytogen: error:") and len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_exit_2_with_one_clear_message(world, capsys):
    root = world["root"]
    pred, m = str(root / "pred"), str(world["manifest"])
    partial = root / "partial"
    shutil.copytree(root / "pred", partial)
    (partial / "field_002.tif").unlink()
    (partial / "field_003.tif").unlink()
    err = _bad(world, ["--pred", str(partial), "--truth", m, "--out", str(root / "x1")], capsys)
    assert "field_002" in err and "field_003" in err and "2 of 4" in err
    wrong = root / "wrong"
    shutil.copytree(root / "pred", wrong)
    _write_labels(wrong / "field_001.tif", np.ones((50, 96), np.int32))
    err = _bad(world, ["--pred", str(wrong), "--truth", m, "--out", str(root / "x2")], capsys)
    assert "field_001" in err and "(50, 96)" in err and "(96, 96)" in err
    assert "not found" in _bad(world, ["--pred", str(root / "nope"), "--truth", m, "--out", str(root / "x3")], capsys)
    assert "not found" in _bad(world, ["--pred", pred, "--truth", str(root / "no.csv"), "--out", str(root / "x4")],
                               capsys)
    assert "--split" in _bad(world, ["--pred", pred, "--truth", pred, "--out", str(root / "x5"), "--split", "test"],
                             capsys)
    nocells = root / "nocells.csv"
    nocells.write_text("name,source,nuclei\nfield_000,a.tif,b.tif\n")
    assert "'cells'" in _bad(world, ["--pred", pred, "--truth", str(nocells), "--out", str(root / "x6")], capsys)
    floats = root / "floats"
    floats.mkdir()
    write_image(floats / "field_000.tif", Image(data=np.full((1, 96, 96), 0.5, np.float32), axes="CYX"))
    fcsv = root / "f.csv"
    cells = world["root"] / "data" / "masks" / "field_000_cells.tif"
    fcsv.write_text(f"name,source,nuclei,cells\nfield_000,a.tif,b.tif,{cells}\n")
    assert "not a label image" in _bad(world, ["--pred", str(floats), "--truth", str(fcsv), "--out", str(root / "x7")],
                                       capsys)
    occupied = root / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    assert "new folder" in _bad(world, ["--pred", pred, "--truth", m, "--out", str(occupied)], capsys)
    assert (occupied / "keep.txt").read_text() == "mine"
    assert not any((root / f"x{i}").exists() for i in range(1, 8))  # no partial output anywhere
