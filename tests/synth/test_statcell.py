"""Tests of the Statistical Cell control fields (cytogen.synth.statcell)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from cytogen.errors import CytogenError
from cytogen.io.images import read_image
from cytogen.synth import statcell
from cytogen.synth.cells import synth_field
from cytogen.synth.statcell import FIELDS_COLUMNS, STRUCTURES, render_target, write_statcell_dataset


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _img(root: Path, rel: str) -> np.ndarray:
    return read_image(root / rel).data[0]


@pytest.fixture(scope="module")
def set2d(tmp_path_factory) -> Path:
    return write_statcell_dataset(tmp_path_factory.mktemp("sc") / "set", n_fields=18, shape=(96, 96),
                                  seed=4, progress=False)


def _of(rows, structure):
    return [r for r in rows if r["structure"] == structure]


def test_columns_one_structure_per_field_and_every_structure_in_every_split(set2d):
    rows = _rows(set2d)
    assert tuple(rows[0]) == FIELDS_COLUMNS
    assert len(rows) == 18 and len({r["name"] for r in rows}) == 18
    # fields cycle through the structures: 3 fields each, one per split
    assert [r["structure"] for r in rows] == [STRUCTURES[i % 6] for i in range(18)]
    for s in STRUCTURES:
        assert sorted(r["split"] for r in _of(rows, s)) == ["test", "train", "val"]
        assert sorted(r["condition"] for r in _of(rows, s)) == ["a", "a", "b"]
    for r in rows:
        assert r["pixel_size_um"] == "1"
        for col in ("dna", "target", "membrane", "cells", "nuclei"):
            assert (set2d.parent / r[col]).is_file()
        assert read_image(set2d.parent / r["target"]).pixel_size_um == (1.0, 1.0)


def test_copies_equal_their_reference_channel_exactly_and_blank_is_zero(set2d):
    root, rows = set2d.parent, _rows(set2d)
    for r in _of(rows, "membrane_copy"):
        np.testing.assert_array_equal(_img(root, r["target"]), _img(root, r["membrane"]))
        assert not np.array_equal(_img(root, r["target"]), _img(root, r["dna"]))
    for r in _of(rows, "dna_copy"):
        np.testing.assert_array_equal(_img(root, r["target"]), _img(root, r["dna"]))
    for r in _of(rows, "blank"):
        t = _img(root, r["target"])
        assert t.shape == (96, 96) and not t.any()
        assert _img(root, r["membrane"]).std() > 0.01  # the reference channels are real
    for r in _of(rows, "noise"):
        t, cells = _img(root, r["target"]), _img(root, r["cells"])
        assert not t[cells == 0].any()
        inside = t[cells > 0]
        assert 0.45 < inside.mean() < 0.55 and inside.std() > 0.25  # uniform [0, 1) noise
        # i.i.d.: neighbouring pixels inside the cells are uncorrelated
        both = (cells[:, 1:] > 0) & (cells[:, :-1] > 0)
        assert abs(np.corrcoef(t[:, 1:][both], t[:, :-1][both])[0, 1]) < 0.1


def _mass_in(t: np.ndarray, region: np.ndarray) -> float:
    """Fraction of the intensity of ``t`` above its noise floor (median + 5 robust sd) in ``region``."""
    med = np.median(t)
    excess = np.clip(t - med - 5 * 1.4826 * np.median(np.abs(t - med)), 0, None)
    return float(excess[region].sum() / excess.sum())


def test_nucleoli_lie_inside_nuclei_and_organelles_outside(set2d):
    root, rows = set2d.parent, _rows(set2d)
    for r in _of(rows, "nucleoli"):
        t, nuc = _img(root, r["target"]), _img(root, r["nuclei"])
        near = ndi.binary_dilation(nuc > 0, iterations=2)  # the PSF spreads blobs by a pixel or two
        assert _mass_in(t, near) > 0.9
        assert t.max() > 0.5  # imaged peaks near 1
    for r in _of(rows, "cytoplasmic"):
        t, nuc, cells = _img(root, r["target"]), _img(root, r["nuclei"]), _img(root, r["cells"])
        assert _mass_in(t, nuc > 0) < 0.1
        assert _mass_in(t, ndi.binary_dilation(cells > 0, iterations=2)) > 0.9
        assert t.max() > 0.5


def test_clean_renders_have_exactly_the_label_support():
    f = synth_field((96, 96), organelles=True, seed=7, noise=0)
    mem, dna = f.image[1], f.image[2]
    args = (mem, dna, f.cells, f.nuclei, f.organelles, (0.0, 0.0), 0.0)
    nucleoli = render_target("nucleoli", *args, np.random.default_rng(0)) > 0.06  # above the offset
    cyto = render_target("cytoplasmic", *args, np.random.default_rng(0)) > 0.06
    org = f.organelles > 0
    np.testing.assert_array_equal(nucleoli, org & (f.nuclei > 0))
    np.testing.assert_array_equal(cyto, org & (f.nuclei == 0))
    assert nucleoli.any() and cyto.any()
    assert not (cyto & (f.cells == 0)).any()


def test_field_layouts_do_not_depend_on_the_structures_asked_for(tmp_path):
    a = write_statcell_dataset(tmp_path / "a", n_fields=3, shape=(64, 64), structures="dna_copy",
                               seed=1, progress=False)
    b = write_statcell_dataset(tmp_path / "b", n_fields=3, shape=(64, 64), structures=["blank"],
                               seed=1, progress=False)
    for ra, rb in zip(_rows(a), _rows(b)):
        np.testing.assert_array_equal(_img(a.parent, ra["membrane"]), _img(b.parent, rb["membrane"]))
        np.testing.assert_array_equal(_img(a.parent, ra["cells"]), _img(b.parent, rb["cells"]))
        np.testing.assert_array_equal(_img(a.parent, ra["target"]), _img(a.parent, ra["dna"]))
        assert not _img(b.parent, rb["target"]).any()


def test_3d_fields(tmp_path):
    p = write_statcell_dataset(tmp_path / "s3", n_fields=4, shape=(8, 48, 48),
                               structures=("membrane_copy", "nucleoli"), seed=0,
                               val_fraction=0, test_fraction=0.25, progress=False)
    rows = _rows(p)
    assert [r["split"] for r in rows if r["structure"] == "nucleoli"].count("test") == 1
    for r in rows:
        im = read_image(p.parent / r["target"])
        assert im.axes == "CZYX" and im.spatial_shape == (8, 48, 48) and len(im.pixel_size_um) == 3
        cells = _img(p.parent, r["cells"])
        assert cells.shape == (8, 48, 48) and cells.max() > 0
    r = rows[0]
    np.testing.assert_array_equal(_img(p.parent, r["target"]), _img(p.parent, r["membrane"]))
    r = rows[1]
    near = ndi.binary_dilation(_img(p.parent, r["nuclei"]) > 0, iterations=2)
    assert _mass_in(_img(p.parent, r["target"]), near) > 0.8


def test_bad_arguments_are_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(CytogenError, match="unknown control structure"):
        write_statcell_dataset(tmp_path / "x", structures="blank,golgi", progress=False)
    with pytest.raises(CytogenError, match="n_fields >= 3"):
        write_statcell_dataset(tmp_path / "x", n_fields=12, progress=False)
    with pytest.raises(CytogenError, match="twice"):
        write_statcell_dataset(tmp_path / "x", structures="blank,blank", progress=False)
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f.txt").write_text("x")
    with pytest.raises(CytogenError, match="not empty"):
        write_statcell_dataset(tmp_path / "full", progress=False)


def test_a_crash_midway_leaves_no_half_written_folder(tmp_path, monkeypatch):
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return np.zeros(args[2].shape, np.float32)

    monkeypatch.setattr(statcell, "render_target", boom)
    with pytest.raises(RuntimeError):
        write_statcell_dataset(tmp_path / "s", n_fields=6, shape=(48, 48), structures="blank,noise",
                               progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_synthesize_statcell(tmp_path, capsys):
    from cytogen.cli import main

    out = tmp_path / "cli"
    assert main(["synthesize", "statcell", "--out", str(out), "--n-fields", "6", "--size", "64",
                 "--structures", "blank,dna_copy", "--seed", "2", "--pixel-size-um", "0.8"]) == 0
    rows = _rows(out / "FIELDS.csv")
    assert [r["structure"] for r in rows] == ["blank", "dna_copy"] * 3
    assert rows[0]["pixel_size_um"] == "0.8"
    assert str(out / "FIELDS.csv") in capsys.readouterr().out
    assert main(["synthesize", "statcell", "--out", str(tmp_path / "c3"), "--n-fields", "3", "--size",
                 "48", "--3d", "--z", "6", "--structures", "noise"]) == 0
    assert read_image(tmp_path / "c3" / "images" / "field_000_target.tif").spatial_shape == (6, 48, 48)
    assert main(["synthesize", "statcell", "--out", str(tmp_path / "bad"), "--structures", "er"]) == 2
