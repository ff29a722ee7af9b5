"""Inference helpers of the Statistical Cell (cytogen.predict.statcell) on tiny untrained models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cytogen.data.cellset import read_cellset, write_cellset
from cytogen.errors import CytogenError
from cytogen.models.vae import ReferenceVAE, TargetVAE
from cytogen.predict import statcell as sc
from cytogen.predict.model_folder import load_statcell_folder, save_statcell_folder

pytestmark = pytest.mark.usefixtures("one_thread")

S = 16
CHANNELS = ["cell", "dna", "target"]


def _save(folder, net, kind, structures):
    return load_statcell_folder(save_statcell_folder(
        folder, net, kind=kind, architecture=net.architecture, structures=structures, channels=CHANNELS,
        crop_size=[S, S], pixel_size_um=None, beta=0.5, recipe=None), kind=kind)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("statcell_predict")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:S, :S]
    d = np.hypot(yy - S / 2, xx - S / 2)
    n = 20
    images = np.zeros((n, 3, S, S), np.float32)
    rows = []
    for i in range(n):
        r = rng.uniform(3, 7)
        images[i, 0] = d < r
        images[i, 1] = 0.8 * (d < r / 2)
        images[i, 2] = rng.random((S, S)) * (d < r)
        rows.append({"cell_id": f"f/{i}", "structure": "ab"[i % 2], "split": "train"})
    cs = read_cellset(write_cellset(root / "CELLS", images, rows, {"channels": CHANNELS, "target_channel": 2,
                                                                    "reference_channels": [0, 1]}))
    torch.manual_seed(0)
    ref = _save(root / "REF", ReferenceVAE(size=(S, S), latent_dim=3, widths=(4, 8)), "statcell_reference", [])
    # the model's structure order differs from the set's: cells must be mapped by name
    tgt = _save(root / "TGT", TargetVAE(size=(S, S), latent_dim=2, widths=(4, 8), n_classes=3),
                "statcell_target", ["c", "b", "a"])
    return cs, ref, tgt


def test_embed_is_the_encoders_mean_and_deterministic(setup):
    cs, ref, tgt = setup
    idx = np.array([5, 0, 3, 7, 11, 2])
    a = sc.embed_cells(ref, tgt, cs, idx, batch_size=4)
    b = sc.embed_cells(ref, tgt, cs, idx, batch_size=64)
    assert set(a) == {"zr", "zt"} and a["zr"].shape == (6, 3) and a["zt"].shape == (6, 2)
    assert a["zr"].dtype == np.float32
    np.testing.assert_allclose(a["zr"], b["zr"], atol=1e-6)  # batching changes only rounding
    np.testing.assert_array_equal(a["zr"], sc.embed_cells(ref, tgt, cs, idx, batch_size=4)["zr"])
    x = torch.from_numpy(np.asarray(cs.images[idx], np.float32))
    t = torch.tensor([["c", "b", "a"].index(cs.rows[i]["structure"]) for i in idx])
    with torch.no_grad():
        np.testing.assert_allclose(a["zr"], ref.net.encode(x[:, :2])[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(a["zt"], tgt.net.encode(x[:, 2:], x[:, :2], t)[0].numpy(), atol=1e-5)
    assert set(sc.embed_cells(ref, None, cs, idx)) == {"zr"}


def test_embed_restores_the_training_mode(setup):
    cs, ref, _ = setup
    ref.net.train()
    try:
        z1 = sc.embed_cells(ref, None, cs, np.arange(4))["zr"]
        assert ref.net.training
        z2 = sc.embed_cells(ref, None, cs, np.arange(4))["zr"]
        np.testing.assert_array_equal(z1, z2)  # eval mode inside: BatchNorm running statistics, no drift
    finally:
        ref.net.eval()


def test_sample_reference_in_unit_range_and_seeded(setup):
    _, ref, _ = setup
    a = sc.sample_reference(ref, 5, seed=1)
    assert a.shape == (5, 2, S, S) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, sc.sample_reference(ref, 5, seed=1))
    assert not np.array_equal(a, sc.sample_reference(ref, 5, seed=2))


def test_sample_target_shapes_and_seed(setup):
    cs, _, tgt = setup
    x_r = np.asarray(cs.images[:3, :2], np.float32)
    one = sc.sample_target(tgt, x_r[0], structure=1, n_draws=4, seed=0)
    many = sc.sample_target(tgt, x_r, structure=1, n_draws=2, seed=0)
    assert one.shape == (4, 1, S, S) and many.shape == (3, 2, 1, S, S)
    assert 0 <= many.min() and many.max() <= 1
    np.testing.assert_array_equal(one, sc.sample_target(tgt, x_r[0], structure=1, n_draws=4, seed=0))
    assert not np.allclose(one[0], one[1])  # independent draws differ
    with pytest.raises(CytogenError, match="out of range"):
        sc.sample_target(tgt, x_r[0], structure=3, n_draws=1)


def test_decode_reference_checks_latent_shape(setup):
    _, ref, _ = setup
    assert sc.decode_reference(ref, np.zeros((2, 3))).shape == (2, 2, S, S)
    with pytest.raises(CytogenError, match=r"\(n, 3\)"):
        sc.decode_reference(ref, np.zeros((2, 4)))


def test_elbo_cells_seeded_and_reference_override(setup):
    cs, ref, tgt = setup
    idx = np.arange(6)
    a = sc.elbo_cells(tgt, cs, idx, n_samples=3, batch_size=4)
    assert a["elbo"].shape == (6,) and a["kl"].shape == (6, 2)
    np.testing.assert_allclose(a["elbo"], -(a["recon"] + a["kl"].sum(1)), rtol=1e-5)
    np.testing.assert_array_equal(a["elbo"], sc.elbo_cells(tgt, cs, idx, n_samples=3, batch_size=4)["elbo"])
    same = sc.elbo_cells(tgt, cs, idx, n_samples=3, batch_size=4,
                          reference_override=np.asarray(cs.images[idx, :2], np.float32))
    np.testing.assert_allclose(same["elbo"], a["elbo"], rtol=1e-5)
    swapped = sc.elbo_cells(tgt, cs, idx, n_samples=3, batch_size=4,
                            reference_override=np.asarray(cs.images[idx[::-1], :2], np.float32))
    assert not np.allclose(swapped["elbo"], a["elbo"])
    r = sc.elbo_cells(ref, cs, idx, n_samples=2)
    assert r["kl"].shape == (6, 3) and np.all(r["recon"] > 0)


def test_cells_of_an_unknown_structure_are_refused(setup, tmp_path):
    cs, _, _ = setup
    torch.manual_seed(0)
    only_c = _save(tmp_path / "T", TargetVAE(size=(S, S), latent_dim=2, widths=(4, 8), n_classes=1),
                   "statcell_target", ["c"])
    with pytest.raises(CytogenError, match=r"\['a', 'b'\].*not among"):
        sc.embed_cells(None, only_c, cs, np.arange(4))
