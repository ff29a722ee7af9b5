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
    assert set(rows[0]) == {"name", "source", "target", "split", "pixel_size_um", "group"}
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
    # per-image mix, a scale range and an area-fraction range take effect
    out2 = tmp_path / "synth2"
    assert main(["synthesize", "from-masks", "--model", str(run / "model"), "--shapes", *shapes, "--out", str(out2),
                 "--n-images", "6", "--size", "96", "--area-fraction", "0.05:0.4", "--mix", "per-image",
                 "--scale", "0.6:1.6", "--val-fraction", "0"]) == 0
    rows2 = list(csv.DictReader(open(out2 / "manifest.csv")))
    assert {r["group"] for r in rows2} == {"shapes0", "shapes1"}  # each image's shapes come from one file
    per_image = json.loads((out2 / "summary.json").read_text())["images"]
    scales = [r["scale"] for r in per_image]
    assert all(0.6 <= f <= 1.6 for f in scales) and len(set(scales)) == 6
    fractions = [float((read_image(out2 / r["target"]).data > 0).mean()) for r in rows2]
    assert max(fractions) - min(fractions) > 0.1  # one area fraction drawn per image
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


@pytest.fixture(scope="module")
def shape_model(tmp_path_factory) -> Path:
    """A tiny Statistical Cell reference model of round cells whose nuclei (dna) are disks of radius 3-6 px."""
    import torch

    from cytogen.losses.elbo import beta_elbo_loss, kl_per_dim, recon_sse
    from cytogen.models.vae import ReferenceVAE
    from cytogen.predict.model_folder import save_statcell_folder

    s, n = 32, 96
    rng = np.random.default_rng(0)
    d = np.hypot(*(np.mgrid[:s, :s] - s / 2 + 0.5))
    radii = rng.uniform(6, 12, n)
    x = np.stack([np.stack([np.clip(r - d + 0.5, 0, 1), np.clip(0.5 * r - d + 0.5, 0, 1)]) for r in radii])
    x = torch.from_numpy(x.astype(np.float32))
    torch.manual_seed(0)
    net = ReferenceVAE(size=(s, s), latent_dim=2, widths=(4, 8))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        b = x[torch.randint(0, n, (32,))]
        x_hat, mu, logvar = net(b)
        loss = beta_elbo_loss(recon_sse(x_hat, b), kl_per_dim(mu, logvar), 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_statcell_folder(tmp_path_factory.mktemp("shape_model") / "REF", net, kind="statcell_reference",
                                architecture=net.architecture, structures=[], channels=["cell", "dna"],
                                crop_size=[s, s], pixel_size_um=[0.5, 0.5], beta=0.1, recipe=None)


def test_shapes_sampled_from_a_shape_model_are_nucleus_like(shape_model, masks_manifest, tmp_path):
    from skimage.measure import regionprops

    from cytogen.errors import CytogenError
    from cytogen.workflows.synthesize_masks import shapes_from_model

    lib = shapes_from_model(shape_model, 40, seed=1)
    assert len(lib) >= 30 and lib.pixel_size_um == 0.5 and lib.ndim == 2
    radius = np.sqrt(lib.areas() / np.pi)
    assert 2.0 < radius.min() and radius.max() < 7.5  # the training nuclei: radius 3-6 px
    assert np.mean([regionprops(s.astype(np.uint8))[0].solidity for s in lib.shapes]) > 0.9  # disks, not noise
    cells = shapes_from_model(shape_model, 40, seed=1, channel="cell")
    assert cells.areas().mean() > 2.5 * lib.areas().mean()  # the cell channel: radius 6-12 px
    with pytest.raises(CytogenError, match="no channel 'actin'"):
        shapes_from_model(shape_model, 5, channel="actin")
    # through the CLI, the sampled shapes are one more source beside the label images
    run = tmp_path / "gen"
    assert main(["train", str(CONFIGS / "translate_unet2d.yaml"), "--data", str(masks_manifest), "--out", str(run),
                 "--max-steps", "2", *_sets(["data.mask_channels={channels: 4}"])]) == 0
    shapes = [r["source"] for r in csv.DictReader(open(masks_manifest))][:1]
    out = tmp_path / "syn"
    assert main(["synthesize", "from-masks", "--model", str(run / "model"), "--shapes", *shapes, "--shape-model",
                 str(shape_model), "--n-shapes", "30", "--mix", "per-image", "--out", str(out), "--n-images", "6",
                 "--size", "64", "--area-fraction", "0.2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shape_sources"]["1"] == str(shape_model)
    assert {r["group"] for r in csv.DictReader(open(out / "manifest.csv"))} == {"shapes0", "shapes1"}
    assert main(["synthesize", "from-masks", "--model", str(run / "model"), "--shape-model", str(run / "model"),
                 "--out", str(tmp_path / "bad"), "--area-fraction", "0.2"]) == 2  # a translator is no shape model
    assert not (tmp_path / "bad").exists()


def test_synthesize_from_masks_in_3d(synth3d, tmp_path):
    root = synth3d.parent
    rows = [{"name": r["name"], "source": str(root / "masks" / f"{r['name']}_nuclei.tif"),
             "target": str(root / r["target"]), "split": r["split"]} for r in csv.DictReader(open(synth3d))]
    m = tmp_path / "m3.csv"
    with open(m, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run = tmp_path / "gen3"
    assert main(["train", str(CONFIGS / "translate_unet3d.yaml"), "--data", str(m), "--out", str(run), "--max-steps", "2",
                 *_sets(["data.patch_size=[8,32,32]", "data.mask_channels={channels: 4}"])]) == 0
    out = tmp_path / "syn3"
    assert main(["synthesize", "from-masks", "--model", str(run / "model"), "--shapes", rows[0]["source"],
                 "--out", str(out), "--n-images", "2", "--size", "48", "--depth", "12", "--area-fraction", "0.1",
                 "--val-fraction", "0"]) == 0
    r = next(csv.DictReader(open(out / "manifest.csv")))
    img, lab = read_image(out / r["source"]), read_image(out / r["target"])
    assert img.data.shape == (1, 12, 48, 48) and lab.data.shape == (1, 12, 48, 48) and lab.data.max() >= 2
    assert img.axes == "CZYX" and (out / "preview.png").exists()
    assert main(["synthesize", "from-masks", "--model", str(run / "model"), "--shapes", rows[0]["source"],
                 "--out", str(tmp_path / "nodepth"), "--area-fraction", "0.1"]) == 2  # a 3D generator needs --depth
