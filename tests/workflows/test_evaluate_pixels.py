"""``cytogen evaluate pixels`` end to end on known predictions of a synthetic set."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cytogen.cli import main
from cytogen.data.manifest import read_manifest
from cytogen.evaluate.pixel import METRICS
from cytogen.io.images import Image, read_spec, stack_channels, write_image


def _write_predictions(manifest: Path, out: Path, make) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``make(truth)`` as the prediction of every test field; ``{name: (truth, pred)}``."""
    out.mkdir()
    fields = {}
    for e in read_manifest(manifest):
        if e.split != "test":
            continue
        t = stack_channels([read_spec(s) for s in e.target]).data.astype(np.float64)
        p = make(t).astype(np.float32)
        write_image(out / f"{e.name}.tif", Image(p, "CYX"))
        fields[e.name] = (t, p.astype(np.float64))
    return fields


def _run(capsys, pred: Path, manifest: Path, out: Path, *extra: str) -> tuple[dict, dict, list[dict]]:
    assert main(["evaluate", "pixels", "--pred", str(pred), "--truth", str(manifest), "--split", "test",
                 "--out", str(out), *extra]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((out / "pixel_summary.json").read_text())
    with open(out / "pixel_metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return printed, summary, rows


def test_anti_correlated_prediction_reports_negative_r_and_no_flattering_fit(synth_set, tmp_path, capsys):
    rng = np.random.default_rng(0)
    truths = _write_predictions(synth_set, tmp_path / "pred",
                                lambda t: -t + rng.normal(0, 0.05 * t.std(), t.shape))
    printed, summary, rows = _run(capsys, tmp_path / "pred", synth_set, tmp_path / "eval")
    assert printed["n_fields"] == len(truths) == summary["n_fields"] >= 1
    assert printed["median_pearson_r"] < -0.99
    # raw MSE of -t is about 4 E[t^2] >= 4 var(t), the calibrated (constant-mean) one var(t)
    assert printed["median_raw_mse"] > 4 * printed["median_calibrated_mse"]
    assert list(rows[0]) == ["name", "split", "channel", *METRICS]
    assert set(summary["metrics"]) == set(METRICS) and set(summary["descriptions"]) == set(METRICS)
    assert "flatters" in summary["families"]["calibrated"] and "percentile range" in summary["units"]
    assert summary["ssim"]["window"].startswith("11") and summary["ssim"]["sigma"] == 1.5
    for r in rows:
        t, p = (a[int(r["channel"])] for a in truths[r["name"]])
        lo, hi = np.percentile(t, [1, 99.8])
        assert float(r["pearson_r"]) == pytest.approx(np.corrcoef(t.ravel(), p.ravel())[0, 1], rel=1e-6)
        assert float(r["calibration_slope"]) == 0.0
        # raw: both images on the truth's scale, nothing fitted
        assert float(r["raw_mse"]) == pytest.approx(np.mean(((p - t) / (hi - lo)) ** 2), rel=1e-6)
        # slope clamped to 0: the calibrated image is the constant mean, its MSE the truth's variance
        assert float(r["calibrated_mse"]) == pytest.approx((t / (hi - lo)).var(), rel=1e-6)
        assert float(r["psnr_data_range"]) == 1.0


def test_affine_prediction_is_perfect_only_when_calibrated(synth_set, tmp_path, capsys):
    truths = _write_predictions(synth_set, tmp_path / "pred", lambda t: 2 * t + 5)
    printed, summary, rows = _run(capsys, tmp_path / "pred", synth_set, tmp_path / "eval",
                                  "--normalize", "none")
    assert printed["normalize"] == summary["normalize"] == "none" and "target's own units" in summary["units"]
    assert printed["median_pearson_r"] == pytest.approx(1.0, abs=1e-6)
    assert printed["median_raw_l1"] > 1 and printed["median_raw_mse"] > 1
    assert printed["median_calibrated_mse"] < 1e-6 * printed["median_raw_mse"]
    assert printed["median_calibrated_ssim"] == pytest.approx(1.0, abs=1e-4)
    for r in rows:
        t = truths[r["name"]][0][int(r["channel"])]
        assert float(r["calibration_slope"]) == pytest.approx(0.5, rel=1e-4)
        assert float(r["raw_l1"]) == pytest.approx(np.mean(np.abs(t + 5)), rel=1e-5)
        assert float(r["psnr_data_range"]) == pytest.approx(np.subtract(*np.percentile(t, [99.8, 1])), rel=1e-6)
    assert not list((tmp_path / "eval").glob(".*"))  # atomic writers leave no temporary files


def test_flat_truth_is_refused_naming_the_field(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    flat = np.zeros((1, 32, 32), np.float32)
    write_image(root / "a.tif", Image(flat + 1, "CYX"))
    write_image(root / "b.tif", Image(flat, "CYX"))
    (root / "m.csv").write_text("name,source,target,split\nf0,a.tif,b.tif,test\n")
    (tmp_path / "pred").mkdir()
    write_image(tmp_path / "pred" / "f0.tif", Image(flat + 3, "CYX"))
    assert main(["evaluate", "pixels", "--pred", str(tmp_path / "pred"), "--truth", str(root / "m.csv"),
                 "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert "f0" in err and "flat" in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()
