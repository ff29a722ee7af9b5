"""Known answers of the Statistical Cell on synthetic controls, end to end (issue 11, "Done when").

One module, data and models made once: ``write_statcell_dataset`` (fields whose target is blank,
a copy of the membrane, a copy of the DNA, noise inside the cells, nucleoli or cytoplasmic
organelles) -> ``extract_cells`` (40 x 40 aligned crops) -> ONE target beta-VAE on all
structures (tiny widths, fixed seed) -> ``coupling`` (Eq 4, 5); and a beta sweep of the reference
model. The paper's answers (Donovan-Maiye et al. 2022, section 2.5, Fig 5): each copy couples
only to itself, the blank to neither; nucleoli are coupled to the nucleus relative to the membrane
more than cytoplasmic organelles are; lower beta = higher rate, lower distortion.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

CROP = 40
TINY = ["model.kwargs.widths=[16,32,64]", "model.kwargs.latent_dim=16", "optim.lr=0.002",
        f"data.patch_size=[{CROP},{CROP}]", "train.val_every=100", "train.checkpoint_every=100",
        "train.max_time_min=10"]
TARGET_STEPS = 700  # fewer steps leave the DNA -> nucleoli link unlearned (see the report of issue 11)


@pytest.fixture(scope="module")
def root(tmp_path_factory, one_thread) -> Path:
    # train sets torch's threads to the CPUs it may use; one on a shared CI machine
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cytogen.runtime.settings._cpus", lambda: 1)
        yield tmp_path_factory.mktemp("statcell_controls")


@pytest.fixture(scope="module")
def cells(root) -> Path:
    from cytogen.synth.statcell import write_statcell_dataset
    from cytogen.workflows.cells_extract import extract_cells

    fields = write_statcell_dataset(root / "fields", n_fields=18, shape=(128, 128), seed=0,
                                    pixel_size_um=1.0, cells_per_field=18, val_fraction=0.2,
                                    test_fraction=0.0, progress=False)
    extract_cells(fields, root / "cells", size=(CROP, CROP), progress=False)
    return root / "cells" / "cells.csv"


@pytest.fixture(scope="module")
def couplings(root, cells, configs) -> dict[str, dict[str, float]]:
    from cytogen.workflows.statcell_stats import coupling
    from cytogen.workflows.train import train

    train(configs / "statcell_target2d.yaml", cells, root / "tgt", overrides=TINY,
          max_steps=TARGET_STEPS, progress=False)
    coupling(root / "tgt" / "model", cells, root / "coupling", n_swaps=6, n_samples=3, seed=0)
    with (root / "coupling" / "coupling_summary.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {r["structure"]: {k: float(v) for k, v in r.items() if k not in ("group", "structure")}
            for r in rows}


def test_the_fields_metadata_reaches_every_cell_and_its_coupling_row(root, cells, couplings):
    with cells.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["condition"] for r in rows} == {"a", "b"}
    assert {r["structure"] for r in rows} == set(couplings)
    assert all(couplings[s]["n"] >= 15 for s in couplings)
    with (root / "coupling" / "coupling.csv").open(newline="") as fh:
        crow = next(csv.DictReader(fh))
    assert "condition" in crow and "coupling_cell" in crow and "coupling_nucleus" in crow


def test_copy_of_membrane_couples_to_the_membrane_not_the_nucleus(couplings):
    c = couplings["membrane_copy"]
    assert c["coupling_cell_lo"] > 0
    assert c["coupling_cell_lo"] > 10 * max(c["coupling_nucleus_hi"], 0.1)
    assert c["d_s_lo"] > 0.8


def test_copy_of_dna_couples_to_the_nucleus_not_the_membrane(couplings):
    c = couplings["dna_copy"]
    assert c["coupling_nucleus_lo"] > 0
    assert c["coupling_nucleus_lo"] > 3 * max(c["coupling_cell_hi"], 0.1)
    assert c["d_s_hi"] < -0.6


def test_blank_couples_to_neither(couplings):
    b = couplings["blank"]
    scale = min(couplings["membrane_copy"]["coupling_cell_mean"], couplings["dna_copy"]["coupling_nucleus_mean"])
    for key in ("coupling_cell", "coupling_nucleus"):
        assert abs(b[f"{key}_mean"]) < 0.02 * scale
        assert max(abs(b[f"{key}_lo"]), abs(b[f"{key}_hi"])) < 0.05 * scale


def test_nucleoli_couple_more_to_the_nucleus_than_cytoplasmic_organelles(couplings):
    """Relative to the membrane coupling (the paper's d_s, Fig 5B): nucleoli sit nearer the nucleus
    end. In absolute ELBO units the cytoplasmic organelles carry about 3x the nucleoli's image
    energy, so their raw nucleus coupling is not smaller at this training size."""
    nuc, cyt = couplings["nucleoli"], couplings["cytoplasmic"]
    assert nuc["d_s"] < cyt["d_s"] - 0.25
    assert nuc["d_s_hi"] < cyt["d_s_hi"]
    assert cyt["coupling_cell_lo"] > 0  # organelles fill the cell: coupled to its shape
    assert (nuc["coupling_nucleus_mean"] / nuc["coupling_cell_mean"]
            > 2 * cyt["coupling_nucleus_mean"] / cyt["coupling_cell_mean"])


def test_beta_sweep_distortion_falls_and_rate_rises_as_beta_falls(root, cells, configs):
    from cytogen.workflows.statcell_stats import sweep

    s = sweep(configs / "statcell_reference2d.yaml", cells, root / "sweep", betas=[0.2, 0.5, 0.8],
              max_steps=150, overrides=TINY)
    rows = sorted(s["per_beta"], key=lambda r: r["beta"])
    rates = [r["rate"] for r in rows]
    dists = [r["distortion"] for r in rows]
    assert rates[0] > rates[1] > rates[2], rates
    assert dists[0] < dists[1] < dists[2], dists
