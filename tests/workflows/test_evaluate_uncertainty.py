"""cytogen evaluate uncertainty end to end on planted nuclei: outputs, the object-level answer, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cytogen.cli import main
from cytogen.errors import CytogenError
from cytogen.io.images import Image, write_image
from cytogen.workflows.evaluate_uncertainty import OUTPUTS, evaluate_uncertainty

PX = 0.5


def _blobs(centres, size=160, r=4.0):
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), 5.0)
    for cy, cx in centres:
        img += 100 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))
    return img.astype(np.float32)


def _world(tmp_path, n=4, spread_files=True):
    """Fields of nuclei on a grid; half of the predicted nuclei are moved by 3 px and get a large spread."""
    rng = np.random.default_rng(0)
    rows = ["name,source,target,split,pixel_size_um"]
    (tmp_path / "pred").mkdir()
    for i in range(n):
        centres = [(y, x) for y in range(20, 160, 30) for x in range(20, 160, 30)]
        moved = rng.random(len(centres)) < 0.5
        shifted = [(y + 3 * m, x + 3 * m) for (y, x), m in zip(centres, moved)]
        truth, pred = _blobs(centres), _blobs(shifted)
        spread = np.full_like(pred, 0.2)
        yy, xx = np.mgrid[:160, :160]
        for (y, x), m in zip(shifted, moved):
            if m:
                spread[(yy - y) ** 2 + (xx - x) ** 2 <= 36] = 5.0
        write_image(tmp_path / f"t{i}.tif", Image(truth[None], "CYX", (PX, PX), ["nucleus"]))
        write_image(tmp_path / "pred" / f"f{i}.tif", Image(pred[None], "CYX", (PX, PX), ["nucleus"]))
        if spread_files:
            write_image(tmp_path / "pred" / f"f{i}_spread.tif", Image(spread[None], "CYX", (PX, PX), ["nucleus"]))
        rows.append(f"f{i},t{i}.tif,t{i}.tif,test,{PX}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "pred", tmp_path / "m.csv"


def test_outputs_and_the_object_level_answer(tmp_path):
    pred, truth = _world(tmp_path)
    s = evaluate_uncertainty(pred, truth, tmp_path / "out", n_boot=100)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUTS)
    saved = json.loads((tmp_path / "out" / "uncertainty.json").read_text())
    assert saved["inputs"]["split"] == "test" and saved["pixels"]["n_fields"] == 4
    assert s["pixels"]["pooled_spearman"]["value"] > 0.2  # the large spread sits where the error is
    pl = s["objects"]["placement"]
    assert s["objects"]["unit"] == "um" and pl["status"] == "ok"
    # moved nuclei: 3 px diagonal = 4.24 px = 2.12 um; unmoved ones ~0
    assert pl["top"]["median_distance"] == pytest.approx(3 * np.sqrt(2) * PX, abs=0.3)
    assert pl["bottom"]["median_distance"] < 0.3 and pl["p_one_sided"] < 1e-6
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Reliability" in html and "calibration ratio" in html


def test_missing_spread_is_refused_and_leaves_nothing(tmp_path, capsys):
    pred, truth = _world(tmp_path, n=2, spread_files=False)
    with pytest.raises(CytogenError, match="--tta, --ensemble, --mc-dropout or --samples"):
        evaluate_uncertainty(pred, truth, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["evaluate", "uncertainty", "--pred", str(pred), "--truth", str(truth), "--out",
                 str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("cytogen: error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0] and not (tmp_path / "o2").exists()


def test_cli_prints_one_json_line(tmp_path, capsys):
    pred, truth = _world(tmp_path, n=2)
    assert main(["evaluate", "uncertainty", "--pred", str(pred), "--truth", str(truth), "--out",
                 str(tmp_path / "o")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    shown = json.loads(line)
    assert shown["n_fields"] == 2 and shown["unit"] == "um" and "spearman_pooled" in shown
