"""Masks -> images: a label-image source spread over mask channels trains and predicts through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cytogen.cli import main
from cytogen.io.images import read_image

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = ["model.kwargs.base_channels=4", "model.kwargs.depth=2", "data.patch_size=[32,32]",
        "data.batch_size=4", "data.patches_per_epoch=16", "data.val_patches=4", "train.val_every=10"]


@pytest.fixture(scope="module")
def masks_manifest(synth_set, tmp_path_factory) -> Path:
    """source = the exact nucleus labels, target = the nucleus channel, of the synthetic fields."""
    root = synth_set.parent
    rows = []
    for r in csv.DictReader(open(synth_set)):
        rows.append({"name": r["name"], "source": str(root / "masks" / f"{r['name']}_nuclei.tif"),
                     "target": str(root / r["target"]), "split": r["split"]})
    path = tmp_path_factory.mktemp("m2n") / "m2n.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _sets(extra):
    return [a for kv in TINY + extra for a in ("--set", kv)]


def test_masks2nuclei_recipe_trains_and_predicts_from_a_label_image(masks_manifest, tmp_path):
    run = tmp_path / "gen"
    extra = ["discriminator.kwargs.base_channels=4", "discriminator.kwargs.n_layers=1", "model.kwargs.kernel_size=3",
             "data.mask_channels.merged=true"]
    assert main(["train", str(CONFIGS / "masks2nuclei.yaml"), "--data", str(masks_manifest), "--out", str(run),
                 "--max-steps", "3", *_sets(extra)]) == 0
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["architecture"]["in_channels"] == 5 and meta["mask_channels"]["merged"] is True
    assert meta["source_channels"][-1] == "masks_union"
    rows = list(csv.DictReader(open(masks_manifest)))
    labels = rows[0]["source"]
    assert main(["predict", str(run / "model"), labels, "--out", str(tmp_path / "pred")]) == 0
    out = read_image(next((tmp_path / "pred").glob("*.tif")))
    assert out.data.shape == (1, 128, 128) and np.all(np.isfinite(out.data))
    # an intensity image is not a label image, and a label image cannot be streamed
    assert main(["predict", str(run / "model"), rows[0]["target"], "--out", str(tmp_path / "p2")]) == 2
    assert main(["predict", str(run / "model"), labels, "--out", str(tmp_path / "p3"),
                 "--output-format", "ome-zarr"]) == 2
    assert not (tmp_path / "p2").exists()


def test_a_short_run_learns_nuclei_from_their_masks(masks_manifest, tmp_path, capsys):
    """A translator from mask channels beats its untrained self at predicting the real nucleus image."""
    from cytogen.evaluate.pixel import pearson_r as pearson

    rows = [r for r in csv.DictReader(open(masks_manifest)) if r["split"] == "test"]
    scores = {}
    for steps in (1, 80):
        run = tmp_path / f"run{steps}"
        assert main(["train", str(CONFIGS / "translate_unet2d.yaml"), "--data", str(masks_manifest), "--out", str(run),
                     "--max-steps", str(steps), "--precision", "32",
                     *_sets(["data.mask_channels={channels: 4}", "optim.warmup_steps=0", "optim.lr=0.003"])]) == 0
        pred = tmp_path / f"pred{steps}"
        assert main(["predict", str(run / "model"), *[r["source"] for r in rows], "--out", str(pred)]) == 0
        scores[steps] = np.mean([pearson(read_image(pred / Path(r["source"]).name).data[0],
                                         read_image(r["target"].partition("#")[0]).data[2])
                                 for r in rows])
    capsys.readouterr()
    assert scores[80] > 0.6 and scores[80] > scores[1] + 0.2, scores


def test_synthesize_from_masks_writes_images_labels_and_a_manifest_that_trains(masks_manifest, tmp_path, capsys):
    run = tmp_path / "gen"
    assert main(["train", str(CONFIGS / "translate_unet2d.yaml"), "--data", str(masks_manifest), "--out", str(run),
                 "--max-steps", "2", *_sets(["data.mask_channels={channels: 4}"])]) == 0
    shapes = [r["source"] for r in csv.DictReader(open(masks_manifest))][:2]
    out = tmp_path / "synth"
    assert main(["synthesize", "from-masks", "--model", str(run / "model"), "--shapes", *shapes, "--out", str(out),
                 "--n-images", "3", "--size", "96", "--density", "40", "--clustered", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [r["split"] for r in rows] == ["train", "train", "val"]
    assert (out / "preview.png").stat().st_size > 10_000 and (out / "summary.json").exists()
    assert set(rows[0]) == {"name", "source", "target", "split", "pixel_size_um"}
    img, lab = read_image(out / rows[0]["source"]), read_image(out / rows[0]["target"])
    assert img.data.shape == (1, 96, 96) and lab.data.dtype == np.uint16 and img.pixel_size_um == lab.pixel_size_um
    # 40 per 100 x 100 um on 96 px at the synthetic 0.5 um/px: round(40 * 48 * 48 / 1e4) = 9 nuclei per image
    assert summary["n_nuclei"] == 27 and int(lab.data.max()) == 9
    assert main(["train", str(CONFIGS / "segment_nuclei2d.yaml"), "--data", str(out / "manifest.csv"), "--out",
                 str(tmp_path / "seg"), "--max-steps", "2",
                 *_sets(["model.kwargs.base_channels=4", "model.kwargs.depth=2", "data.patch_size=[32,32]",
                         "data.batch_size=2", "data.patches_per_epoch=4", "data.val_patches=2"])]) == 0
    # realism: the real set against itself is at distance 0, the 2-step generator's images are not
    real = tmp_path / "real.csv"
    with open(real, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["name", "source", "target", "split"])
        w.writeheader()
        w.writerows([{"name": r["name"], "source": r["target"], "target": r["source"], "split": r["split"]}
                     for r in csv.DictReader(open(masks_manifest))])
    assert main(["evaluate", "realism", "--real", str(real), "--synthetic", str(real), "--out", str(tmp_path / "r0")]) == 0
    assert json.loads((tmp_path / "r0" / "realism.json").read_text())["frechet"] == pytest.approx(0.0, abs=1e-6)
    assert main(["evaluate", "realism", "--real", str(real), "--synthetic", str(out / "manifest.csv"),
                 "--out", str(tmp_path / "r1")]) == 0
    r1 = json.loads((tmp_path / "r1" / "realism.json").read_text())
    assert r1["frechet"] > 1.0 and r1["n_synthetic"] == 27 and (tmp_path / "r1" / "features.png").exists()
    capsys.readouterr()
    # an existing folder is never overwritten
    assert main(["synthesize", "from-masks", "--model", str(run / "model"), "--shapes", *shapes, "--out", str(out),
                 "--n-images", "1", "--size", "64", "--area-fraction", "0.2"]) == 2


def test_mask_channels_are_refused_where_they_cannot_take_effect(masks_manifest, tmp_path):
    assert main(["train", str(CONFIGS / "cellseg_consistency2d.yaml"), "--data", str(masks_manifest),
                 "--out", str(tmp_path / "x"), "--set", "data.mask_channels={channels: 4}"]) == 2
    assert main(["train", str(CONFIGS / "cellseg_consistency2d.yaml"), "--data", str(masks_manifest),
                 "--out", str(tmp_path / "x"), "--set", "data.balance_groups=true"]) == 2
    assert not (tmp_path / "x").exists()
