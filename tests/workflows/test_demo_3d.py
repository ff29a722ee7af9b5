"""The demo wiring on a tiny budget, and the 3D path through the CLI."""

import json
import re

import numpy as np
import pytest

from cytogen.cli import main
from cytogen.data.manifest import read_manifest
from cytogen.io.images import Image, read_image, read_spec, write_image


def test_tiny_demo_writes_report_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-fields", "6", "--size", "96", "--max-steps", "6",
                 "--set", "model.kwargs.base_channels=4", "--set", "model.kwargs.depth=2",
                 "--set", "data.patch_size=[48,48]", "--set", "data.patches_per_epoch=16",
                 "--set", "train.val_every=3", "--set", "predict.tile=[96,96]"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 6 and metrics["n_test_fields"] >= 1
    html = (out / "report.html").read_text()
    assert len(re.findall(r"data:image/png;base64,", html)) >= 3  # panels, loss curve, histograms
    assert "Pearson" in html and "<table>" in html
    # the headline figure recomputed independently: numpy's Pearson r of each held-out prediction
    # with its true nucleus channel, the median against the bar of 0.8, and what the report says
    rs = [np.corrcoef(read_image(next((out / "predictions").glob(f"{e.name}.*"))).data.ravel(),
                      read_spec(e.target[0]).data.ravel())[0, 1]
          for e in read_manifest(out / "data" / "manifest.csv") if e.split == "test"]
    assert len(rs) == metrics["n_test_fields"] and metrics["bar"] == 0.8
    assert metrics["median_pearson_r"] == pytest.approx(float(np.median(rs)), abs=1e-4)
    assert metrics["passes_bar"] is bool(np.median(rs) >= 0.8)
    assert ("(bar 0.8: met)" if metrics["passes_bar"] else "(bar 0.8: NOT met)") in html
    pix = metrics["pixel_metrics"]  # both families, named
    assert set(pix["median_raw"]) == {"raw_l1", "raw_mse", "raw_ssim", "raw_psnr"}
    assert set(pix["median_calibrated"]) == {"calibrated_l1", "calibrated_mse", "calibrated_ssim", "calibrated_psnr"}
    assert "calibrated (affine fit to the truth, flatters)" in html and "raw_mse" in html
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_test_fields"] >= 1
    # refuses to overwrite a non-empty folder
    assert main(["demo", "--out", str(out)]) == 2


def test_3d_train_and_predict_through_cli(tmp_path, synth3d, configs):
    manifest = synth3d
    run = tmp_path / "run3d"
    assert main(["train", str(configs / "translate_unet3d.yaml"),
                 "--data", str(manifest), "--out", str(run), "--max-steps", "4",
                 "--set", "model.kwargs.base_channels=4", "--set", "model.kwargs.depth=2",
                 "--set", "data.patch_size=[8,32,32]", "--set", "data.patches_per_epoch=8",
                 "--set", "data.batch_size=2", "--set", "train.val_every=2"]) == 0
    pred = tmp_path / "pred"
    assert main(["predict", str(run / "model"), "--data", str(manifest), "--split", "test", "--out", str(pred),
                 "--tile", "8,32,32", "--overlap", "0.25"]) == 0  # 8-deep tiles: too thin for an auto margin
    out = read_image(next(pred.glob("*.tif")))
    assert out.axes == "CZYX" and out.data.shape == (1, 16, 64, 64) and np.all(np.isfinite(out.data))
    assert out.pixel_size_um == pytest.approx((1.0, 0.5, 0.5))
    # a 2D image given to the 3D model is refused with a clear message
    img2d = next((manifest.parent / "images").glob("*.tif"))
    write_image(tmp_path / "flat.tif", Image(read_image(img2d).data[:1, 0], "CYX"))
    assert main(["predict", str(run / "model"), str(tmp_path / "flat.tif"), "--out", str(tmp_path / "p2")]) == 2
