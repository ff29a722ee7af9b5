"""``cytogen statcell embed|sample|walk|features`` on disks of varying radius (a known latent factor)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from cytogen.cli import main
from cytogen.data.cellset import read_cellset, write_cellset
from cytogen.errors import CytogenError
from cytogen.losses.elbo import beta_elbo_loss, kl_per_dim, recon_sse
from cytogen.models.vae import ReferenceVAE, TargetVAE
from cytogen.predict import statcell as sc
from cytogen.predict.model_folder import load_statcell_folder, save_statcell_folder
from cytogen.workflows import statcell as W

pytestmark = pytest.mark.usefixtures("one_thread")

S = 32
N = 96
CHANNELS = ["cell", "dna", "target"]


def _disks(rng):
    """Cells: a disk of random radius (cell mask), a DNA disk of half the radius; the target is a
    fixed pattern of random amplitude (a planted variation for the PCA baseline) plus noise."""
    yy, xx = np.mgrid[:S, :S]
    d = np.hypot(yy - S / 2 + 0.5, xx - S / 2 + 0.5)
    pattern = 0.5 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    radii, amps = rng.uniform(5, 13, N), rng.uniform(-0.8, 0.8, N)
    images = np.zeros((N, 3, S, S), np.float32)
    for i, (r, a) in enumerate(zip(radii, amps)):
        images[i, 0] = np.clip(r - d + 0.5, 0, 1)
        images[i, 1] = 0.8 * np.clip(0.5 * r - d + 0.5, 0, 1)
        images[i, 2] = np.clip(0.5 + a * pattern + 0.01 * rng.standard_normal((S, S)), 0, 1)
    return images, radii, amps


def _save(folder, net, kind, structures, kl=None, size=S):
    return save_statcell_folder(folder, net, kind=kind, architecture=net.architecture, structures=structures,
                                channels=CHANNELS, crop_size=[size, size], pixel_size_um=[0.5, 0.5], beta=0.1,
                                recipe=None, extra={"kl_per_dim": kl})


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("statcell_wf")
    rng = np.random.default_rng(0)
    images, radii, amps = _disks(rng)
    rows = [{"cell_id": f"f{i % 4}/{i}", "field": f"f{i % 4}", "cell_label": i, "structure": "ab"[i % 2],
             "split": ("train", "train", "test")[i % 3], "dose": i % 5} for i in range(N)]
    cells = write_cellset(root / "CELLS", images, rows, {"channels": CHANNELS, "reference_channels": [0, 1],
                                                         "target_channel": 2, "pixel_size_um": [0.5, 0.5]})
    torch.manual_seed(0)
    net = ReferenceVAE(size=(S, S), latent_dim=2, widths=(4, 8))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x = torch.from_numpy(images[:, :2])
    for _ in range(120):  # enough for the radius to become the dominant latent factor
        b = x[torch.randint(0, N, (32,))]
        x_hat, mu, logvar = net(b)
        loss = beta_elbo_loss(recon_sse(x_hat, b), kl_per_dim(mu, logvar), 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        kl = kl_per_dim(*net.encode(x)).mean(0).tolist()
    ref = _save(root / "REF", net, "statcell_reference", [], kl)
    tgt = _save(root / "TGT", TargetVAE(size=(S, S), latent_dim=3, widths=(8, 16), n_classes=2),
                "statcell_target", ["a", "b"], [0.1, 1.0, 2.0])
    return {"root": root, "cells": cells, "ref": ref, "tgt": tgt, "radii": radii, "amps": amps}


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_embed_rows_carry_metadata_and_equal_the_posterior_means(setup, tmp_path):
    s = W.embed(setup["ref"], setup["cells"], tmp_path / "EMB", target=setup["tgt"], pca=2)
    rows = _csv(tmp_path / "EMB" / "embeddings.csv")
    assert len(rows) == N and s["n_cells"] == N
    cols = list(rows[0])
    assert {"dose", "split", "zr_0", "zr_1", "zt_2", "pca_1"} <= set(cols) and "zr_2" not in cols
    assert cols.index("dose") < cols.index("zr_0") < cols.index("zt_0") < cols.index("pca_0")
    cs = read_cellset(setup["cells"])
    z = sc.embed_cells(load_statcell_folder(setup["ref"]), None, cs, cs.indices())["zr"]
    np.testing.assert_allclose([[float(r["zr_0"]), float(r["zr_1"])] for r in rows], z, rtol=1e-5, atol=1e-6)
    # the linear baseline: the first target-crop PC is the planted amplitude (fitted on "train")
    pc0 = np.array([float(r["pca_0"]) for r in rows])
    assert abs(np.corrcoef(pc0, setup["amps"])[0, 1]) > 0.99
    assert s["pca"]["fit_on"] == "train" and s["pca"]["n_fit"] == 64
    dims = _csv(tmp_path / "EMB" / "dimensions.csv")
    assert [(d["space"], d["dim"]) for d in dims] == [("zr", "0"), ("zr", "1"), ("zt", "0"), ("zt", "1"), ("zt", "2")]
    mad = np.mean(np.abs(z - z.mean(0)), axis=0)
    assert [int(d["rank_by_mad"]) for d in dims[:2]] == list(np.argsort(np.argsort(-mad)))
    assert float(dims[3]["kl_mean"]) == 1.0
    assert json.loads((tmp_path / "EMB" / "summary.json").read_text())["n_cells"] == N
    assert (tmp_path / "EMB" / "report.html").stat().st_size > 10_000  # figures embedded
    with pytest.raises(CytogenError, match="not empty"):
        W.embed(setup["ref"], setup["cells"], tmp_path / "EMB")


def test_embed_one_split(setup, tmp_path):
    s = W.embed(setup["ref"], setup["cells"], tmp_path / "E", split="test")
    rows = _csv(tmp_path / "E" / "embeddings.csv")
    assert s["n_cells"] == len(rows) == N // 3 and {r["split"] for r in rows} == {"test"}
    with pytest.raises(CytogenError, match=r"splits present: \['test', 'train'\]"):
        W.embed(setup["ref"], setup["cells"], tmp_path / "E2", split="val")


def test_mismatched_models_are_refused(setup, tmp_path):
    torch.manual_seed(0)
    small = _save(tmp_path / "SMALL", ReferenceVAE(size=(16, 16), latent_dim=2, widths=(8, 16)),
                  "statcell_reference", [], size=16)
    with pytest.raises(CytogenError, match="different cell sets"):
        W.embed(small, setup["cells"], tmp_path / "E", target=setup["tgt"])
    with pytest.raises(CytogenError, match=r"crops \(16, 16\).*crops \(32, 32\)"):
        W.embed(small, setup["cells"], tmp_path / "E")
    only_a = _save(tmp_path / "TA", TargetVAE(size=(S, S), latent_dim=2, widths=(8, 16)), "statcell_target", ["a"])
    with pytest.raises(CytogenError, match=r"\['b'\] are not among"):
        W.embed(setup["ref"], setup["cells"], tmp_path / "E", target=only_a)
    with pytest.raises(CytogenError, match="statcell_reference model is needed"):
        W.embed(setup["tgt"], setup["cells"], tmp_path / "E")
    assert not (tmp_path / "E").exists()


def test_sample_prior_structure_and_real_cell(setup, tmp_path):
    s = W.sample(setup["ref"], tmp_path / "A", n=6, seed=3)
    a = np.load(tmp_path / "A" / "samples.npy")
    assert a.shape == (6, 2, S, S) == tuple(s["shape"]) and 0 <= a.min() and a.max() <= 1
    W.sample(setup["ref"], tmp_path / "B", n=6, seed=3)
    np.testing.assert_array_equal(a, np.load(tmp_path / "B" / "samples.npy"))
    W.sample(setup["ref"], tmp_path / "C", n=6, seed=4)
    assert not np.array_equal(a, np.load(tmp_path / "C" / "samples.npy"))
    W.sample(setup["ref"], tmp_path / "D", target=setup["tgt"], structure="b", n=3)
    d = np.load(tmp_path / "D" / "samples.npy")
    assert d.shape == (3, 3, S, S) and (tmp_path / "D" / "montage.png").is_file()
    s = W.sample(setup["ref"], tmp_path / "E", target=setup["tgt"], data=setup["cells"], cell="f1/5", n=4)
    e = np.load(tmp_path / "E" / "samples.npy")
    real = np.asarray(read_cellset(setup["cells"]).images[5, :2], np.float32)
    assert e.shape == (4, 3, S, S) and s["structure"] == "b"  # default: the cell's own structure
    np.testing.assert_allclose(e[:, :2], np.broadcast_to(real, (4, 2, S, S)))
    with pytest.raises(CytogenError, match=r"one of \['a', 'b'\]"):
        W.sample(setup["ref"], tmp_path / "F", target=setup["tgt"], structure="golgi")
    with pytest.raises(CytogenError, match="valid cell_id values: f0/0, f1/1"):
        W.sample(setup["ref"], tmp_path / "F", target=setup["tgt"], data=setup["cells"], cell="nope")
    with pytest.raises(CytogenError, match="--target"):
        W.sample(setup["ref"], tmp_path / "F", structure="a")


def test_walk_moves_the_cell_size_monotonically(setup, tmp_path):
    s = W.walk(setup["ref"], setup["cells"], tmp_path / "W", n_dims=2, steps=9)
    w = np.load(tmp_path / "W" / "walk.npy")
    assert w.shape == (2, 9, 2, S, S)
    rows = _csv(tmp_path / "W" / "walk.csv")
    assert len(rows) == 18 and "cell_area" in rows[0]
    top = s["dims"][0]
    area = [float(r["cell_area"]) for r in rows if int(r["dim"]) == top["dim"]]
    steps = np.diff(area)
    assert np.all(steps >= 0) or np.all(steps <= 0), area  # the top dimension is the radius
    assert max(area) > 1.5 * min(area)
    assert abs(top["spearman_rho"]) > 0.99
    # walked latents are +-2 sd of the cells' posterior means, other dimensions 0
    z = [float(r["z"]) for r in rows if int(r["dim"]) == top["dim"]]
    assert z[0] == pytest.approx(-z[-1]) and z[4] == pytest.approx(0.0, abs=1e-6)
    assert z[-1] == pytest.approx(2 * top["sd"], rel=1e-5)
    W.walk(setup["ref"], setup["cells"], tmp_path / "WT", target=setup["tgt"], n_dims=1, steps=3)
    assert np.load(tmp_path / "WT" / "walk.npy").shape == (1, 3, 3, S, S)
    with pytest.raises(CytogenError, match="between 1 and the latent size 2"):
        W.walk(setup["ref"], setup["cells"], tmp_path / "W3", n_dims=3)


def test_features_of_a_real_copy_have_ks_zero_and_the_regression_runs(setup, tmp_path, monkeypatch):
    cs = read_cellset(setup["cells"])
    test = cs.indices("test")
    copy = np.asarray(cs.images[test, :2], np.float32)
    monkeypatch.setattr(W.sc, "sample_reference", lambda ref, n, seed=0: copy[:n])
    s = W.features(setup["ref"], setup["cells"], tmp_path / "F", split="test")
    table = _csv(tmp_path / "F" / "comparison.csv")
    assert len(table) == 14 and all(float(r["ks"]) == 0.0 for r in table)
    rows = _csv(tmp_path / "F" / "features.csv")
    assert len(rows) == 2 * len(test) and {r["source"] for r in rows} == {"real", "generated"}
    # the area follows the planted radius (um^2 at 0.5 um pixels)
    area = np.array([float(r["cell_area"]) for r in rows if r["source"] == "real"])
    assert np.corrcoef(area, setup["radii"][test] ** 2)[0, 1] > 0.98
    assert s["units"]["cell_area"] == "um^2"
    reg = _csv(tmp_path / "F" / "regression.csv")
    assert [r["pc"] for r in reg][0] == "PC1" and 1 <= len(reg) <= 5
    kl = load_statcell_folder(setup["ref"]).meta["kl_per_dim"]
    assert s["regression"]["dims"] == [d for d, k in enumerate(kl) if k > 0.6] != []
    assert float(reg[0]["r2_heldout"]) > 0.5  # z_r explains the size-dominated first feature PC
    assert (tmp_path / "F" / "violins.png").is_file()


def test_cli_exit_codes(setup, tmp_path, capsys):
    assert main(["statcell", "sample", "--reference", str(setup["ref"]), "--out", str(tmp_path / "S"),
                 "--n", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["shape"] == [2, 2, S, S]
    assert main(["statcell", "walk", "--reference", str(setup["ref"]), "--data", str(setup["cells"]),
                 "--out", str(tmp_path / "S")]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "Traceback" not in err


def test_3d_cells_use_the_3d_feature_names(tmp_path):
    rng = np.random.default_rng(1)
    size = (8, 16, 16)
    zz, yy, xx = np.mgrid[:8, :16, :16]
    d = np.sqrt(((zz - 3.5) * 2) ** 2 + (yy - 7.5) ** 2 + (xx - 7.5) ** 2)
    images = np.zeros((12, 3, *size), np.float32)
    for i, r in enumerate(rng.uniform(3, 7, 12)):
        images[i, 0], images[i, 1], images[i, 2] = d < r, 0.8 * (d < r / 2), rng.random(size) * (d < r)
    rows = [{"cell_id": f"f/{i}", "structure": "a", "split": "train"} for i in range(12)]
    cells = write_cellset(tmp_path / "C3", images, rows, {"channels": CHANNELS, "target_channel": 2,
                                                          "reference_channels": [0, 1], "pixel_size_um": [1, 0.5, 0.5]})
    torch.manual_seed(0)
    net = ReferenceVAE(dims=3, size=size, latent_dim=3, widths=(4, 8))
    ref = save_statcell_folder(tmp_path / "R3", net, kind="statcell_reference", architecture=net.architecture,
                               structures=[], channels=CHANNELS, crop_size=list(size), pixel_size_um=[1, 0.5, 0.5],
                               beta=0.5, recipe=None, extra={"kl_per_dim": [0.1, 0.2, 0.3]})
    s = W.features(ref, cells, tmp_path / "F3", split=None, n_generated=4)
    names = [r["feature"] for r in _csv(tmp_path / "F3" / "comparison.csv")]
    assert "cell_volume" in names and "nucleus_sphericity" in names and "cell_area" not in names
    assert s["units"]["cell_volume"] == "um^3"
    assert "no dimension has mean KL > 0.6" in s["regression"]["notes"][0]
    assert s["regression"]["dims"] == [2, 1, 0]
    W.walk(ref, cells, tmp_path / "W3", n_dims=1, steps=3)
    assert np.load(tmp_path / "W3" / "walk.npy").shape == (1, 3, 2, *size)
    assert W.embed(ref, cells, tmp_path / "E3", pca=2)["pca"]["n_fit"] == 12
