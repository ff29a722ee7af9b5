"""statcell sweep / coupling / perturbation workflows (synthetic embeddings; tiny models)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.workflows.statcell_stats import perturbation

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_embeddings(path: Path, seed: int = 0) -> Path:
    """Two plate rows per dose series: zt shifts with dose along a planted direction, zr does not;
    a noisy baseline column that also rises with dose but with a poor Z'."""
    rng = np.random.default_rng(seed)
    u = np.array([0.6, 0.8, 0, 0, 0, 0])
    rows = []
    for row in ("A", "C", "E", "G"):
        for dose in range(11):
            for k in range(12):
                zt = rng.normal(size=6) + 0.8 * dose * u
                zr = rng.normal(size=4)
                r = {"cell_id": f"{row}{dose}/{k}", "structure": "FKHR-GFP", "row": row, "dose": str(dose),
                     "well": f"{row}-{dose}-{k % 3}",
                     "target_nc_ratio": 1.0 + 0.1 * dose + rng.normal() * 0.6}
                r.update({f"zr_{i}": zr[i] for i in range(4)})
                r.update({f"zt_{i}": zt[i] for i in range(6)})
                rows.append(r)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def pert(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pert")
    emb = _write_embeddings(tmp / "embeddings.csv")
    s = perturbation(emb, tmp / "out", condition="dose", control="0", treated=None,
                     baseline_columns=("target_nc_ratio",), learn_on="row=A,C", n_permutations=1999, seed=0)
    return tmp, s


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_perturbation_shift_in_zt_not_zr(pert):
    tmp, s = pert
    shifts = _read(tmp / "out" / "shifts.csv")
    top = {r["space"]: r for r in shifts if r["condition"] == "10"}
    assert float(top["zt"]["p"]) < 0.01 and top["zt"]["significant"] == "true"
    assert float(top["zr"]["p"]) > 0.05
    assert len(shifts) == 10 * 2 and s["n_tests"] == 20
    # Bonferroni over the 20 tests
    for r in shifts:
        assert float(r["p_bonferroni"]) == pytest.approx(min(1.0, 20 * float(r["p"])))
    assert s["shift_ratio"]["FKHR-GFP/10"]["zt_over_zr"] > 3
    assert s["treated"] == "10" and s["control"] == "0"


def test_perturbation_dose_response_and_zprime(pert):
    tmp, s = pert
    dr = s["dose_response"]["FKHR-GFP/zt"]
    assert dr["monotone"] and dr["spearman_rho"] > 0.8
    z = {r["readout"]: float(r["z_prime"]) for r in _read(tmp / "out" / "zprime.csv")}
    assert z["zt"] > z["target_nc_ratio"] and z["zt"] > z["zr"]
    assert z["zt"] > 0  # treated and control bands separate: shift 8 vs sd ~1
    assert (tmp / "out" / "report.html").stat().st_size > 10_000
    assert json.loads((tmp / "out" / "summary.json").read_text())["n_cells"] == 4 * 11 * 12


def test_perturbation_learn_on_excludes_learning_cells(pert):
    tmp, s = pert
    assert s["n_learn"] == 2 * 11 * 12 and s["n_held_out"] == 2 * 11 * 12
    zp = {r["readout"]: r for r in _read(tmp / "out" / "zprime.csv")}
    # Z' uses only the held-out rows' control (dose 0) and treated (dose 10) cells
    assert int(zp["zt"]["n_treated"]) == 24 and int(zp["zt"]["n_control"]) == 24
    proj = _read(tmp / "out" / "projections.csv")
    learn = {r["cell_id"][0] for r in proj if r["learn"] == "true"}
    assert learn == {"A", "C"}
    # the held-out Z' equals the Z' computed by hand from the held-out projections
    from cytogen.evaluate.latent import z_prime

    pos = [float(r["proj_zt"]) for r in proj if r["learn"] == "false" and r["dose"] == "10"]
    neg = [float(r["proj_zt"]) for r in proj if r["learn"] == "false" and r["dose"] == "0"]
    assert float(zp["zt"]["z_prime"]) == pytest.approx(z_prime(pos, neg))
    # and the per-well Z' from the per-well means of the 6 held-out wells of each control
    wells = {}
    for r in proj:
        if r["learn"] == "false" and r["dose"] in ("0", "10"):
            key = (r["dose"], r["cell_id"][0], int(r["cell_id"].split("/")[1]) % 3)
            wells.setdefault(key, []).append(float(r["proj_zt"]))
    wp = [np.mean(v) for k, v in wells.items() if k[0] == "10"]
    wn = [np.mean(v) for k, v in wells.items() if k[0] == "0"]
    assert int(zp["zt"]["n_wells_treated"]) == 6 and len(wp) == 6
    assert float(zp["zt"]["z_prime_wells"]) == pytest.approx(z_prime(wp, wn))
    assert s["zprime_wells"]["FKHR-GFP/zt"] > s["zprime"]["FKHR-GFP/zt"]  # well means average out cell noise


def test_perturbation_refuses_bad_input(tmp_path):
    emb = _write_embeddings(tmp_path / "embeddings.csv")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(CytogenError, match="not an empty folder"):
        perturbation(emb, tmp_path / "full", condition="dose", control="0")
    with pytest.raises(CytogenError, match="control value"):
        perturbation(emb, tmp_path / "o1", condition="dose", control="99")
    with pytest.raises(CytogenError, match="pca_0"):
        perturbation(emb, tmp_path / "o2", condition="dose", control="0", spaces=("pca",))
    with pytest.raises(CytogenError, match="COL=V1,V2"):
        perturbation(emb, tmp_path / "o3", condition="dose", control="0", learn_on="rowA")
    assert not (tmp_path / "o1").exists()


# ------------------------------------------------------------------ coupling (stub model, known answers)
class _CopyNet:
    """A target 'model' whose decoder copies reference channel 0 (structure membrane_copy), channel 1
    (dna_copy) or predicts blank (blank), ignoring z; q(z|x) = N(0, 1), so KL = 0."""

    def __new__(cls, structures):
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.p = torch.nn.Parameter(torch.zeros(1))
                self.structures = structures

            def encode(self, x_t, x_r, t):
                z = torch.zeros(x_t.shape[0], 2)
                return z, z.clone()

            def decode(self, z, x_r, t):
                mem = (t == self.structures.index("membrane_copy")).float().view(-1, 1, 1, 1)
                dna = (t == self.structures.index("dna_copy")).float().view(-1, 1, 1, 1)
                return mem * x_r[:, :1] + dna * x_r[:, 1:2] + 0 * z.sum()

        return Net()


@pytest.fixture(scope="module")
def copy_cells(tmp_path_factory):
    from cytogen.data.cellset import write_cellset

    rng = np.random.default_rng(0)
    structures = ["blank", "dna_copy", "membrane_copy"]
    images, rows = [], []
    for s in structures:
        for k in range(8):
            ref = rng.random((2, 16, 16)).astype(np.float32)
            tgt = {"blank": np.zeros((16, 16)), "dna_copy": ref[1], "membrane_copy": ref[0]}[s]
            images.append(np.concatenate([ref, tgt[None]], axis=0))
            rows.append({"cell_id": f"{s}/{k}", "field": s, "cell_label": str(k + 1), "structure": s,
                         "structure_index": str(structures.index(s)), "split": "test",
                         "phase": "a" if k < 4 else "b"})
    root = write_cellset(tmp_path_factory.mktemp("cells") / "CELLS", np.stack(images), rows,
                         {"channels": ["cell", "dna", "target"], "reference_channels": [0, 1], "target_channel": 2,
                          "structures": structures, "reference_cell_channel": "mask", "pixel_size_um": None})
    return root, structures


def test_coupling_known_answers(copy_cells, tmp_path, monkeypatch):
    from cytogen.predict import model_folder
    from cytogen.predict.model_folder import LoadedStatCell
    from cytogen.workflows.statcell_stats import coupling

    root, structures = copy_cells
    meta = {"kind": "statcell_target", "structures": structures, "beta": 0.5,
            "architecture": {"name": "stub", "kwargs": {"size": [16, 16], "ref_channels": 2, "latent_dim": 2,
                                                        "dims": 2}}}
    stub = LoadedStatCell(net=_CopyNet(structures), meta=meta, folder=tmp_path / "stub")
    monkeypatch.setattr(model_folder, "load_statcell_folder", lambda folder, device="cpu", kind=None: stub)
    s = coupling(tmp_path / "stub", root / "cells.csv", tmp_path / "out", n_swaps=4, condition="phase",
                 n_samples=2, seed=0)
    cells = _read(tmp_path / "out" / "coupling.csv")
    assert len(cells) == 24 and {"coupling_cell", "coupling_nucleus", "elbo", "phase"} <= set(cells[0])
    by = {}
    for r in cells:
        by.setdefault(r["structure"], []).append((float(r["coupling_cell"]), float(r["coupling_nucleus"])))
        # Eq 4 as written: own ELBO minus the mean swapped ELBO
        assert float(r["coupling_cell"]) == pytest.approx(float(r["elbo"]) - float(r["elbo_swap_cell"]), abs=1e-3)
    mem, dna, blank = (np.array(by[k]) for k in ("membrane_copy", "dna_copy", "blank"))
    assert np.all(mem[:, 0] > 5) and np.allclose(mem[:, 1], 0, atol=1e-4)  # couples to the cell channel only
    assert np.all(dna[:, 1] > 5) and np.allclose(dna[:, 0], 0, atol=1e-4)  # to the nucleus only
    assert np.allclose(blank, 0, atol=1e-4)                                  # to neither
    groups = {g["group"]: g for g in s["groups"]}
    assert groups["membrane_copy / phase=a"]["d_s"] == pytest.approx(1.0, abs=1e-4)
    assert groups["dna_copy / phase=b"]["d_s"] == pytest.approx(-1.0, abs=1e-4)
    assert len(groups) == 6 and s["cell_channel"] == "cell_mask"
    summ = _read(tmp_path / "out" / "coupling_summary.csv")
    row = next(r for r in summ if r["group"] == "membrane_copy / phase=a")
    assert float(row["coupling_cell_lo"]) <= float(row["coupling_cell_mean"]) <= float(row["coupling_cell_hi"])
    assert (tmp_path / "out" / "report.html").is_file()


# ------------------------------------------------------------------ sweep (two tiny models)
def _disk_cells(root: Path) -> Path:
    from cytogen.data.cellset import write_cellset

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    images, rows = [], []
    for i in range(40):
        r = rng.uniform(3, 7)
        cell = ((yy - 8) ** 2 + (xx - 8) ** 2 < r * r).astype(np.float32)
        nuc = ((yy - 8) ** 2 + (xx - 8) ** 2 < (r / 2) ** 2).astype(np.float32) * rng.uniform(0.5, 1)
        images.append(np.stack([cell, nuc, 0.3 * cell]))
        rows.append({"cell_id": f"f/{i}", "field": "f", "cell_label": str(i + 1), "structure": "s",
                     "structure_index": "0", "split": "train" if i < 28 else "val" if i < 34 else "test"})
    return write_cellset(root, np.stack(images), rows,
                         {"channels": ["cell", "dna", "target"], "reference_channels": [0, 1], "target_channel": 2,
                          "structures": ["s"], "reference_cell_channel": "mask", "pixel_size_um": None})


_TINY = ["model.kwargs.latent_dim=4", "model.kwargs.widths=[4,8]", "data.patch_size=[16,16]",
         "data.batch_size=8", "train.val_every=5", "vae.elbo_samples=2", "train.max_time_min=null", "train.precision=32"]


def test_sweep_tiny_models(tmp_path):
    from cytogen.config import bundled_recipe
    from cytogen.data.cellset import read_cellset
    from cytogen.predict.model_folder import load_statcell_folder
    from cytogen.predict.statcell import elbo_cells
    from cytogen.workflows.statcell_stats import sweep

    cells = _disk_cells(tmp_path / "CELLS")
    s = sweep(bundled_recipe("statcell_reference2d"), cells / "cells.csv", tmp_path / "sw", betas=(0.9, 0.2),
              max_steps=3, overrides=_TINY, split="test")
    assert s["betas"] == [0.2, 0.9] and s["split"] == "test" and s["n_cells"] == 6
    table = _read(tmp_path / "sw" / "sweep.csv")
    assert [float(r["beta"]) for r in table] == [0.2, 0.9]
    # the rate/distortion of each beta are the 10-sample (here 2) ELBO terms of that run's model
    m = load_statcell_folder(tmp_path / "sw" / "beta_0.2" / "model")
    assert m.beta == pytest.approx(0.2)
    cs = read_cellset(cells)
    est = elbo_cells(m, cs, cs.indices("test"), n_samples=2, seed=0)
    assert float(table[0]["rate"]) == pytest.approx(float(est["kl"].sum(1).mean()), rel=1e-5)
    assert float(table[0]["distortion"]) == pytest.approx(float(est["recon"].mean()), rel=1e-5)
    feats = _read(tmp_path / "sw" / "features.csv")
    assert {r["beta"] for r in feats} == {"real", "0.2", "0.9"} and "cell_area" in feats[0]
    assert (tmp_path / "sw" / "report.html").is_file()


def test_sweep_refuses_bad_settings(tmp_path):
    from cytogen.config import bundled_recipe
    from cytogen.workflows.statcell_stats import sweep

    cells = _disk_cells(tmp_path / "CELLS")
    rec = bundled_recipe("statcell_reference2d")
    with pytest.raises(CytogenError, match="--betas"):
        sweep(rec, cells / "cells.csv", tmp_path / "a", betas=(0.5,), overrides=["vae.beta=0.3"])
    with pytest.raises(CytogenError, match=r"\[0, 1\]"):
        sweep(rec, cells / "cells.csv", tmp_path / "b", betas=(0.5, 1.5))
    with pytest.raises(CytogenError, match="Statistical Cell"):
        sweep(bundled_recipe("translate_unet2d"), cells / "cells.csv", tmp_path / "c", betas=(0.5,))
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
