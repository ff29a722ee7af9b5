"""``cytogen evaluate uncertainty`` end to end on planted nuclei with a known spread."""

import argparse
import json

import numpy as np
import pytest

from cytogen import cli
from cytogen.cli_uncertainty import add_evaluate_uncertainty_parser
from cytogen.data.manifest import FieldEntry, write_manifest
from cytogen.errors import CytogenError
from cytogen.io.images import Image, write_image
from cytogen.workflows.evaluate_uncertainty import OUTPUTS, evaluate_uncertainty


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _make(tmp_path, n_fields=2, write_spread=True):
    """Per field a 4x4 grid of r=6 discs; odd columns are 'high spread': offset 3.5 px, half missing."""
    rng = np.random.default_rng(0)
    pred = tmp_path / "pred"
    pred.mkdir()
    entries, shape = [], (128, 128)
    for f in range(n_fields):
        t, p, s = (np.zeros(shape) for _ in range(3))
        s += 0.02
        for gy in range(4):
            for gx in range(4):
                cy, cx = 16 + 32 * gy, 16 + 32 * gx
                high = gx % 2 == 1
                t[_disc(shape, cy, cx, 6)] = 1.0
                if high:
                    s[_disc(shape, cy, cx, 12)] = 0.3
                if high and gy % 2 == 1:
                    continue  # missed by the prediction
                d = 3.5 if high else 0.5
                p[_disc(shape, cy + d, cx, 6)] = 1.0
        t += rng.normal(0, 0.01, shape)
        p += rng.normal(0, 0.01, shape)
        name = f"field{f}"
        tp = tmp_path / f"{name}_t.tif"
        write_image(tp, Image(t[None].astype(np.float32), "CYX"))
        write_image(pred / f"{name}.tif", Image(p[None].astype(np.float32), "CYX"))
        if write_spread:
            write_image(pred / f"{name}_spread.tif", Image(s[None].astype(np.float32), "CYX"))
        entries.append(FieldEntry(name, [str(tp)], [str(tp)], split="test"))
    return pred, write_manifest(tmp_path / "m.csv", entries)


def test_high_spread_nuclei_are_placed_and_found_worse(tmp_path):
    pred, man = _make(tmp_path)
    out = tmp_path / "eval"
    s = evaluate_uncertainty(pred, man, out, n_boot=100)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    pl, de = s["objects"]["placement"], s["objects"]["detection"]
    assert pl["status"] == "ok" and pl["unit"] == "px"
    assert pl["top"]["median_distance"] == pytest.approx(3.5, abs=0.5)
    assert pl["bottom"]["median_distance"] == pytest.approx(0.5, abs=0.5)
    assert pl["p_one_sided"] < 0.01
    assert de["top"]["recall"] < de["bottom"]["recall"] == 1.0
    j = json.loads((out / "uncertainty.json").read_text())
    assert {"pixels", "deciles", "fields", "objects", "inputs"} <= set(j)
    assert "percentile" in j["pixels"]["normalisation"] and "sqrt(2/pi)" in j["pixels"]["gaussian_reference"]
    assert "Reliability" in (out / "report.html").read_text()
    # with the pixel size: distances in um
    s2 = evaluate_uncertainty(pred, man, out, n_boot=50, pixel_size_um=0.5)
    assert s2["objects"]["placement"]["unit"] == "um"
    assert s2["objects"]["placement"]["top"]["median_distance"] == pytest.approx(1.75, abs=0.25)


def test_missing_spread_errors_and_leaves_no_out(tmp_path):
    pred, man = _make(tmp_path, n_fields=1, write_spread=False)
    with pytest.raises(CytogenError, match="_spread.tif.*--tta"):
        evaluate_uncertainty(pred, man, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_cli_exits_2_in_one_line(tmp_path, monkeypatch, capsys):
    original = cli.build_parser

    def build():  # add the command when cli.py does not register it yet
        p = original()
        ev = next(a for a in p._subparsers._group_actions if "evaluate" in a.choices).choices["evaluate"]
        esub = next(a for a in ev._actions if isinstance(a, argparse._SubParsersAction))
        if "uncertainty" not in esub.choices:
            add_evaluate_uncertainty_parser(esub)
        return p

    monkeypatch.setattr(cli, "build_parser", build)
    pred, man = _make(tmp_path, n_fields=1, write_spread=False)
    assert cli.main(["evaluate", "uncertainty", "--pred", str(pred), "--truth", str(man),
                     "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cytogen: error:") and "--ensemble" in err[0]
