"""statcell sweep / coupling / perturbation workflows (synthetic embeddings; tiny models)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.workflows.statcell_stats import perturbation


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
