"""The CLI end to end on tiny synthetic data, and its handling of user mistakes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cytogen.cli import main
from cytogen.data.normalize import Normalizer
from cytogen.evaluate.pixel import METRICS
from cytogen.io.images import Image, read_image, write_image
from cytogen.models import build_model
from cytogen.predict.model_folder import load_model_folder, save_model_folder
from cytogen.workflows.train import read_loss_log

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "translate_unet2d.yaml")
FAST = ["--set", "model.kwargs.base_channels=4", "--set", "model.kwargs.depth=2",
        "--set", "data.patch_size=[32,32]", "--set", "data.patches_per_epoch=16",
        "--set", "data.val_patches=4", "--set", "data.batch_size=4", "--set", "train.val_every=5", "--set", "train.log_every=2",
        "--set", "predict.tile=[64,64]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_set):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", CONFIG, "--data", str(synth_set), "--out", str(run),
                 "--max-steps", "10", *FAST]) == 0
    return run


def test_train_writes_run_folder(trained):
    for rel in ("recipe.yaml", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "logs/csv/metrics.csv",
                "model/weights.safetensors", "model/model.json", "train_summary.json", "loss.png"):
        assert (trained / rel).is_file(), rel
    assert list((trained / "logs" / "tensorboard").glob("events.out.tfevents*"))
    meta = json.loads((trained / "model" / "model.json").read_text())
    assert meta["architecture"]["name"] == "unet" and meta["patch_size"] == [32, 32]
    assert meta["source_channels"] == ["actin"] and meta["target_channels"] == ["nucleus"]
    assert meta["pixel_size_um"] == [0.5, 0.5]
    assert meta["normalization"]["source"]["method"] == "percentile"
    # the resolved speed settings are recorded, and the run used the precision it records
    runtime = json.loads((trained / "runtime.json").read_text())
    summary = json.loads((trained / "train_summary.json").read_text())
    assert runtime["precision"] == summary["precision"] and summary["steps"] == 10


def test_resume_continues_to_more_steps(trained, synth_set, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["train", CONFIG, "--data", str(synth_set), "--out", str(run),
                 "--max-steps", "14", "--resume", *FAST]) == 0
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 14
    log = read_loss_log(run)  # the first part's log survives the restart
    steps = log["step"][np.isfinite(log["train_loss"])]
    assert steps.min() < 10 and steps.max() >= 10


def test_predict_and_evaluate_from_manifest_and_files(trained, synth_set, tmp_path, capsys):
    pred = tmp_path / "pred"
    assert main(["predict", str(trained / "model"), "--data", str(synth_set), "--split", "test",
                 "--out", str(pred)]) == 0
    outs = sorted(pred.glob("*.tif"))
    assert outs
    img = read_image(outs[0])
    assert img.data.dtype == np.float32 and img.data.shape == (1, 128, 128)
    assert img.pixel_size_um == pytest.approx((0.5, 0.5)) and img.channel_names == ["nucleus"]
    tiling = json.loads((pred / "runtime.json").read_text())["tiling"]  # train -> model.json -> predict
    assert tiling["tile"] == [64, 64] and tiling["from"]["tile"] == "recipe"
    ev = tmp_path / "eval"
    assert main(["evaluate", "pixels", "--pred", str(pred), "--truth", str(synth_set), "--split", "test",
                 "--out", str(ev)]) == 0
    summary = json.loads((ev / "pixel_summary.json").read_text())
    assert summary["n_fields"] == len(outs)
    assert list(summary["metrics"]) == list(METRICS) and summary["normalize"] == "percentile"
    assert (ev / "pixel_metrics.csv").read_text().count("\n") == len(outs) + 1
    # plain files, with a channel pick
    src = Path(synth_set).parent / "images" / f"{outs[0].stem}.tif"
    assert main(["predict", str(trained / "model"), f"{src}#c=0", "--out", str(tmp_path / "p2")]) == 0
    np.testing.assert_allclose(read_image(tmp_path / "p2" / f"{outs[0].stem}.tif").data, img.data, atol=1e-5)


def test_predicts_2000px_field_with_model_trained_on_small_patches(tmp_path):
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=2, base_channels=4).eval()
    rng = np.random.default_rng(0)
    field = rng.random((1, 2000, 2000), dtype=np.float32)
    norm = Normalizer().fit([field])
    save_model_folder(tmp_path / "model", net, architecture={"name": "unet", "dims": 2, "in_channels": 1,
                      "out_channels": 1, "kwargs": {"depth": 2, "base_channels": 4}}, source_norm=norm,
                      target_norm=norm, source_channels=["a"], target_channels=["b"], pixel_size_um=None,
                      patch_size=[128, 128])
    write_image(tmp_path / "in" / "big.tif", Image(field, "CYX", (0.3, 0.3), ["a"]))
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "in" / "big.tif"), "--out",
                 str(tmp_path / "out"), "--batch-size", "8"]) == 0
    out = read_image(tmp_path / "out" / "big.tif")
    assert out.data.shape == (1, 2000, 2000) and np.all(np.isfinite(out.data))
    assert out.pixel_size_um == pytest.approx((0.3, 0.3))
    # the tiled result equals whole-image application away from the tile seams' influence
    with torch.no_grad():
        crop = torch.from_numpy(norm.normalize(field[:, :256, :256]))[None]
        ref = norm.denormalize(net(crop)[0].numpy())
    np.testing.assert_allclose(out.data[:, 8:100, 8:100], ref[:, 8:100, 8:100], atol=1e-4)


def test_model_folder_round_trip_and_refusals(trained, tmp_path):
    m = load_model_folder(trained / "model")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        y1 = m.net(x)
        y2 = load_model_folder(trained / "model").net(x)
    torch.testing.assert_close(y1, y2)
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(trained / "model", bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["architecture"]["name"] = "mystery_net"
    (bad / "model.json").write_text(json.dumps(meta))
    assert main(["predict", str(bad), "x.tif", "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("argv, message", [
    (["train", CONFIG, "--data", "missing.csv", "--out", "{tmp}/r"], "manifest not found"),
    (["train", "{tmp}/nope.yaml", "--data", "missing.csv", "--out", "{tmp}/r"], "recipe file not found"),
    (["train", CONFIG, "--data", "{data}", "--out", "{tmp}/r", "--set", "train.max_step=3"], "unknown key"),
    (["predict", "{tmp}", "a.tif", "--out", "{tmp}/o"], "not a cytogen model folder"),
    (["evaluate", "pixels", "--pred", "{tmp}/none", "--truth", "{data}", "--out", "{tmp}/e"], "prediction folder not found"),
    (["manifest", "{tmp}", "--source", "a*.tif", "--target", "b*.tif", "--out", "{tmp}/m.csv"], "no file matches"),
])
def test_user_mistakes_exit_2_with_one_line(argv, message, tmp_path, synth_set, capsys):
    argv = [a.format(tmp=tmp_path, data=synth_set) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("cytogen: error:")


def test_wrong_channel_count_is_named(trained, tmp_path, capsys):
    write_image(tmp_path / "in" / "two.tif", Image(np.zeros((2, 40, 40), np.float32), "CYX"))
    assert main(["predict", str(trained / "model"), str(tmp_path / "in" / "two.tif"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "two.tif" in err and "2 channel" in err and not (tmp_path / "o" / "two.tif").exists()


def test_cli_subprocess_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cytogen.cli", "predict", str(tmp_path), "x.tif", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "model folder" in r.stderr


def test_output_folder_holding_inputs_is_refused(trained, synth_set, capsys):
    images = Path(synth_set).parent / "images"
    before = {p: p.read_bytes() for p in images.glob("*.tif")}
    assert main(["predict", str(trained / "model"), str(next(iter(before))), "--out", str(images)]) == 2
    assert {p: p.read_bytes() for p in images.glob("*.tif")} == before
