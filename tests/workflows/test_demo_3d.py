"""The demo wiring on a tiny budget, and the 3D path through the CLI."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cytogen.cli import main
from cytogen.io.images import Image, read_image, write_image
from cytogen.synth.cells import write_synthetic_dataset


def test_tiny_demo_writes_report_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-fields", "6", "--size", "96", "--max-steps", "6",
                 "--set", "model.kwargs.base_channels=4", "--set", "model.kwargs.depth=2",
                 "--set", "data.patch_size=[48,48]", "--set", "data.patches_per_epoch=16",
                 "--set", "train.val_every=3", "--set", "predict.tile=[96,96]"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 6 and metrics["n_test_fields"] >= 1
    assert -1 <= metrics["median_pearson_r"] <= 1 and metrics["passes_bar"] == (metrics["median_pearson_r"] >= 0.8)
    html = (out / "report.html").read_text()
    assert len(re.findall(r"data:image/png;base64,", html)) >= 3  # panels, loss curve, histograms
    assert "Pearson" in html and "<table>" in html
    pix = metrics["pixel_metrics"]  # both families, named
    assert set(pix["median_raw"]) == {"raw_l1", "raw_mse", "raw_ssim", "raw_psnr"}
    assert set(pix["median_calibrated"]) == {"calibrated_l1", "calibrated_mse", "calibrated_ssim", "calibrated_psnr"}
    assert "calibrated (affine fit to the truth, flatters)" in html and "raw_mse" in html
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_test_fields"] >= 1
    # refuses to overwrite a non-empty folder
    assert main(["demo", "--out", str(out)]) == 2


def test_3d_train_and_predict_through_cli(tmp_path):
    manifest = write_synthetic_dataset(tmp_path / "d3", n_fields=4, shape=(16, 48, 48), seed=1)
    run = tmp_path / "run3d"
    assert main(["train", str(Path(__file__).resolve().parents[2] / "configs" / "translate_unet3d.yaml"),
                 "--data", str(manifest), "--out", str(run), "--max-steps", "4",
                 "--set", "model.kwargs.base_channels=4", "--set", "model.kwargs.depth=2",
                 "--set", "data.patch_size=[8,32,32]", "--set", "data.patches_per_epoch=8",
                 "--set", "data.batch_size=2", "--set", "train.val_every=2"]) == 0
    pred = tmp_path / "pred"
    assert main(["predict", str(run / "model"), "--data", str(manifest), "--split", "all", "--out", str(pred),
                 "--tile", "8,32,32"]) == 0
    out = read_image(next(pred.glob("*.tif")))
    assert out.axes == "CZYX" and out.data.shape == (1, 16, 48, 48) and np.all(np.isfinite(out.data))
    assert out.pixel_size_um == pytest.approx((1.0, 0.5, 0.5))
    # a 2D image given to the 3D model is refused with a clear message
    img2d = next((tmp_path / "d3" / "images").glob("*.tif"))
    write_image(tmp_path / "flat.tif", Image(read_image(img2d).data[:1, 0], "CYX"))
    assert main(["predict", str(run / "model"), str(tmp_path / "flat.tif"), "--out", str(tmp_path / "p2")]) == 2
