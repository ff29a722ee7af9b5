"""``cytogen evaluate positions`` on synthetic cells with organelles: outputs, detection, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cytogen.cli import main
from cytogen.io.images import Image, read_image, write_image


def cytoplasmic(organelles: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """The organelle labels without the nucleoli (objects with most of their pixels in a nucleus)."""
    out = organelles.copy()
    ids = np.unique(organelles[organelles > 0])
    inside = np.bincount(organelles[nuclei > 0].ravel(), minlength=organelles.max() + 1)
    total = np.bincount(organelles.ravel(), minlength=organelles.max() + 1)
    out[np.isin(organelles, ids[inside[ids] > 0.5 * total[ids]])] = 0
    return out


def move_into_nuclei(objects: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each object's pixels shifted so that its centroid lands on a random voxel of its cell's nucleus."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(objects)
    for lab in np.unique(objects[objects > 0]):
        idx = np.argwhere(objects == lab)
        c = np.rint(idx.mean(0)).astype(int)
        cell = cells[tuple(c)]
        nuc = np.argwhere((nuclei > 0) & (cells == cell)) if cell else np.zeros((0, objects.ndim), int)
        if not len(nuc):
            continue
        new = idx + (nuc[rng.integers(len(nuc))] - c)
        new = new[np.all((new >= 0) & (new < objects.shape), axis=1)]
        out[tuple(new.T)] = lab
    return out


def _write(path: Path, lab: np.ndarray, vox) -> None:
    write_image(path, Image(lab[None].astype(np.int32), "CYX" if lab.ndim == 2 else "CZYX", vox, None))


def _make(root: Path, seed: int, *, moved: bool = False, shape=(192, 192), n_fields: int = 4) -> Path:
    from cytogen.synth.cells import write_synthetic_dataset

    src = root / f"synth{seed}"
    if not src.exists():
        write_synthetic_dataset(src, n_fields=n_fields, shape=shape, organelles=True, seed=seed)
    out = root / f"objects{seed}{'_moved' if moved else ''}"
    out.mkdir()
    for f in sorted((src / "masks").glob("*_organelles.tif")):
        im = read_image(f)
        stem = f.name[: -len("_organelles.tif")]
        cells = read_image(src / "masks" / f"{stem}_cells.tif").data[0]
        nuclei = read_image(src / "masks" / f"{stem}_nuclei.tif").data[0]
        org = cytoplasmic(im.data[0], nuclei)
        _write(out / f.name, move_into_nuclei(org, cells, nuclei, seed) if moved else org, im.pixel_size_um)
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("positions")
    return {"root": root, "real": _make(root, 1), "same": _make(root, 2), "moved": _make(root, 2, moved=True),
            "masks1": root / "synth1" / "masks", "masks2": root / "synth2" / "masks"}


def _run(sets, pred: str, out: Path, *extra: str) -> int:
    m1, m2 = sets["masks1"], sets["masks2"]
    return main(["evaluate", "positions", "--real", str(sets["real"]), "--pred", str(sets[pred]),
                 "--cells", f"{m1}/*_cells.tif", "--nuclei", f"{m1}/*_nuclei.tif",
                 "--pred-cells", f"{m2}/*_cells.tif", "--pred-nuclei", f"{m2}/*_nuclei.tif", "--out", str(out),
                 "--permutations", "199", "--real-splits", "5", *extra])


def test_same_distribution_not_detected_and_outputs(sets, tmp_path, capsys):
    out = tmp_path / "same"
    assert _run(sets, "same", out) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    s = json.loads((out / "summary.json").read_text())
    assert printed["kl"] == pytest.approx(s["kl"])
    assert s["p_permutation"] > 0.05 and s["p_real_vs_real"] > 0.05
    assert s["n_objects_real"] > 100 and s["n_cells_real"] >= 10
    # organelles are cytoplasmic: every kept object lies beyond the nucleus boundary (rho > 0.5)
    assert 0.5 < s["median_rho_real"] < 1 and s["fraction_in_nucleus_real"] < 0.02
    rows = (out / "objects.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + s["n_objects_real"] + s["n_objects_generated"]
    assert {"file", "cell", "centroid_y_um", "r", "rho", "theta_deg", "frame_1"} <= set(rows[0].split(","))
    assert (out / "positions.png").stat().st_size > 10_000 and "KL" in (out / "report.html").read_text()


def test_organelles_moved_into_the_nucleus_detected(sets, tmp_path):
    out = tmp_path / "moved"
    assert _run(sets, "moved", out, "--exclude-border") == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["p_permutation"] < 0.01 and s["kl"] > s["test"]["kl_null_95"]
    assert s["median_rho_generated"] < 0.5 < s["median_rho_real"]
    assert s["counts"]["real"]["dropped_border_cells"] > 0 and s["exclude_border"] is True


def _assert_refused(capsys, out: Path, rc: int, match: str) -> None:
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and match in err and err.startswith("cytogen: error:")
    assert not out.exists()


def test_bad_input(sets, tmp_path, capsys):
    m1 = sets["masks1"]
    base = ["evaluate", "positions", "--cells", f"{m1}/*_cells.tif", "--nuclei", f"{m1}/*_nuclei.tif",
            "--permutations", "9", "--real-splits", "0"]
    # mismatched file names
    odd = tmp_path / "odd"
    odd.mkdir()
    tifffile.imwrite(odd / "other.tif", np.zeros((192, 192), np.uint16))
    out = tmp_path / "o1"
    _assert_refused(capsys, out, main(base + ["--real", str(sets["real"]), "--pred", str(odd), "--out", str(out)]),
                    "no cells file matches other")
    # label shapes differ
    small = tmp_path / "small"
    small.mkdir()
    for f in sorted(sets["real"].glob("*.tif")):
        tifffile.imwrite(small / f.name, read_image(f).data[0][:100, :100])
    out = tmp_path / "o2"
    _assert_refused(capsys, out, main(base + ["--real", str(sets["real"]), "--pred", str(small), "--out", str(out)]),
                    "same size")
    # no objects in cells
    empty = tmp_path / "empty"
    empty.mkdir()
    cells = read_image(m1 / "field_000_cells.tif").data[0]
    lab = np.zeros_like(cells, np.uint16)
    lab[np.argwhere(cells == 0)[0][0], np.argwhere(cells == 0)[0][1]] = 1  # one object, in the background
    tifffile.imwrite(empty / "field_000_organelles.tif", lab)
    out = tmp_path / "o3"
    _assert_refused(capsys, out, main(base + ["--real", str(sets["real"]), "--pred", str(empty), "--out", str(out)]),
                    "lies in a usable cell")
    out = tmp_path / "o4"
    _assert_refused(capsys, out, main(base + ["--real", str(tmp_path / "nope"), "--pred", str(empty),
                                              "--out", str(out)]), "does not exist")


def test_3d_moved_towards_membrane(tmp_path):
    """3D synthetic cells: objects near the nucleus vs the same objects pushed out towards the membrane."""
    from cytogen.synth.cells import synth_field
    from cytogen.workflows.evaluate_positions import evaluate_positions

    rng = np.random.default_rng(0)
    dirs = {k: tmp_path / k for k in ("cells", "nuclei", "near", "far")}
    for d in dirs.values():
        d.mkdir()
    for i in range(3):
        f = synth_field((16, 96, 96), n_cells=3, seed=i)
        near, far = np.zeros_like(f.cells), np.zeros_like(f.cells)
        for c in range(1, int(f.cells.max()) + 1):
            nuc = np.argwhere(f.nuclei == c)
            cyto = np.argwhere((f.cells == c) & (f.nuclei == 0))
            if not len(nuc) or not len(cyto):
                continue
            centre = nuc.mean(0) * f.pixel_size_um
            dist = np.linalg.norm(cyto * f.pixel_size_um - centre, axis=1)
            order = np.argsort(dist)
            for j, k in enumerate(rng.choice(len(cyto) // 4, 25, replace=False)):
                near[tuple(cyto[order[k]])] = 25 * (c - 1) + j + 1
            for j, k in enumerate(rng.choice(len(cyto) // 4, 25, replace=False)):
                far[tuple(cyto[order[-1 - k]])] = 25 * (c - 1) + j + 1
        for name, lab in (("cells", f.cells), ("nuclei", f.nuclei), ("near", near), ("far", far)):
            _write(dirs[name] / f"f{i}.tif", lab, f.pixel_size_um)
    s = evaluate_positions(dirs["near"], dirs["far"], dirs["cells"], dirs["nuclei"], tmp_path / "out",
                           n_permutations=199, real_splits=0)
    assert s["p_permutation"] < 0.01 and s["median_rho_generated"] > s["median_rho_real"]
    assert "phi_deg" in (tmp_path / "out" / "objects.csv").read_text().splitlines()[0]


def test_shape_vs_position_regression(tmp_path):
    """Real objects grow with their distance from the nucleus (PC1 explained by position); the
    generated ones have random sizes (not explained)."""
    pytest.importorskip("cytogen.evaluate.shapes")
    from cytogen.workflows.evaluate_positions import evaluate_positions

    rng = np.random.default_rng(0)
    dirs = {k: tmp_path / k for k in ("cells", "nuclei", "real", "pred")}
    for d in dirs.values():
        d.mkdir()
    yy, xx = np.mgrid[:200, :200]
    for i in range(2):
        cell = ((yy - 100) ** 2 + (xx - 100) ** 2 <= 90**2).astype(np.int32)
        nuc = ((yy - 100) ** 2 + (xx - 100) ** 2 <= 20**2).astype(np.int32)
        for side in ("real", "pred"):
            obj = np.zeros_like(cell)
            for k in range(20):
                dist, ang = rng.uniform(28, 80), rng.uniform(0, 2 * np.pi)
                cy, cx = 100 + dist * np.sin(ang), 100 + dist * np.cos(ang)
                rad = 2 + 5 * ((dist - 28) / 52 if side == "real" else rng.uniform())  # real: grows with distance
                obj[((yy - cy) ** 2 + (xx - cx) ** 2 <= rad**2) & (obj == 0)] = k + 1
            _write(dirs[side] / f"f{i}.tif", obj, (0.5, 0.5))
        _write(dirs["cells"] / f"f{i}.tif", cell, (0.5, 0.5))
        _write(dirs["nuclei"] / f"f{i}.tif", nuc, (0.5, 0.5))
    s = evaluate_positions(dirs["real"], dirs["pred"], dirs["cells"], dirs["nuclei"], tmp_path / "out",
                           n_permutations=19, real_splits=0, shape_vs_position=True)
    reg = s["shape_vs_position"]
    assert reg["real"]["n_objects"] >= 30 and reg["real"]["r2"] > 0.35 and reg["generated"]["r2"] < 0.2
    assert "Shape vs position" in (tmp_path / "out" / "report.html").read_text()


def test_real_split_by_image_and_pixel_size_override(sets, tmp_path):
    out = tmp_path / "by_image"
    assert _run(sets, "same", out, "--real-split-by", "image", "--pixel-size-um", "1.0", "--permute-by", "cell") == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["real_vs_real"]["split_by"] == "image" and s["real_vs_real"]["n_groups"] == 4
    assert s["inputs"]["real"]["pixel_size_um"] == [[1.0, 1.0]] and s["test"]["permute_by"] == "group"
    rows = (out / "objects.csv").read_text().splitlines()
    ref = (tmp_path / "ref")
    assert _run(sets, "same", ref) == 0  # metadata pixel size 0.5 um: centroids in um halve
    a = [float(r.split(",")[4]) for r in rows[1:]]
    b = [float(r.split(",")[4]) for r in (ref / "objects.csv").read_text().splitlines()[1:]]
    np.testing.assert_allclose(np.asarray(b) * 2, a, rtol=1e-6)
